"""Tail rules (anchor/tail.py): the last N mod G rows, on the reference and the Triton paths."""
import math

import pytest
import torch

from anchor.ops import anchor_attention, run_stage1, sparse_attention
from anchor.params import AnchorParams
from anchor.reference import (
    anchor_attention_reference,
    anchor_selection_reference,
    attended_mask,
    dense_attention_reference,
    sparse_attention_reference,
)
from anchor.sparse_index import SparseIndex
from anchor.stats import causal_pair_count
from tests.anchor.helpers import DEVICE, assert_close_to_baseline, index_on, make_qkv, needs_triton, rel_err

ESTIMATION = {"select", "tail_select"}


def params(tail: str, theta: float = 0.5, **kw) -> AnchorParams:
    """Small regions (G = 32) so groups with candidates appear at a few hundred tokens."""
    base = dict(theta=theta, step=2, block_size=16, init_size=None, local_size=None, tail=tail, tail_block_size=16)
    return AnchorParams(**{**base, **kw})


def brute_force_tail_mask(q, k, p: AnchorParams, b: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``query_aware`` keys of tail rows ``[P, N)`` from the definitions (fp64), and the decision
    margins ``qbar . k_j * scale + theta - abar`` of the candidates (``nan`` elsewhere)."""
    N, D = q.shape[2], q.shape[3]
    G, I, W, tb = p.group, p.init, p.local, p.tail_block_size
    P = N - N % G
    kh = k[b, h // (q.shape[1] // k.shape[1])].double()
    s = (q[b, h].double() @ kh.T) * D ** -0.5                           # [N, N]
    mask = torch.zeros(N - P, N, dtype=torch.bool)
    for r, i in enumerate(range(P, N)):
        local_lo = max(I, max(0, (i // G + 1) * G - W))
        mask[r, :min(I, i + 1)] = True
        mask[r, local_lo:i + 1] = True
    anchor = s[P:].masked_fill(~mask, float("-inf")).amax(-1)          # [T]
    lo, hi = I, max(I, (P // G + 1) * G - W)
    margin = torch.full((N - P, N), float("nan"), dtype=torch.float64)
    for t0 in range(0, N - P, tb):
        blk = slice(t0, min(t0 + tb, N - P))
        qbar = q[b, h, P + t0:P + blk.stop].double().mean(0)
        m = (kh[lo:hi] @ qbar) * D ** -0.5 + p.theta - anchor[blk].mean()
        margin[blk, lo:hi] = m
        mask[blk, lo:hi] |= m >= 0
    return mask, margin


@pytest.mark.parametrize("N", [77, 150, 203])
def test_dense_tail_rows_equal_dense_attention(N):
    """Rows [P, N) are dense attention; rows [0, P) are AnchorAttention on the first P tokens."""
    p = params("dense")
    q, k, v = make_qkv(2, 6, 2, N, 16, torch.float32, seed=N, stripes=0.05)
    out, stats = anchor_attention_reference(q, k, v, p)
    P = N - N % p.group
    assert torch.equal(out[:, :, P:], dense_attention_reference(q[:, :, P:], k, v))
    assert rel_err(out[:, :, P:], dense_attention_reference(q, k, v)[:, :, P:]) < 1e-6
    prefix, prefix_stats = anchor_attention_reference(q[:, :, :P], k[:, :, :P], v[:, :, :P], p)
    assert torch.equal(out[:, :, :P], prefix)
    T = N - P
    assert (stats.pairs["tail"] == T * P + T * (T + 1) // 2).all()
    assert stats.causal_pairs == causal_pair_count(N, N)
    assert stats.dense_fallback == 0
    for stage in ("anchor", "select", "sparse"):
        assert torch.equal(stats.pairs[stage], prefix_stats.pairs[stage])


def test_dense_tail_on_whole_groups_equals_sparse():
    """N multiple of G: no tail, both rules give the same output and pairs (no pad==0 zeros)."""
    q, k, v = make_qkv(2, 4, 2, 160, 16, torch.float32, seed=5, stripes=0.05)
    dense_out, dense_stats = anchor_attention_reference(q, k, v, params("dense"))
    sparse_out, sparse_stats = anchor_attention_reference(q, k, v, params("sparse"))
    assert torch.equal(dense_out, sparse_out) and dense_out.abs().sum() > 0
    assert (dense_stats.pairs.pop("tail") == 0).all()
    assert all(torch.equal(dense_stats.pairs[s], sparse_stats.pairs[s]) for s in sparse_stats.pairs)
    assert dense_stats.extra == sparse_stats.extra


@pytest.mark.parametrize("N,init,local", [(150, None, None), (203, 16, 48)])
def test_query_aware_attends_regions_plus_own_block(N, init, local):
    """Tail rows attend exactly their stage-1 regions and their own block's selection (brute force),
    and the reference output is softmax over that set."""
    p = params("query_aware", theta=0.3, init_size=init, local_size=local)
    B, Hq, Hkv = 2, 4, 2
    q, k, v = make_qkv(B, Hq, Hkv, N, 16, torch.float32, seed=N, stripes=0.05)
    sel = anchor_selection_reference(q, k, p)
    out, stats = anchor_attention_reference(q, k, v, p)
    P = p.prefix_len(N)
    rows = torch.arange(P, N)
    n_sel = n_cand = 0
    for b in range(B):
        for h in range(Hq):
            want, margin = brute_force_tail_mask(q, k, p, b, h)
            got = attended_mask(p, sel.keys[b, h], rows, sel.tail.keys[b, h])
            flips = (got != want) & ~(margin.abs() < 1e-5)
            assert not flips.any(), (b, h)
            n_sel += int(margin.ge(0).sum())
            n_cand += int(margin.isfinite().sum())
            s = (q[b, h, P:].double() @ k[b, h // 2].double().T) * 0.25
            expect = s.masked_fill(~got, float("-inf")).softmax(-1) @ v[b, h // 2].double()
            assert rel_err(out[b, h, P:], expect) < 1e-6
            # pairs: stage-1 once (anchors and partial attention) + block rows x own selection
            stage1 = int(got.sum()) - int((got & margin.isfinite()).sum())
            assert stats.pairs["tail_anchor"][b, h] == stage1
            assert stats.pairs["tail_sparse"][b, h] == int((got & margin.isfinite()).sum())
    assert 0 < n_sel < n_cand, "the case should select some candidates, not all"
    n_blocks = math.ceil((N - P) / p.tail_block_size)
    lo, hi = p.candidate_range(P // p.group)
    assert (stats.pairs["tail_select"] == n_blocks * (hi - lo)).all()


def test_query_aware_blocks_select_independently():
    """A key only one tail block scores high is selected for that block alone (no OR over blocks)."""
    p = params("query_aware", theta=0.0)
    N, D = 150, 16
    q, k, v = make_qkv(1, 1, 1, N, D, torch.float32, seed=3)
    u = torch.zeros(D)
    u[0] = 1.0
    q[0, 0, 144:] += 20 * u                   # the last tail block (rows 144..149) points at u
    k[0, 0, 40] = 10 * u                      # a candidate key of the tail's group (group 4: [32, 128))
    sel = anchor_selection_reference(q, k, p)
    assert sel.tail.keys[0, 0, -1, 40] and not sel.tail.keys[0, 0, :-1, 40].any()


@pytest.mark.parametrize("tail", ["dense", "sparse", "query_aware"])
def test_degenerate_flag_and_upstream_ratio(tail):
    """theta=inf selects every candidate: the ratio is sum_g |cand_g| / (P*P/G // 2) per head; the
    degenerate flag is set when no group (nor the query-aware tail) has candidates."""
    B, H = 2, 4
    q, k, v = make_qkv(B, H, 2, 150, 16, torch.float32, seed=1)
    stats = anchor_attention_reference(q, k, v, params(tail, theta=math.inf))[1]
    # G = 32, init = local = 32: candidates of group g are [32, 32 g): 0, 0, 32, 64 (+ 96 for group 4)
    P, n_cand = {"dense": (128, 96), "query_aware": (128, 96), "sparse": (150, 192)}[tail]
    assert stats.extra["upstream_ratio"] == pytest.approx(B * H * n_cand / (B * H * P * P / 32 // 2))
    assert stats.extra["upstream_ratio"] == pytest.approx({"dense": 0.375, "query_aware": 0.375,
                                                           "sparse": 1536 / 2812}[tail])
    assert stats.extra["degenerate_dense"] == 0.0
    for N, flag in [(64, 1.0), (70, 1.0 if tail == "dense" else 0.0), (20, 1.0)]:
        q, k, v = make_qkv(1, 2, 1, N, 16, torch.float32, seed=N)
        out, stats = anchor_attention_reference(q, k, v, params(tail, theta=-math.inf))
        assert stats.extra["degenerate_dense"] == flag, N
        if flag:                               # dense by construction, even keeping nothing
            assert rel_err(out, dense_attention_reference(q, k, v)) < 1e-6
        attended = sum(x for st, x in stats.pairs.items() if st not in ESTIMATION)     # [B, H]
        assert bool((attended == stats.causal_pairs).all()) == bool(flag)
    assert "upstream_ratio" not in anchor_attention_reference(*make_qkv(1, 2, 1, 20, 16, torch.float32, 0),
                                                              params("dense"))[1].extra


@needs_triton
@pytest.mark.parametrize("tail", ["dense", "query_aware"])
@pytest.mark.parametrize("N,dtype", [(150, torch.float32), (139, torch.float16), (77, torch.float32)])
def test_triton_tail_rules_match_reference(tail, N, dtype):
    """GQA 3, B = 2, odd N (tails of 22, 11 and 13 rows; 77 also has no candidates in its groups)."""
    p = params(tail, theta=0.3)
    q, k, v = (x.to(DEVICE) for x in make_qkv(2, 3, 1, N, 32, dtype, seed=N, stripes=0.05))
    out, stats = anchor_attention(q, k, v, p, backend="triton")
    ref32, ref_stats = anchor_attention_reference(q.float(), k.float(), v.float(), p)
    assert_close_to_baseline(out, ref32, f"{tail} tail: triton vs reference")
    assert stats.pairs.keys() == ref_stats.pairs.keys()
    if dtype == torch.float32:                 # fp16 pooled scores may flip a tie
        assert all(torch.equal(stats.pairs[s], ref_stats.pairs[s]) for s in stats.pairs)
        assert stats.extra == pytest.approx(ref_stats.extra)
    P = p.prefix_len(N)
    if tail == "dense":
        assert_close_to_baseline(out[:, :, P:], dense_attention_reference(q.float(), k.float(), v.float())[:, :, P:],
                                 "dense tail rows vs dense")


@needs_triton
@pytest.mark.parametrize("tail,dense_if_complete", [("dense", False), ("dense", True), ("query_aware", False),
                                                    ("query_aware", True), ("sparse", True)])
def test_triton_keep_everything_equals_dense(tail, dense_if_complete):
    p = params(tail, theta=math.inf)
    q, k, v = (x.to(DEVICE) for x in make_qkv(1, 4, 2, 139, 32, torch.float16, seed=2))
    out, stats = anchor_attention(q, k, v, p, backend="triton", dense_if_complete=dense_if_complete)
    assert_close_to_baseline(out, dense_attention_reference(q.float(), k.float(), v.float()), f"{tail} theta=inf")
    assert stats.dense_fallback == int(dense_if_complete)
    P = p.prefix_len(139)
    if dense_if_complete:
        assert (stats.pairs["dense"] == causal_pair_count(P, P)).all()


@needs_triton
def test_kernels_write_into_views_of_a_larger_buffer():
    """run_stage1 and sparse_attention write through ``out=`` views (row and head slices) and leave
    the rest of the buffer alone; the kernels also read strided q/k/v views."""
    p = params("sparse", theta=0.5)
    q, k, v = (x.to(DEVICE) for x in make_qkv(1, 4, 2, 100, 32, torch.float32, seed=4))
    P = 64
    big = torch.full_like(q, 7.0)
    s1 = run_stage1(q[:, :, :P], k[:, :, :P], v[:, :, :P], p, out=big[:, :, :P])
    fresh = run_stage1(q[:, :, :P].contiguous(), k[:, :, :P].contiguous(), v[:, :, :P].contiguous(), p)
    assert s1.out.data_ptr() == big.data_ptr()
    assert torch.equal(big[:, :, :P], fresh.out) and (big[:, :, P:] == 7.0).all()
    mask = torch.rand(1, 2, 3, 100, generator=torch.Generator().manual_seed(0)) < 0.3
    mask[..., 0] = True
    index = SparseIndex.from_key_mask(mask, 16, 16)
    index = index_on(index, DEVICE)
    big = torch.full_like(q, 7.0)
    sparse_attention(q[:, 2:, P:], k[:, 1:], v[:, 1:], index, out=big[:, 2:, P:])
    ref = sparse_attention_reference(q[:, 2:, P:], k[:, 1:], v[:, 1:], index)
    assert rel_err(big[:, 2:, P:], ref) < 1e-5
    assert (big[:, :2] == 7.0).all() and (big[:, 2:, :P] == 7.0).all()
    with pytest.raises(ValueError, match="out must be"):
        sparse_attention(q[:, 2:, P:], k[:, 1:], v[:, 1:], index,
                         out=torch.empty(1, 2, 32, 36, device=DEVICE).transpose(-1, -2))
