"""The interface every prefill attention method implements.

Layout is ``[B, H, N, D]`` everywhere. K/V keep their own (fewer) heads: query head ``h`` reads
KV head ``h // (Hq // Hkv)``; no method materialises repeated K/V.
"""
from __future__ import annotations

from typing import Protocol

import torch

from anchor.stats import AttentionStats


class PrefillMethod(Protocol):
    """A causal prefill attention.

    ``__call__(q, k, v, *, sm_scale, layer_idx)`` takes ``q [B, Hq, Lq, D]`` and
    ``k, v [B, Hkv, Lk, D]`` with ``Lq <= Lk`` (queries are the last ``Lq`` positions; the causal
    mask is aligned bottom-right) and returns ``(out [B, Hq, Lq, D], AttentionStats)``.
    """

    name: str

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]: ...
