"""End-to-end prefill time of a model-shaped forward per method, and its projection.

    python -m benchmarks.kernels.prefill --model llama3_1_8b_random --lengths 32768,65536,131072 \\
        --method dense:backend=cudnn --method dense:backend=fa4 --method anchor --method flexprefill \\
        --method xattention --method streaming --kernels-csv results/kernels/h200.csv --out results/prefill

For every length and ``--method`` (``<conf/method name>[:key=value,...]``, repeatable), the model (``conf/model``)
runs one forward over random token ids with the method patched in for prefill
(``methods.hf_patch``), logits only for the last position, no cache; the time is the median of
``--reps`` synchronised wall-clock forwards after ``--warmup`` (JIT, FA4 compilation). The recorder
gives the prefill density (computed pairs incl. estimation / causal pairs, pair-weighted over layers).

Random weights give near-uniform attention, so sparse methods select far more than on real text.
With ``--kernels-csv`` (the kernel benchmark of the same shapes, ``benchmarks.kernels.compare``) the
table adds a **projection**: ``non-attention time + layers x attention time of the method on the
structured input`` with ``non-attention time = forward(dense reference backend) - layers x dense
attention time``; it is an estimate, labelled as such, not a measurement.
"""
from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.config_files import composed, conf_yaml
from benchmarks.runner.results import environment
from benchmarks.tables import markdown_table

COLUMNS = ["N", "method", "setting", "ms", "density", "upstream_ratio", "dense_backend", "projected_ms",
           "projection_input"]


def parse_method(spec: str) -> tuple[str, dict[str, Any], str]:
    """``name[:k=v,...]`` -> ``(conf name, config dict with overrides, setting label)``."""
    name, _, rest = spec.partition(":")
    cfg = conf_yaml("method", name)
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in cfg:
            raise SystemExit(f"bad method spec {spec!r}: {item!r} is not key=value of conf/method/{name}.yaml")
        overrides[key] = yaml_value(value)
    return name, {**cfg, **overrides}, ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def yaml_value(text: str) -> Any:
    """A command-line value parsed as YAML (``12`` -> 12, ``null`` -> None, ``fa4`` -> "fa4")."""
    import yaml

    return yaml.safe_load(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3_1_8b_random", help="conf/model name")
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--method", action="append", required=True, help="name[:key=value,...], repeatable")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernels-csv", type=Path, default=None,
                    help="kernel benchmark CSV of the same attention shapes (for the projection)")
    ap.add_argument("--projection-input", default="structured:0.01",
                    help="input of the kernel CSV used for sparse methods in the projection")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args(argv)


def load(model_name: str, device: torch.device, layers: int | None):
    """The model of ``conf/model/<model_name>.yaml`` (optionally cut to ``layers`` decoder layers)."""
    from methods.models import load_model

    cfg = composed("model", model_name)
    if layers is not None:
        cfg = {**cfg, "random_config": {**cfg.get("random_config", {}), "num_hidden_layers": layers}}
    model, _ = load_model(cfg, device)
    return model


