"""Paper-style tables and NIAH heatmaps, built from result files only.

``python -m benchmarks.reports.runs <run or multirun folder(s)> --out <dir>``

Every folder under the given ones that holds a ``samples.jsonl`` (or shard files
``samples.shard-<i>-of-<N>.jsonl``, read together, de-duplicated by id, limited to the examples
its plan asks for) is one run; its ``summary.json`` supplies the resolved config
(``summary["config"]``, else ``summary["env"]["config"]``): benchmark, model and method, and the
device it ran on (``summary["env"]["gpu"]``, ``cpu`` for CPU runs). Runs without a summary
(unfinished) or with a ``FAILED*`` marker are skipped with a warning. What a run's benchmark
runner wrote decides its tables:

* generation benchmarks (RULER, LongBench, NIAH), per benchmark ``<bench>``:
  ``<bench>_by_task.{md,csv}``: (model, method) x task, mean score x100, ``Avg`` = plain mean of
  the task columns (Table 2 style); ``<bench>_by_length.{md,csv}``: (model, method) x length, each
  cell the plain mean over tasks of the per-task means at that length, ``Avg`` over the lengths
  (Table 3 style). ``Avg`` is empty ("-") when a cell is missing. Both end with the cost columns:
  mean ``prefill_ms``, ``density``, ``upstream_ratio`` and ``dense_by_construction`` (when the
  samples carry them) and the ``device``;
* NIAH also: per (model, method) ``needle_viz_<model>_<method>_<min>_<max>.{png,pdf,csv}``, the
  depth x context-length heatmap of the mean score over rounds (MInference's ``needle_viz.py``
  look, drawn with matplotlib alone), lengths labelled as precisely as needed to tell them apart;
* the smoke benchmark (``bench=smoke``, synthetic q/k/v): ``smoke_by_length.{md,csv}``, per
  method, input case and length: ``density``, ``rel_err``, ``max_abs_err``, ``time_ms``;
* analysis runs (``bench=analysis``) are not tables of this tool: they are skipped with a warning
  naming ``python -m benchmarks.reports.figures``, and a set of folders holding nothing else is
  an error (exit status 1).

``report.md`` holds every table with its footnotes (``benchmarks.reports.notes``: what each cost
column counts; CPU timings marked as not comparable) and links to the heatmaps. Method labels:
``benchmarks.reports.labels`` (every setting that differs from ``conf/method``), plus
``[<template_set>]`` for RULER runs not using the default template set.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from benchmarks.reports.labels import length_labels, method_label
from benchmarks.reports.notes import table_notes
from benchmarks.runner.plan import planned_rows
from benchmarks.runner.results import SUMMARY, failure_markers, folders_with
from benchmarks.tables import markdown_table

NIAH = "niah"
SMOKE = "smoke"
DEFAULT_TEMPLATE_SET = "anchorattention"
COLORS = ["#F0496E", "#EBB839", "#0CD79F"]  # red -> yellow -> green, as in needle_viz.py
KEYS = ["model", "label"]
# Per-sample numbers: generation rows, smoke rows (``SMOKE_METRICS``) and the methods' extras.
NUMERIC = ["score", "prefill_ms", "density", "dense_fallbacks", "upstream_ratio", "degenerate_dense",
           "rel_err", "max_abs_err", "time_ms"]
SMOKE_METRICS = ["density", "rel_err", "max_abs_err", "time_ms"]
# Optional cost columns: shown when some sample carries the field (``dense_by_construction`` is
# the share of samples flagged ``degenerate_dense``).
OPTIONAL = {"upstream_ratio": "upstream_ratio", "dense_by_construction": "degenerate_dense"}
FIGURES_TOOL = "python -m benchmarks.reports.figures <analysis run folders> --out <dir>"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding ``samples*.jsonl``) at or under ``paths``, sorted, without repeats."""
    return folders_with(paths, "samples*.jsonl")


