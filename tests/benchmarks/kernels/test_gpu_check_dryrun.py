"""Dry runs of the AnchorAttention GPU check at tiny sizes (Triton interpreter on CPU)."""
import importlib.util
import math
import sys

import pandas as pd
import pytest
import torch

from tests.conftest import REPO_ROOT

pytest.importorskip("anchor.ops", reason="anchor.ops (the Triton kernels) is not importable yet")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = "fp16" if DEVICE == "cuda" else "fp32"      # bf16 is not usable in the interpreter


def _load_gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check_anchor", REPO_ROOT / "scripts" / "gpu_check_anchor.py")
    check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, check)                   # dataclasses look the module up
    spec.loader.exec_module(check)
    return check


def test_gpu_check_flags_a_wrong_selection(monkeypatch):
    from anchor.params import AnchorParams
    from anchor.reference import anchor_selection_reference
    from benchmarks.structured_inputs import make_qkv

    check = _load_gpu_check(monkeypatch)
    q, k, _ = make_qkv("structured", 1, 2, 1, 256, 32, torch.float16, seed=0, stripe_fraction=0.1)
    params = AnchorParams(theta=12.0, step=2, block_size=16, init_size=None, local_size=None, tail="sparse",
                          tail_block_size=16)
    ref = anchor_selection_reference(q, k, params)
    keys = ref.keys
    assert check.compare_selection(q, k, keys, params, ref)["ok"]
    lo, hi = params.candidate_range(7)
    wrong = keys.clone()
    wrong[0, 1, 7, lo:hi] = ~wrong[0, 1, 7, lo:hi]                      # flip every candidate of one group
    res = check.compare_selection(q, k, wrong, params, ref)
    assert not res["ok"] and res["disagree_outside_tol"] == res["disagree"] == hi - lo
    wrong = keys.clone()
    wrong[0, 0, 7, 0] = True                                             # initial region is never a candidate
    assert check.compare_selection(q, k, wrong, params, ref)["outside_candidates"] == 1


def test_gpu_check_dry_run(tmp_path, monkeypatch):
    check = _load_gpu_check(monkeypatch)
    assert check.main(["--tiny", "--max-n", "200", "--device", DEVICE, "--out", str(tmp_path)]) == 0
    assert "PASS" in (tmp_path / "gpu_check.md").read_text()
    assert math.isfinite(pd.read_json(tmp_path / "gpu_check.json", typ="series")["results"][0]["err_same_keys"])
