"""Crash-safe, resumable result files of one run.

A run folder holds ``samples.jsonl`` (one JSON object per finished example, each with an ``id``)
and, once the run completes, ``summary.json`` (metrics + an ``env`` block recording code version,
library versions, hardware and the resolved config).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


class ResultWriter:
    """Append finished examples to ``<out_dir>/samples.jsonl`` and write ``summary.json``.

    Every line is flushed and fsync'ed, so a killed run loses nothing it finished. On start-up an
    unterminated or unparsable last line (the mark of a kill mid-write) is dropped and the file
    rewritten without it.

    Args:
        out_dir: run folder (created if missing).
        config: resolved run config, stored in the summary's ``env`` block.
    """

    def __init__(self, out_dir: str | Path, config: Mapping[str, Any]):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.samples_path = self.out_dir / SAMPLES
        self._rows = self._load()

    def _load(self) -> list[dict]:
        """Parse existing samples; drop a truncated last line and rewrite the file without it."""
        if not self.samples_path.exists():
            return []
        raw = self.samples_path.read_bytes()
        body, _, tail = raw.rpartition(b"\n")  # body: newline-terminated lines; tail: the rest
        lines = [line for line in body.split(b"\n") if line.strip()]
        if tail.strip():
            lines.append(tail)
        rows, kept = [], []
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if i == len(lines) - 1:
                    break  # killed mid-write: that example was not finished
                raise ValueError(f"{self.samples_path}: record {i + 1} of {len(lines)} is corrupt "
                                 f"(only a truncated last line is tolerated): {err}") from err
            if not isinstance(row, dict):
                raise ValueError(f"{self.samples_path}: record {i + 1} is not a JSON object: {row!r}")
            rows.append(row)
            kept.append(line)
        good = b"".join(line + b"\n" for line in kept)
        if good != raw:
            self._atomic_write(self.samples_path, good)
        return rows

    def done_ids(self) -> set:
        """Ids of the examples already written (to skip on resume)."""
        return {r["id"] for r in self._rows if "id" in r}

    def rows(self) -> list[dict]:
        """All samples written so far, this run and earlier ones."""
        return list(self._rows)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one finished example (must carry an ``id``) durably."""
        if "id" not in row:
            raise ValueError(f"sample has no 'id': {dict(row)}")
        row = dict(row)
        line = json.dumps(row) + "\n"
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._rows.append(row)

    def finish(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` = ``summary`` + ``env`` block; return its path."""
        out = dict(summary)
        out["env"] = environment(self.config)
        path = self.out_dir / SUMMARY
        self._atomic_write(path, (json.dumps(out, indent=2, default=str) + "\n").encode())
        return path

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)



def _git(*args: str) -> str | None:
    """Output of a read-only git command in the harness checkout, or None without git/repo."""
    try:
        proc = subprocess.run(["git", "--no-optional-locks", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(config: Mapping[str, Any]) -> dict[str, Any]:
    """What produced a result: code version, library versions, hardware, time and config."""
    import torch  # torch is a hard dependency; imported here to keep this module light

    status = _git("status", "--porcelain")
    return {
        # ANCHOR_HARNESS_GIT_SHA names the commit of a copy whose .git is missing or stale (a GPU
        # box synced from a working tree); it wins over git, and then dirtiness is unknown
        "git_sha": os.environ.get("ANCHOR_HARNESS_GIT_SHA") or _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None or os.environ.get("ANCHOR_HARNESS_GIT_SHA") else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "hostname": socket.gethostname(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "config": dict(config),
    }


def summarize_by(rows: Iterable[Mapping[str, Any]], keys: Sequence[str],
                 value: str | Sequence[str]) -> list[dict[str, Any]]:
    """Mean of numeric field(s) ``value`` over rows grouped by ``keys``, in first-seen group order.

    Returns one dict per group: the key fields, the mean of each value field and the number of
    rows in the group under ``count``. Rows missing a value field (or holding None) are left out
    of that field's mean.
    """
    fields = [value] if isinstance(value, str) else list(value)
    if "count" in keys or "count" in fields:
        raise ValueError("'count' is reserved for the group size; rename that field")
    counts: dict[tuple, int] = {}
    samples: dict[tuple, dict[str, list[float]]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        counts[key] = counts.get(key, 0) + 1
        group = samples.setdefault(key, {f: [] for f in fields})
        for f in fields:
            if row.get(f) is not None:
                group[f].append(float(row[f]))
    out = []
    for key, n in counts.items():
        entry: dict[str, Any] = dict(zip(keys, key))
        for f, vals in samples[key].items():
            entry[f] = sum(vals) / len(vals) if vals else None
        entry["count"] = n
        out.append(entry)
    return out
