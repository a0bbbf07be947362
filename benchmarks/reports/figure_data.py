"""Data side of the paper figures: analysis rows loaded from result files, per-setting means,
the metric names and the one-setting-per-label rule (``benchmarks.reports.figures`` draws them)."""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from benchmarks.reports.runs import find_runs
from benchmarks.runner.results import folder_rows

TABLE1_PAIRS = {"top-k": ("oracle_topk_block", "oracle_topk_stripe"),
                "top-cdf": ("oracle_topcdf_block", "oracle_topcdf_stripe")}
TABLE1_TARGETS = (0.80, 0.85, 0.90, 0.95, 0.99)
TABLE4_LABELS = {"anchor": "With Anchor", "anchor_zero": "Without Anchor"}
TABLE4_THETAS = (10.0, 11.0, 12.0, 13.0, 14.0, 15.0)
HEATMAP_LABELS = ("oracle_topk_stripe", "oracle_topcdf_stripe", "anchor", "anchor_g512")
DEFINITIONS = (
    "Definitions: mass_recall = dense softmax mass on the attended keys; output_recall_<tol> = fraction "
    "of output elements within tol of the fp32 dense output (the AnchorAttention code's 'recall'); "
    "sparsity = 1 - density_sparse (attended pairs / causal pairs, estimation stages excluded); "
    "sparsity_all_stages = 1 - density (estimation work counted). Accuracy means are over layers x "
    "heads of real attention captured from the model; latency is the do_bench median on synthetic "
    "inputs (shapes in the figure titles).")
LABEL_ORDER = ("dense", "anchor", "anchor_zero", "anchor_g512", "flexprefill", "vertical_slash", "streaming",
               "oracle_topk_stripe", "oracle_topk_block", "oracle_topcdf_stripe", "oracle_topcdf_block")
KEYS = ["label", "setting", "length"]
PARTS = ("fig6a", "fig6b", "fig6c", "table1", "table4", "heatmaps")   # --only choices
MEANS = ["density", "density_sparse", "sparsity", "sparsity_all_stages", "relative_error", "layer_ms"]


def load_analysis(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(accuracy rows, latency rows)`` of every run under ``paths`` (one row per sample).

    Adds ``run``, ``sparsity`` and ``sparsity_all_stages``; ``value`` lists become JSON strings.
    A sample id seen in several runs (same model) keeps its last copy, with a warning.
    """
    paths = list(paths)
    rows = [{**r, "run": str(run)} for run in find_runs(paths) for r in folder_rows(run)[0]
            if r.get("kind") in ("accuracy", "latency")]
    if not rows:
        raise FileNotFoundError(f"no analysis samples under {', '.join(map(str, paths))}")
    df = pd.DataFrame(rows)
    for col in ("model", "value"):
        if col not in df:
            df[col] = None
    df["value"] = df["value"].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    dup = df.duplicated(["model", "id"], keep="last")
    if dup.any():
        warnings.warn(f"{int(dup.sum())} samples appear in several runs; keeping the last", stacklevel=2)
        df = df[~dup]
    acc = df[df["kind"] == "accuracy"].copy()
    if not acc.empty:
        acc["layer"] = acc["layer"].astype(int)              # float after the concat with latency rows
        acc["head"] = acc["head"].map(lambda h: int(h) if isinstance(h, float) else h)   # int or "mean"
        acc["sparsity"] = 1 - acc["density_sparse"]
        acc["sparsity_all_stages"] = 1 - acc["density"]
    return acc.reset_index(drop=True), df[df["kind"] == "latency"].reset_index(drop=True)


def recall_metrics(acc: pd.DataFrame) -> list[str]:
    """``mass_recall`` then the ``output_recall_<tol>`` columns, loosest tolerance first."""
    outs = sorted((c for c in acc.columns if c.startswith("output_recall_")),
                  key=lambda c: -float(c.rsplit("_", 1)[1]))
    return ["mass_recall", *outs]


def metric_title(metric: str) -> str:
    """Axis label naming exactly what a metric column measures."""
    if metric == "mass_recall":
        return "mass recall (dense softmax mass on attended keys)"
    if metric.startswith("output_recall_"):
        return f"output recall (fraction of |out - dense| < {metric.rsplit('_', 1)[1]})"
    return {"sparsity": "sparsity (1 - attended density)"}.get(metric, metric)


def curve_points(acc: pd.DataFrame, length: int | None = None) -> pd.DataFrame:
    """Per (label, setting, length) means over layers x heads (of ``length`` only, if given)."""
    part = acc if length is None else acc[acc["length"] == length]
    cols = [c for c in MEANS + recall_metrics(part) if c in part]
    means = part.groupby(KEYS, sort=False)[cols].mean()
    first = part.groupby(KEYS, sort=False)[["param", "value", "is_default", "model"]].first()
    return first.join(means).join(part.groupby(KEYS, sort=False).size().rename("n_rows")).reset_index()


def default_length(df: pd.DataFrame, length: int | None) -> int:
    """``length`` if given, else the longest length in ``df``."""
    return int(length) if length is not None else int(df["length"].max())


def fixed_settings(df: pd.DataFrame, chosen: Mapping[str, str] | None = None) -> dict[str, str]:
    """One setting per label: ``chosen``, else the conf default, else the middle of the sweep."""
    out = {}
    for label, part in df.groupby("label", sort=False):
        settings = list(dict.fromkeys(part["setting"]))
        defaults = list(dict.fromkeys(part.loc[part["is_default"].astype(bool), "setting"]))
        out[label] = (chosen or {}).get(label) or (defaults[0] if defaults else settings[len(settings) // 2])
    return out
