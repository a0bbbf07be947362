"""Kernel benchmark: AnchorAttention (ours, end to end and stage by stage) vs dense SDPA.

    python -m benchmarks.kernels.bench --lengths 8192,16384,32768,65536,131072 --cases random,structured \\
        --stripe-fractions 0.01,0.05 --thetas 12 --theta-sweep 8,10,12,14,16 --out results/kernels

For every input (length x case x stripe fraction; ``benchmarks.structured_inputs``) and theta:

* ``cudnn_ms`` / ``flash_ms``: causal SDPA with only the cuDNN / flash backend, ``enable_gqa=True``
  (K/V expanded for that baseline alone if the backend refuses GQA: ``*_note`` says so);
* ``ours_ms``: ``anchor.ops.anchor_attention`` (``--dense-if-complete`` passes that option);
  ``stage1_ms``, ``select_ms``, ``sparse_ms``: ``run_stage1``, ``run_selection``, ``run_sparse``
  (stage 3 overwrites stage 1's output, so it is timed as stage 1 + stage 3 minus stage 1);
  ``*_mem_mib``: peak memory of one call above what was allocated before it (output included);
* ``density*``: ``AttentionStats`` of ours (all stages, and per stage);
* ``err_ours`` = ||out - ref||_F / ||ref||_F with ref = cuDNN SDPA output (input dtype), and
  ``err_flash`` = flash vs cuDNN, the noise floor of that comparison;
* on the first ``--ref-kv-heads`` KV groups, against fp32 dense attention of those heads:
  ``err_cudnn_fp32``, ``err_ours_fp32`` and ``err_theirs_fp32``, where "theirs" is the fp32
  emulation of the authors' algorithm (``benchmarks.kernels.official_anchor``, variant "official": dense
  tail, double counting, 128-key gap) with ``theirs_density`` (all pairs they compute, stage 1 and
  dense tail included) and ``theirs_official_ratio`` (the ratio their code reports).

Timing: ``triton.testing.do_bench`` median on CUDA; median of ``--cpu-reps`` wall-clock runs on
CPU (dry runs: ``TRITON_INTERPRET=1``, ``--device cpu --dtype fp32``, small ``--block-size/--step``).
Writes ``kernels_<gpu>.csv`` and ``kernels_<gpu>.md`` (command, versions, table) under ``--out``.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import re
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from anchor import ops
from anchor.params import AnchorParams
from anchor.reference import dense_attention_reference
from benchmarks.analysis.metrics import relative_error
from benchmarks.kernels.official_anchor import official_anchor_attention
from benchmarks.runner.results import environment
from benchmarks.structured_inputs import KINDS, make_qkv
from benchmarks.tables import markdown_table
from benchmarks.timing import bench_ms, peak_mib

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
TABLE_COLUMNS = ["N", "case", "stripe_fraction", "theta", "cudnn_ms", "flash_ms", "ours_ms", "speedup",
                 "stage1_ms", "select_ms", "sparse_ms", "density", "density_anchor", "density_select",
                 "density_sparse", "err_ours", "err_flash", "err_cudnn_fp32", "err_ours_fp32",
                 "err_theirs_fp32", "theirs_density"]


def _list(cast):
    return lambda s: [cast(x) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=_list(int), default=[8192, 16384, 32768, 65536, 131072])
    p.add_argument("--cases", type=_list(str), default=list(KINDS))
    p.add_argument("--stripe-fractions", type=_list(float), default=[0.01, 0.05])
    p.add_argument("--thetas", type=_list(float), default=[12.0])
    p.add_argument("--theta-sweep", type=_list(float), default=[], help="extra thetas at --sweep-length")
    p.add_argument("--sweep-length", type=int, default=32768)
    p.add_argument("--out", type=Path, default=Path("results/kernels"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hq", type=int, default=32)
    p.add_argument("--hkv", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--block-size", type=int, default=128, help="authors' setting: 128")
    p.add_argument("--step", type=int, default=16, help="authors' setting: 16")
    p.add_argument("--ref-kv-heads", type=int, default=1, help="KV groups checked against fp32 (memory)")
    p.add_argument("--dense-if-complete", action="store_true",
                   help="ours: dense SDPA when every candidate is selected (anchor_attention option)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--cpu-reps", type=int, default=3)
    args = p.parse_args(argv)
    unknown = set(args.cases) - set(KINDS)
    if unknown:
        p.error(f"unknown cases {sorted(unknown)}; expected {KINDS}")
    return args


def dense_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str):
    """``(fn, out, note)``: causal SDPA restricted to ``backend`` (math on CPU), run once.

    Tries ``enable_gqa=True``; if the backend refuses, K/V are expanded for this baseline only.
    """
    if q.device.type != "cuda":
        chosen, note = SDPBackend.MATH, "cpu-math"
    else:
        chosen, note = BACKENDS[backend], ""

    def make(kk, vv, gqa):
        def fn():
            with sdpa_kernel(chosen):
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
        return fn

    fn = make(k, v, True)
    try:
        out = fn()
    except RuntimeError as err:
        if isinstance(err, torch.cuda.OutOfMemoryError) or q.shape[1] == k.shape[1]:
            raise
        rep = q.shape[1] // k.shape[1]
        fn = make(k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), False)  # [B, Hq, N, D]
        try:
            out, note = fn(), (note + " kv-expanded").strip()
        except RuntimeError as err2:
            raise RuntimeError(f"SDPA backend {backend!r} refused q{tuple(q.shape)} {q.dtype} with and "
                               f"without GQA: {err2}") from err
    return fn, out, note


def stage_times(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams,
                device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Median ms of each stage (stage 3 overwrites stage 1's output: timed as 1 + 3 minus 1)."""
    stage1 = bench_ms(lambda: ops.run_stage1(q, k, v, params), device, args)
    s1 = ops.run_stage1(q, k, v, params)
    select = bench_ms(lambda: ops.run_selection(q, k, s1, params), device, args)
    sel = ops.run_selection(q, k, s1, params)
    stage13 = bench_ms(lambda: ops.run_sparse(q, k, v, ops.run_stage1(q, k, v, params), sel, params), device, args)
    return {"stage1_ms": stage1, "select_ms": select, "sparse_ms": stage13 - stage1}


