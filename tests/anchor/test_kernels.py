"""Triton kernels against the PyTorch reference (CPU: Triton interpreter, fp32/fp16, small shapes)."""
import itertools
import math

import pytest
import torch

from anchor.ops import (
    anchor_attention,
    run_selection,
    run_stage1,
    selection_key_mask,
    sparse_attention,
)
from anchor.params import AnchorParams
from anchor.reference import (
    LOG2E,
    anchor_attention_reference,
    anchor_selection_reference,
    dense_attention_reference,
    sparse_attention_reference,
)
from anchor.sparse_index import SparseIndex, index_from_counts
from tests.anchor.helpers import DEVICE, assert_close_to_baseline, index_on, make_qkv, needs_triton, rel_err

pytestmark = needs_triton

# (B, Hq, Hkv, N, D, dtype, block, step, init, local, theta, stripes)
CASES = [
    pytest.param(1, 4, 4, 200, 32, torch.float32, 16, 2, None, None, 0.5, 0.05, id="B1-gqa1-N200-fp32"),
    pytest.param(2, 6, 2, 157, 32, torch.float16, 16, 2, None, 48, 1.0, 0.05, id="B2-gqa3-N157-fp16-local48"),
    pytest.param(1, 4, 1, 301, 64, torch.float32, 32, 2, 32, None, 2.0, 0.02, id="B1-gqa4-N301-D64-block32"),
    pytest.param(2, 4, 1, 96, 16, torch.float16, 16, 2, 16, None, 0.2, 0.1, id="B2-gqa4-N96-exact-groups"),
    pytest.param(1, 3, 1, 133, 48, torch.float32, 16, 3, None, 64, 4.0, 0.05, id="B1-gqa3-N133-D48-step3"),
]


