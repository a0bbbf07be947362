"""Runs compared example by example on the examples they share (finished or not).

``python -m benchmarks.reports.paired <run folders...> --reference <folder name> --out <dir>``

For unfinished sweeps (a run cut by a time limit, shards still running) the per-run tables of
``benchmarks.reports.runs`` would compare different examples. This report keeps only the example
ids present in both runs: for every run against ``--reference`` and every length, the score
(mean over tasks of the per-task mean, x100, as the RULER tables), the number of shared examples
and tasks, and the mean prefill density of each run on them; plus one table over the examples all
runs share. Runs are named by their folder. Writes ``paired.md`` and ``paired.csv``.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from benchmarks.runner.plan import planned_rows
from benchmarks.tables import markdown_table


def task_mean_score(rows: Sequence[Mapping]) -> float:
    """x100 mean over tasks of the per-task mean score (the RULER per-length convention)."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(float(r["score"]))
    return 100 * sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)


def compare(runs: Mapping[str, dict[str, dict]], names: Sequence[str]) -> list[dict]:
    """One row per length: scores and densities of ``names`` on the ids all of them have."""
    common = set.intersection(*(set(runs[n]) for n in names))
    rows = []
    for length in sorted({runs[names[0]][i]["length"] for i in common}):
        ids = [i for i in common if runs[names[0]][i]["length"] == length]
        row = {"length": str(length), "examples": len(ids), "tasks": len({runs[names[0]][i]["task"] for i in ids})}
        for n in names:
            picked = [runs[n][i] for i in ids]
            row[f"score {n}"] = round(task_mean_score(picked), 2)
            row[f"density {n}"] = round(sum(float(r["density"]) for r in picked) / len(picked), 3)
        rows.append(row)
    return rows


def load(folders: Sequence[str | Path]) -> dict[str, dict[str, dict]]:
    """``{folder name: {example id: samples row}}`` of every run folder."""
    runs = {}
    for folder in map(Path, folders):
        name = folder.name
        if name in runs:
            raise ValueError(f"two runs named {name!r}: rename a folder")
        rows = planned_rows(folder)
        if not rows:
            raise FileNotFoundError(f"{folder}: no samples")
        runs[name] = {r["id"]: r for r in rows}
    return runs


def main(argv: list[str] | None = None) -> int:
    """Write ``paired.md`` / ``paired.csv``; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (their names label them)")
    ap.add_argument("--reference", required=True, help="folder name of the run the others are compared with")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    runs = load(args.runs)
    if args.reference not in runs:
        ap.error(f"--reference {args.reference!r} is none of {sorted(runs)}")
    text = ["# Runs compared on the examples they share", "",
            "score: x100 mean over tasks of the per-task mean score, on the shared examples only; "
            "density: mean computed pairs / causal pairs of those prefills. Produced by "
            "`python -m benchmarks.reports.paired`.", ""]
    frames = []
    for name in [n for n in runs if n != args.reference]:
        df = pd.DataFrame(compare(runs, [args.reference, name]))
        frames.append(df.assign(run=name))
        text += [f"## {name} vs {args.reference}", "", markdown_table(df, list(df.columns)), ""]
    everyone = pd.DataFrame(compare(runs, list(runs)))
    text += ["## All runs on the examples every run has", "",
             markdown_table(everyone, list(everyone.columns)) if not everyone.empty else "(none)", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    pd.concat(frames + [everyone.assign(run="all")]).to_csv(args.out / "paired.csv", index=False)
    (args.out / "paired.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
