"""Attention smoke benchmark: a method against dense attention on synthetic q/k/v.

Temporary stand-in that ``bench=ruler`` runs until the real RULER benchmark lands. It measures,
per (length, input case), how much of the causal attention a method computes (density) and how
far its output is from the dense fp32 reference. No model and no text are involved.

Input cases come from ``benchmarks.structured_inputs.make_qkv`` (its module docstring derives
them; GQA: ``q_heads`` query heads over ``kv_heads`` KV heads, ``[B, H, N, D]``):

* ``random``: q, k, v iid standard normal; attention is diffuse and a sparse method has little
  to skip.
* ``structured``: the same draw plus a shared unit direction ``u`` per KV head: every query's
  component along ``u`` is fixed, the sink key (position 0) lies along ``u`` with logit 20 for
  every query, and a random ``stripe_fraction`` of the other keys get logit about 14 (vertical
  stripes); other keys stay near 0. Attention then concentrates on the sink and the stripes, as
  in real prefill maps.
"""
from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.runner.results import ResultWriter, summarize_by
from benchmarks.registry import register_benchmark
from benchmarks.structured_inputs import make_qkv

METRICS = ("density", "rel_err", "max_abs_err", "time_ms")


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense causal attention in fp32 (``Lq == Lk``): ``[B, Hq, N, D]``.

    The math backend (the one used on CPU) materialises ``B * Hq * N^2`` fp32 scores.
    """
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)


def _lengths(bench_cfg: Mapping[str, Any], device: torch.device) -> list[int]:
    """``bench_cfg.lengths`` if set, else ``gpu_lengths`` on CUDA and ``cpu_lengths`` otherwise."""
    lengths = bench_cfg.get("lengths")
    if lengths is None:
        lengths = bench_cfg["gpu_lengths" if device.type == "cuda" else "cpu_lengths"]
    return [int(n) for n in lengths]


def _timed_call(method, q, k, v) -> tuple[torch.Tensor, Any, float]:
    """Run ``method(q, k, v)`` once; return ``(out, stats, wall ms)`` (includes any JIT compile)."""
    if q.is_cuda:
        torch.cuda.synchronize(q.device)
    start = time.perf_counter()
    out, stats = method(q, k, v)
    if q.is_cuda:
        torch.cuda.synchronize(q.device)
    return out, stats, (time.perf_counter() - start) * 1e3


def run_smoke(bench_cfg: Mapping[str, Any], method, writer: ResultWriter, *,
              device: str | torch.device | None = None) -> dict[str, Any]:
    """Run ``method`` on every (length, case) of ``bench_cfg``; one sample each, resumable.

    Args:
        bench_cfg: ``lengths`` (or ``cpu_lengths``/``gpu_lengths``), ``cases``, ``batch``,
            ``q_heads``, ``kv_heads``, ``head_dim``, ``stripe_fraction``, ``seed``.
        method: a ``methods.base.PrefillMethod``.
        writer: where samples go; ids it already holds are skipped.
        device: torch device; ``None`` means CUDA if available, else CPU. Inputs are bf16 on CUDA
            and fp32 on CPU.

    Returns:
        ``{"bench": "smoke", "n_samples", "mean_density", "max_rel_err", "by_case_length"}`` where
        ``by_case_length`` holds the per-(case, length) means of ``METRICS``.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    seed = int(bench_cfg.get("seed", 0))
    shape = dict(B=int(bench_cfg["batch"]), Hq=int(bench_cfg["q_heads"]), Hkv=int(bench_cfg["kv_heads"]),
                 D=int(bench_cfg["head_dim"]))
    work = [(n, case) for n in _lengths(bench_cfg, device) for case in bench_cfg["cases"]]
    done = writer.done_ids()
    todo = [(n, case) for n, case in work if f"{case}-{n}" not in done]
    if len(todo) < len(work):
        print(f"resume: {len(work) - len(todo)} of {len(work)} samples already in {writer.samples_path}")
    for n, case in tqdm(todo, desc="smoke", unit="sample"):
        case_seed = zlib.crc32(f"{seed}/{case}/{n}".encode())  # same inputs on every rerun
        q, k, v = make_qkv(case, N=n, **shape, dtype=dtype, device=device, seed=case_seed,
                           stripe_fraction=float(bench_cfg["stripe_fraction"]))
        out, stats, ms = _timed_call(method, q, k, v)
        if out.shape != q.shape:
            raise RuntimeError(f"method {getattr(method, 'name', method)!r} returned shape "
                               f"{tuple(out.shape)}, expected {tuple(q.shape)}")
        ref = dense_reference(q, k, v)
        diff = out.float() - ref
        writer.append({
            "id": f"{case}-{n}", "length": n, "case": case, "density": stats.density,
            "rel_err": float(diff.norm() / ref.norm()), "max_abs_err": float(diff.abs().max()),
            "time_ms": ms, "stats": stats.summary(),
        })
    ids = {f"{case}-{n}" for n, case in work}
    rows = [r for r in writer.rows() if r["id"] in ids]
    table = summarize_by(rows, ["case", "length"], METRICS)
    print_table(table)
    return {
        "bench": "smoke",
        "n_samples": len(rows),
        "mean_density": sum(r["density"] for r in rows) / max(len(rows), 1),
        "max_rel_err": max((r["rel_err"] for r in rows), default=None),
        "by_case_length": table,
    }


def print_table(table: list[dict[str, Any]]) -> None:
    """Print the per-(case, length) means as a fixed-width table."""
    print(f"{'case':<11}{'length':>8}{'density':>10}{'rel_err':>11}{'max_abs':>11}{'ms':>10}")
    for r in table:
        print(f"{r['case']:<11}{r['length']:>8}{r['density']:>10.4f}{r['rel_err']:>11.2e}"
              f"{r['max_abs_err']:>11.2e}{r['time_ms']:>10.1f}")


register_benchmark("smoke", runner="smoke")
