"""Run one benchmark with one prefill method: ``python run.py method=anchor bench=ruler``.

Hydra composes ``conf/config.yaml`` with ``conf/method/<name>.yaml`` and ``conf/bench/<name>.yaml``;
override any key on the command line (``method.theta=10``) or sweep with ``-m``. Results go to
Hydra's output folder: ``samples.jsonl`` (one line per finished example, resumable) and
``summary.json``.
"""
from __future__ import annotations

import functools
import importlib
import os
import random

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from benchmarks.scale import apply_scale


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


@functools.lru_cache(maxsize=2)
def _load_model(model_yaml: str, device: str):
    """Load once per process: a multirun's jobs (run in one process) share the model."""
    from methods.models import load_model

    return load_model(OmegaConf.create(model_yaml), device)


def _logger(cfg: DictConfig):
    """``logger=wandb``: a wandb run (offline unless ``wandb.mode`` says otherwise); else None."""
    if cfg.logger == "none":
        return None
    if cfg.logger != "wandb":
        raise ValueError(f"logger must be none or wandb, got {cfg.logger!r}")
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logger=wandb needs the wandb package: pip install -e '.[wandb]'") from err
    return wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=HydraConfig.get().runtime.output_dir,
                      config=OmegaConf.to_container(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Build the method, run the benchmark's runner, write ``summary.json``."""
    device = pick_device(str(cfg.device))
    # scale: auto -> cpu (conf/cpu_sizes.yaml) | paper, written into cfg and so into summary.json
    apply_scale(cfg, device, HydraConfig.get().runtime.choices["method"], HydraConfig.get().overrides.task)
    if device == "cpu":
        # Must precede importing anchor/methods: Triton reads it when kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")

    import torch

    import methods  # noqa: F401  (methods/__init__.py imports every method module: registration)
    from benchmarks.registry import get_benchmark
    from benchmarks.runner.results import ResultWriter
    from methods.registry import get_method

    bench = get_benchmark(str(cfg.bench.name))
    seed_everything(int(cfg.seed))
    method = get_method(cfg.method)
    out_dir = HydraConfig.get().runtime.output_dir
    writer = ResultWriter(out_dir, OmegaConf.to_container(cfg, resolve=True))
    logger = _logger(cfg)
    if bench.runner == "smoke":
        from benchmarks.runner.smoke import run_smoke

        summary = run_smoke(cfg.bench, method, writer, device=device)
    else:
        model, tokenizer = _load_model(OmegaConf.to_yaml(cfg.model), device)
        if tokenizer is None:
            from benchmarks.tasks.char_tokenizer import no_tokenizer_message

            raise ValueError(no_tokenizer_message(str(cfg.model.name), model.config.vocab_size))
        if bench.runner == "analysis":        # sweeps its own methods (bench.sweep), not cfg.method
            from benchmarks.analysis.runner import run_analysis

            summary = run_analysis(cfg.bench, model, tokenizer, writer, torch.device(device))
        else:
            from benchmarks.runner.generate import run_generation

            summary = run_generation(bench, cfg.bench, model, tokenizer, method, writer, torch.device(device),
                                     logger)
    path = writer.finish(summary)
    if bench.runner == "generate":                   # tables (and NIAH heatmaps) of this run, in its folder
        from benchmarks.reports.runs import load_results, write_report

        for table in write_report(load_results([out_dir]), out_dir):
            print(f"table: {table}")
    if logger is not None:
        logger.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.finish()
    print(f"summary: {path}")
    for key in ("score_by_length", "score_avg", "density_mean", "dense_fallbacks", "unavailable_tasks"):
        if key in summary:
            print(f"  {key}: {summary[key]}")


if __name__ == "__main__":
    main()
