"""AnchorAttention hyperparameters and the key regions they define.

Defaults are not set here: they live in ``conf/method/anchor.yaml`` (theta 12, step 16, block 128,
initial and local regions of ``block_size * step`` tokens, the authors' setting).

Regions, for a query ``i`` in group ``g = i // G`` with ``G = block_size * step``:

* initial region: keys ``[0, min(I, i + 1))`` with ``I = init_size``;
* local region: keys ``[max(I, L_g), i]`` with ``L_g = max(0, (g + 1) * G - W)``, ``W = local_size``
  (with ``W = G`` this is the query's own ``G``-aligned chunk, as in the authors' kernels);
* candidates of the group: keys ``[I, L_g)``, empty when ``L_g <= I``.

The three sets are disjoint, so every key is counted exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AnchorParams:
    """AnchorAttention hyperparameters.

    Args:
        theta: selection margin in natural-log units of the scaled logit; key ``j`` is kept for a
            group if some pooled row ``r`` has ``qbar_r . k_j * scale + theta >= abar_r``.
        step: query blocks per group sharing one key selection.
        block_size: rows pooled into one query block (power of two, 16..128).
        init_size: tokens of the initial region; ``None`` means ``block_size * step``.
        local_size: tokens of the local window; ``None`` means ``block_size * step``.
            Must be ``>= block_size * step`` so each query's diagonal lies in its local region.
        sm_scale: softmax scale; ``None`` means ``1 / sqrt(head_dim)``.
    """

    theta: float
    step: int
    block_size: int
    init_size: int | None
    local_size: int | None
    sm_scale: float | None = None

    def __post_init__(self):
        b = self.block_size
        if b not in (16, 32, 64, 128):
            raise ValueError(f"block_size must be one of 16, 32, 64, 128, got {b}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if math.isnan(self.theta):
            raise ValueError("theta must be a number (+inf keeps every candidate, -inf none), got nan")
        if self.init < 0 or self.init % b:
            raise ValueError(f"init_size must be a non-negative multiple of block_size={b}, got {self.init}")
        if self.local < self.group or self.local % b:
            raise ValueError(
                f"local_size must be a multiple of block_size={b} and >= block_size*step={self.group}, "
                f"got {self.local}")

    @property
    def group(self) -> int:
        """Queries sharing one selection: ``block_size * step``."""
        return self.block_size * self.step

    @property
    def init(self) -> int:
        """Initial-region length in tokens."""
        return self.group if self.init_size is None else int(self.init_size)

    @property
    def local(self) -> int:
        """Local-window length in tokens."""
        return self.group if self.local_size is None else int(self.local_size)

    def scale(self, head_dim: int) -> float:
        """Softmax scale for ``head_dim``."""
        return self.sm_scale if self.sm_scale is not None else head_dim ** -0.5

    def local_start(self, group_idx: int) -> int:
        """``L_g``: first key of the local window of group ``group_idx``."""
        return max(0, (group_idx + 1) * self.group - self.local)

    def candidate_range(self, group_idx: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` scanned by the selection for group ``group_idx`` (may be empty)."""
        lo, hi = self.init, self.local_start(group_idx)
        return lo, max(lo, hi)
