"""XAttention (methods/xattention.py): antidiagonal scores vs loops, find_blocks on hand-made rows,
the threshold limits, GQA / batch equivalences, threshold files, kernel vs reference, stats."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import methods.xattention as xmod
from anchor.reference import dense_attention_reference, sparse_attention_reference
from methods.index_builders import index_from_tile_mask
from methods.registry import get_method
from methods.xattention import XAttention, antidiagonal_block_scores, find_blocks, stride_groups
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def make(backend="torch", **kw):
    args = dict(stride=4, threshold=0.9, threshold_file=None, norm=1.0, block_size=16, backend=backend)
    args.update(kw)
    return XAttention(**args)


def brute_block_scores(q, k, *, stride, bs, scale):
    """Per head with loops: score(i, j) = sum_t q[i*S + S-1-t] . k[j*S + t] (zero-padded), softmax of
    score * scale over j <= i for the rows i < ceil(N / S), summed per (block row, block column)."""
    B, Hq, N, D = q.shape
    rep, S = Hq // k.shape[1], stride
    nb = math.ceil(N / bs)
    M = nb * bs // S
    pad = torch.zeros(M * S - N, D, dtype=torch.float64)
    out = torch.zeros(B, Hq, nb, nb, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            qq = torch.cat([q[b, h].double(), pad])
            kk = torch.cat([k[b, h // rep].double(), pad])
            for i in range(math.ceil(N / S)):
                row = torch.tensor([sum(float(qq[i * S + S - 1 - t] @ kk[j * S + t]) for t in range(S))
                                    for j in range(i + 1)], dtype=torch.float64)
                p = (row * scale).softmax(0)
                for j in range(i + 1):
                    out[b, h, i * S // bs, j * S // bs] += p[j]
    return out


@pytest.mark.parametrize("S", [1, 4, 8])
def test_antidiagonal_pairing_matches_a_loop(S):
    q, k, _ = qkv(1, 1, 1, 37, 37, D=8, seed=S)
    M = math.ceil(37 / S)
    got = stride_groups(q, S, M, reverse=False) @ stride_groups(k, S, M, reverse=True).transpose(-1, -2)
    qp = torch.cat([q[0, 0], torch.zeros(M * S - 37, 8)])
    kp = torch.cat([k[0, 0], torch.zeros(M * S - 37, 8)])
    for i, j in [(0, 0), (M - 1, 0), (M - 1, M - 1), (M // 2, M // 3)]:
        want = sum(float(qp[i * S + S - 1 - t] @ kp[j * S + t]) for t in range(S))
        assert got[0, 0, i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("B,Hq,Hkv,N,S,bs,norm", [
    (2, 4, 2, 75, 4, 16, 1.0),     # GQA 2, batch 2, odd length (partial group and block)
    (1, 3, 1, 64, 8, 32, 2.0),     # GQA 3, whole blocks, norm
])
def test_block_scores_match_a_loop_and_do_not_depend_on_chunking(monkeypatch, B, Hq, Hkv, N, S, bs, norm):
    q, k, _ = qkv(B, Hq, Hkv, N, N, D=8, seed=N)
    scale = 8 ** -0.5
    want = brute_block_scores(q, k, stride=S, bs=bs, scale=scale / S / norm)
    got, computed = antidiagonal_block_scores(q, k, stride=S, block=bs, sm_scale=scale, norm=norm)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    rb, nb = bs // S, math.ceil(N / bs)
    assert computed == rb * rb * nb * (nb + 1) // 2                      # one block of rows per chunk here
    monkeypatch.setattr(xmod, "MIN_CHUNKS", 1)                           # one chunk: the full square
    whole, computed = antidiagonal_block_scores(q, k, stride=S, block=bs, sm_scale=scale, norm=norm)
    torch.testing.assert_close(whole, got, rtol=1e-6, atol=1e-7)
    assert computed == (nb * rb) ** 2


def test_bf16_scores_are_rounded_like_upstream():
    q, k, _ = qkv(1, 2, 1, 80, 80, seed=1, dtype=torch.bfloat16)
    got, _ = antidiagonal_block_scores(q, k, stride=4, block=16, sm_scale=0.25, norm=1.0)
    assert torch.equal(got, got.bfloat16().float())
    ref, _ = antidiagonal_block_scores(q.float(), k.float(), stride=4, block=16, sm_scale=0.25, norm=1.0)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)


def one_row(values):
    """A [1, 1, nb, nb] score grid whose last row is ``values`` (other rows: uniform causal)."""
    nb = len(values)
    grid = torch.tril(torch.ones(nb, nb))
    grid[-1] = torch.tensor(values)
    return grid[None, None]


@pytest.mark.parametrize("values,tau,want", [
    ([0.125, 0.375, 0.25, 0.25], 0.75, [0, 3, 1]),             # forced 0.375 + 0.375 reaches 0.75: block 2 out
    ([0.125, 0.375, 0.25, 0.25], 0.75 + 1e-9, [0, 3, 1, 2]),   # just above: block 2 in
    ([0.125, 0.375, 0.25, 0.25], 0.375, [0, 3]),               # the forced mass alone reaches it
    ([0.25, 0.25, 0.25, 0.25], 0.6, [0, 3, 1]),                # tie at the cut: lower key block first
    ([0.25, 0.25, 0.25, 0.25], 0.0, [0, 3]),                   # threshold 0: forced blocks only
    ([0.25, 0.25, 0.25, 0.25], 1.0, [0, 3, 1, 2]),
])
def test_find_blocks_boundary_and_ties(values, tau, want):
    keep = find_blocks(one_row(values), torch.tensor([tau], dtype=torch.float64))
    assert sorted(keep[0, 0, -1].nonzero().flatten().tolist()) == sorted(want)
    assert torch.equal(keep[0, 0], keep[0, 0].tril())                   # block-causal


def test_threshold_one_keeps_every_causal_block_and_equals_dense():
    q, k, v = qkv(2, 4, 2, 133, 133, seed=7)
    method = make(threshold=1.0)
    blocks, _ = method.select(q, k)
    assert torch.equal(blocks, torch.ones_like(blocks).tril().expand_as(blocks))
    out, stats = method(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.extra["upstream_ratio"] == 1.0 and stats.stage_density()["sparse"] == 1.0


def test_threshold_zero_keeps_block_zero_and_the_diagonal_with_the_upstream_ratio():
    N, bs, S = 160, 32, 4                                                # nb = 5
    q, k, v = qkv(1, 2, 1, N, N, seed=2)
    method = make(threshold=0.0, block_size=bs, stride=S)
    blocks, _ = method.select(q, k)
    r = torch.arange(5)
    assert torch.equal(blocks[0, 0], (r[None, :] == 0) | (r[None, :] == r[:, None]))
    out, stats = method(q, k, v)
    assert stats.extra == {"upstream_ratio": 9 / 15, "degenerate_dense": 0.0}   # (1 + 2 * 4) / (5 * 6 / 2)
    assert stats.pairs["estimate"].eq(S * (bs // S) ** 2 * 15).all()    # S pairs per score, 1-block chunks


@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_gqa_equals_repeated_kv_and_batch_equals_single_calls(tau):
    q, k, v = qkv(2, 6, 2, 141, 141, seed=3)
    method = make(threshold=tau)
    blocks, _ = method.select(q, k)
    repeated, _ = method.select(q, k.repeat_interleave(3, 1))            # upstream: repeat_kv
    assert torch.equal(blocks, repeated)
    assert torch.equal(blocks[1:], method.select(q[1:], k[1:])[0])
    r = torch.arange(blocks.shape[-1])
    assert blocks[..., 0].all() and blocks[..., r, r].all()
    assert not blocks.all(-1).all()                                       # something was dropped


def test_threshold_file_per_layer_and_head(tmp_path):
    q, k, v = qkv(1, 4, 2, 100, 100, seed=4)
    path = tmp_path / "t.json"
    path.write_text(json.dumps([[0.9] * 4, [0.0, 1.0, 0.0, 1.0]]))
    method = make(threshold_file=str(path))
    blocks, _ = method.select(q, k, layer_idx=1)
    causal = torch.ones_like(blocks[0, 0]).tril()
    r = torch.arange(causal.shape[0])
    forced = (r[None, :] == 0) | (r[None, :] == r[:, None])
    assert torch.equal(blocks[0, 0], forced) and torch.equal(blocks[0, 2], forced)
    assert torch.equal(blocks[0, 1], causal) and torch.equal(blocks[0, 3], causal)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump([[0.9] * 4, [0.0, 1.0, 0.0, 1.0]]))
    assert torch.equal(make(threshold_file=str(tmp_path / "t.yaml")).select(q, k, layer_idx=1)[0], blocks)
    with pytest.raises(ValueError, match="layer_idx"):
        method(q, k, v)
    with pytest.raises(ValueError, match="heads"):
        method.select(q[:, :2], k[:, :1], layer_idx=0)
    path.write_text(json.dumps([[1.5]]))
    with pytest.raises(ValueError, match="outside"):
        make(threshold_file=str(path))


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,N,dtype,bs,S", [
    (2, 4, 1, 133, torch.float32, 16, 4),
    (1, 2, 2, 200, torch.float16, 32, 8),
])
def test_triton_matches_reference(B, Hq, Hkv, N, dtype, bs, S):
    q, k, v = qkv(B, Hq, Hkv, N, N, dtype=dtype, seed=N)
    kw = dict(threshold=0.8, block_size=bs, stride=S)
    out, stats = make("triton", **kw)(q, k, v)
    ref32, ref_stats = make("torch", **kw)(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "xattention triton vs reference")
    assert torch.equal(stats.total_pairs(), ref_stats.total_pairs())


def test_dense_cases():
    q, k, v = qkv(2, 4, 2, 32, 32, seed=5)                               # nb = 2: forced blocks are all
    out, stats = make()(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert set(stats.pairs) == {"dense"} and stats.dense_fallback == 0
    assert stats.extra == {"degenerate_dense": 1.0, "upstream_ratio": 1.0}
    q, k, v = qkv(1, 4, 2, 40, 100, seed=6)                              # chunked prefill
    out, stats = make()(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.dense_fallback == 1 and stats.extra == {"degenerate_dense": 0.0}


def test_attended_is_the_kept_blocks_causally_clipped():
    N, bs = 133, 16
    q, k, v = qkv(2, 4, 1, N, N, seed=8)
    method = make(threshold=0.7)
    blocks, _ = method.select(q, k)
    att = method.attended(q, k, v)
    rows = torch.arange(N)
    for b, h in [(0, 1), (1, 2)]:
        want = blocks[b, h][rows // bs][:, rows // bs] & (rows[None, :] <= rows[:, None])
        assert torch.equal(att.row_mask(b, h, rows), want)


def test_configs(repo_root):
    for name, stride in [("xattention", 8), ("xattention_s16", 16)]:
        cfg = yaml.safe_load((repo_root / "conf" / "method" / f"{name}.yaml").read_text())
        method = get_method(cfg)
        assert isinstance(method, XAttention)
        assert (method.stride, method.threshold, method.table, method.block_size) == (stride, 0.9, None, 128)
    with pytest.raises(ValueError, match="stride"):
        make(stride=3)
    with pytest.raises(ValueError, match="threshold"):
        make(threshold=1.5)


@pytest.mark.gpu
def test_cuda_estimate_at_128k_is_memory_bounded():
    """Llama-3.1-8B shapes at 128k (32 / 8 heads, D 128, bf16): the estimate stays within a few
    GiB above its inputs and each query-block row holds the mass of its 16 query groups."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, 131072, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 8, 131072, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    scores, computed = antidiagonal_block_scores(q, k, stride=8, block=128, sm_scale=128 ** -0.5, norm=1.0)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 6 * 2 ** 30, f"estimate peak {peak / 2 ** 30:.2f} GiB"
    assert scores.shape == (1, 32, 1024, 1024) and computed < 1.05 * 16384 * 16385 / 2
    torch.testing.assert_close(scores.sum(-1), torch.full_like(scores[..., 0], 16.0), rtol=2e-2, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("stride", [8, 16])
def test_cuda_bf16_method_matches_reference_on_its_selection(stride):
    q, k, v = (x.cuda() for x in qkv(1, 8, 2, 4096, 4096, D=128, dtype=torch.bfloat16, seed=stride))
    method = make("triton", stride=stride, block_size=128, threshold=0.9)
    out, stats = method(q, k, v)
    blocks, _ = method.select(q, k)
    index, _ = index_from_tile_mask(blocks, tile=128, rows_per_list=128, q_len=4096, k_len=4096)
    ref = sparse_attention_reference(q.float(), k.float(), v.float(), index, causal=True)
    assert_close_to_baseline(out, ref, f"xattention stride {stride} bf16 on CUDA")
    assert 0 < stats.extra["upstream_ratio"] <= 1 and stats.dense_fallback == 0