def run_config(summary: dict, path: Path) -> dict:
    """The resolved run config stored in a summary."""
    cfg = summary.get("config") or summary.get("env", {}).get("config")
    if not isinstance(cfg, dict) or "name" not in (cfg.get("method") or {}):
        raise ValueError(f"{path}: no config with a named method block (summary['config'] or "
                         f"summary['env']['config'])")
    return cfg


def runner_of(bench: str, samples: list[dict]) -> str:
    """The runner that wrote a run: the registry's for ``bench``, else guessed from its samples."""
    from benchmarks.registry import get_benchmark

    try:
        return get_benchmark(bench).runner
    except KeyError:
        first = samples[0] if samples else {}
        return "analysis" if "kind" in first else SMOKE if "rel_err" in first else "generate"


def _sample_row(base: dict, sample: dict) -> dict:
    """One tidy row: run fields, the sample's fields, its methods' extras, ``meta_<key>`` scalars."""
    row = dict(base, **{k: sample.get(k) for k in ["id", "task", "length", "case", "prediction", "targets",
                                                   *NUMERIC]})
    stats = sample.get("stats") or {}                      # smoke rows keep the call's stats here
    for key in ("upstream_ratio", "degenerate_dense"):
        if row[key] is None:
            row[key] = stats.get(key)
    row.update({f"meta_{k}": v for k, v in (sample.get("meta") or {}).items()
                if v is None or isinstance(v, (str, int, float, bool))})
    return row


