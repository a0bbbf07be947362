"""Merge the shards of generation runs: one ``summary.json`` and the tables per run.

``python -m benchmarks.runner.merge <folder> [<folder> ...]``: every run folder at or under the
given paths (a folder with a ``plan*.json``) is merged in place: its shard files
(``samples.shard-<i>-of-<N>.jsonl``, or ``samples.jsonl``) give ``summary.json`` (the same
``benchmarks.runner.generate.summarize`` as an unsharded run, over the planned examples in
benchmark order) and the tables (``benchmarks.reports.runs.write_report``). A folder whose
shards are not all done is reported (shards never started, examples missing per shard) and left
without a summary; the exit status is then 1. The last shard to finish merges automatically.

``python -m benchmarks.runner.merge <folder> <folder> ... --out <dir>``: the folders are shards
of one run kept in separate folders; they must share one config fingerprint (else refused,
naming the differing keys). ``<dir>`` becomes a run folder holding all their rows
(``samples.jsonl``), plans and fingerprint, merged as above.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.runner import fingerprint as fp
from benchmarks.runner.locks import FileLock
from benchmarks.runner.plan import Status, status
from benchmarks.runner.results import (SAMPLES, SESSIONS, atomic_write, decode_modes, failure_markers,
                                        folder_rows, folders_with, write_summary)


def run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Generation run folders (holding a ``plan*.json``) at or under ``paths``, sorted."""
    return folders_with(paths, "plan*.json")


def merge_folder(folder: str | Path, extra_env: Mapping[str, Any] | None = None) -> tuple[Status, list[Path]]:
    """Write ``summary.json`` and the tables of a complete run folder; returns its ``Status`` and
    the files written (none when incomplete: ``Status.describe()`` says what is missing)."""
    from benchmarks.reports.runs import load_results, write_report
    from benchmarks.runner.generate import summarize

    folder = Path(folder)
    state = status(folder)
    if not state.complete:
        return state, []
    summary = summarize(state.rows, state.plan.get("requested_tasks"))
    summary.update({"n_expected": len(state.ids), "num_shards": state.num_shards,
                    "extra_rows": state.extra_rows, "duplicate_rows": state.duplicate_rows})
    path = write_summary(folder, summary, state.plan["config"], extra_env)
    return state, [path, *write_report(load_results([folder]), folder)]


def _fingerprint(folder: Path) -> dict:
    path = folder / fp.FILE
    if not path.exists():
        raise ValueError(f"{folder}: no {fp.FILE} (not a run folder of this harness)")
    stored = json.loads(path.read_text())["fingerprint"]
    if fp.DECODE_CACHE_KEY in stored:
        return stored
    return {**stored, fp.DECODE_CACHE_KEY: fp.legacy_decode_cache(decode_modes(folder))}


def collect(folders: list[Path], out: Path) -> None:
    """Make ``out`` a run folder holding the rows, plans, sessions and fingerprint of ``folders``
    (shards of one run); refuses folders of different configs."""
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"no such run folder: {folder}")
    first = _fingerprint(folders[0])
    for folder in folders[1:]:
        diff = fp.differences(first, _fingerprint(folder))
        if diff:
            raise fp.FingerprintMismatch(f"{folders[0]} and {folder} are runs of different configs; "
                                         f"refusing to merge them:\n  " + "\n  ".join(diff))
    if out.resolve() in {f.resolve() for f in folders}:
        raise ValueError(f"--out {out} must be a new folder, not one of the inputs")
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock.acquire(out / f"{SAMPLES}.lock", f"merged result file {out / SAMPLES}")
    try:
        rows, seen, sessions = [], set(), []
        for folder in folders:
            for row in folder_rows(folder)[0]:
                if row["id"] not in seen:
                    seen.add(row["id"])
                    rows.append(row)
            for plan in sorted(folder.glob("plan*.json"), key=lambda p: p.stat().st_mtime):
                shutil.copy2(plan, out / plan.name)
            if (folder / SESSIONS).exists():
                sessions.append((folder / SESSIONS).read_text())
        shutil.copy2(folders[0] / fp.FILE, out / fp.FILE)
        atomic_write(out / SESSIONS, "".join(sessions).encode())
        atomic_write(out / SAMPLES, "".join(json.dumps(r) + "\n" for r in rows).encode())
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    """CLI (module docstring); returns 0 when every run is complete and merged."""
    parser = argparse.ArgumentParser(description="Merge the shards of generation runs into summary.json + tables.")
    parser.add_argument("folders", nargs="+", help="run folders, or folders holding them (searched recursively)")
    parser.add_argument("--out", help="merge these folders (shards of one run) into this new run folder")
    args = parser.parse_args(argv)
    try:
        if args.out:
            collect([Path(f) for f in args.folders], Path(args.out))
            folders = [Path(args.out)]
        else:
            folders = run_folders(args.folders)
        if not folders:
            raise FileNotFoundError(f"no generation run folder (with a plan*.json) under {', '.join(args.folders)}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ok = True
    for folder in folders:
        try:
            state, written = merge_folder(folder)
        except ValueError as err:
            print(f"{folder}: error: {err}", file=sys.stderr)
            ok = False
            continue
        if not written:
            markers = "".join(f"\n  {m.name}: {m.read_text().strip()}" for m in failure_markers(folder))
            print(f"{folder}: incomplete, not merged:\n  " + state.describe().replace("\n", "\n  ") + markers)
            ok = False
            continue
        print(f"{folder}: {len(state.rows)} examples from {state.num_shards} shard(s), "
              f"{state.extra_rows} extra rows, {state.duplicate_rows} duplicates")
        for path in written:
            print(f"  {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
