"""Merge two partial attention results over disjoint key sets: ``(out1, lse1) + (out2, lse2)``.

A partial result over keys ``S`` is its normalised output ``o = softmax(s_S) @ v_S`` and its
log-sum-exp ``l = log sum_{j in S} exp(s_j)``. Over ``S1 u S2`` (disjoint)::

    l = log(exp(l1) + exp(l2)),    o = exp(l1 - l) * o1 + exp(l2 - l) * o2

computed with the larger of ``l1, l2`` subtracted first. A partial with ``l = -inf`` saw no key
and contributes nothing (its output is ignored, even if it is not zero); if both are ``-inf`` the
row outputs zeros with ``l = -inf``, the convention of FA4 and of ``anchor.ops.sparse_attention``.

LSE units: natural log (FA4, ``torch.logsumexp``) by default, log2 (this project's Triton kernels)
with ``base2=True``; both inputs and the merged LSE use the same units. ``_lse_merge_kernel`` is
the Triton kernel, ``merge_partials_reference`` its fp32 PyTorch definition.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from anchor.checks import use_triton

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
BLOCK_M = 32          # rows per program


@triton.jit
def _lse_merge_kernel(
    O1, L1, O2, L2, Out, Lout,  #
    s_o1b, s_o1h, s_o1n, s_l1b, s_l1h, s_l1n,  #
    s_o2b, s_o2h, s_o2n, s_l2b, s_l2h, s_l2n,  #
    s_ob, s_oh, s_on, s_lob, s_loh, s_lon,  #
    n_heads, n_rows,  #
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BASE2: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    io_mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    l1 = tl.load(L1 + b * s_l1b + h * s_l1h + rows * s_l1n, mask=row_ok, other=float("-inf"))
    l2 = tl.load(L2 + b * s_l2b + h * s_l2h + rows * s_l2n, mask=row_ok, other=float("-inf"))
    if not BASE2:                                   # work in log2 units
        l1 = l1 * 1.4426950408889634
        l2 = l2 * 1.4426950408889634
    m = tl.maximum(l1, l2)
    m = tl.where(m == float("-inf"), 0.0, m)        # both empty: weights 0, lse -inf below
    w1 = tl.math.exp2(l1 - m)
    w2 = tl.math.exp2(l2 - m)
    total = w1 + w2
    safe = tl.where(total > 0, total, 1.0)          # total = 0 only where w1 = w2 = 0
    o1 = tl.load(O1 + b * s_o1b + h * s_o1h + rows[:, None] * s_o1n + offs_d[None, :], mask=io_mask, other=0.0)
    o2 = tl.load(O2 + b * s_o2b + h * s_o2h + rows[:, None] * s_o2n + offs_d[None, :], mask=io_mask, other=0.0)
    c1 = (w1 / safe)[:, None]
    c2 = (w2 / safe)[:, None]
    out = tl.where(c1 > 0, o1.to(tl.float32) * c1, 0.0) + tl.where(c2 > 0, o2.to(tl.float32) * c2, 0.0)
    tl.store(Out + b * s_ob + h * s_oh + rows[:, None] * s_on + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=io_mask)
    lse = tl.where(total > 0, m + tl.math.log2(safe), float("-inf"))
    if not BASE2:
        lse = lse * 0.6931471805599453
    tl.store(Lout + b * s_lob + h * s_loh + rows * s_lon, lse, mask=row_ok)


def _check_partials(out1, lse1, out2, lse2) -> None:
    if out1.dim() != 4 or out1.shape != out2.shape:
        raise ValueError(f"outputs must both be [B, H, N, D], got {tuple(out1.shape)} and {tuple(out2.shape)}")
    if lse1.shape != out1.shape[:3] or lse2.shape != out1.shape[:3]:
        raise ValueError(f"LSEs must be [B, H, N] = {tuple(out1.shape[:3])}, got {tuple(lse1.shape)} "
                         f"and {tuple(lse2.shape)}")
    if lse1.dtype != torch.float32 or lse2.dtype != torch.float32:
        raise ValueError(f"LSEs must be fp32, got {lse1.dtype} and {lse2.dtype}")
    if len({t.device for t in (out1, lse1, out2, lse2)}) != 1:
        raise ValueError("outputs and LSEs must be on one device")


def merge_partials_reference(out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor,
                             *, base2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 merge (module docstring): ``(out [B, H, N, D] fp32, lse [B, H, N] fp32)``."""
    _check_partials(out1, lse1, out2, lse2)
    exp = torch.exp2 if base2 else torch.exp
    m = torch.maximum(lse1, lse2)
    m = torch.where(m == float("-inf"), 0.0, m)
    w1, w2 = exp(lse1 - m), exp(lse2 - m)
    total = w1 + w2
    safe = torch.where(total > 0, total, 1.0)
    c1, c2 = (w1 / safe)[..., None], (w2 / safe)[..., None]               # [B, H, N, 1]
    out = torch.where(c1 > 0, out1.float() * c1, 0.0) + torch.where(c2 > 0, out2.float() * c2, 0.0)
    lse = torch.where(total > 0, m + (torch.log2(safe) if base2 else torch.log(safe)), float("-inf"))
    return out, lse


