"""Hydra sweeper that applies ``method.<key>`` sweeps only to methods having that key.

``python run.py -m method=dense,anchor,flexprefill method.theta=8,12`` then runs anchor with theta
8 and 12 and dense and flexprefill once each (their configs have no ``theta``; a note says so),
instead of failing to compose the dense and flexprefill jobs. A ``method.<key>`` that none of
the swept methods has (a typo: ``method.thetta``) is an error naming the key and the methods.
Everything else is Hydra's basic sweeper.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException

METHOD_CONF = Path(__file__).resolve().parents[2] / "conf" / "method"


@dataclass
class MethodAwareSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.method_aware_sweeper.MethodAwareSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="method_aware", node=MethodAwareSweeperConf,
                             provider="anchor-harness")


def method_keys(name: str) -> "set[str]":
    """Top-level keys of ``conf/method/<name>.yaml`` (empty if there is no such file)."""
    path = METHOD_CONF / f"{name}.yaml"
    return set(yaml.safe_load(path.read_text()) or {}) if path.exists() else set()


def _chosen_method(job: "list[str]") -> "str | None":
    chosen = [o.split("=", 1)[1] for o in job if o.startswith("method=")]
    return chosen[0] if chosen else None


def _method_key(override: str) -> "str | None":
    """``theta`` for ``method.theta=...`` (nested keys: the top-level one), else None."""
    if not override.startswith("method."):
        return None
    return override.split("=", 1)[0].split(".")[1]


def filter_job(job: "list[str]") -> "list[str]":
    """Drop ``method.<key>=...`` overrides whose key the job's chosen method does not have."""
    chosen = _chosen_method(job)
    if chosen is None:
        return job
    keys = method_keys(chosen)
    return [o for o in job if _method_key(o) is None or _method_key(o) in keys]


def check_method_keys(jobs: "list[list[str]]") -> "list[str]":
    """Validate the ``method.<key>`` overrides of a sweep; returns notes on skipped keys.

    Raises ``ConfigCompositionException`` (Hydra prints it and exits 1) for a key that no swept
    method has (jobs with an explicit ``method=``; others are left to Hydra, which refuses unknown
    keys itself).
    """
    holders: dict = {}    # key -> {method: has it}
    for job in jobs:
        chosen = _chosen_method(job)
        if chosen is None:
            continue
        for override in job:
            key = _method_key(override)
            if key is not None:
                holders.setdefault(key, {})[chosen] = key in method_keys(chosen)
    notes = []
    for key, has in sorted(holders.items()):
        methods = sorted(has)
        if not any(has.values()):
            raise ConfigCompositionException(f"method.{key}: no swept method has this key (methods: {', '.join(methods)}); "
                                 f"check the spelling against conf/method/<name>.yaml")
        lacking = [m for m in methods if not has[m]]
        if lacking:
            notes.append(f"note: method.{key} applies to {', '.join(m for m in methods if has[m])} only; "
                         f"skipped for {', '.join(lacking)}")
    return notes


class MethodAwareSweeper(BasicSweeper):
    """``BasicSweeper`` whose job list is validated (``check_method_keys``), filtered by
    ``filter_job`` and de-duplicated."""

    def split_arguments(self, overrides, max_batch_size):
        expanded = BasicSweeper.split_arguments(overrides, None)[0]
        for note in check_method_keys(expanded):
            print(note)
        jobs, seen = [], set()
        for job in expanded:
            kept = filter_job(job)
            if tuple(kept) not in seen:
                seen.add(tuple(kept))
                jobs.append(kept)
        if max_batch_size is None:
            return [jobs]
        return [list(c) for c in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)]
