"""Synthetic benchmark inputs: shapes, determinism and the claimed score structure."""
import math

import pytest
import torch

from benchmarks.kernels.official_anchor import official_anchor_attention
from benchmarks.structured_inputs import make_qkv, stripe_mask


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_shapes_dtype_determinism(kind):
    args = (kind, 2, 4, 2, 300, 32, torch.float16)
    q, k, v = make_qkv(*args, seed=3)
    assert q.shape == (2, 4, 300, 32) and k.shape == v.shape == (2, 2, 300, 32)
    assert q.dtype == k.dtype == v.dtype == torch.float16
    q2, k2, v2 = make_qkv(*args, seed=3)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)
    assert not torch.equal(q, make_qkv(*args, seed=4)[0])
    assert torch.isfinite(q).all() and torch.isfinite(k).all()


def test_stripes_spread_over_sequence():
    N, f = 32768, 0.01
    mask = stripe_mask(1, 2, N, f, seed=0)
    assert mask.sum(-1).tolist() == [[round(f * (N - 1))] * 2]
    assert not mask[..., 0].any()
    pos = mask[0, 0].nonzero().flatten().float()
    assert pos.min() < N / 8 and pos.max() > 7 * N / 8                   # not bunched at one end
    counts = torch.histc(pos, bins=8, min=0, max=N)
    assert counts.min() > 0.5 * counts.mean()


def test_structured_scores_as_claimed():
    B, Hq, Hkv, N, D, block = 1, 4, 2, 4096, 64, 128
    q, k, v = make_qkv("structured", B, Hq, Hkv, N, D, torch.float32, seed=1, stripe_fraction=0.05)
    stripes = stripe_mask(B, Hkv, N, 0.05, seed=1)
    assert q.abs().max() < 100 and k.abs().max() < 100                   # bf16-safe magnitudes
    for h in (0, Hq - 1):
        kh, st = k[0, h // 2], stripes[0, h // 2]
        others = ~st
        others[0] = False
        s = q[0, h] @ kh.T / math.sqrt(D)                                # [N, N] per-query logits
        torch.testing.assert_close(s[:, 0], torch.full((N,), 20.0), rtol=0, atol=1e-3)  # sink = anchor
        assert abs(s[:, st].mean() - 14.0) < 0.1 and s[:, others].max() < 8.0
        qbar = q[0, h].view(N // block, block, D).mean(1)                # [nb, D] pooled queries
        sbar = qbar @ kh.T / math.sqrt(D)
        assert sbar[:, st].min() > 13.0 and sbar[:, others].max() < 2.0  # threshold 20 - 12 = 8


def test_theta12_selects_the_stripes():
    block, step, N = 16, 2, 1024
    G = block * step
    q, k, v = make_qkv("structured", 1, 2, 1, N, 64, torch.float32, seed=2, stripe_fraction=0.04)
    _, sel, _ = official_anchor_attention(q, k, v, theta=12.0, block=block, step=step, variant="clean")
    stripes = stripe_mask(1, 1, N, 0.04, seed=2)[0, 0]
    for g in range(N // G):
        want = stripes.clone()
        want[: G] = False
        want[g * G:] = False
        assert torch.equal(sel[0, 0, g], want) and torch.equal(sel[0, 1, g], want)


def test_random_kind_keeps_everything_at_theta12():
    q, k, v = make_qkv("random", 1, 1, 1, 1024, 64, torch.float32, seed=0)
    _, sel, _ = official_anchor_attention(q, k, v, theta=12.0, block=16, step=2, variant="clean")
    assert sel[0, 0, -1, 32:1024 - 32].all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        make_qkv("zipf", 1, 1, 1, 16, 8)
    with pytest.raises(ValueError, match="multiple"):
        make_qkv("random", 1, 3, 2, 16, 8)
