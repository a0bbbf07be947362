"""Figures and tables of the AnchorAttention paper, rebuilt from analysis runs' result files only.

``python -m benchmarks.reports.figures <run folders...> --out results/figures``

Reads every ``samples.jsonl`` under the given folders (runs of ``bench=analysis``, see
``benchmarks/analysis/runner.py``; rows of other benchmarks are ignored). Metric names are never mixed:
``mass_recall`` (dense softmax mass on the attended keys), ``output_recall_<tol>`` (fraction of
output elements within ``tol`` of fp32 dense, the AnchorAttention code's "recall") and
``sparsity = 1 - density_sparse`` (attended pairs, estimation stages excluded; ``sparsity_all_stages
= 1 - density`` counts the estimation work too). Means are over layers x heads. Written to ``--out``:

* ``fig6a_recall_vs_sparsity_N<len>.png`` (+ ``fig6_points_N<len>.csv``): one curve per method
  label over its sweep, one panel per recall metric (paper Fig. 6a);
* ``fig6b_latency_vs_recall.png``: latency (synthetic inputs, ``--latency-length``) against recall
  on real attention (``--length``), per setting (Fig. 6b);
* ``fig6c_latency_vs_length.{png,csv}``: latency per method at one setting per label (Fig. 6c);
* ``table1_block_vs_stripe.{md,csv}``: block (128x128 tiles at the default ``block_size``) vs
  stripe (128x1) oracles: for each target recall, the highest sparsity a measured setting reaches
  with mean recall >= target (Table 1), plus ``table1_points.{md,csv}``;
* ``table4_anchor_ablation.{md,csv}``: anchor vs anchor_zero over theta (Table 4);
* ``fig4_heatmap_<recall>_N<len>.png`` and ``fig8_heatmap_sparsity_N<len>.png`` (+ CSV): layer x
  head maps for oracle_topk_stripe, oracle_topcdf_stripe, anchor and anchor_g512 if run (Figs. 4, 8; with
  ``--heatmap-figures 9,10``, files fig9_* / fig10_* for the paper's second input);
* ``figures.md``: what was written, what was skipped and why.

"One setting per label" (Fig. 6c, heatmaps): ``--setting label=setting`` if given, else the
setting equal to the ``conf/method`` default, else the middle one of the sweep.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from benchmarks.reports.figure_data import (DEFINITIONS, HEATMAP_LABELS, KEYS, LABEL_ORDER, PARTS, TABLE1_PAIRS,
                                            TABLE1_TARGETS, TABLE4_LABELS, TABLE4_THETAS, curve_points,
                                            default_length, fixed_settings, load_analysis, metric_title,
                                            recall_metrics)
from benchmarks.tables import markdown_table


def _colors(labels: Iterable[str]) -> dict[str, tuple]:
    """A color per label, the same in every figure for the labels of ``LABEL_ORDER``."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    extra = sorted(set(labels) - set(LABEL_ORDER))
    order = [*LABEL_ORDER, *extra]
    return {label: cmap((2 * order.index(label) + order.index(label) // 10) % cmap.N) for label in set(labels)}


def _figure(n_panels: int, width: float = 5.5, height: float = 4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


def _recall_panels(pts: pd.DataFrame, metrics: list[str], x: str, xlabel: str, title):
    """One panel per recall metric, one curve per label: ``metric`` against column ``x``."""
    colors = _colors(pts["label"])
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for label, part in pts.groupby("label", sort=False):
            part = part.sort_values(x)
            ax.plot(part[x], part[metric], "o-", color=colors[label], label=label)
        ax.set(xlabel=xlabel, ylabel=metric_title(metric), title=title(metric))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def fig6a(acc: pd.DataFrame, out: Path, length: int | None = None) -> list[Path]:
    """Recall vs sparsity, one curve per label, one panel per recall metric (Fig. 6a)."""
    length = default_length(acc, length)
    pts = curve_points(acc, length)
    fig = _recall_panels(pts, recall_metrics(acc), "sparsity", metric_title("sparsity"),
                         lambda metric: f"{metric}, N={length}")
    fig.suptitle(f"Recall vs sparsity ({pts['model'].iloc[0]}, means over layers x heads)")
    csv = out / f"fig6_points_N{length}.csv"
    pts.to_csv(csv, index=False)
    return [_save(fig, out / f"fig6a_recall_vs_sparsity_N{length}.png"), csv]


def _shapes(lat: pd.DataFrame) -> str:
    """The synthetic input of the latency rows, e.g. ``structured bf16, Hq=32 Hkv=8 D=128``."""
    r = lat.iloc[0]
    return (f"{r.get('input')} {r.get('dtype', 'bf16')}, Hq={int(r['q_heads'])} Hkv={int(r['kv_heads'])} "
            f"D={int(r['head_dim'])}")


def _latency_means(lat: pd.DataFrame) -> pd.DataFrame:
    """Mean ``ms`` per (label, setting, length) of the latency rows that have one."""
    if "ms" not in lat or lat["ms"].isna().all():
        return pd.DataFrame(columns=[*KEYS, "ms"])
    return lat[lat["ms"].notna()].groupby(KEYS, sort=False)[["ms"]].mean().reset_index()


def fig6b(acc: pd.DataFrame, lat: pd.DataFrame, out: Path, length: int | None = None,
          latency_length: int | None = None) -> list[Path]:
    """Latency (synthetic, ``latency_length``) vs recall (real, ``length``) per setting (Fig. 6b)."""
    if lat.empty or acc.empty:
        return []
    length, lat_len = default_length(acc, length), default_length(lat, latency_length)
    times = _latency_means(lat)
    times = times[times["length"] == lat_len].drop(columns="length")
    pts = curve_points(acc, length).merge(times, on=["label", "setting"])
    if pts.empty:
        return []
    fig = _recall_panels(pts, recall_metrics(acc), "ms", f"latency ms (synthetic inputs, N={lat_len})",
                         lambda metric: f"{metric} at N={length}")
    fig.suptitle(f"Latency vs recall: time on {_shapes(lat)}; recall on {pts['model'].iloc[0]}")
    return [_save(fig, out / "fig6b_latency_vs_recall.png")]


def fig6c(lat: pd.DataFrame, out: Path, chosen: Mapping[str, str] | None = None) -> list[Path]:
    """Latency vs length, one curve per label at one setting each (Fig. 6c)."""
    times = _latency_means(lat)
    if times.empty:
        return []
    fixed = fixed_settings(lat, chosen)
    pts = times[times.apply(lambda r: fixed.get(r["label"]) == r["setting"], axis=1)].sort_values("length")
    colors = _colors(pts["label"])
    fig, axes = _figure(1, width=7)
    for label, part in pts.groupby("label", sort=False):
        axes[0].plot(part["length"], part["ms"], "o-", color=colors[label], label=f"{label} ({fixed[label]})")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="latency ms (do_bench median)")
    lengths = sorted(pts["length"].unique())
    axes[0].set_xticks(lengths, [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
    axes[0].minorticks_off()
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"Latency vs length ({_shapes(lat)})")
    csv = out / "fig6c_latency_vs_length.csv"
    pts.to_csv(csv, index=False)
    return [_save(fig, out / "fig6c_latency_vs_length.png"), csv]


def _write_table(df: pd.DataFrame, stem: Path, header: str) -> list[Path]:
    df.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(f"{header}\n\n{markdown_table(df, digits=4)}\n")
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]


def table1_frame(pts: pd.DataFrame, metrics: Sequence[str], targets: Sequence[float] = TABLE1_TARGETS,
                 pairs: Mapping[str, tuple[str, str]] = TABLE1_PAIRS) -> pd.DataFrame:
    """Per (strategy, recall metric, target): each granularity's highest sparsity (%) among settings
    whose mean recall >= target, with that setting and its recall (NaN / "-" when none reaches it)."""
    rows = []
    for strategy, labels in pairs.items():
        if not set(labels) & set(pts["label"]):
            continue
        for metric in metrics:
            for target in targets:
                row = {"strategy": strategy, "recall_metric": metric, "target_recall_%": 100 * target}
                for gran, label in zip(("block", "stripe"), labels):
                    cand = pts[(pts["label"] == label) & (pts[metric] >= target)]
                    best = cand.loc[cand["sparsity"].idxmax()] if not cand.empty else None
                    row[f"{gran}_setting"] = best["setting"] if best is not None else "-"
                    row[f"{gran}_recall_%"] = 100 * best[metric] if best is not None else math.nan
                    row[f"{gran}_sparsity_%"] = 100 * best["sparsity"] if best is not None else math.nan
                row["stripe_minus_block_sparsity_%"] = row["stripe_sparsity_%"] - row["block_sparsity_%"]
                rows.append(row)
    return pd.DataFrame(rows)


def table1(acc: pd.DataFrame, out: Path, length: int | None = None) -> list[Path]:
    """Table 1 (block vs stripe at equal recall) and its measured points, markdown + CSV."""
    length = default_length(acc, length)
    pts = curve_points(acc, length)
    labels = {label for pair in TABLE1_PAIRS.values() for label in pair}
    pts = pts[pts["label"].isin(labels)]
    if pts.empty:
        return []
    metrics = recall_metrics(acc)
    frame = table1_frame(pts, metrics)
    header = (f"# Table 1: block (query block x key tile) vs stripe (query block x 1 key) oracle selection, "
              f"N={length}\n\n"
              "Per target recall: the highest sparsity (1 - attended density, %) among the measured settings "
              "whose mean recall (over layers x heads) is at least the target; '-' when none reaches it.")
    points = pts[["label", "setting", "length", *metrics, "sparsity"]].copy()
    points[[*metrics, "sparsity"]] *= 100
    points.columns = [c if c in ("label", "setting", "length") else f"{c}_%" for c in points.columns]
    return (_write_table(frame, out / "table1_block_vs_stripe", header)
            + _write_table(points, out / "table1_points", f"# Table 1 measured points (%), N={length}"))


def table4(acc: pd.DataFrame, lat: pd.DataFrame, out: Path, length: int | None = None,
           latency_length: int | None = None, thetas: Sequence[float] = TABLE4_THETAS) -> list[Path]:
    """Table 4: anchor vs anchor_zero per theta: sparsity, recalls, real-layer ms, synthetic latency."""
    length = default_length(acc, length)
    pts = curve_points(acc, length)
    pts = pts[pts["label"].isin(list(TABLE4_LABELS)) & (pts["param"] == "theta")].copy()
    pts["theta"] = pts["value"].astype(float)
    pts = pts[pts["theta"].isin([float(t) for t in thetas])]
    pts = pts.assign(order=pts["label"].map(list(TABLE4_LABELS).index)).sort_values(["order", "theta"])
    if pts.empty:
        return []
    metrics = recall_metrics(acc)
    table = pd.DataFrame({"variant": pts["label"].map(TABLE4_LABELS), "theta": pts["theta"],
                          "sparsity_%": 100 * pts["sparsity"],
                          "sparsity_all_stages_%": 100 * pts["sparsity_all_stages"],
                          **{f"{m}_%": 100 * pts[m] for m in metrics},
                          "relative_error": pts["relative_error"], "layer_ms": pts["layer_ms"]})
    note = ""
    if not lat.empty:
        lat_len = default_length(lat, latency_length)
        times = _latency_means(lat)
        times = times[times["length"] == lat_len].set_index(["label", "setting"])["ms"]
        table[f"latency_ms_N{lat_len}"] = [times.get((r.label, r.setting), math.nan) for r in pts.itertuples()]
        note = f" latency_ms_N{lat_len}: do_bench median on synthetic inputs of {lat_len} tokens."
    header = (f"# Table 4: anchor ablation, N={length} ({pts['model'].iloc[0]})\n\n"
              "sparsity = 1 - attended density (estimation excluded); sparsity_all_stages counts it; "
              "recalls are means over layers x heads; layer_ms: mean wall time of one method call on a "
              f"captured layer.{note}")
    return _write_table(table, out / "table4_anchor_ablation", header)


def heatmaps(acc: pd.DataFrame, out: Path, length: int | None = None,
             chosen: Mapping[str, str] | None = None, figures: tuple[int, int] = (4, 8)) -> list[Path]:
    """Layer x head maps of each recall metric and of sparsity, one panel per label: paper
    Figs. 4 and 8 (``figures=(4, 8)``), or 9 and 10 for another input (file names follow)."""
    length = default_length(acc, length)
    part = acc[(acc["length"] == length) & acc["label"].isin(HEATMAP_LABELS)]
    if part.empty:
        return []
    fixed = fixed_settings(part, chosen)
    part = part[part.apply(lambda r: fixed[r["label"]] == r["setting"], axis=1)]
    labels = [label for label in HEATMAP_LABELS if label in set(part["label"])]
    metrics = recall_metrics(acc)
    written = []
    for metric in [*metrics, "sparsity"]:
        fig, axes = _figure(len(labels), width=4.5, height=5)
        for ax, label in zip(axes, labels):
            grid = part[part["label"] == label].pivot_table(index="layer", columns="head", values=metric)
            image = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto",
                              interpolation="nearest")
            ax.set(xlabel="head", ylabel="layer", title=f"{label} ({fixed[label]})\nmean {grid.stack().mean():.3f}")
            ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index], fontsize=6)
            ax.set_xticks(range(len(grid.columns)), [str(h) for h in grid.columns], fontsize=6)
            fig.colorbar(image, ax=ax)
        fig.suptitle(f"{metric_title(metric)}, N={length}")
        name = f"fig{figures[1]}_heatmap_sparsity" if metric == "sparsity" else f"fig{figures[0]}_heatmap_{metric}"
        written.append(_save(fig, out / f"{name}_N{length}.png"))
    csv = out / f"heatmaps_N{length}.csv"
    part[["label", "setting", "layer", "head", *metrics, "sparsity"]].to_csv(csv, index=False)
    return written + [csv]


