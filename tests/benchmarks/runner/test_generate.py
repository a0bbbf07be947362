"""The generation runner: summaries, the context guard, and run.py end to end on a 3-example
LongBench fixture with the real SmolLM2 (resume after an interruption, clear errors for missing
data / bad config / lengths beyond the model's context)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.runner.generate import RunnerOptions, check_lengths, summarize, throughput

ROWS = {
    "hotpotqa": [
        {"input": "Which city is the capital of France?", "context": "Passage 1:\nParis is the capital of France.",
         "answers": ["Paris"], "length": 9, "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "h1"},
        {"input": "What colour is the sky?", "context": "Passage 1:\nThe sky is blue on a clear day.",
         "answers": ["blue"], "length": 10, "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "h2"},
    ],
    "trec": [
        {"input": "What is the capital of Spain?", "context": "Question: Who wrote Hamlet?\nType: Individual\n",
         "answers": ["Location"], "length": 12, "dataset": "trec", "language": "en",
         "all_classes": ["Individual", "Location"], "_id": "t1"},
    ],
}


def _fixture(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in ROWS.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _run(repo_root, *args, ok=True):
    proc = subprocess.run([sys.executable, "run.py", "model=smollm2", "method=anchor", "bench=longbench",
                           "device=cpu", *args], cwd=repo_root,
                          env=dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=900)
    assert (proc.returncode == 0) == ok, f"run.py {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_summarize_means_per_task_and_length():
    rows = [{"task": "a", "length": 4, "score": 1.0, "prefill_ms": 2.0, "density": 0.5, "dense_fallbacks": 0,
             "upstream_ratio": 0.2, "degenerate_dense": 0.0, "dense_backend": "fa4"},
            {"task": "a", "length": 4, "score": 0.0, "prefill_ms": 4.0, "density": 0.7, "dense_fallbacks": 1,
             "upstream_ratio": None, "degenerate_dense": 1.0},
            {"task": "b", "length": 8, "score": 0.5, "prefill_ms": 6.0, "density": 0.9, "dense_fallbacks": 0,
             "upstream_ratio": 0.4}]
    s = summarize(rows, ["a", "b", "c"])
    assert s["scores"] == {"a": {"4": 50.0}, "b": {"8": 50.0}}
    assert s["score_by_length"] == {"4": 50.0, "8": 50.0} and s["score_avg"] == 50.0
    assert s["unavailable_tasks"] == ["c"] and s["dense_fallbacks"] == 1
    assert s["prefill_ms_mean"] == pytest.approx(4.0) and s["density_mean"] == pytest.approx(0.7)
    assert s["upstream_ratio_mean"] == pytest.approx(0.3) and s["degenerate_dense_mean"] == 0.5
    assert s["dense_backends"] == ["fa4"]
    assert "throughput" not in s                                        # rows without phase times


def test_throughput_says_where_time_goes():
    rows = [{"tokenize_ms": 1.0, "prefill_ms": 10.0, "decode_ms": 80.0, "score_ms": 1.0, "example_ms": 100.0,
             "decode_steps": 8, "decode": "loop"},
            {"tokenize_ms": 3.0, "prefill_ms": 30.0, "decode_ms": 60.0, "score_ms": 1.0, "example_ms": 100.0,
             "decode_steps": 2, "decode": "loop"}]
    t = throughput(rows)
    assert t["examples_per_hour"] == 36000.0 and t["example_ms_mean"] == 100.0
    assert t["phase_ms_mean"] == {"tokenize": 2.0, "prefill": 20.0, "decode": 70.0, "score": 1.0}
    assert t["phase_share"]["decode"] == 0.7 and t["decode_ms_per_step"] == 14.0 and t["decode_modes"] == ["loop"]


def test_lengths_beyond_the_context_are_refused_unless_allowed():
    limit = RunnerOptions(max_context=8192)
    check_lengths({"lengths": [4096, 8192]}, limit)
    with pytest.raises(ValueError, match="bench.lengths 100000 is 100000 tokens, beyond the model's context of 8192"):
        check_lengths({"lengths": [4096, 100000]}, limit)
    with pytest.raises(ValueError, match="runner.allow_beyond_context=true"):
        check_lengths({"max_length": 127500}, limit)                       # LongBench / NIAH
    check_lengths({"max_length": 127500}, RunnerOptions(max_context=8192, allow_beyond_context=True))
    check_lengths({"max_length": 127500}, RunnerOptions())              # unknown context: not checked


@pytest.mark.slow
def test_run_longbench_fixture_resume_and_errors(repo_root, tmp_path):
    from methods.models import ensure_smollm2_gguf
    try:
        ensure_smollm2_gguf()
    except RuntimeError as err:
        pytest.skip(f"SmolLM2 not available: {err}")
    data, out = _fixture(tmp_path / "lb"), tmp_path / "run"
    args = [f"bench.data_dir={data}", "bench.datasets=[hotpotqa,trec]", "bench.max_length=4000",
            "method.backend=torch", f"hydra.run.dir={out}"]
    _run(repo_root, *args)
    lines = (out / "samples.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert sorted(r["id"] for r in rows) == sorted(f"{d}/{i}" for d, rs in ROWS.items() for i in range(len(rs))) \
        or len(rows) == 3
    assert all(0.0 <= r["score"] <= 1.0 and r["prefill_ms"] > 0 and 0 < r["density"] for r in rows)
    assert all(r["degenerate_dense"] == 1.0 for r in rows)     # anchor is dense by construction below 2 groups
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 3 and set(summary["score_by_task"]) == {"hotpotqa", "trec"}
    assert "hotpotqa" in (out / "longbench_by_task.md").read_text()          # the run's own table

    # interrupted run: one finished line plus half a line; the rerun keeps the first, redoes the rest
    (out / "samples.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    again = _run(repo_root, *args)
    assert "3 examples, 1 already done" in again.stdout
    new_lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(new_lines) == 3 and new_lines[0] == lines[0]

    missing = _run(repo_root, f"bench.data_dir={tmp_path / 'nothing'}", "bench.max_length=4000",
                   f"hydra.run.dir={tmp_path / 'r2'}", ok=False)
    assert "hotpotqa" in missing.stderr and "bench.source=hub" in missing.stderr
    bad = _run(repo_root, "method=no_such_method", ok=False)
    assert "no_such_method" in bad.stderr
    beyond = _run(repo_root, "bench.max_length=100000", f"hydra.run.dir={tmp_path / 'r3'}", ok=False)
    assert "bench.max_length 100000 is 100000 tokens, beyond the model's context of 8192" in beyond.stderr
    assert not list((tmp_path / "r3").glob("samples*.jsonl")) and (tmp_path / "r3" / "FAILED").exists()
