"""Input validation shared by every attention entry point."""
from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]``; return ``(B, Hq, Hkv, Lq, Lk, D)``.

    Raises ``ValueError`` with the offending shapes on any mismatch.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected 4-D [B, H, N, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)} "
                         f"v{tuple(v.shape)}")
    B, Hq, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    if k.shape != v.shape:
        raise ValueError(f"k{tuple(k.shape)} and v{tuple(v.shape)} must have the same shape")
    if Bk != B or Dk != D:
        raise ValueError(f"batch/head_dim mismatch: q{tuple(q.shape)} vs k{tuple(k.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if Lq > Lk:
        raise ValueError(f"more queries ({Lq}) than keys ({Lk}): queries must be the last Lq positions")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"dtypes must match and be fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"q, k, v on different devices: {q.device}, {k.device}, {v.device}")
    return B, Hq, Hkv, Lq, Lk, D


def check_triton_inputs(*tensors: torch.Tensor) -> None:
    """Refuse inputs the Triton kernels would answer wrongly instead of returning garbage.

    * bf16 CPU tensors (the Triton interpreter, ``TRITON_INTERPRET=1``): the interpreter emulates
      bf16 incorrectly (relative errors of order 1e8); use fp16/fp32 there, or the PyTorch backend.
    * inputs that require grad while grad mode is on: the kernels are forward-only (prefill
      inference); their output would silently lack a ``grad_fn``. Run under ``torch.no_grad()``
      / ``torch.inference_mode()``, or use the PyTorch reference backend for gradients.
    """
    if any(t.dtype == torch.bfloat16 and not t.is_cuda for t in tensors):
        raise ValueError("bf16 inputs are not supported by the Triton interpreter (CPU tensors): its bf16 "
                         "emulation returns wrong results; use fp16/fp32 or the torch backend")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError("the Triton kernels are forward-only (prefill inference only): an input requires "
                           "grad; run under torch.no_grad() or use the torch backend for autograd")


def triton_available(x: torch.Tensor) -> bool:
    """True if the Triton kernels can run on ``x`` (CUDA, or CPU under the interpreter)."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """Resolve a ``backend`` setting: ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``),
    ``torch`` (the fp32 reference) or ``auto`` (Triton on CUDA tensors, the reference otherwise:
    the interpreter is for tests, far too slow for real work)."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be auto, triton or torch, got {backend!r}")
    if backend == "triton" and not triton_available(x):
        raise RuntimeError("backend 'triton' needs CUDA tensors or TRITON_INTERPRET=1")
    return backend == "triton" or (backend == "auto" and x.is_cuda)
