"""Honest work accounting shared by every prefill attention method.

A method reports how many query-key dot products it really computed, stage by stage
(estimation included), per (batch, query head). Density is that count over the number of
causal pairs of the call; sparsity is ``1 - density``. A dense fallback is counted, never hidden.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def causal_pair_count(q_len: int, k_len: int) -> int:
    """Number of (query, key) pairs visible under a bottom-right aligned causal mask.

    Query ``i`` (0-based among ``q_len``) sits at absolute position ``k_len - q_len + i`` and sees
    keys ``0 .. k_len - q_len + i``.
    """
    if q_len > k_len:
        raise ValueError(f"q_len={q_len} exceeds k_len={k_len}")
    offset = k_len - q_len
    return q_len * (offset + 1) + q_len * (q_len - 1) // 2


@dataclass
class AttentionStats:
    """Computed query-key pairs of one attention call.

    Attributes:
        pairs: stage name -> int64 tensor ``[B, H]`` of dot products computed in that stage
            (for estimation stages a pooled row counts as one query).
        causal_pairs: causal pairs per (batch, head) of this call (``causal_pair_count``).
        dense_fallback: 1 if the call ran dense attention instead of the method, else 0.
    """

    pairs: dict[str, torch.Tensor]
    causal_pairs: int
    dense_fallback: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def total_pairs(self) -> torch.Tensor:
        """``[B, H]`` int64: pairs summed over all stages."""
        tensors = list(self.pairs.values())
        total = torch.zeros_like(tensors[0])
        for t in tensors:
            total = total + t
        return total

    def density_per_head(self) -> torch.Tensor:
        """``[B, H]`` float64: computed pairs / causal pairs, per batch element and head."""
        return self.total_pairs().double().cpu() / max(self.causal_pairs, 1)

    @property
    def density(self) -> float:
        """Computed pairs (all stages) / causal pairs, averaged over batch and heads."""
        return float(self.density_per_head().mean())

    def stage_density(self) -> dict[str, float]:
        """Density contributed by each stage (sums to ``density``)."""
        denom = max(self.causal_pairs, 1)
        return {k: float(v.double().mean().cpu()) / denom for k, v in self.pairs.items()}

    def summary(self) -> dict[str, float]:
        """Plain-number view for logs and ``samples.jsonl``."""
        out = {"density": self.density, "dense_fallback": self.dense_fallback}
        out.update({f"density_{k}": v for k, v in self.stage_density().items()})
        out.update(self.extra)
        return out


def dense_stats(batch: int, heads: int, q_len: int, k_len: int, *, fallback: bool) -> AttentionStats:
    """Stats of a dense causal call: every causal pair computed once."""
    n = causal_pair_count(q_len, k_len)
    pairs = torch.full((batch, heads), n, dtype=torch.int64)
    return AttentionStats(pairs={"dense": pairs}, causal_pairs=n, dense_fallback=int(fallback))
