"""Crash-safe, resumable result files of one run, one writer per file, one config per folder.

A run folder holds:

* ``samples.jsonl`` (a shard: ``samples.shard-<i>-of-<N>.jsonl``): one JSON object per finished
  example, each with an ``id``; flushed and fsync'ed per line;
* ``samples*.jsonl.lock``: held (``fcntl.flock``) by the one live process writing that file;
* ``fingerprint.json``: the result-affecting config (``benchmarks.runner.fingerprint``), written
  by the first writer; a later writer with another fingerprint is refused, naming the keys;
* ``sessions.jsonl``: one line per writer start (time, host, pid, shard, git sha, dirty);
* ``summary.json`` once complete: metrics + an ``env`` block (code versions, libraries, hardware,
  config);
* ``FAILED`` (a shard: ``FAILED.shard-<i>-of-<N>``) while the last attempt failed or was
  interrupted: reports skip such a folder; the shard's next successful attempt and a complete
  summary remove it; ``run.log`` holds the traceback.

Every samples file of the folder counts for resume: a shard skips the examples any file holds,
and rows are de-duplicated by id (the first written wins).
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

from benchmarks.runner import fingerprint as fp
from benchmarks.runner.locks import FileLock
from benchmarks.runner.naming import shard_suffix

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
FAILED = "FAILED"
SESSIONS = "sessions.jsonl"


def samples_name(shard: int = 0, num_shards: int = 1) -> str:
    """``samples.jsonl``, or ``samples.shard-<i>-of-<N>.jsonl`` for a shard."""
    return f"samples{shard_suffix(shard, num_shards)}.jsonl"


def samples_files(folder: str | Path) -> list[Path]:
    """Every samples file of a run folder: ``samples.jsonl`` first, then the shards by name."""
    folder = Path(folder)
    return sorted(folder.glob("samples*.jsonl"), key=lambda p: (p.name != SAMPLES, p.name))


def decode_modes(folder: str | Path) -> set[str]:
    """The ``decode`` values of a run folder's rows, every samples file (rows without one: ``loop``)."""
    modes = set()
    for path in samples_files(folder):
        rows, _ = _parse(path, path.read_bytes())
        modes |= {str(row.get("decode", "loop")) for row in rows}
    return modes


def _parse(path: Path, raw: bytes) -> tuple[list[dict], list[bytes]]:
    """Rows of a samples file's bytes and their raw lines; an unterminated or unparsable last line
    is left out, a corrupt earlier line raises."""
    body, _, tail = raw.rpartition(b"\n")
    lines = [line for line in body.split(b"\n") if line.strip()]
    if tail.strip():
        lines.append(tail)
    rows, kept = [], []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: record {i + 1} of {len(lines)} is corrupt "
                             f"(only a truncated last line is tolerated): {err}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {i + 1} is not a JSON object: {row!r}")
        rows.append(row)
        kept.append(line)
    return rows, kept


def read_rows(path: Path) -> list[dict]:
    """Rows of one samples file; an unterminated or unparsable last line (a kill mid-write, or
    another process writing it right now) is left out. A corrupt earlier line raises."""
    return _parse(path, path.read_bytes())[0]


def folder_rows(folder: str | Path) -> tuple[list[dict], int]:
    """All rows of a run folder, de-duplicated by id (first wins), and how many duplicates were dropped."""
    rows, seen, duplicates = [], set(), 0
    for path in samples_files(folder):
        for row in read_rows(path):
            if row.get("id") in seen:
                duplicates += 1
                continue
            seen.add(row.get("id"))
            rows.append(row)
    return rows, duplicates


def failed_name(shard: int = 0, num_shards: int = 1) -> str:
    """``FAILED``, or ``FAILED.shard-<i>-of-<N>`` for a shard."""
    return f"{FAILED}{shard_suffix(shard, num_shards)}"


def failure_markers(folder: str | Path) -> list[Path]:
    """The ``FAILED*`` markers of a run folder: attempts whose last try failed or was interrupted."""
    return sorted(Path(folder).glob(f"{FAILED}*"))


