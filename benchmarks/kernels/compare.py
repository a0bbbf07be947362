"""Kernel comparison of every prefill method against dense attention on synthetic inputs.

    python -m benchmarks.kernels.compare --lengths 8192,16384,32768,65536,131072 \\
        --inputs random,structured:0.01,structured:0.05 --sweep-length 32768 --out results/kernels

One row per length x input x method x setting (``--method name[:key=value,...]``, repeatable; the
default list is every method at its ``conf/method`` default, plus ``--sweep`` settings at
``--sweep-length``), and one per dense backend (``--dense-backends``: SDPA cuDNN, SDPA flash,
FlashAttention-4 where installed). Columns:

* ``ms``: ``triton.testing.do_bench`` median of the whole method call (estimation included);
  ``estimate_ms`` (its ``select``), and for AnchorAttention ``stage1_ms`` / ``select_ms`` /
  ``sparse_ms`` / ``tail_ms`` (``anchor_stage_times``);
* ``density``: computed query-key pairs incl. estimation / causal pairs (``AttentionStats``);
  ``upstream_ratio``: the method's own upstream convention (``AttentionStats.extra``);
* ``rel_err``: ``||out - ref|| / ||ref||`` on the first ``--ref-kv-heads`` KV groups, ref = fp32
  dense attention;
* ``tflops``: effective rate, computed pairs x 4 x head_dim / time; ``frac_fa4``: that rate over
  FlashAttention-4 dense's rate at the same length and input (cuDNN's if FA4 is missing:
  ``dense_ref`` names it); ``kernel``: which sparse executor ran (fa4 / triton / torch).

``--upstream-flexprefill FILE`` adds a row for bytedance/FlexPrefill's own
``flex_prefill_attention`` (loaded from that file; not part of this repository) on the same input;
``--theirs`` one for the fp32 emulation of the authors' AnchorAttention (error and cost only).
Inputs (``benchmarks.structured_inputs``): ``random`` (iid normal: near-uniform attention, every
method's worst case) and ``structured:<f>`` (a sink plus a fraction ``f`` of stripe keys).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import methods
from anchor.reference import dense_attention_reference
from benchmarks.analysis.metrics import relative_error
from benchmarks.kernels.anchor_stages import anchor_stage_times
from benchmarks.kernels.official_anchor import official_anchor_attention
from benchmarks.kernels.prefill import parse_method
from benchmarks.runner.results import environment
from benchmarks.structured_inputs import make_qkv
from benchmarks.tables import markdown_table
from benchmarks.timing import bench_ms
from methods.index_builders import LAST_KERNEL

DEFAULT_METHODS = ("anchor", "flexprefill", "vertical_slash_block", "xattention", "xattention_s16", "streaming",
                   "vertical_slash")
DEFAULT_SWEEPS = ("anchor:theta=8|10|14|16", "flexprefill:gamma=0.9|0.99", "xattention:threshold=0.8|0.95")
COLUMNS = ["N", "input", "method", "setting", "ms", "density", "upstream_ratio", "rel_err", "tflops", "frac_fa4",
           "estimate_ms", "stage1_ms", "select_ms", "sparse_ms", "tail_ms", "kernel"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--inputs", default="random,structured:0.01,structured:0.05")
    ap.add_argument("--method", action="append", default=None, help="name[:key=value,...]; repeatable")
    ap.add_argument("--sweep", action="append", default=None,
                    help="name:key=v1|v2|... run at --sweep-length only; repeatable")
    ap.add_argument("--sweep-length", type=int, default=32768)
    ap.add_argument("--dense-backends", default="cudnn,flash,fa4")
    ap.add_argument("--upstream-flexprefill", type=Path, default=None)
    ap.add_argument("--theirs", action="store_true",
                    help="add the fp32 emulation of the authors' AnchorAttention (error and cost, no time)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--ref-kv-heads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup-ms", type=float, default=25.0)
    ap.add_argument("--rep-ms", type=float, default=100.0)
    ap.add_argument("--cpu-reps", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args(argv)


def expand_sweeps(sweeps: list[str]) -> list[str]:
    """``name:key=a|b`` -> ``["name:key=a", "name:key=b"]``."""
    out = []
    for spec in sweeps:
        name, _, rest = spec.partition(":")
        key, _, values = rest.partition("=")
        out += [f"{name}:{key}={v}" for v in values.split("|")]
    return out


def parse_input(spec: str) -> tuple[str, float]:
    """``random`` -> ("random", 0); ``structured:0.01`` -> ("structured", 0.01)."""
    kind, _, frac = spec.partition(":")
    return kind, float(frac) if frac else 0.0


def upstream_flexprefill(path: Path):
    """``flex_prefill_attention`` of bytedance/FlexPrefill loaded from ``path``."""
    spec = importlib.util.spec_from_file_location("upstream_flex_prefill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.flex_prefill_attention


class Case:
    """One input: q/k/v, the fp32 reference of its first KV groups, timing settings."""

    def __init__(self, q, k, v, args: argparse.Namespace):
        self.q, self.k, self.v, self.args = q, k, v, args
        rep = q.shape[1] // k.shape[1]
        self.n_ref = rep * min(args.ref_kv_heads, k.shape[1])               # query heads compared
        n_kv = self.n_ref // rep
        self.ref = dense_attention_reference(q[:, :self.n_ref], k[:, :n_kv], v[:, :n_kv], out_dtype=torch.float32)

    def ms(self, fn) -> float:
        return bench_ms(fn, self.q.device, self.args)

    def err(self, out: torch.Tensor) -> float:
        return relative_error(out[:, :self.n_ref], self.ref)

    def tflops(self, pairs: float, ms: float) -> float:
        return pairs * 4 * self.q.shape[-1] / (ms * 1e-3) / 1e12


def method_row(case: Case, spec: str) -> dict[str, Any]:
    """Time, cost, error and stage split of one method setting on ``case``."""
    name, cfg, setting = parse_method(spec)
    method = methods.get_method(cfg)
    q, k, v = case.q, case.k, case.v
    LAST_KERNEL.clear()
    out, stats = method(q, k, v)
    row = {"method": name, "setting": setting, "density": stats.density, "rel_err": case.err(out),
           "upstream_ratio": stats.extra.get("upstream_ratio"), "dense_fallback": stats.dense_fallback,
           "degenerate_dense": stats.extra.get("degenerate_dense")}
    del out
    row["ms"] = case.ms(lambda: method(q, k, v))
    row["tflops"] = case.tflops(float(stats.total_pairs().sum()), row["ms"])
    row["kernel"] = kernel_used(method)
    if cfg["name"] in ("anchor", "anchor_zero"):
        row.update(anchor_stage_times(q, k, v, method, case.ms))
    elif hasattr(method, "select"):
        row["estimate_ms"] = case.ms(lambda: method.select(q, k))
    return row


def kernel_used(method) -> str | None:
    """The kernel that ran: the dense backend, ``attend``'s (FA4 / Triton / torch) for the block
    methods, Triton for AnchorAttention's stages (whole tiles of stage 3 may go to FA4)."""
    if getattr(method, "last_backend", None):
        return method.last_backend
    if getattr(method, "name", "") in ("anchor", "anchor_zero"):
        return "triton (+fa4 tiles)"
    return LAST_KERNEL.get("attend")


