"""Shared inputs and markers for the method tests."""
import pytest
import torch

from anchor.ops import triton_available

needs_triton = pytest.mark.skipif(not triton_available(torch.empty(0)), reason="needs CUDA or TRITON_INTERPRET=1")


def qkv(B, Hq, Hkv, Lq, Lk, D=16, dtype=torch.float32, seed=0):
    """Seeded iid normal ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g)
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)
