"""Timing of device work shared by the runners, the analysis and the kernel benchmarks."""
from __future__ import annotations

import math
import statistics
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


def bench_ms(fn, device: torch.device, args) -> float:
    """Median milliseconds of ``fn()``: ``do_bench`` on CUDA (``args.warmup_ms``, ``args.rep_ms``),
    wall clock over ``args.cpu_reps`` calls on CPU."""
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median"))
    times = []
    for _ in range(args.cpu_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mib(fn, device: torch.device) -> float:
    """Peak memory allocated by one ``fn()`` call above the current allocation, MiB (NaN on CPU)."""
    if device.type != "cuda":
        return math.nan
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
