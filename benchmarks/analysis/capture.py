"""Capture post-RoPE q/k/v of a Hugging Face model's attention layers during one prefill."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from anchor.stats import AttentionStats, dense_stats
from methods.dense import dense_attention
from methods.hf_patch import patched


@dataclass
class LayerQKV:
    """One layer's attention inputs: ``q [B, Hq, N, D]``, ``k, v [B, Hkv, N, D]``, softmax scale."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    sm_scale: float


class _Recorder:
    """A prefill "method" that keeps q/k/v of the chosen layers and returns dense attention."""

    name = "capture"

    def __init__(self, layers: set[int] | None):
        self.layers = layers
        self.captured: dict[int, LayerQKV] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        if self.layers is None or layer_idx in self.layers:
            scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
            self.captured[layer_idx] = LayerQKV(q.clone(), k.clone(), v.clone(), scale)
        out = dense_attention(q, k, v, sm_scale=sm_scale)
        return out, dense_stats(q.shape[0], q.shape[1], q.shape[2], k.shape[2], fallback=False)


@torch.no_grad()
def capture_qkv(model, input_ids: torch.Tensor, layers: list[int] | None = None) -> dict[int, LayerQKV]:
    """Run one dense prefill of ``input_ids [B, N]`` and return ``{layer_idx: LayerQKV}``.

    ``layers=None`` captures every layer. Tensors stay on the model's device.
    """
    recorder = _Recorder(set(layers) if layers is not None else None)
    with patched(model, recorder):
        model(input_ids=input_ids, use_cache=False)
    if not recorder.captured:
        raise RuntimeError("no attention layer was captured: does the model use AttentionInterface?")
    return dict(sorted(recorder.captured.items()))
