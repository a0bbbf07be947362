"""Run a prefill method inside a Hugging Face transformers 5.x model.

One attention function is registered as ``"anchor_harness"`` with ``AttentionInterface`` and,
with it, ``sdpa_mask`` under the same name in ``AttentionMaskInterface`` (without a registered mask
function transformers passes ``attention_mask=None`` and padding would be silently dropped).
``patched(model, method, recorder)`` switches the model to it and back.

Dispatch per call (``query [B, Hq, Lq, D]`` after RoPE, ``key/value [B, Hkv, Lk, D]`` including
the cache):
  * ``Lq == 1`` (decode): dense attention, recorded as phase ``decode`` with ``dense_fallback=0``.
  * ``Lq > 1``: the method; phase ``prefill`` if ``Lq == Lk`` else ``chunked_prefill``. A mask
    that is purely causal (what ``sdpa_mask`` builds for chunked prefill) is left to the method.
  * a mask that is not purely causal (padding, sliding window): dense SDPA with that mask,
    recorded with ``dense_fallback=1`` (in decode: applied, but decode is dense anyway).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anchor.stats import AttentionStats, dense_stats
from methods.dense import dense_attention

IMPL_NAME = "anchor_harness"
PREFILL_PHASES = ("prefill", "chunked_prefill")


@dataclass
class CallRecord:
    """One attention call: layer, phase (``prefill``/``chunked_prefill``/``decode``), lengths, stats."""

    layer_idx: int | None
    phase: str
    q_len: int
    k_len: int
    stats: AttentionStats


class StatsRecorder:
    """Collects a ``CallRecord`` per attention call of one forward or ``generate``."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def add(self, record: CallRecord) -> None:
        """Append one call's record."""
        self.records.append(record)

    def reset(self) -> None:
        """Forget every record (reuse the recorder for the next forward)."""
        self.records.clear()

    def by_phase(self, *phases: str) -> list[CallRecord]:
        """Records whose phase is one of ``phases``."""
        return [r for r in self.records if r.phase in phases]

    @staticmethod
    def _pairs(records: list[CallRecord]) -> tuple[int, int]:
        computed = sum(int(r.stats.total_pairs().sum()) for r in records)
        causal = sum(r.stats.causal_pairs * r.stats.total_pairs().numel() for r in records)
        return computed, causal

    def prefill_density(self) -> float:
        """Computed / causal pairs over every prefill call, layer, batch element and head.

        Pair-weighted: long calls count for more than short ones. ``nan`` if no prefill call.
        """
        computed, causal = self._pairs(self.by_phase(*PREFILL_PHASES))
        return computed / causal if causal else float("nan")

    def upstream_ratio(self) -> float | None:
        """Mean of the prefill calls' ``stats.extra["upstream_ratio"]`` (each method's own upstream
        density convention; ``None`` if the method reports none)."""
        ratios = [r.stats.extra["upstream_ratio"] for r in self.by_phase(*PREFILL_PHASES)
                  if "upstream_ratio" in r.stats.extra]
        return sum(ratios) / len(ratios) if ratios else None

    def degenerate_fraction(self) -> float | None:
        """Fraction of prefill calls flagged ``degenerate_dense`` (dense by construction at their
        length, not a fallback); ``None`` if the method never says."""
        flags = [r.stats.extra["degenerate_dense"] for r in self.by_phase(*PREFILL_PHASES)
                 if "degenerate_dense" in r.stats.extra]
        return sum(flags) / len(flags) if flags else None

    def dense_backend(self) -> str | None:
        """The dense kernel the active method last ran (``Dense.last_backend``: fa4 / sdpa / ...),
        or ``None`` for methods that do not say."""
        return getattr(_ACTIVE.method, "last_backend", None) if _ACTIVE is not None else None

    def dense_fallbacks(self) -> int:
        """Number of calls that ran dense attention instead of the method (decode not counted)."""
        return sum(r.stats.dense_fallback for r in self.records)

    def layer_densities(self) -> dict[int | None, float]:
        """Pair-weighted prefill density per layer index."""
        layers: dict[int | None, list[CallRecord]] = {}
        for r in self.by_phase(*PREFILL_PHASES):
            layers.setdefault(r.layer_idx, []).append(r)
        out = {}
        for layer, records in layers.items():
            computed, causal = self._pairs(records)
            out[layer] = computed / causal
        return out

    def summary(self) -> dict[str, float]:
        """Plain numbers for logs: prefill density, fallbacks and call counts per phase."""
        out: dict[str, float] = {"prefill_density": self.prefill_density(),
                                 "dense_fallbacks": self.dense_fallbacks(),
                                 "upstream_ratio": self.upstream_ratio(),
                                 "degenerate_dense": self.degenerate_fraction()}
        for phase in (*PREFILL_PHASES, "decode"):
            out[f"calls_{phase}"] = len(self.by_phase(phase))
        return out


