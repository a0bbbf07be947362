"""The ``anchor`` and ``anchor_zero`` methods: configs, chunked prefill, attended sets, the ablation."""
import math

import pytest
import torch
import yaml

from anchor.params import AnchorParams
from anchor.reference import (
    anchor_attention_reference,
    anchor_selection_reference,
    attended_mask,
    dense_attention_reference,
)
from anchor.stats import causal_pair_count
from methods.anchor import AnchorMethod, AnchorZeroMethod
from methods.registry import get_method
from tests.anchor.helpers import assert_close_to_baseline, make_qkv
from tests.methods.helpers import needs_triton

SMALL = dict(step=2, block_size=16, init_size=None, local_size=None, tail_block_size=16)


def test_configs_build_and_share_keys(repo_root):
    anchor_cfg = yaml.safe_load((repo_root / "conf/method/anchor.yaml").read_text())
    zero_cfg = yaml.safe_load((repo_root / "conf/method/anchor_zero.yaml").read_text())
    assert set(anchor_cfg) == set(zero_cfg)
    anchor, zero = get_method(anchor_cfg), get_method(zero_cfg)
    assert type(anchor) is AnchorMethod and type(zero) is AnchorZeroMethod
    assert (anchor.params.theta, anchor.params.step, anchor.params.block_size, anchor.params.group) == (12.0, 16, 128, 2048)
    assert (anchor.params.tail, zero.params.tail) == ("dense", "dense")      # the authors' wrapper
    assert anchor.params.tail_block_size == zero.params.tail_block_size == 16
    with pytest.raises(TypeError, match="anchor"):
        get_method({**anchor_cfg, "thetaa": 1.0})


def test_zero_anchor_selection_matches_brute_force():
    """Key j is kept for group g iff some pooled row r of g has qbar_r . k_j * scale + theta >= 0."""
    q, k, _ = make_qkv(2, 4, 2, 150, 16, torch.float32, seed=8)
    p = AnchorParams(theta=0.1, **{**SMALL, "init_size": 16}, tail="sparse")
    keys = anchor_selection_reference(q, k, p, zero_anchor=True).keys
    for b in range(2):
        for h in range(4):
            for grp in range(keys.shape[2]):
                lo, hi = p.candidate_range(grp)
                want = torch.zeros(150, dtype=torch.bool)
                for r in range(grp * 2, min(grp * 2 + 2, math.ceil(150 / 16))):
                    qbar = q[b, h, r * 16:(r + 1) * 16].mean(0)
                    want[lo:hi] |= k[b, h // 2, lo:hi] @ qbar * 0.25 + 0.1 >= 0
                assert torch.equal(keys[b, h, grp], want), (b, h, grp)
    assert keys.any() and not keys[:, :, 3:].all()


@needs_triton
@pytest.mark.parametrize("cls,tail", [(AnchorMethod, "dense"), (AnchorMethod, "sparse"),
                                      (AnchorMethod, "query_aware"), (AnchorZeroMethod, "query_aware")])
def test_method_triton_matches_reference_and_attended(cls, tail):
    q, k, v = make_qkv(1, 4, 2, 150, 32, torch.float32, seed=11, stripes=0.05)
    method = cls(theta=0.5, **SMALL, tail=tail, dense_if_complete=False, backend="triton")
    out, stats = method(q, k, v)
    ref, ref_stats = anchor_attention_reference(q, k, v, method.params, zero_anchor=cls.zero_anchor)
    assert_close_to_baseline(out, ref, f"{cls.name} triton vs reference")
    assert torch.equal(stats.total_pairs(), ref_stats.total_pairs())
    sel = anchor_selection_reference(q, k, method.params, zero_anchor=cls.zero_anchor)
    rows = torch.arange(150)
    for backend in ("triton", "torch"):
        method.backend = backend
        attended = method.attended(q, k, v)
        for h in range(4):
            tail_keys = None if sel.tail is None else sel.tail.keys[0, h]
            want = attended_mask(method.params, sel.keys[0, h], rows, tail_keys)
            assert torch.equal(attended.row_mask(0, h, rows), want), (backend, h)
            if tail == "dense":                    # rows past the last whole group see every causal key
                assert want[128:].sum() == causal_pair_count(150, 150) - causal_pair_count(128, 128)


def test_chunked_prefill_runs_dense_and_counts_it():
    q, k, v = make_qkv(2, 4, 2, 90, 16, torch.float32, seed=2)
    for cls in (AnchorMethod, AnchorZeroMethod):
        out, stats = cls(theta=1.0, **SMALL, tail="dense", dense_if_complete=False, backend="torch")(q[:, :, 50:], k, v)
        torch.testing.assert_close(out, dense_attention_reference(q[:, :, 50:], k, v), rtol=1e-5, atol=1e-5)
        assert stats.dense_fallback == 1 and stats.density == pytest.approx(1.0)


@pytest.mark.parametrize("tail", ["dense", "sparse", "query_aware"])
def test_keep_everything_equals_dense_for_both(tail):
    q, k, v = make_qkv(1, 4, 4, 90, 16, torch.float32, seed=3)
    for cls in (AnchorMethod, AnchorZeroMethod):
        out, stats = cls(theta=math.inf, **SMALL, tail=tail, dense_if_complete=False, backend="torch")(q, k, v)
        torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
        assert stats.dense_fallback == 0
