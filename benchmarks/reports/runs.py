"""Paper-style tables and NIAH heatmaps, built from result files only.

``python -m benchmarks.reports.runs <run or multirun folder(s)> --out <dir>``

Every folder under the given ones that holds a ``samples.jsonl`` (or shard files
``samples.shard-<i>-of-<N>.jsonl``, read together, de-duplicated by id, limited to the examples
its plan asks for) is one run; its ``summary.json`` supplies the resolved config
(``summary["config"]``, else ``summary["env"]["config"]``): benchmark, model and method. Runs
without a summary (unfinished) or with a ``FAILED*`` marker are skipped with a warning.

Written to ``--out``, per benchmark ``<bench>``:

* ``<bench>_by_task.{md,csv}``: (model, method) x task, mean score x100, ``Avg`` = plain mean of
  the task columns (Table 2 style), then mean ``prefill_ms`` and ``density``;
* ``<bench>_by_length.{md,csv}``: (model, method) x length, each cell the plain mean over tasks
  of the per-task means at that length, ``Avg`` over the lengths (Table 3 style), same cost
  columns. ``Avg`` is empty ("-") when a cell is missing;
* NIAH only: per (model, method) ``needle_viz_<model>_<method>_<min>K_<max>K.{png,pdf,csv}``,
  the depth x context-length heatmap of the mean score over rounds (MInference's
  ``needle_viz.py`` look, drawn with matplotlib alone);
* ``report.md``: every table, plus links to the heatmaps.

Method label: the method name, plus ``(key=value, ...)`` for the hyperparameters that differ
between runs of that method and are not the defaults of ``conf/method/<name>.yaml``.
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
from typing import Any

import pandas as pd
import yaml

from benchmarks.config_files import CONF_DIR
from benchmarks.runner.plan import planned_rows
from benchmarks.runner.results import SUMMARY, failure_markers
from benchmarks.tables import markdown_table

NIAH = "niah"
COLORS = ["#F0496E", "#EBB839", "#0CD79F"]  # red -> yellow -> green, as in needle_viz.py
METHOD_CONF = CONF_DIR / "method"
COST = ["prefill_ms", "density"]
KEYS = ["model", "label"]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding ``samples*.jsonl``) at or under ``paths``, sorted, without repeats."""
    runs = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such results folder: {path}")
        runs.update(p.parent.resolve() for p in path.rglob("samples*.jsonl"))
    return sorted(runs)


def run_config(summary: dict, path: Path) -> dict:
    """The resolved run config stored in a summary."""
    cfg = summary.get("config") or summary.get("env", {}).get("config")
    if not isinstance(cfg, dict) or "name" not in (cfg.get("method") or {}):
        raise ValueError(f"{path}: no config with a named method block (summary['config'] or "
                         f"summary['env']['config'])")
    return cfg


def _method_defaults(name: str) -> dict:
    """``conf/method/<name>.yaml`` when it configures method ``name``, else ``{}``."""
    path = METHOD_CONF / f"{name}.yaml"
    if not path.exists():
        return {}
    conf = yaml.safe_load(path.read_text()) or {}
    return conf if conf.get("name") == name else {}


def method_labels(configs: list[dict]) -> list[str]:
    """One label per method config: name plus the varying, non-default hyperparameters."""
    def key(value: Any) -> str:  # comparable form: 12 and 12.0 are the same setting
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        return json.dumps(value, sort_keys=True)

    seen: dict[str, dict[str, set]] = {}  # method name -> hyperparameter -> values across runs
    for name in {c["name"] for c in configs}:
        group = [c for c in configs if c["name"] == name]
        seen[name] = {k: {key(c.get(k)) for c in group} for k in set().union(*group) - {"name"}}
    labels = []
    for cfg in configs:
        defaults = _method_defaults(cfg["name"])
        shown = [f"{k}={cfg.get(k)}" for k, vals in sorted(seen[cfg["name"]].items())
                 if len(vals) > 1 and (k not in defaults or key(defaults[k]) != key(cfg.get(k)))]
        labels.append(f"{cfg['name']}({', '.join(shown)})" if shown else cfg["name"])
    return labels


