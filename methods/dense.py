"""Dense causal attention: the exact baseline and the fallback every other method uses.

``dense_attention`` runs ``torch.nn.functional.scaled_dot_product_attention`` with native GQA
(``enable_gqa=True``; K/V are never repeated by this code) under the chosen SDPA backend, the
``flash_attn`` package's ``flash_attn_func`` (FA2) or FlashAttention-4 (``fa4``,
``anchor.kernels.fa4``). ``auto`` runs FA4 where it can (installed, CUDA sm90/sm100, fp16/bf16,
supported head_dim) and otherwise lets PyTorch pick the SDPA kernel; ``resolve_backend`` says
which ran. The causal mask is aligned bottom-right: with ``Lq < Lk`` (chunked prefill) query
``i`` sits at absolute position ``Lk - Lq + i``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from anchor.checks import check_qkv
from anchor.kernels.fa4 import fa4_dense, fa4_dense_problem
from anchor.stats import AttentionStats, dense_stats
from methods.base import AttendedSet, causal_attended
from methods.registry import register_method

_SDPA_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
BACKENDS = ("auto", *_SDPA_BACKENDS, "flash_attn", "fa4")
# Backends that only exist for CUDA tensors; on CPU only ``auto`` and ``math`` are accepted.
_CUDA_ONLY = ("cudnn", "flash", "efficient", "flash_attn", "fa4")


def _check_backend(backend: str, device: torch.device, gqa: bool) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown dense backend {backend!r}; choose one of {BACKENDS}")
    if backend in _CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"dense backend {backend!r} needs CUDA tensors, got {device.type}; "
                         f"use 'auto' or 'math' there")
    if backend == "efficient" and gqa:
        raise ValueError("dense backend 'efficient': PyTorch's memory-efficient SDPA kernel has no "
                         "native GQA and this harness never repeats K/V; use auto, flash or cudnn")


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None) -> torch.Tensor:
    """``flash_attn_func`` (its causal mask is bottom-right aligned, GQA native), layout [B, H, N, D]."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise ImportError("dense backend 'flash_attn' needs the flash_attn package "
                          "(pip install flash-attn); use backend 'flash' for PyTorch's own kernel") from err
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dense backend 'flash_attn' needs fp16/bf16 inputs, got {q.dtype}")
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          softmax_scale=sm_scale, causal=True)
    return out.transpose(1, 2)


def _causal_mask_args(q: torch.Tensor, q_len: int, k_len: int, backend: str):
    """``(attn_mask, is_causal)`` for a bottom-right aligned causal mask."""
    if q_len == k_len:
        return None, True
    if q_len == 1:  # the single (last) query sees every key
        return None, False
    if q.device.type == "cuda" and backend in ("auto", "flash"):
        # PyTorch's own lower-right bias: the flash kernel (or efficient, under auto) without a
        # mask tensor where it applies. It picks its kernel itself, so pinned efficient/cudnn/math
        # get an explicit mask instead (flash takes no mask).
        return causal_lower_right(q_len, k_len), False
    offset = k_len - q_len
    rows = torch.arange(q_len, device=q.device)[:, None] + offset
    return torch.arange(k_len, device=q.device)[None, :] <= rows, False


def resolve_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> str:
    """The kernel ``dense_attention(q, k, v, backend=backend)`` runs: ``backend`` itself when
    pinned; for ``auto``, ``"fa4"`` if FA4 can run these inputs, else ``"sdpa"`` (PyTorch's own
    choice among its SDPA kernels). Validates the inputs and the backend."""
    _, hq, hkv, _, _, _ = check_qkv(q, k, k if v is None else v)
    _check_backend(backend, q.device, gqa=hq != hkv)
    if backend != "auto":
        return backend
    return "fa4" if fa4_dense_problem(q) is None else "sdpa"


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None, ran: str) -> torch.Tensor:
    """Dense causal attention with the resolved backend ``ran`` (``resolve_backend``)."""
    if ran == "fa4":
        return fa4_dense(q, k, v, sm_scale=sm_scale, causal=True)
    if ran == "flash_attn":
        return _flash_attn(q, k, v, sm_scale)
    setting = "auto" if ran == "sdpa" else ran
    q_len, k_len = q.shape[2], k.shape[2]
    mask, is_causal = _causal_mask_args(q, q_len, k_len, setting)
    ctx = sdpa_kernel(_SDPA_BACKENDS[setting]) if setting != "auto" else contextlib.nullcontext()
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              scale=sm_scale, enable_gqa=q.shape[1] != k.shape[1])


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    sm_scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Exact causal attention, bottom-right aligned, GQA native.

    Args:
        q: ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Lk, D]`` with ``Lq <= Lk`` and ``Hq % Hkv == 0``.
        sm_scale: softmax scale; ``None`` means ``1 / sqrt(D)``.
        backend: one of ``BACKENDS``. ``auto``: FA4 where it can run (``resolve_backend``), else
            PyTorch's SDPA choice; ``cudnn``/``flash``/``efficient``/``math`` pin the SDPA kernel
            (the first three need CUDA; ``efficient`` refuses GQA inputs); ``flash_attn`` uses the
            flash_attn package (FA2); ``fa4`` FlashAttention-4 (CUDA sm90/sm100, fp16/bf16; the
            ``fa4`` extra). A pinned kernel that cannot run the inputs raises.

    Returns:
        ``[B, Hq, Lq, D]`` in the dtype of ``q`` (FA4: a view of a ``[B, Lq, Hq, D]`` tensor).
    """
    return _run(q, k, v, sm_scale, resolve_backend(backend, q, k, v))


@register_method("dense")
class Dense:
    """Dense causal attention as a prefill method (every causal pair computed, no fallback).

    ``stats.extra``: ``upstream_ratio`` = 1 (the full causal computation) and ``degenerate_dense`` = 0
    (dense is the method, not a degenerate sparse one).
    """

    def __init__(self, *, backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"unknown dense backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.last_backend: str | None = None     # kernel of the last call (``resolve_backend``)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """Return ``(out [B, Hq, Lq, D], stats)``; ``layer_idx`` is unused (same for every layer).
        ``self.last_backend`` records the kernel that ran."""
        batch, hq, _, q_len, k_len, _ = check_qkv(q, k, v)
        self.last_backend = resolve_backend(self.backend, q, k, v)
        out = _run(q, k, v, sm_scale, self.last_backend)
        stats = dense_stats(batch, hq, q_len, k_len, fallback=False)
        stats.extra.update(upstream_ratio=1.0, degenerate_dense=0.0)
        return out, stats

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None) -> AttendedSet:
        """Every causal key."""
        return causal_attended(q.shape[2], k.shape[2])

    def __repr__(self) -> str:
        return f"Dense(backend={self.backend!r})"
