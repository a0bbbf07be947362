"""Wall-clock timing of device work (synchronised), shared by the runners."""
from __future__ import annotations

import time

import torch

from anchor.stats import AttentionStats


def sync(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(method, x, layer_idx: int, device: torch.device) -> tuple[torch.Tensor, AttentionStats, float]:
    """Run ``method`` on captured layer inputs ``x`` (``LayerQKV``); return ``(out, stats, ms)``,
    ``ms`` the synchronised wall time including the method's estimation."""
    sync(device)
    start = time.perf_counter()
    out, stats = method(x.q, x.k, x.v, sm_scale=x.sm_scale, layer_idx=layer_idx)
    sync(device)
    return out, stats, (time.perf_counter() - start) * 1e3