def dense_rows(case: Case, backends: list[str]) -> list[dict[str, Any]]:
    """One row per dense backend that can run here (a missing one is skipped with a note)."""
    rows = []
    for backend in backends:
        spec = f"dense:backend={backend}"
        try:
            rows.append(method_row(case, spec))
        except (ImportError, RuntimeError, ValueError) as err:
            print(f"[compare] skip {spec}: {str(err).splitlines()[0]}", flush=True)
    return rows


def upstream_row(case: Case, fn, cfg: dict[str, Any]) -> dict[str, Any]:
    """bytedance/FlexPrefill's own op on ``case`` (layout [B, N, H, D], batch 1)."""
    q, k, v = (x.transpose(1, 2) for x in (case.q, case.k, case.v))

    def call():
        return fn(q, k, v, cfg["gamma"], cfg["tau"], min_budget=cfg["min_budget"], max_budget=cfg["max_budget"],
                  block_size=cfg["block_size"], return_computational_ratio=True)

    out, ratio = call()
    return {"method": "flexprefill_upstream", "setting": "default", "upstream_ratio": float(ratio),
            "rel_err": case.err(out.transpose(1, 2)), "ms": case.ms(call), "kernel": "upstream triton"}


def theirs_row(case: Case) -> dict[str, Any]:
    """The authors' AnchorAttention semantics (``benchmarks.kernels.official_anchor``: dense tail,
    double-counted keys in ``[128, 2048)``, the 128-key gap) in fp32 on the reference heads, at
    ``conf/method/anchor.yaml``'s theta, block and step: its error and what it computes."""
    cfg = parse_method("anchor")[1]
    n_kv = case.n_ref // (case.q.shape[1] // case.k.shape[1])
    out, _, stats = official_anchor_attention(case.q[:, :case.n_ref], case.k[:, :n_kv], case.v[:, :n_kv],
                                              cfg["theta"], block=cfg["block_size"], step=cfg["step"])
    return {"method": "anchor_authors_fp32_emulation", "setting": "default", "density": stats.density,
            "upstream_ratio": stats.extra["official_ratio"], "rel_err": relative_error(out, case.ref)}


