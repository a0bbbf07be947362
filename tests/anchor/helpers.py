"""Shared inputs and error measures for the anchor tests."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from anchor.ops import triton_available
from anchor.sparse_index import SparseIndex

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(torch.empty(0)) and not torch.cuda.is_available(),
                                  reason="needs CUDA or TRITON_INTERPRET=1")
FP32_FLOOR = 16 * torch.finfo(torch.float32).eps


def make_qkv(B: int, Hq: int, Hkv: int, N: int, D: int, dtype: torch.dtype, seed: int, stripes: float = 0.0):
    """Random q, k, v ``[B, H, N, D]``; with ``stripes`` > 0 a sink key and that fraction of keys
    share a direction with the queries, so the selection is neither empty nor full."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g)
    v = torch.randn(B, Hkv, N, D, generator=g)
    if stripes > 0:
        u = torch.randn(D, generator=g)
        u = u / u.norm()
        q = q + 4.0 * u
        picks = torch.randperm(N, generator=g)[: max(1, int(stripes * N))]
        k[:, :, picks] += 6.0 * u
        k[:, :, 0] = 8.0 * u
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Frobenius relative error of ``x`` against ``ref`` (NaN fails every comparison)."""
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def assert_close_to_baseline(out: torch.Tensor, ref32: torch.Tensor, what: str):
    """``out`` must be within twice the error of rounding the fp32 reference to ``out``'s dtype,
    plus a small fp32 floor (the FlashAttention test rule)."""
    baseline = rel_err(ref32.to(out.dtype), ref32)
    err = rel_err(out, ref32)
    bound = 2 * baseline + FP32_FLOOR
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e} (baseline {baseline:.3e})"


def index_on(index: SparseIndex, device: str) -> SparseIndex:
    """``index`` with its tensors moved to ``device``."""
    return dataclasses.replace(index, **{f.name: getattr(index, f.name).to(device)
                                         for f in dataclasses.fields(index) if torch.is_tensor(getattr(index, f.name))})
