"""End to end: run.py with method=dense on the smoke benchmark, resume, and a multirun."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
TINY = ["method=dense", "bench=smoke", "bench.lengths=[256]", "device=cpu"]


def _run(repo_root, *args):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"run.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _samples(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_run_then_resume(repo_root, tmp_path):
    out = tmp_path / "run"
    _run(repo_root, *TINY, f"hydra.run.dir={out}")
    rows = _samples(out)
    assert sorted(r["id"] for r in rows) == ["random-256", "structured-256"]
    for r in rows:
        assert r["length"] == 256 and r["density"] == pytest.approx(1.0)
        assert r["rel_err"] < 1e-3 and r["stats"]["density"] == pytest.approx(1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 2 and len(summary["by_case_length"]) == 2
    assert summary["env"]["config"]["method"]["name"] == "dense"

    again = _run(repo_root, *TINY, f"hydra.run.dir={out}")
    assert "resume: 2 of 2 samples already" in again.stdout
    assert _samples(out) == rows  # nothing recomputed or duplicated
    assert json.loads((out / "summary.json").read_text())["n_samples"] == 2


def test_multirun_writes_one_folder_per_job(repo_root, tmp_path):
    sweep = tmp_path / "sweep"
    _run(repo_root, "-m", *TINY, "bench.stripe_fraction=0.01,0.05", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].name != jobs[1].name
    for job in jobs:
        assert len(_samples(job)) == 2
        assert (job / "summary.json").exists()
    fractions = {json.loads((j / "summary.json").read_text())["env"]["config"]["bench"]["stripe_fraction"]
                 for j in jobs}
    assert fractions == {0.01, 0.05}
