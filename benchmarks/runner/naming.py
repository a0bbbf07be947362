"""Names of run folders and shard files, as OmegaConf resolvers that ``conf/config.yaml`` uses.

* ``${unique_now:<strftime pattern>}``: the time to the microsecond plus ``-p<pid>``, so two runs
  started in the same second (or microsecond, on one host) never get one folder. Cached like
  Hydra's ``now``: a sweep's jobs share the value of their sweep folder.
* ``${job_dirname:${hydra.job.override_dirname}}``: a multirun job's folder, a file-name-safe
  short form of its overrides plus a hash of all of them: only ``[A-Za-z0-9._-]`` (no shell glob
  characters), at most ``MAX_READABLE`` readable characters. The full overrides are in the job's
  ``.hydra/overrides.yaml``; the summary's ``env`` repeats them.
* ``${shard_suffix:${runner.shard},${runner.num_shards}}``: ``""`` for an unsharded run, else
  ``.shard-<i>-of-<N>`` (the names of a shard's samples, plan and ``.hydra`` files).
* ``${gpu_count:}``: visible CUDA devices (at least 1): the joblib launcher's ``n_jobs``.

Registered by ``register_resolvers()`` (run.py calls it before Hydra composes the config; Hydra
hands registered resolvers to joblib and submitit workers with its singleton state).
"""
from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime

MAX_READABLE = 60
HASH_CHARS = 8


def unique_now(pattern: str) -> str:
    """``datetime.now()`` formatted by ``pattern``, then ``.<microseconds>-p<pid>``."""
    now = datetime.now()
    return f"{now.strftime(pattern)}.{now.microsecond:06d}-p{os.getpid()}"


def job_dirname(overrides: str) -> str:
    """A safe, short folder name for Hydra's override string ``overrides`` (``k=v,k2=v2``, sorted).

    ``bench=smoke,method.theta=8,method=anchor`` -> ``method-anchor_method.theta-8_bench-smoke_<hash>``:
    the method and its keys first (they tell sweep jobs apart), characters outside
    ``[A-Za-z0-9._-]`` dropped (``[1024,2048]`` -> ``1024-2048``), the readable part cut to
    ``MAX_READABLE`` characters; the hash (sha1 of the full string) keeps names unique. No
    overrides -> ``default_<hash>``.
    """
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:HASH_CHARS]
    items = [i for i in re.split(r",(?=[\w.+~/-]+=)", overrides) if i]
    items.sort(key=lambda i: 0 if i.startswith("method=") else 1 if i.startswith("method.") else 2)
    readable = "_".join(re.sub(r"[^A-Za-z0-9._-]+", "", i.replace("=", "-").replace(",", "-")) for i in items)
    readable = readable[:MAX_READABLE].strip("._-")
    return f"{readable or 'default'}_{digest}"


def shard_suffix(shard: int, num_shards: int) -> str:
    """``""`` for ``num_shards == 1``, else ``.shard-<shard>-of-<num_shards>`` (validated)."""
    shard, num_shards = int(shard), int(num_shards)
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= runner.shard < runner.num_shards, got shard={shard}, "
                         f"num_shards={num_shards}")
    return "" if num_shards == 1 else f".shard-{shard}-of-{num_shards}"


def gpu_count() -> int:
    """Number of visible CUDA devices, at least 1 (so that a CPU sweep still runs one job)."""
    import torch

    return max(1, torch.cuda.device_count())


def register_resolvers() -> None:
    """Register the resolvers of this module with OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    for name, fn, cache in [("unique_now", unique_now, True), ("job_dirname", job_dirname, False),
                            ("shard_suffix", shard_suffix, False), ("gpu_count", gpu_count, True)]:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)
