"""Dense attention vs a naive fp32 reference: GQA, chunked prefill (Lq < Lk), stats."""
from __future__ import annotations

import math

import pytest
import torch

import methods.dense as dense_mod
from anchor.kernels import fa4 as fa4_mod
from methods import get_method, list_methods
from methods.dense import BACKENDS, Dense, dense_attention, resolve_backend


def naive_attention(q, k, v, sm_scale=None):
    """fp64 softmax attention with an explicit bottom-right causal mask and repeated K/V."""
    _, hq, q_len, d = q.shape
    hkv, k_len = k.shape[1], k.shape[2]
    rep = hq // hkv
    k = k.double().repeat_interleave(rep, dim=1)
    v = v.double().repeat_interleave(rep, dim=1)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    scores = q.double() @ k.transpose(-1, -2) * scale
    pos_q = torch.arange(q_len)[:, None] + (k_len - q_len)
    scores = scores.masked_fill(torch.arange(k_len)[None, :] > pos_q, float("-inf"))
    return (scores.softmax(-1) @ v).float()


def _qkv(batch, hq, hkv, q_len, k_len, d=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, q_len, d, generator=g).to(dtype)
    k = torch.randn(batch, hkv, k_len, d, generator=g).to(dtype)
    v = torch.randn(batch, hkv, k_len, d, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (8, 2)])  # GQA ratios 1, 3, 4
@pytest.mark.parametrize("q_len,k_len", [(37, 37), (1, 53), (16, 53), (29, 101), (101, 101)])
@pytest.mark.parametrize("backend", ["auto", "math"])
def test_dense_matches_naive_reference(hq, hkv, q_len, k_len, backend):
    q, k, v = _qkv(2, hq, hkv, q_len, k_len)
    method = Dense(backend=backend)
    out, stats = method(q, k, v)
    torch.testing.assert_close(out, naive_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert stats.density == 1.0 and stats.dense_fallback == 0
    assert stats.total_pairs().shape == (2, hq)


def test_custom_scale_and_noncontiguous_inputs():
    q, k, v = _qkv(2, 6, 2, 40, 40)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # HF hands over transposed views
    out = dense_attention(q_t, k, v, sm_scale=0.3)
    torch.testing.assert_close(out, naive_attention(q, k, v, sm_scale=0.3), rtol=1e-5, atol=1e-5)


def test_chunked_prefill_rows_equal_full_prefill_rows():
    """Queries at the end of a longer sequence see exactly what they saw in a full prefill."""
    q, k, v = _qkv(1, 8, 2, 90, 90)
    full = dense_attention(q, k, v)
    tail = dense_attention(q[:, :, 60:], k, v)
    torch.testing.assert_close(tail, full[:, :, 60:], rtol=1e-5, atol=1e-6)


def test_bf16_close_to_reference():
    q, k, v = _qkv(2, 6, 2, 33, 65, dtype=torch.bfloat16)
    out = dense_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), naive_attention(q, k, v), rtol=2e-2, atol=2e-2)


def test_registry_and_config():
    assert "dense" in list_methods()
    method = get_method({"name": "dense", "backend": "auto"})
    assert isinstance(method, Dense) and method.backend == "auto"
    with pytest.raises(TypeError, match="backend"):
        get_method({"name": "dense"})  # no default: a missing YAML key fails at start-up


def test_bad_backends_fail_clearly():
    with pytest.raises(ValueError, match="unknown dense backend"):
        Dense(backend="fast")
    q, k, v = _qkv(1, 2, 1, 8, 8)
    for backend in set(BACKENDS) - {"auto", "math"}:  # q is on the CPU
        with pytest.raises(ValueError, match="needs CUDA"):
            dense_attention(q, k, v, backend=backend)