def load_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Tidy frame, one row per sample, of every finished run under ``paths``.

    Columns: run, bench, model, method, label, id, task, length, score, prefill_ms, density,
    dense_fallbacks, prediction, targets, and ``meta_<key>`` for each scalar meta field.

    Raises:
        FileNotFoundError: no run with samples and a summary under ``paths``.
    """
    paths = list(paths)
    runs = []
    for run in find_runs(paths):
        if failure_markers(run):
            warnings.warn(f"skipping {run}: its last attempt failed ({failure_markers(run)[0].name})", stacklevel=2)
            continue
        if not (run / SUMMARY).exists():
            warnings.warn(f"skipping {run}: {SUMMARY} missing (run unfinished?)", stacklevel=2)
            continue
        cfg = run_config(json.loads((run / SUMMARY).read_text()), run / SUMMARY)
        runs.append((run, cfg, planned_rows(run)))
    if not any(samples for _, _, samples in runs):
        raise FileNotFoundError(f"no finished run with samples (samples*.jsonl + {SUMMARY}) under "
                                f"{', '.join(map(str, paths))}")
    labels = method_labels([cfg["method"] for _, cfg, _ in runs])
    rows = []
    for (run, cfg, samples), label in zip(runs, labels):
        base = {"run": str(run), "bench": (cfg.get("bench") or {}).get("name", "unknown"),
                "model": (cfg.get("model") or {}).get("name", "model"),
                "method": cfg["method"]["name"], "label": label}
        for s in samples:
            row = dict(base, **{k: s.get(k) for k in ["id", "task", "length", "score", "prefill_ms",
                                                      "density", "dense_fallbacks", "prediction",
                                                      "targets"]})
            row.update({f"meta_{k}": v for k, v in (s.get("meta") or {}).items()
                        if v is None or isinstance(v, (str, int, float, bool))})
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in ["score", "prefill_ms", "density", "dense_fallbacks"]:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    dup = df.duplicated(["bench", "model", "label", "id"])
    if dup.any():
        warnings.warn(f"{int(dup.sum())} samples appear in several runs with the same bench, model "
                      f"and method label; they are averaged together", stacklevel=2)
    return df


def score_tables(df: pd.DataFrame, bench: str) -> dict[str, pd.DataFrame]:
    """``{"by_task": ..., "by_length": ...}`` for one benchmark: mean score x100 + Avg + cost."""
    part = df[df["bench"] == bench]
    if part.empty:
        raise ValueError(f"no samples of bench {bench!r}; have {sorted(df['bench'].unique())}")
    cost = part.groupby(KEYS)[COST].mean()
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


def to_markdown(table: pd.DataFrame) -> str:
    """A score table as markdown, numbers with 2 decimals, missing values as ``-``."""
    flat = table.reset_index()
    text = flat.apply(lambda col: col.map(
        lambda x: "-" if isinstance(x, float) and math.isnan(x)
        else f"{x:.2f}" if isinstance(x, float) else str(x)))
    return markdown_table(text)


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
    ax.set_xticks(range(pivot.shape[1]), [f"{round(x / 1000)}K" for x in pivot.columns],
                  rotation=60, fontsize=14)
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
        lo, hi = int(min(pivot.columns)), int(max(pivot.columns))
        stem = out_dir / _slug(f"needle_viz_{model}_{label}_{lo // 1000}K_{hi // 1000}K")
        fig = heatmap_figure(pivot, f"{model} w/{label} {hi // 1000}K Context")
        for suffix in (".png", ".pdf"):
            fig.savefig(stem.with_suffix(suffix), dpi=150)
            written.append(stem.with_suffix(suffix))
        pivot.to_csv(stem.with_suffix(".csv"))
        written.append(stem.with_suffix(".csv"))
    return written


def write_report(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Every table (markdown + CSV), the NIAH heatmaps and ``report.md``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sections = [], []
    for bench in sorted(df["bench"].unique()):
        for name, table in score_tables(df, bench).items():
            stem = out_dir / _slug(f"{bench}_{name}")
            table.to_csv(stem.with_suffix(".csv"))
            md = to_markdown(table)
            stem.with_suffix(".md").write_text(md + "\n")
            written += [stem.with_suffix(".csv"), stem.with_suffix(".md")]
            sections.append(f"## {bench}: score x100 {name.replace('_', ' ')}\n\n{md}\n")
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
