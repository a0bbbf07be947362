"""Compare prefill methods on real attention captured from a model (all layers, one prompt).

For every method in ``--methods`` (names of ``conf/method/<name>.yaml``) and every captured layer:
density (``AttentionStats``), attention-mass recall, output recall (|out - dense| < 0.01, the
AnchorAttention paper's "recall"), relative output error against fp32 dense attention, dense
fallbacks, and wall time of the method call (synchronised, includes estimation). Writes a
per-layer CSV and a per-method markdown table under ``--out``.

    python -m benchmarks.analysis.compare_methods --model smollm2 --length 8192 \\
        --methods dense,anchor,streaming,vertical_slash,flexprefill --out results/methods
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

import methods
from anchor.reference import dense_attention_reference
from benchmarks.analysis.metrics import mass_recall, output_recall, relative_error
from benchmarks.analysis.capture import capture_qkv
from benchmarks.analysis.inputs import essay_tokens
from benchmarks.config_files import conf_yaml
from benchmarks.runner.results import environment
from benchmarks.tables import markdown_table
from benchmarks.timing import timed_call
from methods.models import load_model

def evaluate(method, layers: dict, refs: dict, device: torch.device) -> list[dict]:
    """Per-layer metrics of ``method`` on the captured ``layers`` against dense ``refs``."""
    first = next(iter(layers.values()))
    method(first.q, first.k, first.v, sm_scale=first.sm_scale, layer_idx=0)        # warm-up / JIT
    rows = []
    for idx, x in layers.items():
        out, stats, ms = timed_call(method, x, idx, device)
        attended = method.attended(x.q, x.k, x.v, sm_scale=x.sm_scale)
        rows.append({"layer": idx, "ms": ms, "density": stats.density, "dense_fallback": stats.dense_fallback,
                     "mass_recall": float(mass_recall(x.q, x.k, attended, x.sm_scale).mean()),
                     "output_recall": output_recall(out, refs[idx]),
                     "relative_error": relative_error(out, refs[idx]),
                     **{f"density_{k}": v for k, v in stats.stage_density().items()}})
    return rows


def _env(device: torch.device) -> str:
    env = environment({})
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (f"{gpu}; torch {env['torch']}; triton {env['triton']}; transformers {env['transformers']}; "
            f"git {env['git_sha']} (dirty: {env['git_dirty']})")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Capture, evaluate every method, write ``compare_<model>_<length>.{csv,md}``; return the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="name of conf/model/<name>.yaml")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--methods", default="dense,anchor,streaming,vertical_slash,flexprefill")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", default=None, help="comma-separated layer ids (default: all)")
    ap.add_argument("--out", type=Path, default=Path("results/methods"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    model, tokenizer = load_model(conf_yaml("model", args.model), device)
    ids = essay_tokens(tokenizer, args.length).to(device)
    layers = capture_qkv(model, ids, [int(x) for x in args.layers.split(",")] if args.layers else None)
    del model
    refs = {i: dense_attention_reference(x.q, x.k, x.v, sm_scale=x.sm_scale) for i, x in layers.items()}
    per_layer = []
    for name in args.methods.split(","):
        method = methods.get_method(conf_yaml("method", name))
        for row in evaluate(method, layers, refs, device):
            per_layer.append({"method": name, **row})
        print(f"[compare] {name} done", flush=True)
    df = pd.DataFrame(per_layer)
    cols = ["density", "mass_recall", "output_recall", "relative_error", "dense_fallback", "ms"]
    summary = df.groupby("method", sort=False)[cols].agg(
        {**{c: "mean" for c in cols}, "dense_fallback": "sum", "ms": "sum"}).reset_index()
    summary = summary.rename(columns={"ms": "ms_all_layers", "dense_fallback": "dense_fallbacks"})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"compare_{args.model}_{args.length}"
    df.to_csv(args.out / f"{stem}_layers.csv", index=False)
    header = (f"# Methods on real attention: {args.model}, {args.length} tokens, {len(layers)} layers\n\n"
              f"Command: `python -m benchmarks.analysis.compare_methods {' '.join(argv if argv is not None else sys.argv[1:])}`"
              f"  \nMachine: {_env(device)}  \nMetrics: density = computed pairs (all stages) / causal pairs; "
              "mass_recall = dense softmax mass on attended keys; output_recall = fraction of output "
              "elements within 0.01 of dense; relative_error vs fp32 dense; ms = method calls summed over "
              "layers (synchronised wall time, estimation included). Means over layers.\n\n")
    (args.out / f"{stem}.md").write_text(header + markdown_table(summary, digits=4) + "\n")
    print(summary.to_string(index=False))
    return summary


if __name__ == "__main__":
    main()
