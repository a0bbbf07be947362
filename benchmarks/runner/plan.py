"""Sharding of a generation run and the plan files that let a merge check it is complete.

Example ``id`` goes to shard ``sha1(id) mod N`` (``shard_of``): stable, so adding samples never
moves a finished example to another shard. Each shard process writes ``plan.json`` (sharded:
``plan.shard-<i>-of-<N>.json``) into the run folder when it starts: every example id of the
benchmark in order (all shards: the summary's order and the expected set), its own shard and
``N``, the config fingerprint digest, the requested tasks and the resolved config.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.runner.naming import shard_suffix
from benchmarks.runner.results import atomic_write, folder_rows

_PLAN = re.compile(r"^plan(?:\.shard-(\d+)-of-(\d+))?\.json$")


def shard_of(example_id: str, num_shards: int) -> int:
    """The shard (``0 .. num_shards - 1``) of an example: ``sha1(id) mod num_shards``."""
    return int(hashlib.sha1(str(example_id).encode()).hexdigest(), 16) % num_shards


def plan_name(shard: int, num_shards: int) -> str:
    """``plan.json`` or ``plan.shard-<i>-of-<N>.json``."""
    return f"plan{shard_suffix(shard, num_shards)}.json"


def write_plan(folder: str | Path, *, shard: int, num_shards: int, ids: Sequence[str], digest: str | None,
               requested_tasks: Sequence[str] | None, config: Mapping[str, Any]) -> Path:
    """Write this shard's plan (see the module docstring); returns its path."""
    if len(set(ids)) != len(ids):
        raise ValueError("example ids repeat within the benchmark: resume and sharding need unique ids")
    path = Path(folder) / plan_name(shard, num_shards)
    body = {"shard": shard, "num_shards": num_shards, "fingerprint": digest, "ids": list(ids),
            "requested_tasks": list(requested_tasks) if requested_tasks else None, "config": dict(config)}
    atomic_write(path, (json.dumps(body, default=str) + "\n").encode())
    return path


@dataclass
class Status:
    """What a run folder holds against its plans.

    Attributes:
        ids: every expected example id, in benchmark order (empty without a plan).
        num_shards: ``N`` of the plans used (those of the newest plan file).
        missing_shards: shard indices without a plan file (never started).
        missing: ``{shard: [ids]}`` of expected examples no samples file holds.
        rows: the folder's rows of expected examples, in ``ids`` order, de-duplicated.
        extra_rows: rows of examples the plans do not ask for (another ``num_samples``...).
        duplicate_rows: rows dropped because their id was already written.
        plan: the plan of the lowest shard (they agree): config, requested tasks, digest.
    """

    ids: list[str]
    num_shards: int
    missing_shards: list[int]
    missing: dict[int, list[str]]
    rows: list[dict]
    extra_rows: int
    duplicate_rows: int
    plan: dict

    @property
    def complete(self) -> bool:
        """Every shard started and every expected example done."""
        return bool(self.ids) and not self.missing_shards and not any(self.missing.values())

    def describe(self) -> str:
        """One line per problem (empty when complete)."""
        lines = []
        if not self.ids:
            lines.append("no plan file: not a generation run folder, or no shard has started")
        if self.missing_shards:
            lines.append(f"shards never started: {self.missing_shards} of {self.num_shards}")
        for shard, ids in sorted(self.missing.items()):
            if ids and shard not in self.missing_shards:
                lines.append(f"shard {shard}: {len(ids)} examples missing, e.g. {', '.join(ids[:3])}")
        return "\n".join(lines)


def read_plans(folder: str | Path) -> dict[int, dict]:
    """The plans of the newest shard count in ``folder``: ``{shard: plan}``.

    Raises ``ValueError`` if those plans list different example sets (shards started with
    another ``num_samples``, say) or different fingerprints.
    """
    found = [(p, _PLAN.match(p.name)) for p in Path(folder).glob("plan*.json")]
    found = [(p, m) for p, m in found if m]
    if not found:
        return {}
    newest, match = max(found, key=lambda pm: pm[0].stat().st_mtime)
    num_shards = int(match.group(2) or 1)
    plans = {}
    for path, m in found:
        if int(m.group(2) or 1) == num_shards:
            plans[int(m.group(1) or 0)] = json.loads(path.read_text())
    first = plans[min(plans)]
    for shard, plan in plans.items():
        if plan["ids"] != first["ids"] or plan["fingerprint"] != first["fingerprint"]:
            raise ValueError(f"{folder}: the plans of shards {min(plans)} and {shard} differ in their example "
                             f"ids or config fingerprint (started with another num_samples?); rerun the "
                             f"stale shard so that its plan is rewritten")
    return plans


def status(folder: str | Path) -> Status:
    """Compare the samples of ``folder`` with its plans (``Status``)."""
    plans = read_plans(folder)
    rows, duplicates = folder_rows(folder)
    if not plans:
        return Status([], 1, [], {}, [], len(rows), duplicates, {})
    plan = plans[min(plans)]
    num_shards = int(plan["num_shards"])
    ids = list(plan["ids"])
    by_id = {r["id"]: r for r in rows}
    missing: dict[int, list[str]] = {}
    for example_id in ids:
        if example_id not in by_id:
            missing.setdefault(shard_of(example_id, num_shards), []).append(example_id)
    expected = set(ids)
    return Status(ids=ids, num_shards=num_shards,
                  missing_shards=[s for s in range(num_shards) if s not in plans],
                  missing=missing, rows=[by_id[i] for i in ids if i in by_id],
                  extra_rows=sum(r["id"] not in expected for r in rows), duplicate_rows=duplicates,
                  plan=plan)


def planned_rows(folder: str | Path) -> list[dict]:
    """The rows a report of ``folder`` should use: those of the planned examples (every samples
    file, de-duplicated, benchmark order) when it has plans, else every row."""
    return status(folder).rows if read_plans(folder) else folder_rows(folder)[0]