@dataclass
class _Active:
    method: object
    recorder: StatsRecorder | None


_ACTIVE: _Active | None = None


def _causal_reference(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    return torch.arange(k_len, device=device)[None, :] <= rows


def non_causal_mask(mask: torch.Tensor | None, q_len: int, k_len: int) -> torch.Tensor | None:
    """``None`` if ``mask`` is absent or exactly the bottom-right causal mask, else ``mask``.

    Accepts boolean masks (True = attend) and additive float masks (0 = attend, very negative =
    blocked), shaped to broadcast to ``[B, H, Lq, Lk]``.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-2:] != (q_len, k_len):
        raise TypeError(f"{IMPL_NAME}: unsupported attention_mask {type(mask).__name__} "
                        f"{tuple(getattr(mask, 'shape', ()))} for Lq={q_len}, Lk={k_len}")
    causal = _causal_reference(q_len, k_len, mask.device).expand(mask.shape)
    if mask.dtype == torch.bool:
        return None if torch.equal(mask, causal) else mask
    blocked_ok = bool((mask[~causal] <= torch.finfo(mask.dtype).min / 2).all())
    return None if blocked_ok and torch.equal(mask == 0, causal) else mask


def _masked_dense(query, key, value, mask, scale) -> torch.Tensor:
    """Dense SDPA with an explicit (padding) mask, GQA native."""
    enable_gqa = query.shape[1] != key.shape[1]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                          enable_gqa=enable_gqa)


def harness_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None, *,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """The ``AttentionInterface`` function: dispatch to the active method (see module doc).

    Returns ``(out [B, Lq, Hq, D], None)``.
    """
    if _ACTIVE is None:
        raise RuntimeError(f"attention implementation {IMPL_NAME!r} called outside "
                           f"methods.hf_patch.patched(model, method)")
    if dropout:
        raise ValueError(f"{IMPL_NAME}: attention dropout {dropout} is not supported (use model.eval())")
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{IMPL_NAME}: attention logit softcapping is not supported")
    if not kwargs.get("is_causal", getattr(module, "is_causal", True)):
        raise ValueError(f"{IMPL_NAME}: only causal (decoder) attention is supported")
    batch, hq, q_len, _ = query.shape
    k_len = key.shape[-2]
    layer_idx = getattr(module, "layer_idx", None)
    scale = scaling if scaling is not None else getattr(module, "scaling", None)
    mask = non_causal_mask(attention_mask, q_len, k_len)

    if q_len == 1:
        phase = "decode"
        out = (dense_attention(query, key, value, sm_scale=scale) if mask is None
               else _masked_dense(query, key, value, mask, scale))
        stats = dense_stats(batch, hq, q_len, k_len, fallback=False)
    else:
        phase = "prefill" if q_len == k_len else "chunked_prefill"
        if mask is None:
            out, stats = _ACTIVE.method(query, key, value, sm_scale=scale, layer_idx=layer_idx)
            if out.shape != query.shape:
                raise RuntimeError(f"{_ACTIVE.method!r} returned {tuple(out.shape)} for query "
                                   f"{tuple(query.shape)}")
        else:
            out = _masked_dense(query, key, value, mask, scale)
            stats = dense_stats(batch, hq, q_len, k_len, fallback=True)
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.add(CallRecord(layer_idx, phase, q_len, k_len, stats))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``harness_attention`` and ``sdpa_mask`` as ``"anchor_harness"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPL_NAME, harness_attention)
    AttentionMaskInterface.register(IMPL_NAME, sdpa_mask)


def _set_attn_implementation(model, name: str) -> None:
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        # set_attn_implementation only warns when it refuses; the config setter applies it anyway.
        model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        raise RuntimeError(f"could not switch {type(model).__name__} to attention {name!r}")


@contextlib.contextmanager
def patched(model, method, recorder: StatsRecorder | None = None) -> Iterator[StatsRecorder | None]:
    """Run ``model`` with ``method`` for prefill inside the block; restore its attention after.

    Args:
        model: a transformers 5.x ``PreTrainedModel`` using ``AttentionInterface``.
        method: a prefill method (``methods.base.PrefillMethod``).
        recorder: optional ``StatsRecorder`` receiving one record per attention call.

    Yields the recorder. Nesting is allowed; the innermost method is active.
    """
    global _ACTIVE
    register()
    previous_impl = model.config._attn_implementation
    previous_active = _ACTIVE
    _ACTIVE = _Active(method, recorder)
    try:
        _set_attn_implementation(model, IMPL_NAME)
        yield recorder
    finally:
        _ACTIVE = previous_active
        if model.config._attn_implementation != previous_impl:
            _set_attn_implementation(model, previous_impl)