def _selection_disagreements(q, k, p, got: torch.Tensor, want: torch.Tensor, tol: float) -> int:
    """Keys where kernel and reference disagree although the decision margin exceeds ``tol``."""
    diff = (got != want).nonzero().tolist()
    if not diff:
        return 0
    sel = anchor_selection_reference(q, k, p)
    bs, D = p.block_size, q.shape[-1]
    rep = q.shape[1] // k.shape[1]
    bad = 0
    for b, h, g, j in diff:
        blocks = range(g * p.step, min((g + 1) * p.step, math.ceil(q.shape[2] / bs)))
        qbar = torch.stack([q[b, h, r * bs:(r + 1) * bs].float().mean(0) for r in blocks]).to(q.dtype).float()
        margin = (qbar @ k[b, h // rep, j].float()) * p.scale(D) + p.theta - sel.pooled_anchor[b, h, list(blocks)]
        bad += int(margin.abs().min() > tol)
    return bad


@pytest.mark.parametrize("B,Hq,Hkv,N,D,dtype,block,step,init,local,theta,stripes", CASES)
def test_anchor_kernels_match_reference(B, Hq, Hkv, N, D, dtype, block, step, init, local, theta, stripes):
    p = AnchorParams(theta=theta, step=step, block_size=block, init_size=init, local_size=local, tail="sparse",
                     tail_block_size=16)
    q, k, v = (x.to(DEVICE) for x in make_qkv(B, Hq, Hkv, N, D, dtype, seed=N, stripes=stripes))
    ref_sel = anchor_selection_reference(q, k, p)

    # stage 1: anchors and log-sum-exp
    s1 = run_stage1(q, k, v, p)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(s1.abar / LOG2E, ref_sel.pooled_anchor, atol=tol, rtol=0)

    # stage 2: selection (ties within the dtype's resolution may flip) and its compaction
    sel = run_selection(q, k, s1, p)
    got = selection_key_mask(sel, N)
    assert _selection_disagreements(q, k, p, got, ref_sel.keys, tol) == 0
    assert ref_sel.keys.any(), "case should select something"
    expect_index = SparseIndex.from_key_mask(got, p.block_size, p.group)
    assert torch.equal(sel.index.full_cnt, expect_index.full_cnt)
    assert torch.equal(sel.index.col_cnt, expect_index.col_cnt)
    assert torch.equal(sel.index.full_ids, expect_index.full_ids)
    assert torch.equal(sel.index.col_ids, expect_index.col_ids)

    # all stages: output and statistics
    out, stats = anchor_attention(q, k, v, p, backend="triton")
    ref, ref_stats = anchor_attention_reference(q, k, v, p)
    ref32, _ = anchor_attention_reference(q.float(), k.float(), v.float(), p)
    assert not out.isnan().any()
    if torch.equal(got, ref_sel.keys):
        assert_close_to_baseline(out, ref32, "anchor vs reference")
        assert torch.equal(stats.total_pairs(), ref_stats.total_pairs())
    else:   # a tie flipped: outputs differ by that key only, check against the reference loosely
        assert rel_err(out, ref) < 5e-2
    assert 0 < stats.density < 1.5


@pytest.mark.parametrize("N,dtype", [(1, torch.float32), (70, torch.float16), (128, torch.float32)])
@pytest.mark.parametrize("dense_if_complete", [False, True])
def test_keep_everything_equals_dense(N, dtype, dense_if_complete):
    p = AnchorParams(theta=math.inf, step=2, block_size=16, init_size=None, local_size=None, tail="sparse",
                     tail_block_size=16)
    q, k, v = (x.to(DEVICE) for x in make_qkv(1, 4, 2, N, 32, dtype, seed=7))
    out, stats = anchor_attention(q, k, v, p, backend="triton", dense_if_complete=dense_if_complete)
    ref32 = dense_attention_reference(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "keep-everything vs dense")
    took_dense = dense_if_complete and N > 2 * p.group
    assert stats.dense_fallback == int(took_dense)
    assert ("dense" in stats.pairs) == took_dense


def test_stage1_state_reproduces_its_attention():
    """With theta=-inf nothing is selected: the output is attention over the stage-1 regions."""
    p = AnchorParams(theta=-math.inf, step=2, block_size=16, init_size=16, local_size=None, tail="sparse",
                     tail_block_size=16)
    q, k, v = (x.to(DEVICE) for x in make_qkv(1, 2, 1, 180, 32, torch.float32, seed=9))
    out, stats = anchor_attention(q, k, v, p, backend="triton")
    ref, _ = anchor_attention_reference(q, k, v, p)
    assert rel_err(out, ref) < 1e-5
    assert stats.pairs["sparse"].sum() == 0


@pytest.mark.parametrize("Lq,Lk,causal,dtype", [(90, 90, True, torch.float32), (40, 100, True, torch.float16),
                                                (64, 64, False, torch.float32)])
def test_sparse_attention_matches_reference(Lq, Lk, causal, dtype):
    """The shared sparse kernel (fresh start) on a random tile + column index."""
    g = torch.Generator().manual_seed(Lq)
    q, _, _ = make_qkv(2, 4, 2, Lq, 32, dtype, seed=1)
    _, k, v = make_qkv(2, 4, 2, Lk, 32, dtype, seed=2)
    rows_per_list, tile = 32, 16
    n_lists = math.ceil(Lq / rows_per_list)
    mask = torch.rand(2, 4, n_lists, Lk, generator=g) < 0.3
    mask[..., 16:32] = True                       # one whole tile per list
    mask[..., 0] = True                           # every row sees at least key 0
    index = SparseIndex.from_key_mask(mask, tile, rows_per_list)
    assert index.full_cnt.min() >= 1 and index.col_cnt.min() >= 1
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    index = index_on(index, DEVICE)
    out, _ = sparse_attention(q, k, v, index, causal=causal)
    ref32 = sparse_attention_reference(q.float(), k.float(), v.float(), index, causal=causal)
    assert_close_to_baseline(out, ref32, "sparse_attention vs reference")


def _unaligned_index(B, H, n_lists, Lk, tile, rows_per_list, g):
    """A ``tile_unit = 1`` index with random unaligned, non-overlapping tiles and columns outside
    them (key 0 always), and the same keys as bool ``[B, H, n_lists, Lk]`` built independently."""
    mask = torch.zeros(B, H, n_lists, Lk, dtype=torch.bool)
    tiles, cols = [], []
    for b, h, lst in itertools.product(range(B), range(H), range(n_lists)):
        starts, pos = [], 0
        while len(starts) < 4:
            start = pos + int(torch.randint(0, 30, (1,), generator=g))
            if start + tile > Lk:
                break
            starts.append(start)
            mask[b, h, lst, start:start + tile] = True
            pos = start + tile
        free = ~mask[b, h, lst] & (torch.rand(Lk, generator=g) < 0.15)
        free[0] = not mask[b, h, lst, 0]
        mask[b, h, lst] |= free
        tiles.append(starts)
        cols.append(free.nonzero().flatten().tolist())
    index = index_from_counts(torch.tensor([len(t) for t in tiles]).reshape(B, H, n_lists),
                              torch.tensor([len(c) for c in cols]).reshape(B, H, n_lists),
                              tile, rows_per_list, tile_unit=1)
    index.full_ids.copy_(torch.tensor(sum(tiles, [])))
    index.col_ids.copy_(torch.tensor(sum(cols, [])))
    return index, mask


@pytest.mark.parametrize("Lq,Lk,causal,dtype", [(70, 150, True, torch.float32), (50, 50, False, torch.float16),
                                                (96, 133, True, torch.float16)])
def test_sparse_attention_unaligned_tiles(Lq, Lk, causal, dtype):
    """``tile_unit = 1`` (tiles starting at any key): kernel, reference and masked dense agree."""
    g = torch.Generator().manual_seed(Lk)
    B, Hq, Hkv, tile, rows_per_list = 1, 4, 2, 16, 32
    index, mask = _unaligned_index(B, Hq, math.ceil(Lq / rows_per_list), Lk, tile, rows_per_list, g)
    assert (index.full_ids % tile != 0).sum() >= 3 and index.col_cnt.min() >= 1
    q, _, _ = make_qkv(B, Hq, Hkv, Lq, 32, dtype, seed=3)
    _, k, v = make_qkv(B, Hq, Hkv, Lk, 32, dtype, seed=4)
    assert torch.equal(index.to_key_mask(Lk), mask)
    # masked dense attention, fp32: rows see their list's keys (and, causally, keys up to their position)
    allowed = mask[:, :, torch.arange(Lq) // rows_per_list]                   # [B, Hq, Lq, Lk]
    if causal:
        allowed &= torch.arange(Lk)[None, :] <= torch.arange(Lk - Lq, Lk)[:, None]
    kf, vf = (x.float().repeat_interleave(Hq // Hkv, 1) for x in (k, v))      # [B, Hq, Lk, D]
    scores = (q.float() @ kf.transpose(-1, -2)) * 32 ** -0.5
    dense32 = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vf
    ref32 = sparse_attention_reference(q.float(), k.float(), v.float(), index, causal=causal)
    assert rel_err(ref32, dense32) < 1e-5
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    index = index_on(index, DEVICE)
    out, _ = sparse_attention(q, k, v, index, causal=causal)
    assert_close_to_baseline(out.cpu(), dense32, "sparse_attention (unaligned tiles) vs masked dense")


def test_bad_inputs_raise_clear_errors():
    p = AnchorParams(theta=1.0, step=2, block_size=16, init_size=None, local_size=None, tail="dense",
                     tail_block_size=16)
    q, k, v = make_qkv(1, 3, 2, 40, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        anchor_attention(q, k, v, p)
    q, k, v = make_qkv(1, 4, 2, 40, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="Lq == Lk"):
        anchor_attention(q[:, :, :10], k, v, p)
    with pytest.raises(ValueError, match="dtypes"):
        anchor_attention(q.half(), k, v, p)
    with pytest.raises(ValueError, match="local_size"):
        AnchorParams(theta=1.0, step=2, block_size=16, init_size=None, local_size=16, tail="dense", tail_block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        AnchorParams(theta=1.0, step=2, block_size=24, init_size=None, local_size=None, tail="dense",
                     tail_block_size=16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's bf16 (CPU tensors)")
def test_bf16_under_the_interpreter_is_refused():
    """The interpreter's bf16 returns garbage: every Triton entry point refuses it."""
    p = AnchorParams(theta=1.0, step=2, block_size=16, init_size=None, local_size=None, tail="sparse",
                     tail_block_size=16)
    q, k, v = make_qkv(1, 2, 1, 70, 16, torch.bfloat16, seed=0)
    index = SparseIndex.from_key_mask(torch.ones(1, 2, 5, 70, dtype=torch.bool), 16, 16)
    calls = {"anchor_attention": lambda: anchor_attention(q, k, v, p, backend="triton"),
             "run_stage1": lambda: run_stage1(q, k, v, p),
             "sparse_attention": lambda: sparse_attention(q, k, v, index)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match="bf16"):
            call()
    out, _ = anchor_attention(q, k, v, p, backend="torch")             # the reference takes bf16
    assert out.dtype == torch.bfloat16 and out.isfinite().all()


def test_autograd_through_triton_is_refused():
    """The kernels are forward-only: an input requiring grad raises instead of silently dropping
    the graph; under no_grad the call runs, and the torch backend differentiates."""
    p = AnchorParams(theta=1.0, step=2, block_size=16, init_size=None, local_size=None, tail="dense",
                     tail_block_size=16)
    q, k, v = (x.to(DEVICE) for x in make_qkv(1, 2, 1, 70, 16, torch.float32, seed=0))
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="prefill inference only"):
        anchor_attention(q, k, v, p, backend="triton")
    index = SparseIndex.from_key_mask(torch.ones(1, 2, 5, 70, dtype=torch.bool, device=DEVICE), 16, 16)
    with pytest.raises(RuntimeError, match="prefill inference only"):
        sparse_attention(q, k, v, index)
    with torch.no_grad():
        assert anchor_attention(q, k, v, p, backend="triton")[0].grad_fn is None
    out, _ = anchor_attention(q.cpu(), k.cpu(), v.cpu(), p, backend="torch")
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_fp32_inputs_use_ieee_dots():
    """fp32 kernels compute the fp32 references' function (GPU dots would otherwise round to TF32)."""
    from anchor.ops import dot_precision

    assert dot_precision(torch.zeros(1, dtype=torch.float32)) == "ieee"
    assert {dot_precision(torch.zeros(1, dtype=t)) for t in (torch.float16, torch.bfloat16)} == {"tf32"}