def write_figures(paths: Iterable[str | Path], out: str | Path, length: int | None = None,
                  latency_length: int | None = None, chosen: Mapping[str, str] | None = None,
                  heatmap_figures: tuple[int, int] = (4, 8), only: Sequence[str] | None = None) -> list[Path]:
    """Every figure and table the data allows (of the ``PARTS`` named in ``only``, default all), plus
    ``figures.md``; returns the written paths. ``heatmap_figures``: paper figure numbers of the recall
    and sparsity heatmaps (4, 8 or 9, 10)."""
    paths = list(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    acc, lat = load_analysis(paths)
    need_acc, need_lat = "no accuracy rows", "no latency rows (the latency part runs on CUDA only)"
    parts = [  # (name, needs, what is missing otherwise, maker), in PARTS order
        ("Fig. 6a recall vs sparsity", [acc], need_acc, lambda: fig6a(acc, out, length)),
        ("Fig. 6b latency vs recall", [acc, lat], f"{need_acc} or {need_lat}, or no setting in both",
         lambda: fig6b(acc, lat, out, length, latency_length)),
        ("Fig. 6c latency vs length", [lat], need_lat, lambda: fig6c(lat, out, chosen)),
        ("Table 1 block vs stripe", [acc], "no rows of " + ", ".join(sorted({x for p in TABLE1_PAIRS.values()
                                                                          for x in p})),
         lambda: table1(acc, out, length)),
        ("Table 4 anchor ablation", [acc], "no theta sweep of anchor / anchor_zero",
         lambda: table4(acc, lat, out, length, latency_length)),
        ("Figs. {}/{} heatmaps".format(*heatmap_figures), [acc], "no rows of " + ", ".join(HEATMAP_LABELS),
         lambda: heatmaps(acc, out, length, chosen, heatmap_figures)),
    ]
    unknown = set(only or ()) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    written, lines = [], []
    for key, (name, needs, missing, make) in zip(PARTS, parts):
        if only is not None and key not in only:
            continue
        files = make() if all(not df.empty for df in needs) else []
        written += files
        lines.append(f"- {name}: " + (", ".join(f"[{p.name}]({p.name})" for p in files) if files
                                      else f"skipped: {missing}"))
    index = out / "figures.md"
    index.write_text("# Paper figures and tables\n\nRuns:\n" + "\n".join(f"- {p}" for p in paths)
                     + "\n\n" + "\n".join(lines) + "\n\n" + DEFINITIONS + "\n")
    return written + [index]


def main(argv: list[str] | None = None) -> None:
    """CLI (module docstring)."""
    p = argparse.ArgumentParser(description="Paper figures/tables from analysis run folders.")
    p.add_argument("folders", nargs="+", help="run or multirun folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--length", type=int, default=None, help="accuracy length to plot (default: longest)")
    p.add_argument("--latency-length", type=int, default=None, help="latency length for Fig. 6b / Table 4")
    p.add_argument("--setting", action="append", default=[], metavar="LABEL=SETTING",
                   help="setting shown for LABEL in Fig. 6c and the heatmaps, e.g. anchor=theta=12.0")
    p.add_argument("--heatmap-figures", default="4,8", help="figure numbers of the recall and sparsity heatmaps "
                   "(4,8; 9,10 for the paper's second input)")
    p.add_argument("--only", default=None, help=f"comma-separated parts to write, of {','.join(PARTS)}")
    args = p.parse_args(argv)
    chosen = dict(s.split("=", 1) for s in args.setting)
    numbers = args.heatmap_figures.split(",")
    if len(numbers) != 2 or not all(x.strip().isdigit() for x in numbers):
        p.error(f"--heatmap-figures: expected two figure numbers such as 9,10, got {args.heatmap_figures!r}")
    recall_fig, sparsity_fig = (int(x) for x in numbers)
    only = args.only.split(",") if args.only else None
    for path in write_figures(args.folders, args.out, args.length, args.latency_length, chosen,
                              (recall_fig, sparsity_fig), only):
        print(path)


if __name__ == "__main__":
    main()