def finish_rows(rows: list[dict], n: int, inp: str, case: Case) -> list[dict]:
    """Add length, input and the fraction of the FA4 (else cuDNN) dense rate."""
    dense = {r["setting"]: r for r in rows if r["method"] == "dense"}
    ref = dense.get("backend=fa4") or dense.get("backend=cudnn")
    for r in rows:
        r.update(N=n, input=inp)
        if ref is not None and r.get("tflops") is not None:
            r["frac_fa4"] = r["tflops"] / ref["tflops"]
            r["dense_ref"] = ref["setting"].split("=")[-1]
    return rows


def write(rows: list[dict], args: argparse.Namespace, argv: list[str]) -> tuple[Path, str]:
    """Write ``<gpu>.csv`` and ``<gpu>.md``; return the markdown path and table."""
    env = environment({})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("cpu" if env["gpu"] == "cpu" else env["gpu"].split()[-1].lower())
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
    df.to_csv(stem.with_suffix(".csv"), index=False)
    table = markdown_table(df, [c for c in COLUMNS if c in df.columns])
    text = [f"# Prefill attention kernels: every method vs dense ({env['gpu']})", "",
            f"Command: `python -m benchmarks.kernels.compare {shlex.join(argv)}`", "",
            f"torch {env['torch']}; triton {env['triton']}; git {env['git_sha']}; {env['timestamp_utc']}. "
            f"Shapes: B={args.batch}, Hq={args.hq}, Hkv={args.hkv}, D={args.head_dim}, {args.dtype}.", "",
            "ms: do_bench median of the whole call (estimation included). density: computed query-key pairs "
            "(estimation included) / causal pairs; upstream_ratio: the method's upstream convention. rel_err: "
            f"vs fp32 dense on the first {args.ref_kv_heads} KV group(s). tflops: computed pairs x 4 x D / ms. "
            "frac_fa4: tflops / the FA4 dense rate at that length and input (cuDNN if FA4 is absent).", "",
            table, ""]
    stem.with_suffix(".md").write_text("\n".join(text))
    return stem.with_suffix(".md"), table


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the grid, write the CSV and markdown, return the rows."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False                       # the fp32 reference stays fp32
    specs = args.method or list(DEFAULT_METHODS)
    sweeps = expand_sweeps(args.sweep if args.sweep is not None else list(DEFAULT_SWEEPS))
    upstream = upstream_flexprefill(args.upstream_flexprefill) if args.upstream_flexprefill else None
    rows: list[dict] = []
    for n in (int(x) for x in args.lengths.split(",")):
        for inp in args.inputs.split(","):
            kind, frac = parse_input(inp)
            q, k, v = make_qkv(kind, args.batch, args.hq, args.hkv, n, args.head_dim, DTYPES[args.dtype], device,
                               args.seed, stripe_fraction=frac)
            case = Case(q, k, v, args)
            part = dense_rows(case, args.dense_backends.split(","))
            for spec in specs + (sweeps if n == args.sweep_length else []):
                print(f"[compare] N={n} {inp} {spec}", flush=True)
                part.append(method_row(case, spec))
            if upstream is not None:
                part.append(upstream_row(case, upstream, parse_method("flexprefill")[1]))
            if args.theirs:
                part.append(theirs_row(case))
            rows += finish_rows(part, n, inp, case)
            del q, k, v, case
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write(rows, args, argv)                                      # partial results survive a crash
    path, table = write(rows, args, argv)
    print(table)
    print(f"[compare] wrote {path}")
    return rows


if __name__ == "__main__":
    main()
