"""End to end through run.py: resume, multiruns, and what makes results trustworthy (unique
folders, refused resumes of another config, failure and interrupt handling), plus sharded sweeps
through the joblib and submitit launchers merged into the unsharded result."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
TINY = ["method=dense", "bench=smoke", "bench.lengths=[256]", "device=cpu"]
ENV = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")


def _run(repo_root, *args, ok=True):
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=repo_root, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert (proc.returncode == 0) == ok, f"run.py {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _samples(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_run_then_resume(repo_root, tmp_path):
    out = tmp_path / "run"
    first = _run(repo_root, *TINY, f"hydra.run.dir={out}")
    assert first.stdout.startswith(f"run folder: {out}\n")                  # printed before anything runs
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


def test_runs_started_together_get_their_own_folders(repo_root, tmp_path):
    procs = [subprocess.Popen([sys.executable, "run.py", *TINY, f"out_root={tmp_path}"], cwd=repo_root, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=900) == 0, proc.stderr.read()
    folders = sorted((tmp_path / "smoke" / "dense").iterdir())
    assert len(folders) == 2 and all(len(_samples(f)) == 2 for f in folders)


def test_resume_into_a_folder_of_another_config_is_refused(repo_root, tmp_path):
    out = tmp_path / "run"
    _run(repo_root, *TINY, f"hydra.run.dir={out}")
    refused = _run(repo_root, "method=anchor", *TINY[1:], f"hydra.run.dir={out}", ok=False)
    assert 'method.name: "dense" (in the folder) -> "anchor" (this run)' in refused.stderr
    assert len(_samples(out)) == 2 and not list(out.glob("FAILED*"))        # the folder is left as it was
    assert json.loads((out / "summary.json").read_text())["env"]["config"]["method"]["name"] == "dense"


def test_a_failure_keeps_its_traceback_and_marks_the_folder(repo_root, tmp_path):
    out = tmp_path / "run"
    _run(repo_root, *TINY, "bench.cases=[nosuch]", f"hydra.run.dir={out}", ok=False)
    assert "Traceback" in (out / "run.log").read_text() and "unknown input kind" in (out / "run.log").read_text()
    assert "ValueError: unknown input kind" in (out / "FAILED").read_text()
    assert not list(out.glob("samples*.jsonl"))


def test_ctrl_c_says_how_to_resume(repo_root, tmp_path):
    out = tmp_path / "run"
    lengths = "bench.lengths=[" + ",".join(str(n) for n in range(256, 400)) + "]"
    proc = subprocess.Popen([sys.executable, "run.py", *TINY[:2], lengths, "device=cpu", f"hydra.run.dir={out}"],
                            cwd=repo_root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not ((out / "samples.jsonl").exists() and (out / "samples.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in stderr
    hint = re.search(r"Resume with:\n  (python run.py .*)\n", stderr)
    assert hint and f"hydra.run.dir={out}" in hint.group(1) and lengths in hint.group(1)
    assert "interrupted" in (out / "FAILED").read_text()
    done = len(_samples(out))
    again = _run(repo_root, *shlex.split(hint.group(1))[2:])
    assert f"resume: {done} of 288 samples already" in again.stdout and not (out / "FAILED").exists()


def test_multirun_writes_one_safe_folder_per_job(repo_root, tmp_path):
    sweep = tmp_path / "sweep"
    _run(repo_root, "-m", *TINY, "bench.stripe_fraction=0.01,0.05", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].name != jobs[1].name
    for job in jobs:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,70}", job.name), job.name    # no [ ] , = for the shell
        assert len(_samples(job)) == 2
        env = json.loads((job / "summary.json").read_text())["env"]
        assert env["overrides_file"] == ".hydra/overrides.yaml" and (job / ".hydra" / "overrides.yaml").exists()
        assert "bench.lengths=[256]" in env["overrides"]
    fractions = {json.loads((j / "summary.json").read_text())["env"]["config"]["bench"]["stripe_fraction"]
                 for j in jobs}
    assert fractions == {0.01, 0.05}


NIAH = ["method=dense", "bench=niah", "bench.min_length=300", "bench.max_length=300", "bench.n_lengths=1",
        "bench.n_depths=4", "device=cpu"]
SCORES = ("scores", "score_by_task", "score_by_length", "score_avg", "n_samples", "density_mean", "dense_fallbacks")


@pytest.mark.parametrize("launcher", ["joblib_gpus", "submitit_local"])
def test_sharded_sweep_through_a_launcher_merges_to_the_unsharded_run(repo_root, tmp_path, launcher):
    pytest.importorskip({"joblib_gpus": "hydra_plugins.hydra_joblib_launcher",
                         "submitit_local": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    from methods.models import ensure_smollm2_gguf
    try:
        ensure_smollm2_gguf()
    except RuntimeError as err:
        pytest.skip(f"SmolLM2 not available: {err}")
    _run(repo_root, *NIAH, f"hydra.run.dir={tmp_path / 'one'}")
    workers = "hydra.launcher.n_jobs=2" if launcher == "joblib_gpus" else "hydra.launcher.timeout_min=20"
    _run(repo_root, "-m", f"hydra/launcher={launcher}", workers, *NIAH, "runner.num_shards=3",
         "runner.shard=0,1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    (folder,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert sorted(p.name for p in folder.glob("samples*.jsonl")) == [f"samples.shard-{i}-of-3.jsonl" for i in range(3)]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    merged = json.loads((folder / "summary.json").read_text())          # written by the last shard
    assert {k: merged[k] for k in SCORES} == {k: one[k] for k in SCORES} and merged["num_shards"] == 3
    rows = lambda f: sorted((r["id"], r["prediction"], r["score"])          # noqa: E731
                            for p in f.glob("samples*.jsonl") for r in map(json.loads, p.read_text().splitlines()))
    assert rows(folder) == rows(tmp_path / "one")
    (folder / "summary.json").unlink()
    merge = subprocess.run([sys.executable, "-m", "benchmarks.runner.merge", str(tmp_path / "sweep")], cwd=repo_root,
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0 and "4 examples from 3 shard(s)" in merge.stdout
    assert {k: json.loads((folder / "summary.json").read_text())[k] for k in SCORES} == {k: one[k] for k in SCORES}
