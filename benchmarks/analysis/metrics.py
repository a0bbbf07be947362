"""Offline attention metrics against dense attention. Each metric has its own name:

* ``density``: computed query-key pairs (all stages) / causal pairs (``AttentionStats``);
* ``mass_recall``: fraction of the dense softmax mass that falls on the keys a method attends,
  averaged over query rows (the meaning of "recall" in FlexPrefill, MInference, XAttention);
* ``output_recall``: fraction of output elements within ``tol`` of dense (what the
  AnchorAttention code calls "recall", tol 0.01);
* ``relative_error``: ``||out - ref||_F / ||ref||_F``.
"""
from __future__ import annotations

import math

import torch

from methods.base import AttendedSet


@torch.no_grad()
def mass_recall(q: torch.Tensor, k: torch.Tensor, attended: AttendedSet, sm_scale: float,
                chunk: int = 512) -> torch.Tensor:
    """fp32 ``[B, Hq]``: mean over query rows of ``sum_{j attended} p_ij`` (dense causal ``p``).

    ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]``; queries are the last ``Lq`` positions.
    """
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    out = torch.zeros(B, Hq, dtype=torch.float64)
    keys = torch.arange(Lk, device=q.device)
    for b in range(B):
        for h in range(Hq):
            kf = k[b, h // (Hq // Hkv)].float()
            total = 0.0
            for s in range(0, Lq, chunk):
                rows = torch.arange(s, min(s + chunk, Lq), device=q.device)
                scores = (q[b, h, rows].float() @ kf.T) * sm_scale                  # [c, Lk]
                scores.masked_fill_(keys[None, :] > (rows + Lk - Lq)[:, None], float("-inf"))
                probs = scores.softmax(-1)
                total += float((probs * attended.row_mask(b, h, rows)).sum())
            out[b, h] = total / Lq
    return out


def output_recall(out: torch.Tensor, ref: torch.Tensor, tol: float = 0.01) -> float:
    """Fraction of output elements with ``|out - ref| < tol`` (the AnchorAttention paper's "recall")."""
    return float(((out.float() - ref.float()).abs() < tol).float().mean())


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Frobenius relative error ``||out - ref||_F / ||ref||_F`` of ``[B, H, ...]`` tensors, in fp32
    one head at a time (bounded memory at 128k tokens). Other ranks raise: a ``[B, N, D]`` slice
    would be looped over token by token."""
    if ref.dim() != 4 or out.shape != ref.shape:
        raise ValueError(f"relative_error expects two [B, H, N, D] tensors, got {tuple(out.shape)} and "
                         f"{tuple(ref.shape)}")
    num = den = 0.0
    for h in range(ref.shape[1]):
        r = ref[:, h].float()
        num += float((out[:, h].float() - r).square().sum())
        den += float(r.square().sum())
    return math.sqrt(num / max(den, 1e-60))
