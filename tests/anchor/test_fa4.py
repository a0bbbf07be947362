"""FA4 glue (anchor/kernels/fa4*.py) and the LSE merge (anchor/kernels/lse_merge.py).

CPU: the SparseIndex -> FA4 block-list converter and the shape-only patterns against token-level
masks, the fp32 reference of the FA4 functions, the merge kernel (interpreter) against its
reference and against attention over the union, and the dispatch errors. GPU (``-m gpu``, FA4
installed, sm90): FA4 dense and block sparsity against the fp32 references, outputs and LSE.
"""
from __future__ import annotations

import math

import pytest
import torch

from anchor.kernels import fa4 as fa4_mod
from anchor.kernels.fa4_blocks import (
    KV_BLOCK,
    blocks_attention_reference,
    blocks_from_index,
    blocks_from_tile_mask,
    causal_blocks,
    index_fa4_problem,
    stage1_blocks,
)
from anchor.kernels.lse_merge import lse_log2_to_natural, lse_natural_to_log2, merge_partials, merge_partials_reference
from anchor.params import AnchorParams
from anchor.reference import sparse_attention_reference, stage1_mask
from anchor.sparse_index import SparseIndex
from tests.anchor.helpers import make_qkv, rel_err

# (Lq, Lk, rows_per_list): aligned, chunked prefill with an unaligned offset and a partial last
# key tile, lists of two query blocks with a short last list, a single short query block.
CASES = [(384, 384, 128), (200, 453, 128), (300, 811, 256), (90, 300, 256)]