def test_auto_without_fa4_runs_sdpa_and_says_so():
    q, k, v = _qkv(1, 4, 2, 16, 16)
    method = Dense(backend="auto")
    assert method.last_backend is None
    out, _ = method(q, k, v)
    assert method.last_backend == "sdpa" == resolve_backend("auto", q, k, v)
    assert resolve_backend("math", q, k, v) == "math"
    torch.testing.assert_close(out, naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_auto_runs_fa4_where_it_can(monkeypatch):
    """The selection alone (no GPU here): where FA4 reports no problem, ``auto`` runs it."""
    calls = []

    def fake_fa4(q, k, v, *, sm_scale, causal):
        calls.append(causal)
        return naive_attention(q, k, v, sm_scale)
    monkeypatch.setattr(dense_mod, "fa4_dense_problem", lambda q: None)
    monkeypatch.setattr(dense_mod, "fa4_dense", fake_fa4)
    q, k, v = _qkv(1, 4, 2, 16, 24)
    method = Dense(backend="auto")
    out, stats = method(q, k, v, sm_scale=0.3)
    assert method.last_backend == "fa4" and calls == [True] and stats.density == 1.0
    torch.testing.assert_close(out, naive_attention(q, k, v, 0.3))
    Dense(backend="math")(q, k, v)
    assert calls == [True]                                  # pinned backends never run FA4


def test_fa4_backend_errors_name_the_cause(monkeypatch):
    q, k, v = _qkv(1, 4, 2, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="'fa4' needs CUDA"):
        Dense(backend="fa4")(q, k, v)
    # Pretend the device is a Hopper GPU without the package: the error names the extra.
    monkeypatch.setattr(dense_mod, "_check_backend", lambda backend, device, gqa: None)
    monkeypatch.setattr(fa4_mod, "_device_problem", lambda device, archs: None)
    monkeypatch.setattr(fa4_mod, "_import_problem", lambda: "ModuleNotFoundError: No module named 'flash_attn'")
    with pytest.raises(ImportError, match=r'pip install -e "\.\[fa4\]"'):
        Dense(backend="fa4")(q, k, v)


def test_shape_errors_are_clear():
    q, k, v = _qkv(1, 6, 4, 8, 8)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        dense_attention(q, k, v)
    q, k, v = _qkv(1, 4, 2, 9, 8)
    with pytest.raises(ValueError, match="more queries"):
        dense_attention(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cudnn", "flash", "efficient", "math"])
@pytest.mark.parametrize("q_len,k_len", [(256, 256), (96, 256)])
@pytest.mark.parametrize("hq,hkv", [(8, 8), (8, 2)])
def test_cuda_backends_match_reference(backend, q_len, k_len, hq, hkv):
    q, k, v = _qkv(2, hq, hkv, q_len, k_len, d=64, dtype=torch.bfloat16)
    ref = naive_attention(q.float(), k.float(), v.float())
    if backend == "efficient" and hq != hkv:  # no native GQA in that kernel: refused, not repeated
        with pytest.raises(ValueError, match="no native GQA"):
            dense_attention(q.cuda(), k.cuda(), v.cuda(), backend=backend)
        return
    out = dense_attention(q.cuda(), k.cuda(), v.cuda(), backend=backend)
    torch.testing.assert_close(out.float().cpu(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("q_len,k_len", [(256, 256), (96, 301)])
def test_fa4_backend_matches_reference(q_len, k_len):
    if not fa4_mod.fa4_available("cuda"):
        pytest.skip("needs FlashAttention-4 on sm90/sm100")
    q, k, v = _qkv(2, 8, 2, q_len, k_len, d=64, dtype=torch.bfloat16)
    method = Dense(backend="auto")
    out, _ = method(q.cuda(), k.cuda(), v.cuda())
    assert method.last_backend == "fa4"
    torch.testing.assert_close(out.float().cpu(), naive_attention(q.float(), k.float(), v.float()),
                               rtol=2e-2, atol=2e-2)


def test_stats_extras():
    q, k, v = _qkv(1, 4, 2, 20, 20)
    assert Dense(backend="auto")(q, k, v)[1].extra == {"upstream_ratio": 1.0, "degenerate_dense": 0.0}