def merge_partials(out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor, *,
                   base2: bool = False, backend: str = "auto", out: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets from its two partial results.

    Args:
        out1, out2: ``[B, H, N, D]`` normalised partial outputs (any strides with a unit last
            stride, fp16/bf16/fp32). lse1, lse2: fp32 ``[B, H, N]`` in natural-log units, or log2
            with ``base2``. ``-inf`` marks a partial that saw no key.
        backend: ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``torch`` (the fp32
            reference) or ``auto`` (Triton on CUDA tensors).
        out: optional output buffer ``[B, H, N, D]`` (may be ``out1`` itself: each element is
            read before it is written by the same program); default: new, in ``out1``'s dtype.

    Returns:
        ``(out, lse)``: merged output (``out1``'s dtype, or ``out``'s) and fp32 LSE in the input units.
    """
    _check_partials(out1, lse1, out2, lse2)
    if out is None:
        out = torch.empty(out1.shape, dtype=out1.dtype, device=out1.device)
    elif out.shape != out1.shape or out.device != out1.device:
        raise ValueError(f"out must be {tuple(out1.shape)} on {out1.device}, got {tuple(out.shape)} on {out.device}")
    if not use_triton(backend, out1):
        merged, lse = merge_partials_reference(out1, lse1, out2, lse2, base2=base2)
        return out.copy_(merged), lse
    if any(t.stride(-1) != 1 for t in (out1, out2, out)):
        raise ValueError("outputs need a unit stride on the head dimension")
    B, H, N, D = out1.shape
    lse = torch.empty(B, H, N, dtype=torch.float32, device=out1.device)
    _lse_merge_kernel[(triton.cdiv(N, BLOCK_M), B * H)](
        out1, lse1, out2, lse2, out, lse,
        out1.stride(0), out1.stride(1), out1.stride(2), lse1.stride(0), lse1.stride(1), lse1.stride(2),
        out2.stride(0), out2.stride(1), out2.stride(2), lse2.stride(0), lse2.stride(1), lse2.stride(2),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
        H, N, HEAD_DIM=D, BLOCK_D=triton.next_power_of_2(D), BLOCK_M=BLOCK_M, BASE2=base2)
    return out, lse


def lse_natural_to_log2(lse: torch.Tensor) -> torch.Tensor:
    """Natural-log LSE (FA4, ``torch.logsumexp``) -> log2 units (``anchor.ops``); ``-inf`` stays."""
    return lse * LOG2E


def lse_log2_to_natural(lse: torch.Tensor) -> torch.Tensor:
    """log2 LSE (``anchor.ops``) -> natural-log units (FA4); ``-inf`` stays."""
    return lse * LN2
