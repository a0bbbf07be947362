"""Run one benchmark with one prefill method: ``python run.py method=anchor bench=ruler``.

Hydra composes ``conf/config.yaml`` with ``conf/method/<name>.yaml`` and ``conf/bench/<name>.yaml``;
override any key on the command line (``method.theta=10``) or sweep with ``-m``. Results go to
Hydra's output folder: ``samples.jsonl`` (one line per finished example, resumable) and
``summary.json``.
"""
from __future__ import annotations

import os
import random

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def pick_device(name: str) -> str:
    """Resolve the ``device`` setting: ``auto`` -> ``cuda`` if available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available; use device=cpu or auto")
    return name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Build the method, run the benchmark's runner, write ``summary.json``."""
    device = pick_device(str(cfg.device))
    if device == "cpu":
        # Must precede importing anchor/methods: Triton reads it when kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")

    import methods  # noqa: F401  (methods/__init__.py imports every method module: registration)
    from benchmarks.results import ResultWriter
    from benchmarks.smoke import run_smoke
    from methods.registry import get_method

    runners = {"smoke": run_smoke}
    runner = runners.get(cfg.bench.runner)
    if runner is None:
        raise ValueError(f"unknown bench.runner {cfg.bench.runner!r} in bench={cfg.bench.name}; "
                         f"available: {sorted(runners)}")
    if cfg.logger != "none":
        raise ValueError(f"logger={cfg.logger!r} is not supported yet; only logger=none")

    seed_everything(int(cfg.seed))
    method = get_method(cfg.method)
    out_dir = HydraConfig.get().runtime.output_dir
    writer = ResultWriter(out_dir, OmegaConf.to_container(cfg, resolve=True))
    summary = runner(cfg.bench, method, writer, device=device)
    path = writer.finish(summary)
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