def load_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Tidy frame, one row per sample, of every finished generation or smoke run under ``paths``.

    Columns: run, bench, runner, model, method, label, device, template_set, id, task, length,
    case, prediction, targets, the ``NUMERIC`` fields and ``meta_<key>`` for each scalar meta field.
    Analysis runs are skipped with a warning naming ``benchmarks.reports.figures``.

    Raises:
        FileNotFoundError: no run with samples and a summary under ``paths``.
        ValueError: only analysis runs (their figures are ``benchmarks.reports.figures``' job).
    """
    paths = list(paths)
    runs, analysis = [], []
    for run in find_runs(paths):
        if failure_markers(run):
            warnings.warn(f"skipping {run}: its last attempt failed ({failure_markers(run)[0].name})", stacklevel=2)
            continue
        if not (run / SUMMARY).exists():
            warnings.warn(f"skipping {run}: {SUMMARY} missing (run unfinished?)", stacklevel=2)
            continue
        summary = json.loads((run / SUMMARY).read_text())
        cfg, samples = run_config(summary, run / SUMMARY), planned_rows(run)
        bench = (cfg.get("bench") or {}).get("name", "unknown")
        runner = runner_of(bench, samples)
        if runner == "analysis":
            analysis.append(run)
        elif samples:
            runs.append((run, cfg, summary, bench, runner, samples))
    where = ", ".join(map(str, paths))
    if analysis:
        message = (f"{len(analysis)} analysis run(s) under {where} ({', '.join(p.name for p in analysis)}): "
                   f"their tables and figures come from `{FIGURES_TOOL}`")
        if not runs:
            raise ValueError(f"no generation or smoke run to tabulate; {message}")
        warnings.warn(f"skipping {message}", stacklevel=2)
    if not runs:
        raise FileNotFoundError(f"no finished run with samples (samples*.jsonl + {SUMMARY}) under {where}")
    rows = []
    for run, cfg, summary, bench, runner, samples in runs:
        template_set = (cfg.get("bench") or {}).get("template_set")
        label = method_label(cfg["method"])
        if template_set and template_set != DEFAULT_TEMPLATE_SET:
            label += f" [{template_set}]"
        base = {"run": str(run), "bench": bench, "runner": runner,
                "model": "synthetic q/k/v" if runner == SMOKE else (cfg.get("model") or {}).get("name", "model"),
                "method": cfg["method"]["name"], "label": label,
                "device": (summary.get("env") or {}).get("gpu") or "unknown", "template_set": template_set}
        rows += [_sample_row(base, s) for s in samples]
    df = pd.DataFrame(rows)
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    dup = df.duplicated(["bench", "model", "label", "id"])
    if dup.any():
        warnings.warn(f"{int(dup.sum())} samples appear in several runs with the same bench, model "
                      f"and method label; they are averaged together", stacklevel=2)
    return df


def _cost(part: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean of ``columns``, the optional columns the samples carry, and the devices, per ``keys``."""
    cost = part.groupby(keys)[columns].mean()
    for shown, field in OPTIONAL.items():
        if part[field].notna().any():
            cost[shown] = part.groupby(keys)[field].mean()
    cost["device"] = part.groupby(keys)["device"].agg(lambda d: ", ".join(sorted(set(d))))
    return cost


def score_tables(df: pd.DataFrame, bench: str) -> dict[str, pd.DataFrame]:
    """``{"by_task": ..., "by_length": ...}`` for one generation benchmark: mean score x100 + Avg +
    the cost columns (``prefill_ms``, ``density``, optional ones, ``device``)."""
    part = df[df["bench"] == bench]
    if part.empty:
        raise ValueError(f"no samples of bench {bench!r}; have {sorted(df['bench'].unique())}")
    cost = _cost(part, KEYS, ["prefill_ms", "density"])
    cells = part.groupby([*KEYS, "task", "length"])["score"].mean().reset_index()
    tables = {}
    for name, column in [("by_task", "task"), ("by_length", "length")]:
        # a task's score is the mean of its samples (over every length); a length's score is
        # the plain mean over tasks of the per-task means at that length (RULER's convention)
        source = part if column == "task" else cells
        table = source.pivot_table(index=KEYS, columns=column, values="score", aggfunc="mean") * 100
        table = table[sorted(table.columns)]
        table["Avg"] = table.mean(axis=1, skipna=False)
        table.columns = [str(c) for c in table.columns]
        table.index.names = ["model", "method"]
        tables[name] = table.join(cost.rename_axis(["model", "method"])).round(2)
    return tables


def smoke_table(df: pd.DataFrame) -> pd.DataFrame:
    """Smoke runs: per (method, case, length) the mean ``SMOKE_METRICS``, optional columns, device."""
    part = df[df["runner"] == SMOKE]
    if part.empty:
        raise ValueError("no smoke samples")
    table = _cost(part, ["label", "case", "length"], SMOKE_METRICS)
    return table.rename_axis(["method", "case", "length"])


def bench_tables(df: pd.DataFrame, bench: str) -> dict[str, pd.DataFrame]:
    """The tables of one benchmark: ``score_tables``, or ``{"by_length": smoke_table}`` for smoke."""
    runners = set(df.loc[df["bench"] == bench, "runner"])
    if runners == {SMOKE}:
        return {"by_length": smoke_table(df[df["bench"] == bench])}
    return score_tables(df, bench)


def table_footnotes(df: pd.DataFrame, bench: str, table: pd.DataFrame) -> list[str]:
    """Footnotes (``benchmarks.reports.notes``) for ``table`` built from ``df``'s ``bench`` rows."""
    part = df[df["bench"] == bench]
    return table_notes(table.columns, part["method"].unique(), part["device"].unique(),
                       part["template_set"].dropna().unique())


def _format(column: str, x) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, float):
        return f"{x:.2e}" if column in ("rel_err", "max_abs_err") else f"{x:.2f}"
    return str(x)


def to_markdown(table: pd.DataFrame) -> str:
    """A table as markdown: errors in scientific notation, other numbers with 2 decimals, ``-`` missing."""
    flat = table.reset_index()
    return markdown_table(flat.apply(lambda col: col.map(lambda x: _format(str(col.name), x))))


def niah_pivot(df: pd.DataFrame, model: str, label: str) -> pd.DataFrame:
    """Mean NIAH score per depth (rows) and context length (columns) of one model + method."""
    part = df[(df["bench"] == NIAH) & (df["model"] == model) & (df["label"] == label)]
    if part.empty or "meta_depth" not in part:
        raise ValueError(f"no NIAH samples with a depth for model {model!r}, method {label!r}")
    return part.pivot_table(index="meta_depth", columns="length", values="score", aggfunc="mean")


