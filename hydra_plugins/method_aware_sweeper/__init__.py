"""Hydra sweeper that applies ``method.<key>`` sweeps only to methods having that key.

``python run.py -m method=dense,anchor,flexprefill method.theta=8,12`` then runs anchor with theta
8 and 12 and dense and flexprefill once each (their configs have no ``theta``), instead of failing
to compose the dense and flexprefill jobs. Everything else is Hydra's basic sweeper.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore

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


def filter_job(job: "list[str]") -> "list[str]":
    """Drop ``method.<key>=...`` overrides whose key the job's chosen method does not have."""
    chosen = [o.split("=", 1)[1] for o in job if o.startswith("method=")]
    if not chosen:
        return job
    keys = method_keys(chosen[0])
    return [o for o in job if not (o.startswith("method.") and o.split("=", 1)[0].split(".")[1] not in keys)]


class MethodAwareSweeper(BasicSweeper):
    """``BasicSweeper`` whose job list is filtered by ``filter_job`` and de-duplicated."""

    def split_arguments(self, overrides, max_batch_size):
        jobs, seen = [], set()
        for job in BasicSweeper.split_arguments(overrides, None)[0]:
            kept = filter_job(job)
            if tuple(kept) not in seen:
                seen.add(tuple(kept))
                jobs.append(kept)
        if max_batch_size is None:
            return [jobs]
        return [list(c) for c in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)]