def bench_input(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, thetas: list[float],
                args: argparse.Namespace) -> list[dict]:
    """All result rows of one input: dense baselines once, then ours and theirs per theta."""
    device = q.device
    cudnn_fn, ref, cudnn_note = dense_sdpa(q, k, v, "cudnn")
    flash_fn, flash_out, flash_note = dense_sdpa(q, k, v, "flash")
    common = {"err_flash": relative_error(flash_out, ref), "cudnn_note": cudnn_note, "flash_note": flash_note}
    del flash_out
    common["cudnn_ms"] = bench_ms(cudnn_fn, device, args)
    common["flash_ms"] = bench_ms(flash_fn, device, args)
    common["cudnn_mem_mib"] = peak_mib(cudnn_fn, device)
    del cudnn_fn, flash_fn
    rep = q.shape[1] // k.shape[1]
    n_kv = min(args.ref_kv_heads, k.shape[1])
    qs, ks, vs = (x[:, :h].contiguous() for x, h in ((q, rep * n_kv), (k, n_kv), (v, n_kv)))  # first KV groups
    dense32 = dense_attention_reference(qs, ks, vs, out_dtype=torch.float32)   # [B, rep*n_kv, N, D]
    common["err_cudnn_fp32"] = relative_error(ref[:, :rep * n_kv], dense32)
    rows = []
    for theta in thetas:
        params = AnchorParams(theta=theta, step=args.step, block_size=args.block_size,
                              init_size=None, local_size=None)

        def ours():
            return ops.anchor_attention(q, k, v, params, dense_if_complete=args.dense_if_complete)

        out, stats = ours()
        row = dict(common, theta=theta, err_ours=relative_error(out, ref),
                   err_ours_fp32=relative_error(out[:, :rep * n_kv], dense32), **stats.summary())
        del out
        row["ours_ms"] = bench_ms(ours, device, args)
        row["ours_mem_mib"] = peak_mib(ours, device)
        row.update(stage_times(q, k, v, params, device, args))
        theirs, _, tstats = official_anchor_attention(qs, ks, vs, theta, block=args.block_size, step=args.step)
        row.update(err_theirs_fp32=relative_error(theirs, dense32), theirs_density=tstats.density,
                   theirs_official_ratio=tstats.extra["official_ratio"])
        del theirs
        row["speedup"] = row["cudnn_ms"] / row["ours_ms"]
        rows.append(row)
    return rows


