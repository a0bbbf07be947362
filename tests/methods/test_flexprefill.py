"""FlexPrefill (methods/flexprefill.py): kernel vs reference, dense limit, brute-force selection,
the JS pattern decision on constructed heads, dense fallbacks and stats."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from anchor.reference import dense_attention_reference
from anchor.stats import causal_pair_count
from methods.flexprefill import FlexPrefill, score_cover_topk
from methods.registry import get_method
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def make(backend="torch", **kw):
    args = dict(gamma=0.9, tau=0.1, min_budget=16, max_budget=None, block_size=16, backend=backend)
    args.update(kw)
    return FlexPrefill(**args)


def constructed_heads(bs=16, nb=8, D=16):
    """Head 0 is query-aware by construction, head 1 vertical-slash (see the test docstring)."""
    g = torch.Generator().manual_seed(0)
    N = nb * bs
    u = torch.zeros(D)
    u[0] = 1.0
    q = (4.0 * u).expand(1, 2, N, D).clone()                            # every query is the same vector
    k = 0.01 * torch.randn(1, 2, N, D, generator=g)
    levels = torch.randn(nb, generator=g)                               # head 0: keys constant per block
    k[0, 0] += (levels.repeat_interleave(bs)[:, None] * u)
    k[0, 0, N - bs:] -= 6.0 * u                                         # the last (partly masked) block: ~no mass
    signs = torch.tensor([1.0, -1.0]).repeat(bs // 2)[:, None]
    k[0, 1, :bs] += 5.0 * u * signs                                     # head 1: +-u cancel when pooled
    v = torch.randn(1, 2, N, D, generator=g)
    return q, k, v


def brute_blocks(q, k, *, gamma, tau, min_budget, max_budget, bs):
    """FlexPrefill's get_active_blocks restated per head in float64 with loops."""
    B, Hq, N, D = q.shape
    rep = Hq // k.shape[1]
    scale = D ** -0.5
    nb = math.ceil(N / bs)
    min_b = math.ceil(min_budget / bs)
    max_b = nb if max_budget is None else min(math.ceil(max_budget / bs), nb)
    blocks = torch.zeros(B, Hq, nb, nb, dtype=torch.bool)
    aware = torch.zeros(B, Hq, dtype=torch.bool)
    js_all = torch.zeros(B, Hq, dtype=torch.float64)

    def cover(x):                                   # entries whose sorted running sum stays <= gamma, + 1
        total, n = 0.0, 0
        for val in sorted(x.tolist(), reverse=True):
            total += val
            n += total <= gamma
        return n + 1

    for b in range(B):
        for h in range(Hq):
            qq, kk = q[b, h].double(), k[b, h // rep].double()
            P = torch.zeros(bs, N, dtype=torch.float64)
            slash = torch.zeros(N, dtype=torch.float64)                  # indexed by c = N - 1 - offset
            for i in range(bs):
                pos = N - bs + i
                P[i, :pos + 1] = (kk[:pos + 1] @ qq[pos] * scale).softmax(0)
                for j in range(pos + 1):
                    slash[N - 1 - (pos - j)] += P[i, j] / bs
            vertical = P.mean(0)
            n_v = min(max(cover(vertical) // bs + 1, min_b), max_b)
            n_s = min(max(cover(slash) // bs + 1, min_b), max_b)
            v_pool = torch.stack([vertical[c * bs:(c + 1) * bs].sum() for c in range(nb)])
            s_pool = torch.stack([slash[c * bs:(c + 1) * bs].sum() for c in range(nb)])
            avg_k = torch.stack([kk[c * bs:(c + 1) * bs].mean(0) for c in range(nb)])
            pooled = (avg_k @ qq[N - bs:].mean(0) * scale).softmax(0)
            m = (pooled + v_pool) / 2
            kl = [sum(p * math.log(p / mm) for p, mm in zip(x.tolist(), m.tolist()) if p > 0)
                  for x in (pooled, v_pool)]
            js = math.sqrt(0.5 * kl[0] + 0.5 * kl[1])
            js_all[b, h], aware[b, h] = js, js < tau
            if js < tau:
                n_v = n_s = min_b
            v_pool[0] = s_pool[-1] = math.inf
            cols = set(sorted(range(nb), key=lambda c: -v_pool[c])[:n_v])
            diags = {nb - 1 - s for s in sorted(range(nb), key=lambda s: -s_pool[s])[:n_s]}
            for r in range(nb):
                for c in range(r + 1):
                    blocks[b, h, r, c] = c in cols or (r - c) in diags
            if js < tau:
                avg_q = torch.stack([qq[r * bs:(r + 1) * bs].mean(0) for r in range(nb)]) * scale
                cells = []
                for r in range(nb):
                    row = (avg_k[:r + 1] @ avg_q[r]).softmax(0)
                    cells += [(row[c].item(), r, c) for c in range(r + 1)]
                total = 0.0
                for p, r, c in sorted(cells, reverse=True):
                    total += p
                    if total > gamma * nb:
                        break
                    blocks[b, h, r, c] = True
    return blocks, aware, js_all


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,N,dtype,block,tau", [
    (2, 4, 1, 133, torch.float32, 16, 0.175),  # GQA 4, batch 2, odd length, both head kinds
    (1, 2, 2, 100, torch.float16, 32, 1.0),    # GQA 1, fp16, every head query-aware
])
def test_triton_matches_reference(B, Hq, Hkv, N, dtype, block, tau):
    q, k, v = qkv(B, Hq, Hkv, N, N, dtype=dtype, seed=N)
    kw = dict(gamma=0.8, tau=tau, min_budget=block, block_size=block)
    out, stats = make("triton", **kw)(q, k, v)
    ref32, ref_stats = make("torch", **kw)(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "flexprefill triton vs reference")
    assert torch.equal(stats.total_pairs(), ref_stats.total_pairs())
    assert 0 < stats.stage_density()["sparse"] < 1


@pytest.mark.parametrize("Hq,Hkv,N", [(4, 4, 97), (4, 1, 130)])
def test_full_coverage_equals_dense(Hq, Hkv, N):
    q, k, v = qkv(2, Hq, Hkv, N, N, seed=2)
    out, stats = make(gamma=1.0, tau=0.0)(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.pairs["sparse"].eq(causal_pair_count(N, N)).all() and stats.dense_fallback == 0


@pytest.mark.parametrize("Hq,Hkv,N,gamma,tau,max_budget", [
    (4, 1, 117, 0.7, 0.177, None),   # mixed heads
    (2, 2, 96, 0.9, 1.0, 40),        # all query-aware, max_budget below the coverage
    (4, 2, 150, 0.5, 0.0, 64),       # all vertical-slash
])
def test_selection_matches_brute_force(Hq, Hkv, N, gamma, tau, max_budget):
    q, k, v = qkv(2, Hq, Hkv, N, N, seed=N)
    method = make(gamma=gamma, tau=tau, max_budget=max_budget)
    sel = method.select(q, k)
    blocks, aware, js = brute_blocks(q, k, gamma=gamma, tau=tau, min_budget=16, max_budget=max_budget, bs=16)
    torch.testing.assert_close(sel.js.double(), js, rtol=1e-4, atol=1e-6)
    assert torch.equal(sel.query_aware, aware)
    assert torch.equal(sel.blocks, blocks)
    assert aware.any() == (tau > 0)                                     # the cases exercise both branches
    assert (~aware).any() == (tau < 1)
    out, stats = method(q, k, v)
    nb = math.ceil(N / 16)
    assert torch.equal(stats.pairs["estimate"], 16 * N + nb + aware.long() * nb * nb)
    assert 0 < stats.stage_density()["sparse"] <= 1 and stats.dense_fallback == 0


def test_js_decision_picks_each_branch():
    """Head 0: identical queries, keys constant per block, so the pooled estimate equals the
    token-level column mass (JS ~ 0): query-aware. Head 1: block-0 keys +-u cancel when pooled
    while the queries attend the +u keys (mass on block 0 vs a uniform pooled estimate): vertical-slash."""
    q, k, v = constructed_heads()
    method = make(gamma=0.9, tau=0.1)
    sel = method.select(q, k)
    _, aware, js = brute_blocks(q, k, gamma=0.9, tau=0.1, min_budget=16, max_budget=None, bs=16)
    assert sel.query_aware.tolist() == [[True, False]] == aware.tolist()
    assert js[0, 0] < 0.02 and js[0, 1] > 0.3
    assert sel.n_vertical[0, 0] == sel.n_slash[0, 0] == 1              # query-aware: min budget (1 block)
    out, stats = method(q, k, v)
    assert stats.extra["query_aware_fraction"] == 0.5
    assert stats.pairs["estimate"].tolist() == [[16 * 128 + 8 + 64, 16 * 128 + 8]]


def test_short_and_chunked_inputs_run_dense_and_are_counted():
    method = make(min_budget=40)                                         # dense if N <= max(32, 48)
    for N in (48, 20):
        q, k, v = qkv(2, 4, 1, N, N, seed=N)
        out, stats = method(q, k, v)
        torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
        assert stats.dense_fallback == 1 and stats.density == 1.0 and set(stats.pairs) == {"dense"}
    q, k, v = qkv(2, 4, 1, 49, 49, seed=1)
    assert method(q, k, v)[1].dense_fallback == 0
    q, k, v = qkv(2, 4, 2, 70, 130, seed=3)                              # chunked prefill
    out, stats = method(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.dense_fallback == 1 and stats.causal_pairs == causal_pair_count(70, 130)


def test_score_cover_topk_and_block_budget():
    assert score_cover_topk(torch.tensor([0.2, 0.5, 0.3]), 0.7).item() == 2
    assert score_cover_topk(torch.tensor([0.2, 0.5, 0.3]), 0.79).item() == 2
    assert score_cover_topk(torch.tensor([0.2, 0.5, 0.3]), 0.81).item() == 3


def test_config_and_bad_arguments(repo_root):
    cfg = yaml.safe_load((repo_root / "conf" / "method" / "flexprefill.yaml").read_text())
    method = get_method(cfg)
    assert (method.gamma, method.tau, method.min_budget, method.max_budget, method.block_size) == \
        (0.95, 0.1, 1024, None, 128)
    with pytest.raises(ValueError, match="gamma"):
        make(gamma=0.0)
    with pytest.raises(ValueError, match="block_size"):
        make(block_size=100)


def test_upstream_ratios_on_a_known_selection():
    """gamma 0.01, tau 0, one-block budgets: every head keeps key block 0 and the main diagonal,
    2 * nb - 1 = 13 of the 7 x 7 blocks (N = 100, block 16): FlexPrefill's computational_ratio
    13 / 49, the AnchorAttention repo's 13 / 28. Short inputs: upstream returns ratio 1."""
    q, k, v = qkv(2, 4, 2, 100, 100, seed=9)
    method = make(gamma=0.01, tau=0.0, min_budget=16)
    out, stats = method(q, k, v)
    assert stats.extra["upstream_ratio"] == pytest.approx(13 / 49)
    assert stats.extra["upstream_ratio_anchor_repo"] == pytest.approx(13 / 28)
    assert stats.extra["degenerate_dense"] == 0.0
    q, k, v = qkv(1, 4, 2, 32, 32, seed=9)                               # nb = 2 <= 2: short input
    stats = method(q, k, v)[1]
    assert stats.extra == {"degenerate_dense": 1.0, "upstream_ratio": 1.0} and stats.dense_fallback == 1
    q, k, v = qkv(1, 4, 2, 40, 100, seed=9)                              # chunked prefill: no upstream ratio
    assert method(q, k, v)[1].extra == {"degenerate_dense": 0.0}