def mark_failed(folder: str | Path, message: str, shard: int = 0, num_shards: int = 1) -> None:
    """Write the failure marker of a shard (time + ``message``) into a run folder."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (Path(folder) / failed_name(shard, num_shards)).write_text(f"{stamp} {message}\n")


class ResultWriter:
    """Append finished examples to this process's samples file and write ``summary.json``.

    On start it locks its samples file (``LockHeld`` if another live process writes it), checks
    the config's fingerprint against the folder's (``FingerprintMismatch`` naming every differing
    key), records a session, and drops a truncated last line of its own file (the mark of a kill
    mid-write), rewriting the file without it. Use it as a context manager (or ``close()``) to
    release the lock.

    Args:
        out_dir: run folder (created if missing).
        config: resolved run config, fingerprinted and stored in the summary's ``env`` block.
        shard, num_shards: which samples file this writer owns (``samples_name``).
    """

    def __init__(self, out_dir: str | Path, config: Mapping[str, Any], *, shard: int = 0, num_shards: int = 1):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.shard, self.num_shards = shard, num_shards
        self.samples_path = self.out_dir / samples_name(shard, num_shards)
        self._lock = FileLock.acquire(self.samples_path.with_name(self.samples_path.name + ".lock"),
                                      f"result file {self.samples_path}")
        try:
            self.fingerprint = fp.config_fingerprint(self.config)
            self._check_fingerprint()
            self._record_session(shard, num_shards)
            self._repair()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the samples file's lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_fingerprint(self) -> None:
        """Create ``fingerprint.json`` (first writer) or refuse a different config."""
        if self.fingerprint is None:
            return
        path = self.out_dir / fp.FILE
        record = {"digest": fp.digest(self.fingerprint), "fingerprint": self.fingerprint}
        ignore: tuple[str, ...] = ()
        if path.exists():
            old = json.loads(path.read_text())["fingerprint"]
        elif (self.out_dir / SUMMARY).exists() or samples_files(self.out_dir):
            # a folder of an older harness: compare with its summary's config if it has one
            env_config = (json.loads((self.out_dir / SUMMARY).read_text()).get("env") or {}).get("config") \
                if (self.out_dir / SUMMARY).exists() else None
            old = fp.config_fingerprint(env_config or {}) or self.fingerprint
            ignore = ("harness",)
        else:
            old = self.fingerprint
        if fp.DECODE_CACHE_KEY not in old:
            old = {**old, fp.DECODE_CACHE_KEY: fp.legacy_decode_cache(decode_modes(self.out_dir))}
        diff = fp.differences(old, self.fingerprint, ignore=ignore)
        if diff:
            raise fp.FingerprintMismatch(
                f"{self.out_dir} holds results of another config; refusing to resume into it "
                f"(differing keys):\n  " + "\n  ".join(diff) +
                "\nUse a new folder (drop hydra.run.dir / hydra.sweep.dir) or the folder's own config.")
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            try:
                os.link(tmp, path)              # atomic create-if-absent: concurrent shards agree
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            if json.loads(path.read_text())["digest"] != record["digest"]:
                self._check_fingerprint()       # another shard won the race with another config

    def _record_session(self, shard: int, num_shards: int) -> None:
        """Append this writer's start (time, host, pid, shard, code version) to ``sessions.jsonl``."""
        session = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "host": socket.gethostname(), "pid": os.getpid(), "shard": shard,
                   "num_shards": num_shards, **code_version()}
        with open(self.out_dir / SESSIONS, "a", encoding="utf-8") as f:
            f.write(json.dumps(session) + "\n")

    def _repair(self) -> None:
        """Drop a truncated last line of this writer's samples file (rewriting the file without it);
        a corrupt earlier line raises."""
        if not self.samples_path.exists():
            return
        raw = self.samples_path.read_bytes()
        kept = _parse(self.samples_path, raw)[1]
        good = b"".join(line + b"\n" for line in kept)
        if good != raw:
            atomic_write(self.samples_path, good)

    def done_ids(self) -> set:
        """Ids of the examples any samples file of the folder holds (to skip on resume)."""
        return {r["id"] for r in self.rows() if "id" in r}

    def rows(self) -> list[dict]:
        """Every sample of the folder (every samples file, re-read now), de-duplicated by id."""
        return folder_rows(self.out_dir)[0]

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one finished example (must carry an ``id``) durably."""
        if "id" not in row:
            raise ValueError(f"sample has no 'id': {dict(row)}")
        if self._lock is None:
            raise RuntimeError(f"{self.samples_path}: writer closed")
        row = dict(row)
        line = json.dumps(row) + "\n"
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def finish(self, summary: Mapping[str, Any], extra_env: Mapping[str, Any] | None = None) -> Path:
        """Write ``summary.json`` = ``summary`` + ``env`` block (plus ``extra_env``); clear ``FAILED*``."""
        return write_summary(self.out_dir, summary, self.config, extra_env)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync'ed, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_summary(folder: str | Path, summary: Mapping[str, Any], config: Mapping[str, Any],
                  extra_env: Mapping[str, Any] | None = None) -> Path:
    """``<folder>/summary.json`` = ``summary`` + ``env`` (``environment(config)``, the folder's code
    versions, ``extra_env``); removes the ``FAILED*`` markers (the run is complete); returns the path."""
    folder = Path(folder)
    out = dict(summary)
    out["env"] = {**environment(config), "code_versions": code_versions(folder), **dict(extra_env or {})}
    path = folder / SUMMARY
    atomic_write(path, (json.dumps(out, indent=2, default=str) + "\n").encode())
    for marker in failure_markers(folder):
        marker.unlink(missing_ok=True)
    return path


def code_versions(folder: str | Path) -> list[dict]:
    """Distinct (git sha, dirty) pairs of the sessions that wrote into ``folder``, first seen first."""
    path = Path(folder) / SESSIONS
    seen: list[dict] = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            session = json.loads(line)
        except json.JSONDecodeError:
            continue
        version = {"git_sha": session.get("git_sha"), "git_dirty": session.get("git_dirty")}
        if version not in seen:
            seen.append(version)
    return seen


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


def code_version() -> dict[str, Any]:
    """``{"git_sha", "git_dirty"}`` of the harness checkout.

    ``ANCHOR_HARNESS_GIT_SHA`` names the commit of a copy whose .git is missing or stale (a GPU box
    synced from a working tree); it wins over git, and then dirtiness is unknown (None).
    """
    override = os.environ.get("ANCHOR_HARNESS_GIT_SHA")
    status = None if override else _git("status", "--porcelain")
    return {"git_sha": override or _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def environment(config: Mapping[str, Any]) -> dict[str, Any]:
    """What produced a result: code version, library versions, hardware, time and config."""
    import torch  # torch is a hard dependency; imported here to keep this module light

    return {
        **code_version(),
        "harness": fp.harness_version(),
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


def folders_with(paths: Iterable[str | Path], pattern: str) -> list[Path]:
    """Folders at or under ``paths`` holding a file matching ``pattern`` (a glob), sorted, without
    repeats; ``FileNotFoundError`` for a path that does not exist."""
    found = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such results folder: {path}")
        found.update(p.parent.resolve() for p in path.rglob(pattern))
    return sorted(found)
