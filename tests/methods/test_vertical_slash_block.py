"""Block Vertical-Slash (methods/vertical_slash_block.py): a hand-derived selection, FlexPrefill's
rule restated with loops, kernel vs reference, the dense ranges, attended() and configs."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from anchor.reference import dense_attention_reference, sparse_attention_reference
from methods.index_builders import index_from_tile_mask
from methods.registry import get_method
from methods.vertical_slash_block import VerticalSlashBlock
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def make(backend="torch", **kw):
    args = dict(vertical_size=32, slash_size=32, block_size=16, backend=backend)
    args.update(kw)
    return VerticalSlashBlock(**args)


def brute_blocks(q, k, *, vertical_size, slash_size, bs):
    """``get_vertical_slash_topk`` + ``transform_veritcal_slash_idx`` restated per head in float64."""
    B, Hq, N, D = q.shape
    rep = Hq // k.shape[1]
    nb = math.ceil(N / bs)
    n_v, n_s = min(math.ceil(vertical_size / bs), nb), min(math.ceil(slash_size / bs), nb)
    blocks = torch.zeros(B, Hq, nb, nb, dtype=torch.bool)
    for b in range(B):
        for h in range(Hq):
            qq, kk = q[b, h].double() * D ** -0.5, k[b, h // rep].double()
            n_last = min(bs, N)
            vertical = torch.zeros(N, dtype=torch.float64)
            slash = torch.zeros(N, dtype=torch.float64)                  # sum_all_diagonal_matrix: c = N-1-offset
            for i in range(n_last):
                pos = N - n_last + i
                p = (kk[:pos + 1] @ qq[pos]).softmax(0)
                vertical[:pos + 1] += p
                for j in range(pos + 1):
                    slash[N - 1 - (pos - j)] += p[j]
            v_pool = torch.stack([vertical[c * bs:(c + 1) * bs].sum() for c in range(nb)]) / n_last
            s_pool = torch.stack([slash[c * bs:(c + 1) * bs].sum() for c in range(nb)]) / n_last
            v_pool[0] = s_pool[-1] = math.inf
            cols = sorted(range(nb), key=lambda c: -v_pool[c])[:n_v]
            diags = [nb - 1 - s for s in sorted(range(nb), key=lambda s: -s_pool[s])[:n_s]]
            cells = [(r, c) if c <= r else (0, 0) for r in range(nb) for c in cols]   # v_idx[row < col] = 0
            cells += [(r + d, r) if r + d < nb else (0, 0) for r in range(nb) for d in diags]  # past the grid: 0
            for rr, cc in cells:                                         # flat index 0 is block (0, 0)
                blocks[b, h, rr, cc] = True
    return blocks


def test_hand_derived_selection_bins_diagonals_from_the_last_position():
    """N = 72, block 16 (nb = 5, last block 8 tokens), one-hot keys so q rows are the logits.
    Each of the last 16 queries (positions 56..71) puts logit 10 on key 40 and on the key 30
    positions back. Vertical mass: block 2 (key 40) ~0.8, block 1 ~0.2; slash: token offset 30
    sits at c = 71 - 30 = 41 -> slash block 2 -> block diagonal nb - 1 - 2 = 2 (block-aligned
    binning would give diagonal 1), with key 40's offsets 24..31 also in it. Budgets of 2 blocks
    keep key blocks {0 (forced), 2} and diagonals {0 (forced), 2}; rows r keep c <= r with
    c in {0, 2} or r - c in {0, 2}."""
    N, bs = 72, 16
    k = torch.eye(N)[None, None]                                         # [1, 1, N, N]: key j = e_j
    q = torch.zeros(1, 1, N, N)
    for i in range(N - bs, N):
        q[0, 0, i, 40] = q[0, 0, i, i - 30] = 10.0
    blocks = make().select(q, k, sm_scale=1.0)
    want = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 2, 3}, 4: {0, 2, 4}}
    got = {r: set(blocks[0, 0, r].nonzero().flatten().tolist()) for r in range(5)}
    assert got == want


@pytest.mark.parametrize("B,Hq,Hkv,N,bs,v_size,s_size", [
    (2, 4, 1, 133, 16, 40, 20),    # GQA 4, batch 2, odd length (partial last block)
    (1, 2, 2, 160, 32, 32, 64),    # whole blocks
    (2, 6, 2, 97, 16, 16, 48),     # GQA 3, budgets of 1 / 3 blocks
])
def test_selection_matches_flexprefill_rule_restated(B, Hq, Hkv, N, bs, v_size, s_size):
    q, k, v = qkv(B, Hq, Hkv, N, N, seed=N)
    method = make(vertical_size=v_size, slash_size=s_size, block_size=bs)
    blocks = method.select(q, k)
    assert torch.equal(blocks, brute_blocks(q, k, vertical_size=v_size, slash_size=s_size, bs=bs))
    out, stats = method(q, k, v)
    assert stats.pairs["estimate"].eq(bs * N).all() and stats.dense_fallback == 0
    assert stats.extra == {"degenerate_dense": 0.0}                      # upstream reports no ratio
    index, pairs = index_from_tile_mask(blocks, tile=bs, rows_per_list=bs, q_len=N, k_len=N)
    assert torch.equal(stats.pairs["sparse"], pairs) and 0 < stats.stage_density()["sparse"] < 1
    r = torch.arange(blocks.shape[-1])
    assert blocks[..., 0].all() and blocks[..., r, r].all()             # key block 0 and diagonal kept


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,N,dtype,bs", [
    (2, 4, 1, 133, torch.float32, 16),
    (1, 2, 2, 200, torch.float16, 32),
])
def test_triton_matches_reference(B, Hq, Hkv, N, dtype, bs):
    q, k, v = qkv(B, Hq, Hkv, N, N, dtype=dtype, seed=N)
    kw = dict(vertical_size=bs, slash_size=2 * bs, block_size=bs)
    out, stats = make("triton", **kw)(q, k, v)
    ref32, ref_stats = make("torch", **kw)(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "vertical_slash_block triton vs reference")
    assert torch.equal(stats.total_pairs(), ref_stats.total_pairs())


@pytest.mark.parametrize("N,v_size,s_size", [(64, 16, 64), (64, 64, 16), (32, 16, 16), (20, 16, 16)])
def test_budgets_covering_every_block_run_dense(N, v_size, s_size):
    """nb <= max(vertical blocks, slash blocks, 2): dense by construction, no estimate; this range
    holds FlexPrefill's short-input rule (N <= min(v, s) * block, the last two cases)."""
    q, k, v = qkv(2, 4, 2, N, N, seed=N)
    method = make(vertical_size=v_size, slash_size=s_size, block_size=16)
    out, stats = method(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert set(stats.pairs) == {"dense"} and stats.dense_fallback == 0
    assert stats.extra == {"degenerate_dense": 1.0}
    assert method.attended(q, k, v).row_mask(0, 0, torch.arange(N)).sum() == N * (N + 1) // 2
    q, k, v = qkv(2, 4, 2, 65, 65, seed=1)                               # one block more: sparse
    assert make(vertical_size=16, slash_size=64, block_size=16)(q, k, v)[1].extra["degenerate_dense"] == 0.0


def test_chunked_prefill_runs_dense_and_is_counted():
    q, k, v = qkv(1, 4, 2, 40, 100, seed=3)
    out, stats = make()(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.dense_fallback == 1 and stats.extra == {"degenerate_dense": 0.0}


def test_attended_is_the_kept_blocks_causally_clipped():
    N, bs = 133, 16
    q, k, v = qkv(2, 4, 1, N, N, seed=5)
    method = make(vertical_size=16, slash_size=32)
    blocks = method.select(q, k)
    att = method.attended(q, k, v)
    rows = torch.arange(N)
    for b, h in [(0, 0), (1, 3)]:
        want = blocks[b, h][rows // bs][:, rows // bs] & (rows[None, :] <= rows[:, None])
        assert torch.equal(att.row_mask(b, h, rows), want)


def test_configs(repo_root):
    for name, sizes in [("vertical_slash_block", (1024, 8192)), ("vertical_slash_block_longbench", (1024, 1024))]:
        cfg = yaml.safe_load((repo_root / "conf" / "method" / f"{name}.yaml").read_text())
        method = get_method(cfg)
        assert isinstance(method, VerticalSlashBlock)
        assert (method.vertical_size, method.slash_size, method.block_size) == (*sizes, 128)
    paper = get_method(yaml.safe_load((repo_root / "conf" / "method" / "vertical_slash_block.yaml").read_text()))
    assert paper.degenerate(8192, 8192) and not paper.degenerate(8193, 8193)   # 64 slash blocks
    with pytest.raises(ValueError, match="block_size"):
        make(block_size=100)
    with pytest.raises(ValueError, match="vertical_size"):
        make(vertical_size=0)


@pytest.mark.gpu
def test_cuda_bf16_method_matches_reference_on_its_selection():
    N = 8192
    q, k, v = (x.cuda() for x in qkv(1, 8, 2, N, N, D=128, dtype=torch.bfloat16, seed=0))
    method = make("triton", vertical_size=512, slash_size=1024, block_size=128)   # 4 + 8 of 64 blocks
    out, stats = method(q, k, v)
    blocks = method.select(q, k)
    index, _ = index_from_tile_mask(blocks, tile=128, rows_per_list=128, q_len=N, k_len=N)
    ref = sparse_attention_reference(q.float(), k.float(), v.float(), index, causal=True)
    assert_close_to_baseline(out, ref, "vertical_slash_block bf16 on CUDA")
    assert stats.extra == {"degenerate_dense": 0.0} and 0 < stats.stage_density()["sparse"] < 0.5
