"""Run folder names: unique stamps, safe multirun job names, shard suffixes, as config resolvers."""
from __future__ import annotations

import os
import re

import pytest
import yaml
from omegaconf import OmegaConf

from benchmarks.config_files import CONF_DIR
from benchmarks.runner.naming import job_dirname, register_resolvers, shard_suffix, unique_now

SAFE = re.compile(r"[A-Za-z0-9._-]+")


def test_unique_now_is_sub_second_and_per_process():
    first, second = unique_now("%Y-%m-%d_%H-%M-%S"), unique_now("%Y-%m-%d_%H-%M-%S")
    assert first != second                                   # same second, still two names
    assert first.endswith(f"-p{os.getpid()}") and re.fullmatch(r"[\d_-]+\.\d{6}-p\d+", first)


def test_config_run_and_sweep_dirs_use_the_unique_stamp():
    hydra = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["hydra"]
    assert "${unique_now:" in hydra["run"]["dir"] and "${unique_now:" in hydra["sweep"]["dir"]
    assert hydra["sweep"]["subdir"].startswith("${job_dirname:")
    register_resolvers()
    a = OmegaConf.create({"dir": "${unique_now:%Y-%m-%d_%H-%M-%S}"})
    b = OmegaConf.create({"dir": "${unique_now:%Y-%m-%d_%H-%M-%S}"})
    assert a.dir == a.dir and a.dir != b.dir                 # cached per config, distinct between runs


@pytest.mark.parametrize("overrides", [
    "bench.lengths=[1024,2048],method.theta=8,method=anchor",
    "bench=niah,method=oracle_topk_stripe,method.k=64,model=llama3_1_8b_instruct,bench.data_dir=/data/x y",
    "method.gamma=0.9,method=flexprefill,seed=1,model.path='/a/b'", ""])
def test_job_dirname_is_safe_short_and_unique(overrides):
    name = job_dirname(overrides)
    assert SAFE.fullmatch(name) and len(name) <= 70
    assert job_dirname(overrides) == name                       # stable: a resumed sweep finds its folders
    assert job_dirname(overrides + ",seed=2") != name


def test_job_dirname_puts_the_method_first():
    assert job_dirname("bench=smoke,method.theta=8,method=anchor").startswith("method-anchor_method.theta-8_bench-smoke_")


def test_shard_suffix():
    assert shard_suffix(0, 1) == "" and shard_suffix(2, 3) == ".shard-2-of-3"
    for bad in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="runner.shard"):
            shard_suffix(*bad)
