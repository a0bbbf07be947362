"""One job of ``run.py`` (a run, or one job of a multirun in any launcher's worker process).

``run(cfg)``: print the run folder, lease a device, lock the result file and check the config
fingerprint (``ResultWriter``), run the benchmark's runner, write ``summary.json`` (generation
runs: once every shard is done; the last shard merges) and the tables. A failure appends its
traceback to the folder's ``run.log`` and leaves a ``FAILED`` marker; Ctrl-C prints the command
that resumes. It lives in an importable module, not in ``run.py``, so that joblib and submitit
workers can unpickle the job (and keep the loaded model between jobs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import shlex
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from benchmarks.runner.fingerprint import FingerprintMismatch
from benchmarks.scale import apply_scale
from benchmarks.runner.locks import LockHeld
from benchmarks.runner.results import mark_failed


def pick_device(name: str) -> str:
    """Resolve the ``device`` setting: ``auto`` -> ``cuda`` if available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available; use device=cpu or auto")
    return name


@contextlib.contextmanager
def device_for_run(name: str):
    """The device of this run, made current. ``auto`` with CUDA leases a GPU no other harness run
    on this host holds (``benchmarks.runner.locks.lease_gpu``) for the block's duration, so
    parallel jobs (joblib workers) never share one; ``cuda:N`` uses GPU N as asked."""
    import torch

    if name == "auto" and torch.cuda.is_available():
        from benchmarks.runner.locks import lease_gpu

        index, lease = lease_gpu()
        try:
            torch.cuda.set_device(index)   # Triton launches on the current device
            yield f"cuda:{index}"
        finally:
            lease.release()
        return
    device = pick_device(name)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    yield device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=1)
def _load_model(model_yaml: str, device: str):
    """Load once per process: a multirun's jobs (in one process or one worker) share the model; one
    model at a time, so a worker whose next job leases another GPU drops the previous copy."""
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


def _hydra_env() -> dict:
    """Where this job's full overrides are: the list, and the ``overrides.yaml`` Hydra wrote."""
    hc = HydraConfig.get()
    return {"overrides": list(hc.overrides.task),
            "overrides_file": f"{hc.output_subdir}/overrides.yaml" if hc.output_subdir else None}


def resume_hint(out_dir: Path) -> str:
    """The command that resumes this run (a multirun: the whole sweep)."""
    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    folder = hc.sweep.dir if sweep else str(out_dir)
    args = [a for a in sys.argv[1:] if not a.startswith(f"{key}=")]
    return f"python run.py {' '.join(map(shlex.quote, args))} {key}={shlex.quote(str(folder))}"


def sweep_resume_hint(argv: list[str]) -> str:
    """The command that resumes an interrupted multirun whose folder is not known here (a
    launcher's main process): the same arguments with the sweep folder it printed."""
    given = [a for a in argv if a.startswith("hydra.sweep.dir=")]
    folder = "" if given else " hydra.sweep.dir=<the sweep output dir printed above>"
    return f"python run.py {' '.join(map(shlex.quote, argv))}{folder}"


def run_job(cfg: DictConfig, out_dir: Path, device: str) -> None:
    """Lock the run folder's result file, build the method, run the benchmark's runner, write
    ``summary.json`` (generation runs: once every shard is done) and the tables."""
    # scale: auto -> cpu (conf/cpu_sizes.yaml) | paper, written into cfg and so into the fingerprint
    # and summary.json (benchmarks/scale.py)
    hc = HydraConfig.get()
    apply_scale(cfg, device, hc.runtime.choices["method"], hc.overrides.task)
    if device == "cpu":
        # Must precede importing anchor/methods: Triton reads it when kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")

    import torch

    import methods  # noqa: F401  (methods/__init__.py imports every method module: registration)
    from benchmarks.registry import get_benchmark
    from benchmarks.runner.generate import RunnerOptions
    from benchmarks.runner.results import ResultWriter, failed_name
    from methods.registry import get_method

    bench = get_benchmark(str(cfg.bench.name))
    options = RunnerOptions(shard=int(cfg.runner.shard), num_shards=int(cfg.runner.num_shards),
                            decode=str(cfg.runner.decode), allow_beyond_context=bool(cfg.runner.allow_beyond_context))
    if options.num_shards > 1 and bench.runner != "generate":
        raise ValueError(f"runner.num_shards applies to generation benchmarks; bench={bench.name} runs "
                         f"as one job (use runner.num_shards=1)")
    config = OmegaConf.to_container(cfg, resolve=True)
    with ResultWriter(out_dir, config, shard=options.shard, num_shards=options.num_shards) as writer:
        seed_everything(int(cfg.seed))
        method = get_method(cfg.method)
        logger = _logger(cfg)
        summary = None
        if bench.runner == "smoke":
            from benchmarks.runner.smoke import run_smoke

            summary = run_smoke(cfg.bench, method, writer, device=device)
            writer.finish(summary, _hydra_env())
        else:
            model, tokenizer = _load_model(OmegaConf.to_yaml(cfg.model), device)
            if tokenizer is None:
                from benchmarks.tasks.char_tokenizer import no_tokenizer_message

                raise ValueError(no_tokenizer_message(str(cfg.model.name), model.config.vocab_size))
            if bench.runner == "analysis":        # sweeps its own methods (bench.sweep), not cfg.method
                from benchmarks.analysis.runner import run_analysis

                summary = run_analysis(cfg.bench, model, tokenizer, writer, torch.device(device))
                writer.finish(summary, _hydra_env())
            else:
                from benchmarks.runner.generate import model_context, run_generation
                from benchmarks.runner.merge import merge_folder

                options = dataclasses.replace(options, max_context=model_context(cfg.model, model))
                run_generation(bench, cfg.bench, model, tokenizer, method, writer, torch.device(device), logger,
                               options)
                (out_dir / failed_name(options.shard, options.num_shards)).unlink(missing_ok=True)
                state, written = merge_folder(out_dir, _hydra_env())   # the last shard to finish merges
                for path in written[1:]:
                    print(f"table: {path}")
                if written:
                    summary = json.loads(written[0].read_text())
                else:
                    print(f"shard {options.shard} of {options.num_shards} done; waiting for the others:\n"
                          f"{state.describe()}\nmerge later: python -m benchmarks.runner.merge {out_dir}")
    if logger is not None:
        if summary is not None:
            logger.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.finish()
    if summary is not None:
        print(f"summary: {out_dir / 'summary.json'}")
        for key in ("score_by_length", "score_avg", "density_mean", "dense_fallbacks", "unavailable_tasks",
                    "extra_rows"):
            if key in summary:
                print(f"  {key}: {summary[key]}")


def run(cfg: DictConfig) -> None:
    """One job: print its folder, run it on a leased device; on failure keep the traceback in
    ``run.log`` and a ``FAILED`` marker; on Ctrl-C print how to resume."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    print(f"run folder: {out_dir}", flush=True)
    shard, num_shards = int(cfg.runner.shard), int(cfg.runner.num_shards)
    try:
        with device_for_run(str(cfg.device)) as device:
            run_job(cfg, out_dir, device)
    except KeyboardInterrupt:
        mark_failed(out_dir, "interrupted (Ctrl-C)", shard, num_shards)
        print(f"\ninterrupted; finished examples are kept in {out_dir}. Resume with:\n  {resume_hint(out_dir)}",
              file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "run.log", "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
        if not isinstance(err, (LockHeld, FingerprintMismatch)):   # those folders belong to another run
            mark_failed(out_dir, f"{type(err).__name__}: {err}", shard, num_shards)
        raise


