"""Oracles (methods/oracles.py): kernel vs reference, dense limit,
brute-force selections, stats."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from anchor.reference import dense_attention_reference
from anchor.stats import causal_pair_count
from methods.oracles import OracleTopCdf, OracleTopK
from methods.registry import get_method
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def brute_oracle(q, k, *, block, granularity, k_top=None, cdf=None):
    """bool [B, Hq, n_lists, Lk]: keys (tiles expanded, cut at each block's last row) chosen from
    float64 dense probabilities, one query block at a time."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    rows = torch.arange(Lq) + Lk - Lq
    n_lists = math.ceil(Lq / block)
    keep = torch.zeros(B, Hq, n_lists, Lk, dtype=torch.bool)
    for b in range(B):
        for h in range(Hq):
            s = q[b, h].double() @ k[b, h // (Hq // Hkv)].double().T * D ** -0.5
            p = s.masked_fill(torch.arange(Lk)[None, :] > rows[:, None], float("-inf")).softmax(-1)
            for lst in range(n_lists):
                last = int(rows[min((lst + 1) * block, Lq) - 1])
                col = p[lst * block:(lst + 1) * block].sum(0)
                step = 1 if granularity == "stripe" else block
                units = [(col[u * step:(u + 1) * step].sum().item(), u) for u in range(math.ceil(Lk / step))
                         if u * step <= last]
                units.sort(reverse=True)
                if k_top is not None:
                    chosen = [u for _, u in units[:k_top]]
                else:
                    total, before, chosen = sum(m for m, _ in units), 0.0, []
                    for m, u in units:
                        if before < cdf * total:
                            chosen.append(u)
                        before += m
                for u in chosen:
                    keep[b, h, lst, u * step:min((u + 1) * step, last + 1)] = True
    return keep


def cut_at_last_row(mask, Lq, Lk, block):
    last = Lk - Lq + torch.clamp(torch.arange(1, mask.shape[2] + 1) * block, max=Lq) - 1
    return mask & (torch.arange(Lk)[None, :] <= last[:, None])


@needs_triton
@pytest.mark.parametrize("cls,kw,B,Hq,Hkv,Lq,Lk,dtype", [
    (OracleTopK, dict(granularity="stripe", k=20), 2, 4, 1, 97, 97, torch.float32),
    (OracleTopCdf, dict(granularity="block", cdf=0.8), 1, 4, 4, 50, 113, torch.float16),
])
def test_oracle_triton_matches_reference(cls, kw, B, Hq, Hkv, Lq, Lk, dtype):
    q, k, v = qkv(B, Hq, Hkv, Lq, Lk, dtype=dtype, seed=Lq)
    out, stats = cls(**kw, block_size=16, backend="triton")(q, k, v)
    ref32, ref_stats = cls(**kw, block_size=16, backend="torch")(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, f"{cls.__name__} triton vs reference")
    assert torch.equal(stats.pairs["sparse"], ref_stats.pairs["sparse"])


@pytest.mark.parametrize("granularity", ["stripe", "block"])
@pytest.mark.parametrize("Hq,Hkv,Lq,Lk", [(4, 4, 61, 61), (4, 1, 37, 90)])
def test_topk_keeping_everything_equals_dense(granularity, Hq, Hkv, Lq, Lk):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=4)
    out, stats = OracleTopK(granularity=granularity, k=Lk, block_size=16, backend="torch")(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.pairs["sparse"].eq(causal_pair_count(Lq, Lk)).all()
    assert stats.pairs["oracle"].eq(Lq * Lk).all() and stats.dense_fallback == 0


@pytest.mark.parametrize("granularity", ["stripe", "block"])
@pytest.mark.parametrize("Hq,Hkv,Lq,Lk,block", [(4, 1, 83, 83, 16), (2, 2, 45, 100, 32)])
def test_selections_match_brute_force(granularity, Hq, Hkv, Lq, Lk, block):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=Lq + Lk)
    k_top = 9 if granularity == "stripe" else 2
    for method, brute in [
        (OracleTopK(granularity=granularity, k=k_top, block_size=block, backend="torch"), dict(k_top=k_top)),
        (OracleTopCdf(granularity=granularity, cdf=0.7, block_size=block, backend="torch"), dict(cdf=0.7)),
    ]:
        index, pairs = method.select(q, k)
        want = brute_oracle(q, k, block=block, granularity=granularity, **brute)
        assert torch.equal(cut_at_last_row(index.to_key_mask(Lk), Lq, Lk, block), want)
        out, stats = method(q, k, v)
        assert torch.equal(stats.pairs["sparse"], pairs)
        assert 0 < stats.stage_density()["sparse"] < 1
        assert out.shape == q.shape and not out.isnan().any()


def test_oracle_configs(repo_root):
    expect = {"oracle_topk_stripe": (OracleTopK, "stripe", 4096),
              "oracle_topk_block": (OracleTopK, "block", 32),
              "oracle_topcdf_stripe": (OracleTopCdf, "stripe", 0.95),
              "oracle_topcdf_block": (OracleTopCdf, "block", 0.95)}
    for name, (cls, granularity, value) in expect.items():
        method = get_method(yaml.safe_load((repo_root / "conf" / "method" / f"{name}.yaml").read_text()))
        assert isinstance(method, cls) and method.granularity == granularity and method.block_size == 128
        assert (method.k if cls is OracleTopK else method.cdf) == value
    with pytest.raises(ValueError, match="granularity"):
        OracleTopK(granularity="token", k=4, block_size=16, backend="auto")
    with pytest.raises(ValueError, match="cdf"):
        OracleTopCdf(granularity="block", cdf=1.5, block_size=16, backend="auto")


def test_stats_extras():
    """Oracles have no upstream ratio; top-k covering every visible tile is degenerate."""
    q, k, v = qkv(1, 2, 1, 64, 64, seed=3)
    kw = dict(granularity="block", block_size=16, backend="torch")
    assert OracleTopK(k=4, **kw)(q, k, v)[1].extra == {"degenerate_dense": 1.0}
    assert OracleTopK(k=3, **kw)(q, k, v)[1].extra == {"degenerate_dense": 0.0}
    assert OracleTopCdf(cdf=1.0, **kw)(q, k, v)[1].extra == {"degenerate_dense": 0.0}