def random_index(B, H, Lq, Lk, R, seed):
    """``(index, tile mask [B, H, L, T])``: random whole 128-key tiles per list (the diagonal tile
    of some lists, one empty list), stored as ``SparseIndex.from_key_mask`` stores them (a
    selected partial last tile becomes columns)."""
    g = torch.Generator().manual_seed(seed)
    L, T = math.ceil(Lq / R), math.ceil(Lk / KV_BLOCK)
    tiles = torch.rand(B, H, L, T, generator=g) < 0.4
    last = (torch.clamp(torch.arange(L) * R + R, max=Lq) - 1 + Lk - Lq) // KV_BLOCK     # diagonal tile
    tiles[:, 0, torch.arange(L), last] = True
    tiles[0, -1, 0] = False                                                             # an empty list
    keys = tiles[..., torch.arange(Lk) // KV_BLOCK]                                     # [B, H, L, Lk]
    return SparseIndex.from_key_mask(keys, KV_BLOCK, R), tiles


def index_key_mask(index, Lq, Lk):
    """bool ``[B, H, Lq, Lk]``: the index's keys per row with the causal mask (the kernels' function)."""
    rows = torch.arange(Lq)
    keys = index.to_key_mask(Lk)[:, :, rows // index.rows_per_list]
    return keys & (torch.arange(Lk)[None, :] <= (rows + Lk - Lq)[:, None])


@pytest.mark.parametrize("Lq,Lk,R", CASES)
def test_blocks_from_index_have_the_index_key_sets(Lq, Lk, R):
    index, _ = random_index(2, 3, Lq, Lk, R, seed=Lq + Lk)
    assert index_fa4_problem(index, Lk) is None
    blocks = blocks_from_index(index, q_len=Lq, k_len=Lk)
    M, T = math.ceil(Lq / 128), math.ceil(Lk / KV_BLOCK)
    assert blocks.mask_cnt.shape == blocks.full_cnt.shape == (2, 3, M)
    assert blocks.mask_idx.shape[-1] <= T and blocks.mask_cnt.dtype == torch.int32
    assert torch.equal(blocks.key_mask(torch.arange(Lq), Lq, Lk), index_key_mask(index, Lq, Lk))
    # full blocks need no mask, mask blocks need it and keep a visible pair; ids ascending
    first = torch.arange(M) * 128 + Lk - Lq
    last = torch.clamp(torch.arange(M) * 128 + 128, max=Lq) - 1 + Lk - Lq
    for cnt, idx, full in ((blocks.full_cnt, blocks.full_idx, True), (blocks.mask_cnt, blocks.mask_idx, False)):
        for b, h, m in torch.nonzero(cnt > 0).tolist():
            ids = idx[b, h, m, : cnt[b, h, m]]
            assert torch.all(ids[1:] > ids[:-1])
            ends = ids * KV_BLOCK + KV_BLOCK - 1
            if full:
                assert torch.all(ends <= first[m]) and torch.all(ends < Lk)
            else:
                assert torch.all(ids * KV_BLOCK <= last[m]) and torch.all(ends > first[m])


def test_blocks_from_index_equal_blocks_from_tile_mask():
    Lq, Lk = 200, 453
    index, tiles = random_index(1, 2, Lq, Lk, 128, seed=3)
    a = blocks_from_index(index, q_len=Lq, k_len=Lk)
    b = blocks_from_tile_mask(tiles, q_len=Lq, k_len=Lk)
    for x, y in ((a.mask_cnt, b.mask_cnt), (a.full_cnt, b.full_cnt), (a.mask_idx, b.mask_idx), (a.full_idx, b.full_idx)):
        assert torch.equal(x, y)


def test_index_fa4_problem_names_what_fa4_cannot_run():
    keys = torch.ones(1, 1, 2, 256, dtype=torch.bool)
    assert "128-key tiles" in index_fa4_problem(SparseIndex.from_key_mask(keys, 64, 128), 256)
    assert "multiple of 128 rows" in index_fa4_problem(SparseIndex.from_key_mask(keys, 128, 64), 256)
    shifted = SparseIndex.from_key_mask(keys, 128, 128)
    unaligned = SparseIndex(**{**shifted.__dict__, "tile_unit": 1})
    assert "aligned" in index_fa4_problem(unaligned, 256)
    single = torch.zeros(1, 1, 2, 300, dtype=torch.bool)
    single[..., 5] = True                                              # one gathered key
    assert "single keys" in index_fa4_problem(SparseIndex.from_key_mask(single, 128, 128), 300)
    tail = torch.zeros(1, 1, 2, 300, dtype=torch.bool)
    tail[..., 256:290] = True                                          # part of the partial tile only
    assert "single keys" in index_fa4_problem(SparseIndex.from_key_mask(tail, 128, 128), 300)
    with pytest.raises(ValueError, match="single keys"):
        blocks_from_index(SparseIndex.from_key_mask(tail, 128, 128), q_len=256, k_len=300)


@pytest.mark.parametrize("n,init,step,local", [(1000, 256, 2, 384), (2100, None, 4, None), (130, 128, 1, 128)])
def test_stage1_blocks_are_the_stage1_mask(n, init, step, local):
    params = AnchorParams(theta=12.0, step=step, block_size=128, init_size=init, local_size=local,
                          tail="dense", tail_block_size=16)
    blocks = stage1_blocks(n, init=params.init, group=params.group, local=params.local, device="cpu")
    rows = torch.arange(n)
    assert torch.equal(blocks.key_mask(rows, n, n)[0, 0], stage1_mask(params, rows, n))
    assert blocks.mask_cnt.shape[:2] == (1, 1)                         # shared by every head
    with pytest.raises(ValueError, match="multiples of 128"):
        stage1_blocks(n, init=64, group=params.group, local=params.local, device="cpu")


def test_causal_blocks_are_causal_and_cached():
    Lq, Lk = 300, 700
    blocks = causal_blocks(Lq, Lk, "cpu")
    rows = torch.arange(Lq)
    assert torch.equal(blocks.key_mask(rows, Lq, Lk)[0, 0], torch.arange(Lk)[None, :] <= (rows + Lk - Lq)[:, None])
    assert causal_blocks(Lq, Lk, torch.device("cpu")) is blocks
    assert int(blocks.full_cnt.sum() + blocks.mask_cnt.sum()) == sum(
        min(math.ceil(Lk / 128), (min(m * 128 + 128, Lq) - 1 + Lk - Lq) // 128 + 1) for m in range(3))


def test_blocks_reference_matches_sparse_reference_and_logsumexp():
    Lq, Lk, R = 200, 453, 128
    index, _ = random_index(2, 4, Lq, Lk, R, seed=7)
    q, k, v = make_qkv(2, 4, 2, Lk, 32, torch.float32, seed=1)
    q = q[:, :, Lk - Lq:]
    blocks = blocks_from_index(index, q_len=Lq, k_len=Lk)
    out, lse = blocks_attention_reference(q, k, v, blocks, sm_scale=0.3, chunk=64)
    ref = sparse_attention_reference(q, k, v, index, sm_scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    scores = torch.einsum("bhid,bhjd->bhij", q, k.repeat_interleave(2, 1)) * 0.3
    want = scores.masked_fill(~index_key_mask(index, Lq, Lk), float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, want, rtol=1e-5, atol=1e-5)
    assert torch.isneginf(lse[0, -1, :128]).all() and (out[0, -1, :128] == 0).all()    # the empty list


def partials(q, k, v, masks, scale):
    """fp32 ``(out, lse)`` over each key mask ``[Lq, Lk]`` (natural log; empty rows 0, -inf)."""
    scores = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * scale
    res = []
    for mask in masks:
        s = scores.masked_fill(~mask, float("-inf"))
        res.append((s.softmax(-1).nan_to_num(0.0) @ v.float(), s.logsumexp(-1)))
    return res


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("base2", [False, True])
def test_merge_kernel_matches_reference_and_union(dtype, base2):
    B, H, N, D = 2, 3, 70, 24
    q, k, v = make_qkv(B, H, H, N, D, torch.float32, seed=2)
    g = torch.Generator().manual_seed(5)
    first = torch.rand(N, N, generator=g) < 0.5
    first[:10] = False                                                 # rows empty in the first part
    second = ~first
    second[:5] = False                                                 # rows empty in both parts
    (o1, l1), (o2, l2) = partials(q, k, v, (first, second), 0.25)
    union, lse_u = partials(q, k, v, (first | second,), 0.25)[0]
    o1 = o1.to(dtype)
    o2 = o2.to(dtype).transpose(1, 2).contiguous().transpose(1, 2)    # other strides
    o1[:, :, :10] = float("nan")                                       # ignored where lse1 = -inf
    if base2:
        l1, l2, lse_u = lse_natural_to_log2(l1), lse_natural_to_log2(l2), lse_natural_to_log2(lse_u)
    ref_out, ref_lse = merge_partials_reference(o1, l1, o2, l2, base2=base2)
    out, lse = merge_partials(o1, l1, o2, l2, base2=base2, backend="triton")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref_out, rtol=1e-3 if dtype == torch.float16 else 1e-5, atol=1e-3 if dtype == torch.float16 else 1e-6)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    assert (out[:, :, :5] == 0).all() and torch.isneginf(lse[:, :, :5]).all()
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(ref_out, union, rtol=tol, atol=tol)
    torch.testing.assert_close(ref_lse, lse_u, rtol=1e-5, atol=1e-5)
    back = lse_log2_to_natural(lse_natural_to_log2(lse_u))
    torch.testing.assert_close(back, lse_u)


def test_merge_in_place_and_bad_shapes():
    o1, o2 = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    l1, l2 = torch.randn(1, 2, 9), torch.randn(1, 2, 9)
    want, _ = merge_partials_reference(o1, l1, o2, l2)
    out, _ = merge_partials(o1, l1, o2, l2, backend="triton", out=o1)
    assert out is o1
    torch.testing.assert_close(o1, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fp32"):
        merge_partials(o1, l1.half(), o2, l2)
    with pytest.raises(ValueError, match="LSEs must be"):
        merge_partials(o1, l1[..., :3], o2, l2)


def test_fa4_functions_explain_what_is_missing(monkeypatch):
    q, k, v = make_qkv(1, 4, 2, 64, 64, torch.bfloat16, seed=0)
    with pytest.raises(ValueError, match="needs CUDA"):
        fa4_mod.fa4_dense(q, k, v)
    index, _ = random_index(1, 4, 64, 64, 128, seed=0)
    with pytest.raises(ValueError, match="needs CUDA"):
        fa4_mod.fa4_sparse_attention(q, k, v, index)
    assert not fa4_mod.fa4_available("cpu")
    # Pretend the device is fine: a missing package names the extra and the GPU staging.
    monkeypatch.setattr(fa4_mod, "_device_problem", lambda device, archs: None)
    monkeypatch.setattr(fa4_mod, "_import_problem", lambda: "ModuleNotFoundError: No module named 'flash_attn'")
    with pytest.raises(ImportError, match=r'pip install -e "\.\[fa4\]".*fa4-wheels\.sh'):
        fa4_mod.fa4_dense(q, k, v)
    with pytest.raises(ImportError, match=r"\.\[fa4\]"):
        fa4_mod.fa4_sparse_attention(q, k, v, index)
    monkeypatch.setattr(fa4_mod, "_import_problem", lambda: None)
    monkeypatch.setattr(fa4_mod, "_dense_max_head_dim", lambda device: 256)
    assert "fp16/bf16" in fa4_mod.fa4_dense_problem(q.float())
    assert "head_dim" in fa4_mod.fa4_dense_problem(torch.empty(1, 1, 4, 12, dtype=torch.bfloat16))
    assert "128-key tiles" in fa4_mod.fa4_sparse_problem(q, SparseIndex.from_key_mask(
        torch.ones(1, 4, 1, 64, dtype=torch.bool), 64, 128), 64)


# ---------------------------------------------------------------- GPU (FA4 installed, sm90) --

def _needs_fa4():
    if not torch.cuda.is_available() or not fa4_mod.fa4_available("cuda"):
        pytest.skip("needs FlashAttention-4 on a CUDA sm90/sm100 device")


def _lse_close(lse, want):
    finite = torch.isfinite(want)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want))
    torch.testing.assert_close(lse[finite], want[finite], rtol=1e-4, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("Hq,Hkv,D,dtype", [(32, 8, 128, torch.bfloat16), (14, 2, 64, torch.float16)])
@pytest.mark.parametrize("Lq,Lk", [(1000, 1000), (333, 1291)])
def test_fa4_dense_matches_fp32_reference(Hq, Hkv, D, dtype, Lq, Lk):
    _needs_fa4()
    q, k, v = (t.cuda() for t in make_qkv(2, Hq, Hkv, Lk, D, dtype, seed=0))
    q = q[:, :, Lk - Lq:]
    out, lse = fa4_mod.fa4_dense(q, k, v, sm_scale=D ** -0.5, return_lse=True)
    ref, ref_lse = blocks_attention_reference(q, k, v, causal_blocks(Lq, Lk, q.device), sm_scale=D ** -0.5)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert rel_err(out, ref) <= 2 * rel_err(ref.to(dtype), ref) + 1e-3
    _lse_close(lse, ref_lse)


@pytest.mark.gpu
@pytest.mark.parametrize("Lq,Lk,R", CASES)
def test_fa4_block_sparse_matches_fp32_reference(Lq, Lk, R):
    _needs_fa4()
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("FA4 block sparsity is used on sm90 only")
    index, _ = random_index(2, 8, Lq, Lk, R, seed=11)
    index = SparseIndex(**{f: (x.cuda() if torch.is_tensor(x) else x) for f, x in index.__dict__.items()})
    q, k, v = (t.cuda() for t in make_qkv(2, 8, 2, Lk, 128, torch.bfloat16, seed=3))
    q = q[:, :, Lk - Lq:]
    out, lse = fa4_mod.fa4_sparse_attention(q, k, v, index, sm_scale=0.1)
    blocks = blocks_from_index(index, q_len=Lq, k_len=Lk)
    ref, ref_lse = blocks_attention_reference(q, k, v, blocks, sm_scale=0.1)
    assert rel_err(out, ref) <= 2 * rel_err(ref.to(out.dtype), ref) + 1e-3
    _lse_close(lse, ref_lse)