def timed_forward(model, ids: torch.Tensor, device: torch.device) -> float:
    """Milliseconds of one synchronised forward over ``ids`` (last-position logits, no cache)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def measure(model, method, ids: torch.Tensor, device: torch.device, warmup: int, reps: int) -> dict[str, Any]:
    """Median forward ms of ``model`` with ``method`` for prefill, and the recorder's statistics."""
    from methods.hf_patch import StatsRecorder, patched

    recorder = StatsRecorder()
    with patched(model, method, recorder):
        for _ in range(warmup):
            recorder.reset()
            timed_forward(model, ids, device)
        times = []
        for _ in range(reps):
            recorder.reset()
            times.append(timed_forward(model, ids, device))
    ratios = [r.stats.extra["upstream_ratio"] for r in recorder.records if "upstream_ratio" in r.stats.extra]
    return {"ms": sorted(times)[len(times) // 2], "density": recorder.prefill_density(),
            "upstream_ratio": sum(ratios) / len(ratios) if ratios else None,
            "dense_backend": getattr(method, "last_backend", None)}


def project(df: pd.DataFrame, kernels: pd.DataFrame, n_layers: int, projection_input: str) -> pd.DataFrame:
    """Add ``projected_ms`` = non-attention time + ``n_layers`` x the method's kernel time.

    Non-attention time per length comes from the first dense row of ``df`` and the kernel CSV's
    dense row of the same ``method``/``setting`` on the ``random`` input. A method's kernel time is
    its row (same method and setting) on ``projection_input`` (dense methods: ``random``).
    """
    df = df.copy()
    df["projected_ms"], df["projection_input"] = float("nan"), None
    for n, part in df.groupby("N"):
        dense = part[part["method"] == "dense"]
        if dense.empty:
            continue
        ref = dense.iloc[0]
        kref = kernels[(kernels["N"] == n) & (kernels["method"] == "dense") & (kernels["setting"] == ref["setting"])
                       & (kernels["input"] == "random")]
        if kref.empty:
            continue
        non_attention = ref["ms"] - n_layers * float(kref["ms"].iloc[0])
        for idx, row in part.iterrows():
            inp = "random" if row["method"] == "dense" else projection_input
            k = kernels[(kernels["N"] == n) & (kernels["method"] == row["method"])
                        & (kernels["setting"] == row["setting"]) & (kernels["input"] == inp)]
            if not k.empty:
                df.loc[idx, "projected_ms"] = non_attention + n_layers * float(k["ms"].iloc[0])
                df.loc[idx, "projection_input"] = inp
    return df


def write(rows: list[dict], args: argparse.Namespace, argv: list[str], n_layers: int) -> pd.DataFrame:
    """Write ``prefill_<model>.csv`` / ``.md`` (with the projection when a kernel CSV is given)."""
    df = pd.DataFrame(rows)
    if args.kernels_csv is not None:
        df = project(df, pd.read_csv(args.kernels_csv), n_layers, args.projection_input)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"prefill_{args.model}"
    df.to_csv(stem.with_suffix(".csv"), index=False)
    env = environment({})
    text = [f"# End-to-end prefill: {args.model} ({n_layers} layers)", "",
            f"Command: `python -m benchmarks.kernels.prefill {shlex.join(argv)}`", "",
            f"Device: {env['gpu']}; torch {env['torch']}; triton {env['triton']}; transformers "
            f"{env['transformers']}; git {env['git_sha']}; {env['timestamp_utc']}", "",
            "ms: median synchronised forward (random token ids, last-position logits, no cache). "
            "density: computed query-key pairs incl. estimation / causal pairs over all prefill calls. "
            "projected_ms (a projection, not a measurement): non-attention time + layers x the method's "
            "kernel time on `projection_input` from the kernel benchmark; random weights give "
            "near-uniform attention, so the measured ms of sparse methods is their worst case.", "",
            markdown_table(df, [c for c in COLUMNS if c in df.columns]), ""]
    stem.with_suffix(".md").write_text("\n".join(text))
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Time every (length, method); write ``prefill_<model>.csv`` / ``.md``; return the table."""
    import methods

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    model = load(args.model, device, args.layers)
    n_layers = model.config.num_hidden_layers
    specs = [parse_method(s) for s in args.method]
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(device)
        for name, cfg, setting in specs:
            method = methods.get_method(cfg)
            print(f"[prefill] N={n} {name} {setting}", flush=True)
            rows.append({"N": n, "method": cfg["name"], "setting": setting,
                         **measure(model, method, ids, device, args.warmup, args.reps)})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        df = write(rows, args, argv, n_layers)                          # partial results survive a timeout
    print(df.to_string())
    return df


if __name__ == "__main__":
    main()