def heatmap_figure(pivot: pd.DataFrame, title: str):
    """The NIAH heatmap (a matplotlib ``Figure``, no pyplot state) of a depth x length pivot."""
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    # lightgrey: cells without samples
    cmap = LinearSegmentedColormap.from_list("custom_cmap", COLORS).with_extremes(bad="lightgrey")
    fig = Figure(figsize=(14, 7))
    ax = fig.subplots()
    image = ax.imshow(pivot.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest")
    fig.colorbar(image, ax=ax).ax.tick_params(labelsize=12)
    ax.set_xticks(range(pivot.shape[1]), length_labels([int(x) for x in pivot.columns]), rotation=60, fontsize=14)
    ax.set_yticks(range(pivot.shape[0]), [str(int(d)) for d in pivot.index], fontsize=14)
    for x in range(1, pivot.shape[1]):
        ax.axvline(x - 0.5, color="white", linewidth=1.5)
    for y in range(1, pivot.shape[0]):
        ax.axhline(y - 0.5, color="white", linewidth=1.5)
    for spine in ax.spines.values():
        spine.set_color("white")
    ax.set_xlabel("Context Length", fontsize=18)
    ax.set_ylabel("Depth Percent (%)", fontsize=18)
    ax.set_title(title, fontsize=20)
    fig.tight_layout()
    return fig


def _slug(text: str) -> str:
    """A file-name-safe version of ``text`` (no dots: names get suffixes appended)."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", text).strip("_")


def write_niah_heatmaps(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """PNG, PDF and CSV heatmap per (model, method) of the NIAH samples; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    part = df[df["bench"] == NIAH]
    for model, label in part[KEYS].drop_duplicates().itertuples(index=False):
        pivot = niah_pivot(df, model, label)
        names = length_labels([int(n) for n in pivot.columns])
        span = names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"
        stem = out_dir / _slug(f"needle_viz_{model}_{label}_{names[0]}_{names[-1]}")
        fig = heatmap_figure(pivot, f"{model} w/ {label}, {span} Context")
        for suffix in (".png", ".pdf"):
            fig.savefig(stem.with_suffix(suffix), dpi=150)
            written.append(stem.with_suffix(suffix))
        pivot.to_csv(stem.with_suffix(".csv"))
        written.append(stem.with_suffix(".csv"))
    return written


def write_report(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Every table (markdown with footnotes + CSV), the NIAH heatmaps and ``report.md``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sections = [], []
    for bench in sorted(df["bench"].unique()):
        for name, table in bench_tables(df, bench).items():
            stem = out_dir / _slug(f"{bench}_{name}")
            table.to_csv(stem.with_suffix(".csv"))
            md = "\n\n".join([to_markdown(table), "\n".join(table_footnotes(df, bench, table))]).strip()
            stem.with_suffix(".md").write_text(md + "\n")
            written += [stem.with_suffix(".csv"), stem.with_suffix(".md")]
            what = "" if set(df.loc[df["bench"] == bench, "runner"]) == {SMOKE} else "score x100 "
            sections.append(f"## {bench}: {what}{name.replace('_', ' ')}\n\n{md}\n")
    heatmaps = write_niah_heatmaps(df, out_dir)
    if heatmaps:
        sections.append("## NIAH heatmaps\n\n" + "\n".join(
            f"![{p.stem}]({p.name})" for p in heatmaps if p.suffix == ".png") + "\n")
    report = out_dir / "report.md"
    runs = "\n".join(f"- {run}" for run in sorted(df["run"].unique()))
    report.write_text("# Benchmark report\n\nRuns:\n" + runs + "\n\n" + "\n".join(sections))
    return written + heatmaps + [report]


def main(argv: list[str] | None = None) -> None:
    """CLI: collect the runs under the given folders and write the report."""
    parser = argparse.ArgumentParser(description="Tables and NIAH heatmaps from result folders.")
    parser.add_argument("folders", nargs="+", help="run or multirun folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder for tables and figures")
    args = parser.parse_args(argv)
    try:
        df = load_results(args.folders)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    for path in write_report(df, args.out):
        print(path)


if __name__ == "__main__":
    main()
