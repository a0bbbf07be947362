"""AnchorAttention hyperparameters and the key regions they define.

Defaults are not set here: they live in ``conf/method/anchor.yaml`` (theta 12, step 16, block 128,
initial and local regions of ``block_size * step`` tokens, the authors' setting, dense tail).

Regions, for a query ``i`` in group ``g = i // G`` with ``G = block_size * step``:

* initial region: keys ``[0, min(I, i + 1))`` with ``I = init_size``;
* local region: keys ``[max(I, L_g), i]`` with ``L_g = max(0, (g + 1) * G - W)``, ``W = local_size``
  (with ``W = G`` this is the query's own ``G``-aligned chunk, as in the authors' kernels);
* candidates of the group: keys ``[I, L_g)``, empty when ``L_g <= I``.

The three sets are disjoint, so every key is counted exactly once.

Tail rules (``tail``), for the last ``T = N mod G`` rows of an ``N``-token prefill, which do not
fill a group (``P = N - T``; see ``anchor/tail.py``):

* ``dense``: rows ``[0, P)`` run AnchorAttention on the first ``P`` tokens, rows ``[P, N)`` attend
  every causal key. This is what the authors' model wrapper does and what the paper's RULER,
  LongBench and NIAH numbers were measured with (the question of a prompt sits in these rows).
* ``sparse``: every row belongs to a group; the last group is partial and shares one pooled stripe
  selection like any other (``P = N``).
* ``query_aware`` (ours): rows ``[0, P)`` as in ``dense``; the tail rows are split into blocks of
  ``tail_block_size`` rows, each block selects its own candidates of group ``P // G`` (no OR with
  other blocks) against its pooled anchor, and each row attends its regions plus its block's keys.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

TAIL_RULES = ("dense", "sparse", "query_aware")
BLOCK_SIZES = (16, 32, 64, 128)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class AnchorParams:
    """AnchorAttention hyperparameters.

    Args:
        theta: selection margin in natural-log units of the scaled logit; key ``j`` is kept for a
            group if some pooled row ``r`` has ``qbar_r . k_j * scale + theta >= abar_r``
            (a real number, ``inf`` keeps every candidate; stored as float).
        step: query blocks per group sharing one key selection (int >= 1).
        block_size: rows pooled into one query block (16, 32, 64 or 128).
        init_size: tokens of the initial region (int, multiple of ``block_size``); ``None`` means
            ``block_size * step``.
        local_size: tokens of the local window (int); ``None`` means ``block_size * step``.
            Must be ``>= block_size * step`` so each query's diagonal lies in its local region.
        tail: rule for the last ``N mod (block_size * step)`` rows: ``dense``, ``sparse`` or
            ``query_aware`` (module docstring).
        tail_block_size: rows pooled per selection block of the ``query_aware`` tail (16, 32, 64
            or 128; checked for every rule).
        sm_scale: softmax scale (positive real); ``None`` means ``1 / sqrt(head_dim)``.

    Raises:
        ValueError: naming the offending key, for a wrong type or value.
    """

    theta: float
    step: int
    block_size: int
    init_size: int | None
    local_size: int | None
    tail: str
    tail_block_size: int
    sm_scale: float | None = None

    def __post_init__(self):
        self._check_types()
        object.__setattr__(self, "theta", float(self.theta))
        b = self.block_size
        if b not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {b}")
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
        if self.tail not in TAIL_RULES:
            raise ValueError(f"tail must be one of {TAIL_RULES}, got {self.tail!r}")
        if self.tail_block_size not in BLOCK_SIZES:
            raise ValueError(f"tail_block_size must be one of {BLOCK_SIZES}, got {self.tail_block_size}")
        if self.sm_scale is not None and not (math.isfinite(self.sm_scale) and self.sm_scale > 0):
            raise ValueError(f"sm_scale must be a positive finite number or None, got {self.sm_scale}")

    def _check_types(self) -> None:
        """Type of every field, in declaration order, so the first bad key is the one named."""
        checks = [("theta", _is_real(self.theta), "a real number"),
                  ("step", _is_int(self.step), "an int"),
                  ("block_size", _is_int(self.block_size), "an int"),
                  ("init_size", self.init_size is None or _is_int(self.init_size), "an int or None"),
                  ("local_size", self.local_size is None or _is_int(self.local_size), "an int or None"),
                  ("tail", isinstance(self.tail, str), "a string"),
                  ("tail_block_size", _is_int(self.tail_block_size), "an int"),
                  ("sm_scale", self.sm_scale is None or _is_real(self.sm_scale), "a real number or None")]
        for name, ok, what in checks:
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")

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

    def has_candidates(self, n: int) -> bool:
        """True if some group (or, for ``query_aware``, the tail) of an ``n``-token prefill has a
        non-empty candidate range; if none has, every row attends its whole causal row (the
        regions partition it) and the result is dense attention by construction."""
        p = self.prefix_len(n)
        last = p // self.group if (self.tail == "query_aware" and p < n) else math.ceil(p / self.group) - 1
        if last < 0:
            return False
        lo, hi = self.candidate_range(last)                     # ranges grow with the group index
        return hi > lo

    def prefix_len(self, n: int) -> int:
        """``P``: rows (and keys) the grouped AnchorAttention runs on for an ``n``-token prefill;
        rows ``[P, n)`` follow the tail rule. ``n`` for ``sparse``, else ``n - n mod group``."""
        return n if self.tail == "sparse" else n - n % self.group
