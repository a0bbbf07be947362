"""The PyTorch reference against first-principles definitions (no kernels involved)."""
import math

import pytest
import torch

from anchor.params import AnchorParams
from anchor.reference import (
    anchor_attention_reference,
    anchor_selection_reference,
    attended_mask,
    dense_attention_reference,
    stage1_mask,
)
from tests.anchor.helpers import make_qkv, rel_err


def naive_dense(q, k, v):
    """Causal softmax attention, one head at a time, GQA by index (bottom-right aligned)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    out = torch.empty(B, Hq, Lq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kh, vh = k[b, h // (Hq // Hkv)].double(), v[b, h // (Hq // Hkv)].double()
            s = q[b, h].double() @ kh.T / math.sqrt(D)
            i = torch.arange(Lq)[:, None] + Lk - Lq
            s = s.masked_fill(torch.arange(Lk)[None, :] > i, float("-inf"))
            out[b, h] = s.softmax(-1) @ vh
    return out


@pytest.mark.parametrize("Lq,Lk", [(37, 37), (5, 40), (1, 9)])
def test_dense_reference_matches_naive(Lq, Lk):
    q, _, _ = make_qkv(2, 6, 2, Lq, 16, torch.float32, seed=1)
    _, k, v = make_qkv(2, 6, 2, Lk, 16, torch.float32, seed=2)
    assert rel_err(dense_attention_reference(q, k, v, chunk=8), naive_dense(q, k, v)) < 1e-6


@pytest.mark.parametrize("init,local", [(None, None), (64, 96), (0, 32)])
def test_regions_partition_the_causal_row(init, local):
    """Stage-1 regions and the group's candidates are disjoint and cover keys 0..i exactly."""
    p = AnchorParams(theta=1.0, step=2, block_size=16, init_size=init, local_size=local, tail="sparse",
                     tail_block_size=16)
    N = 300
    rows = torch.arange(N)
    s1 = stage1_mask(p, rows, N)
    cand = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        lo, hi = p.candidate_range(i // p.group)
        cand[i, lo:hi] = True
    assert not (s1 & cand).any()
    assert torch.equal(s1 | cand, torch.ones(N, N, dtype=torch.bool).tril())


def test_selection_matches_its_definition():
    """Key j is selected for group g iff some pooled row r of g has qbar_r.k_j*scale + theta >= abar_r."""
    p = AnchorParams(theta=0.7, step=2, block_size=16, init_size=32, local_size=32, tail="sparse",
                     tail_block_size=16)
    q, k, _ = make_qkv(1, 2, 1, 150, 16, torch.float32, seed=3, stripes=0.05)
    sel = anchor_selection_reference(q, k, p)
    scale = 16 ** -0.5
    for h in range(2):
        s = (q[0, h] @ k[0, 0].T) * scale
        rows = torch.arange(150)
        anchor = s.masked_fill(~stage1_mask(p, rows, 150), float("-inf")).amax(-1)
        assert torch.allclose(sel.anchor[0, h], anchor, atol=1e-5)
        for g in range(math.ceil(150 / p.group)):
            lo, hi = p.candidate_range(g)
            expect = torch.zeros(150, dtype=torch.bool)
            for r in range(g * p.step, min((g + 1) * p.step, math.ceil(150 / 16))):
                blk = slice(r * 16, min(r * 16 + 16, 150))
                qbar, abar = q[0, h, blk].mean(0), anchor[blk].mean()
                expect[lo:hi] |= (k[0, 0, lo:hi] @ qbar) * scale + p.theta >= abar - 1e-6
            assert torch.equal(sel.keys[0, h, g], expect), (h, g)
    assert sel.keys.any() and not sel.keys.all()


@pytest.mark.parametrize("tail", ["sparse", "dense", "query_aware"])
@pytest.mark.parametrize("N", [1, 31, 129, 200])
def test_keep_everything_equals_dense(N, tail):
    p = AnchorParams(theta=math.inf, step=2, block_size=16, init_size=None, local_size=None, tail=tail,
                     tail_block_size=16)
    q, k, v = make_qkv(2, 4, 2, N, 16, torch.float32, seed=N)
    out, stats = anchor_attention_reference(q, k, v, p)
    assert rel_err(out, naive_dense(q, k, v)) < 1e-6
    estimation = {"select", "tail_select"}
    assert sum(d for st, d in stats.stage_density().items() if st not in estimation) == pytest.approx(1.0)


def test_reference_attends_exactly_its_mask():
    """Output equals softmax restricted to attended_mask; pair counts equal the mask sizes."""
    p = AnchorParams(theta=0.5, step=2, block_size=16, init_size=None, local_size=None, tail="sparse",
                     tail_block_size=16)
    q, k, v = make_qkv(1, 2, 2, 140, 16, torch.float32, seed=4, stripes=0.05)
    out, stats = anchor_attention_reference(q, k, v, p)
    sel = anchor_selection_reference(q, k, p)
    rows = torch.arange(140)
    for h in range(2):
        mask = attended_mask(p, sel.keys[0, h], rows)
        s = (q[0, h] @ k[0, h].T) * 16 ** -0.5
        expect = s.masked_fill(~mask, float("-inf")).softmax(-1) @ v[0, h]
        assert rel_err(out[0, h], expect) < 1e-6
        stage1 = stage1_mask(p, rows, 140).sum()
        assert stats.pairs["anchor"][0, h] + stats.pairs["sparse"][0, h] == mask.sum()
        assert stats.pairs["anchor"][0, h] == stage1
    assert 0 < stats.density < 1
