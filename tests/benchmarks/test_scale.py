"""``scale``: the paper's method sizes on CUDA, CPU sizes on a CPU, always recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import methods  # noqa: F401  (registration)
from benchmarks.config_files import CONF_DIR, conf_yaml
from benchmarks.scale import apply_scale, cli_method_keys, cpu_sizes, effective_scale, scaled_sizes
from benchmarks.structured_inputs import make_qkv
from methods.registry import get_method

SCALED = sorted(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "cpu_sizes.yaml")))


def test_effective_scale():
    assert [effective_scale("auto", d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "paper", "paper"]
    assert effective_scale("paper", "cpu") == "paper" and effective_scale("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError, match="scale"):
        effective_scale("gpu", "cpu")


def test_cpu_sizes_name_existing_keys():
    for name in SCALED:
        conf = conf_yaml("method", name)
        assert set(cpu_sizes(name)) <= set(conf) - {"name"}, name


@pytest.mark.parametrize("name", SCALED)
def test_cpu_sizes_make_each_method_sparse_at_cpu_lengths(name):
    """At 1024 tokens the paper's sizes keep every causal pair (dense by construction); the CPU
    sizes make each method compute a fraction of them (the oracles' exact-probability stage aside).
    anchor_zero's zero threshold keeps every candidate of these inputs: its initial and local
    regions (stage ``anchor``) plus its dense tail rows (stage ``tail``: with the paper's 2048-token
    groups a 1024-token prompt is all tail) must no longer cover the prompt."""
    q, k, v = make_qkv("structured", B=1, Hq=2, Hkv=1, N=1024, D=32, dtype=torch.float32)
    attended = {}
    for scale in ("paper", "cpu"):
        cfg = {**conf_yaml("method", name), "backend": "torch"}
        if scale == "cpu":
            cfg.update(cpu_sizes(name))
        _, stats = get_method(cfg)(q, k, v)
        stages = stats.stage_density()
        attended[scale] = (stages.get("anchor", 0.0) + stages.get("tail", 0.0) if name == "anchor_zero" else
                           sum(d for stage, d in stages.items() if stage not in ("estimate", "oracle", "select")))
    assert attended["paper"] == pytest.approx(1.0, abs=0.02)
    assert attended["cpu"] < 0.85, attended


def test_only_values_still_at_their_default_are_scaled():
    method = conf_yaml("method", "anchor")
    assert scaled_sizes(method, "anchor") == {"block_size": 64, "step": 2, "theta": 8.0}
    assert scaled_sizes({**method, "step": 4}, "anchor") == {"block_size": 64, "theta": 8.0}   # experiment value
    assert scaled_sizes(method, "anchor", protected={"step", "theta"}) == {"block_size": 64}   # command line
    assert scaled_sizes(conf_yaml("method", "dense"), "dense") == {}
    assert cli_method_keys(["method=anchor", "method.step=16", "+method.tail=x", "bench.lengths=[1]"]) == {"step", "tail"}


def test_apply_scale_records_what_it_did():
    cfg = OmegaConf.create({"scale": "auto", "method": conf_yaml("method", "anchor")})
    OmegaConf.set_struct(cfg, True)
    assert apply_scale(cfg, "cuda", "anchor", []) == {}
    assert cfg.scale == "paper" and cfg.method.step == 16
    cfg.scale = "auto"
    assert apply_scale(cfg, "cpu", "anchor", ["method.block_size=128"]) == {"step": 2, "theta": 8.0}
    assert cfg.scale == "cpu" and cfg.method.step == 2 and cfg.method.block_size == 128


@pytest.mark.slow
def test_main_job_on_cpu_is_sparse_and_says_why(repo_root, tmp_path):
    """run.py on a CPU with the defaults: the summary records scale cpu and the sizes used, and
    AnchorAttention computes a fraction of the causal pairs; scale=paper keeps the authors' sizes."""
    def run(*args):
        out = tmp_path / "_".join(args).replace("=", "-")
        proc = subprocess.run([sys.executable, "run.py", "method=anchor", "bench=smoke", "bench.lengths=[1024]",
                               "bench.cases=[structured]", "device=cpu", *args, f"hydra.run.dir={out}"],
                              cwd=repo_root, env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "summary.json").read_text())

    cpu = run()
    assert cpu["env"]["config"]["scale"] == "cpu"
    assert (cpu["env"]["config"]["method"]["block_size"], cpu["env"]["config"]["method"]["step"]) == (64, 2)
    assert cpu["mean_density"] < 0.6
    paper = run("scale=paper")
    assert paper["env"]["config"]["scale"] == "paper" and paper["env"]["config"]["method"]["step"] == 16
    assert paper["mean_density"] == pytest.approx(1.0)
