"""The interface every prefill attention method implements.

Layout is ``[B, H, N, D]`` everywhere. K/V keep their own (fewer) heads: query head ``h`` reads
KV head ``h // (Hq // Hkv)``; no method materialises repeated K/V.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from anchor.stats import AttentionStats


class PrefillMethod(Protocol):
    """A causal prefill attention.

    ``__call__(q, k, v, *, sm_scale, layer_idx)`` takes ``q [B, Hq, Lq, D]`` and
    ``k, v [B, Hkv, Lk, D]`` with ``Lq <= Lk`` (queries are the last ``Lq`` positions; the causal
    mask is aligned bottom-right) and returns ``(out [B, Hq, Lq, D], AttentionStats)``.

    Methods used in recall studies also offer ``attended(q, k, v, *, sm_scale=None) -> AttendedSet``.
    """

    name: str

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]: ...


@dataclass
class AttendedSet:
    """The keys each query row of one call attends to, for offline recall studies.

    ``row_mask(b, h, rows)`` returns bool ``[len(rows), n_keys]`` for batch ``b``, query head ``h``
    and the int64 query-row indices ``rows`` (0-based among the ``Lq`` queries). Causality is
    included: no row ever attends a key after its position.
    """

    n_keys: int
    row_mask: Callable[[int, int, torch.Tensor], torch.Tensor]


def causal_attended(q_len: int, k_len: int) -> AttendedSet:
    """Every causally visible key (dense attention); queries are the last ``q_len`` positions."""
    def row_mask(b: int, h: int, rows: torch.Tensor) -> torch.Tensor:
        keys = torch.arange(k_len, device=rows.device)
        return keys[None, :] <= (rows + k_len - q_len)[:, None]
    return AttendedSet(n_keys=k_len, row_mask=row_mask)
