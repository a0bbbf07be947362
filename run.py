"""Run one benchmark with one prefill method: ``python run.py method=anchor bench=ruler``.

Hydra composes ``conf/config.yaml`` with ``conf/method/<name>.yaml`` and ``conf/bench/<name>.yaml``;
override any key on the command line (``method.theta=10``) or sweep with ``-m`` (on several GPUs
or a cluster: ``hydra/launcher=joblib_gpus|slurm``, README "Scaling out"). The run folder (printed
first) gets ``samples.jsonl`` (one line per finished example; rerun with the same
``hydra.run.dir`` to resume, refused if the config differs), ``summary.json`` and the tables; a
failed or interrupted run leaves a ``FAILED`` marker and its traceback in ``run.log``
(``benchmarks/runner/results.py`` describes the folder, ``benchmarks/runner/job.py`` the job).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from benchmarks.runner import job
from benchmarks.runner.naming import register_resolvers

register_resolvers()   # ${unique_now:...}, ${job_dirname:...} ... in conf/config.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """One job (``benchmarks.runner.job.run``)."""
    job.run(cfg)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:     # outside a job: a launcher's main process (joblib, submitit), or start-up
        multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
        print("\ninterrupted" + (f"; resume with:\n  {job.sweep_resume_hint(sys.argv[1:])}" if multirun else ""),
              file=sys.stderr)
        sys.exit(130)
