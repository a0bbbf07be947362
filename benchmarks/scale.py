"""The run's ``scale`` (``conf/config.yaml``): the authors' method settings, or CPU-sized ones.

``scale: auto | paper | cpu``:

* ``paper``: the ``conf/method`` files as they are, the authors' settings (AnchorAttention groups
  of 2048 tokens, StreamingLLM 1024 + 8192, ...). At the CPU default lengths (1-2.5K tokens) they
  leave nothing to skip: every method computes dense attention by construction.
* ``cpu``: the settings of ``conf/cpu_sizes.yaml`` for the chosen method (keyed by its
  ``conf/method`` file name): regions, windows and budgets scaled to the short CPU prompts, and
  AnchorAttention's theta, so that each method does sparse work (the file says why each value).
  They replace only values that are still the ``conf/method`` file's: a value set on the command
  line (``method.step=16``) or by an experiment overlay is kept.
* ``auto`` (default): ``cpu`` when the run's device is a CPU, ``paper`` on CUDA, so a GPU run
  reproduces the paper unless told otherwise.

Nothing is silent: ``apply_scale`` writes the resolved scale (``paper`` or ``cpu``) and the sizes
used into the run config, which ``summary.json`` records, and report labels show every method
setting that differs from ``conf/method`` (``anchor (block_size=64, step=2)``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from benchmarks.config_files import CONF_DIR, conf_yaml

SCALES = ("auto", "paper", "cpu")
CPU_SIZES = CONF_DIR / "cpu_sizes.yaml"


def effective_scale(scale: str, device: str) -> str:
    """``paper`` or ``cpu`` for a ``scale`` setting on ``device`` (``cpu``, ``cuda``, ``cuda:N``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale != "auto":
        return scale
    return "cpu" if str(device).startswith("cpu") else "paper"


def cpu_sizes(method_file: str) -> dict[str, Any]:
    """``conf/cpu_sizes.yaml`` entry of a ``conf/method`` file name (``{}`` if it has none)."""
    sizes = OmegaConf.to_container(OmegaConf.load(CPU_SIZES))
    return dict(sizes.get(method_file) or {})


def scaled_sizes(method: dict[str, Any], method_file: str, protected: Iterable[str] = ()) -> dict[str, Any]:
    """The CPU sizes that apply to ``method`` (a config of ``conf/method/<method_file>.yaml``): those
    whose key is not in ``protected`` and whose current value is still the file's."""
    defaults = conf_yaml("method", method_file)
    protected = set(protected)
    return {k: v for k, v in cpu_sizes(method_file).items()
            if k not in protected and k in method and method[k] == defaults.get(k)}


def cli_method_keys(overrides: Iterable[str]) -> set[str]:
    """Keys set by ``method.<key>=...`` command-line overrides (``+``/``++``/``~`` prefixes too)."""
    keys = set()
    for override in overrides:
        name = override.split("=", 1)[0].lstrip("+~")
        if name.startswith("method."):
            keys.add(name.split(".")[1])
    return keys


def apply_scale(cfg: DictConfig, device: str, method_file: str, overrides: Iterable[str]) -> dict[str, Any]:
    """Resolve ``cfg.scale`` for ``device`` in place and, for ``cpu``, set the method's CPU sizes.

    Args:
        cfg: the composed run config (``scale``, ``method``).
        device: the resolved device.
        method_file: the chosen ``conf/method`` file (Hydra's ``runtime.choices.method``).
        overrides: the run's command-line overrides (their ``method.<key>`` values are kept).

    Returns:
        The method values it changed (empty for ``paper``).
    """
    scale = effective_scale(str(cfg.scale), device)
    changes = {}
    if scale == "cpu":
        method = OmegaConf.to_container(cfg.method, resolve=True)
        changes = scaled_sizes(method, method_file, cli_method_keys(overrides))
    with open_dict(cfg):
        cfg.scale = scale
        for key, value in changes.items():
            cfg.method[key] = value
    return changes
