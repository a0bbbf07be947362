"""Labels of report rows and axes: which method setting a row is, and context lengths.

A method label is the ``conf/method`` file the run's method config comes from plus every
hyperparameter that differs from that file, e.g. ``anchor (theta=8)``, ``oracle_topk_block (k=8)``,
``anchor (block_size=64, step=2)`` for a CPU-scaled run (``scale: cpu``, ``conf/cpu_sizes.yaml``).
Several files may configure one method name (``oracle_topk_stripe`` / ``oracle_topk_block``,
``streaming`` / ``streaming_longbench``): the file with the fewest differing keys names the row.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import yaml

from benchmarks.config_files import CONF_DIR

METHOD_CONF = CONF_DIR / "method"


def _comparable(value: Any) -> str:
    """A form in which 12 and 12.0 (and equal lists or dicts) compare equal."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    return json.dumps(value, sort_keys=True, default=str)


@lru_cache(maxsize=1)
def method_files() -> dict[str, dict]:
    """Every ``conf/method/<stem>.yaml`` as ``{stem: plain dict}`` (read once)."""
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(METHOD_CONF.glob("*.yaml"))}


def _differing(cfg: dict, defaults: dict) -> list[str]:
    """Keys of ``cfg`` (but ``name``) whose value is not ``defaults``' (absent keys differ)."""
    return sorted(k for k in cfg if k != "name"
                  and (k not in defaults or _comparable(defaults[k]) != _comparable(cfg[k])))


def _show(value: Any) -> str:
    """``8.0`` -> ``8``, ``0.95`` -> ``0.95``; anything else as ``str``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_label(cfg: dict) -> str:
    """``<conf/method stem> (k=v, ...)`` for the keys that differ from that file; the bare stem
    when none do. A method name without a file is labelled with every key of its config."""
    name = str(cfg["name"])
    candidates = [(len(_differing(cfg, conf)), stem != name, stem)
                  for stem, conf in method_files().items() if conf.get("name") == name]
    if candidates:
        _, _, stem = min(candidates)
        shown = _differing(cfg, method_files()[stem])
    else:
        stem, shown = name, _differing(cfg, {})
    return f"{stem} ({', '.join(f'{k}={_show(cfg[k])}' for k in shown)})" if shown else stem


def method_labels(configs: list[dict]) -> list[str]:
    """``method_label`` of each config."""
    return [method_label(c) for c in configs]


def length_labels(lengths: list[int]) -> list[str]:
    """Exact context-length labels: thousands with up to two decimals when that is exact
    (16000 -> ``16K``, 600 -> ``0.6K``, 1050 -> ``1.05K``), else the token count (1024 -> ``1024``)."""
    out = []
    for n in lengths:
        thousands = f"{n / 1000:.2f}".rstrip("0").rstrip(".")
        out.append(f"{thousands}K" if round(float(thousands) * 1000) == n else str(n))
    return out