def gpu_name(device: torch.device) -> str:
    """Device name for file names: ``NVIDIA-H100-80GB-HBM3``, or ``cpu``."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-")


def write_results(rows: list[dict], args: argparse.Namespace, argv: list[str], device: torch.device
                  ) -> tuple[Path, Path, str]:
    """Write the CSV and the markdown report; return their paths and the table."""
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"kernels_{gpu_name(device)}"
    df = pd.DataFrame(rows)
    first = [c for c in TABLE_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    df.to_csv(stem.with_suffix(".csv"), index=False)
    env = environment({})
    notes = sorted({n for c in ("cudnn_note", "flash_note") for n in df.get(c, []) if n})
    table = markdown_table(df, TABLE_COLUMNS)
    header = [
        "# AnchorAttention kernel benchmark", "",
        f"Command: `python -m benchmarks.kernels.bench {shlex.join(argv)}`", "",
        f"Device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
        f"torch {env['torch']}; triton {env['triton']}; python {env['python']}; "
        f"git {env['git_sha']} (dirty: {env['git_dirty']}); {env['timestamp_utc']}", "",
        f"Shapes: B={args.batch}, Hq={args.hq}, Hkv={args.hkv}, D={args.head_dim}, {args.dtype}; "
        f"block={args.block_size}, step={args.step}; seed {args.seed}. Times: median ms. "
        "err_*: relative Frobenius error (ours and flash vs cuDNN; *_fp32 vs fp32 dense on the first "
        f"{args.ref_kv_heads} KV group(s)); theirs = fp32 emulation of the authors' algorithm.",
        "", f"Dense baseline notes: {', '.join(notes) if notes else 'none'}", "",
    ]
    md = stem.with_suffix(".md")
    md.write_text("\n".join(header + [table, ""]))
    return stem.with_suffix(".csv"), md, table


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark grid; write and print the results; return the rows."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("CPU runs need TRITON_INTERPRET=1 set before Python starts (Triton interpreter)")
    torch.backends.cuda.matmul.allow_tf32 = False                          # fp32 references stay fp32
    dtype, rows = DTYPES[args.dtype], []
    for n in args.lengths:
        thetas = sorted(set(args.thetas) | (set(args.theta_sweep) if n == args.sweep_length else set()))
        for case in args.cases:
            for frac in (args.stripe_fractions if case == "structured" else [math.nan]):
                q, k, v = make_qkv(case, args.batch, args.hq, args.hkv, n, args.head_dim, dtype, device,
                                   args.seed, stripe_fraction=0.0 if math.isnan(frac) else frac)
                print(f"[kernels] N={n} case={case} stripe_fraction={frac} thetas={thetas}", flush=True)
                for row in bench_input(q, k, v, thetas, args):
                    rows.append({"N": n, "case": case, "stripe_fraction": frac, **row})
                del q, k, v
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        write_results(rows, args, argv, device)                          # partial results survive a crash
    csv_path, md_path, table = write_results(rows, args, argv, device)
    print(table)
    print(f"[kernels] wrote {csv_path} and {md_path}")
    return rows


if __name__ == "__main__":
    main()
