"""Dry runs of the kernel benchmark and the GPU check at tiny sizes (Triton interpreter on CPU)."""
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


def test_kernels_benchmark_writes_csv_and_markdown(tmp_path):
    from benchmarks.kernels import bench as kernels

    argv = ["--lengths", "96", "--cases", "random,structured", "--stripe-fractions", "0.1", "--thetas", "12",
            "--theta-sweep", "8", "--sweep-length", "96", "--block-size", "16", "--step", "2", "--hq", "2",
            "--hkv", "1", "--head-dim", "16", "--dtype", DTYPE, "--device", DEVICE, "--cpu-reps", "1",
            "--warmup-ms", "1", "--rep-ms", "2", "--out", str(tmp_path)]
    rows = kernels.main(argv)
    assert len(rows) == 4                           # 2 inputs x thetas {8, 12} (sweep at this length)
    csv = next(tmp_path.glob("kernels_*.csv"))
    md = next(tmp_path.glob("kernels_*.md"))
    df = pd.read_csv(csv)
    assert df.shape[0] == 4 and set(df["case"]) == {"random", "structured"}
    for col in kernels.TABLE_COLUMNS:
        assert col in df.columns, col
    assert (df["err_ours"] < 1e-2).all() and (df["density"] > 0).all()
    text = md.read_text()
    assert "python -m benchmarks.kernels.bench --lengths 96" in text and "| N | case |" in text
    assert "torch" in text and "triton" in text


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
    params = AnchorParams(theta=12.0, step=2, block_size=16, init_size=None, local_size=None)
    keys = anchor_selection_reference(q, k, params).keys
    assert check.compare_selection(q, k, keys, params)["ok"]
    lo, hi = params.candidate_range(7)
    wrong = keys.clone()
    wrong[0, 1, 7, lo:hi] = ~wrong[0, 1, 7, lo:hi]                      # flip every candidate of one group
    res = check.compare_selection(q, k, wrong, params)
    assert not res["ok"] and res["disagree_outside_tol"] == res["disagree"] == hi - lo
    wrong = keys.clone()
    wrong[0, 0, 7, 0] = True                                             # initial region is never a candidate
    assert check.compare_selection(q, k, wrong, params)["outside_candidates"] == 1


def test_gpu_check_dry_run(tmp_path, monkeypatch):
    check = _load_gpu_check(monkeypatch)
    assert check.main(["--tiny", "--max-n", "200", "--device", DEVICE, "--out", str(tmp_path)]) == 0
    assert "PASS" in (tmp_path / "gpu_check.md").read_text()
    assert math.isfinite(pd.read_json(tmp_path / "gpu_check.json", typ="series")["results"][0]["err_same_keys"])
