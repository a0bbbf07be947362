"""The fp32 emulation of the authors' AnchorAttention, at small block/step."""
import math

import pytest
import torch

from anchor.reference import dense_attention_reference
from benchmarks.kernels.official_anchor import official_anchor_attention


def _qkv(B=1, Hq=2, Hkv=1, N=200, D=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, N, D, generator=gen) for h in (Hq, Hkv, Hkv))


def _naive_dense(q, k, v):
    """Per-row softmax loop; q, k, v [N, D] of one head."""
    N, D = q.shape
    out = torch.empty_like(q)
    for i in range(N):
        p = torch.softmax(q[i] @ k[: i + 1].T / math.sqrt(D), -1)
        out[i] = p @ v[: i + 1]
    return out


def _naive_official_keep_all(q, k, v, block, step):
    """Official semantics with every candidate selected, written as explicit key multiplicities."""
    N, D = q.shape
    G = block * step
    P = N - N % G
    out = _naive_dense(q, k, v)                                          # tail rows stay dense
    for i in range(P):
        g, j = i // G, torch.arange(P)
        w = ((j <= i) & ((j < G) | (j >= g * G))).float()                # stage 1
        w[block:max(block, g * G - block)] += 1.0                        # stage 3 (selected candidates)
        s = q[i] @ k[:P].T / math.sqrt(D)
        p = torch.exp(s - s[w > 0].max()) * w
        out[i] = p @ v[:P] / p.sum()
    return out


def test_dense_fp32_matches_naive():
    q, k, v = _qkv(Hq=1, N=70)
    torch.testing.assert_close(dense_attention_reference(q, k, v, chunk=16, out_dtype=torch.float32)[0, 0], _naive_dense(q[0, 0], k[0, 0], v[0, 0]))


@pytest.mark.parametrize("N", [200, 256, 20], ids=["tail", "no-tail", "all-tail"])
def test_clean_keep_all_equals_dense(N):
    q, k, v = _qkv(B=2, Hq=4, Hkv=2, N=N)
    out, sel, _ = official_anchor_attention(q, k, v, theta=math.inf, block=16, step=2, variant="clean")
    torch.testing.assert_close(out, dense_attention_reference(q, k, v, out_dtype=torch.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block,step", [(16, 2), (16, 4)])
def test_official_keep_all_is_double_counting_and_gap(block, step):
    q, k, v = _qkv(N=3 * block * step + 7)
    out, sel, _ = official_anchor_attention(q, k, v, theta=1e9, block=block, step=step)
    for h in range(2):
        want = _naive_official_keep_all(q[0, h], k[0, 0], v[0, 0], block, step)
        torch.testing.assert_close(out[0, h], want, rtol=1e-5, atol=1e-5)


def test_official_group1_differs_from_dense_by_double_counting_only():
    block, step = 16, 4
    G = block * step
    q, k, v = _qkv(Hq=1, N=2 * G)
    out, sel, _ = official_anchor_attention(q, k, v, theta=1e9, block=block, step=step)
    dense = dense_attention_reference(q, k, v, out_dtype=torch.float32)
    torch.testing.assert_close(out[..., :G, :], dense[..., :G, :], rtol=1e-5, atol=1e-5)  # group 0 exact
    assert sel[0, 0, 1].nonzero().flatten().tolist() == list(range(block, G - block))
    # group 1: dense causal rows plus keys [block, G - block) counted a second time
    qf, kf, vf = q[0, 0, G:], k[0, 0], v[0, 0]
    s = qf @ kf.T / math.sqrt(q.shape[-1])
    w = (torch.arange(2 * G)[None, :] <= torch.arange(G, 2 * G)[:, None]).float()
    w[:, block:G - block] += 1
    p = torch.exp(s - s.amax(-1, keepdim=True)) * w
    torch.testing.assert_close(out[0, 0, G:], p @ vf / p.sum(-1, keepdim=True), rtol=1e-5, atol=1e-5)
    assert (out[..., G:, :] - dense[..., G:, :]).abs().max() > 1e-3


def test_selection_matches_definition_and_gqa_and_chunking():
    block, step = 16, 2
    G = block * step
    q, k, v = _qkv(Hq=2, Hkv=1, N=4 * G)
    theta = 1.5
    out, sel, stats = official_anchor_attention(q, k, v, theta=theta, block=block, step=step)
    out2, sel2, _ = official_anchor_attention(q, k.expand(-1, 2, -1, -1), v.expand(-1, 2, -1, -1),
                                              theta=theta, block=block, step=step, chunk_groups=3)
    torch.testing.assert_close(out, out2)
    assert torch.equal(sel, sel2)
    scale = q.shape[-1] ** -0.5
    for h in range(2):
        s = q[0, h] @ k[0, 0].T * scale                                  # [N, N]
        i, j = torch.arange(4 * G)[:, None], torch.arange(4 * G)[None, :]
        s1 = (j <= i) & ((j < G) | (j >= (i // G) * G))
        anchor = s.masked_fill(~s1, float("-inf")).amax(-1)
        for g in range(4):
            qbar = q[0, h, g * G:(g + 1) * G].view(step, block, -1).mean(1)
            abar = anchor[g * G:(g + 1) * G].view(step, block).mean(1)
            hit = (qbar @ k[0, 0].T * scale + theta >= abar[:, None]).any(0)
            want = torch.zeros(4 * G, dtype=torch.bool)
            lo, hi = block, max(block, g * G - block)
            want[lo:hi] = hit[lo:hi]
            assert torch.equal(sel[0, h, g], want), (h, g)
    assert 0 < sel.sum() < sel.numel()
    assert 0 < stats.density <= 1.5 and stats.extra["official_ratio"] > 0


def test_rejects_unknown_variant():
    q, k, v = _qkv(N=64)
    with pytest.raises(ValueError, match="variant"):
        official_anchor_attention(q, k, v, theta=1.0, block=16, step=2, variant="nope")
