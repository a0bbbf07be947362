"""ResultWriter: durable appends, resume (truncated last line included), summary schema, the
config fingerprint, the one-writer lock, de-duplication and failure markers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest

from benchmarks.runner.fingerprint import FingerprintMismatch
from benchmarks.runner.locks import LockHeld
from benchmarks.runner.results import (SAMPLES, SUMMARY, ResultWriter, failure_markers, folder_rows, mark_failed,
                                       summarize_by, write_summary)


def _lines(path):
    return path.read_text().splitlines()


def test_append_and_resume(tmp_path):
    w = ResultWriter(tmp_path / "run", {"seed": 0})
    w.append({"id": "a", "x": 1.0})
    w.append({"id": "b", "x": 2.0})
    assert w.done_ids() == {"a", "b"}
    assert [json.loads(line)["id"] for line in _lines(tmp_path / "run" / SAMPLES)] == ["a", "b"]

    again = ResultWriter(tmp_path / "run", {"seed": 0})
    assert again.done_ids() == {"a", "b"}
    assert again.rows() == [{"id": "a", "x": 1.0}, {"id": "b", "x": 2.0}]
    again.append({"id": "c", "x": 3.0})
    assert ResultWriter(tmp_path / "run", {}).done_ids() == {"a", "b", "c"}


def test_truncated_last_line_is_dropped_and_file_repaired(tmp_path):
    path = tmp_path / SAMPLES
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n{"id": "c", "x"')  # killed mid-write
    w = ResultWriter(tmp_path, {})
    assert w.done_ids() == {"a", "b"}
    assert path.read_text() == '{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n'
    w.append({"id": "c", "x": 3})
    assert [json.loads(line)["id"] for line in _lines(path)] == ["a", "b", "c"]


def test_complete_record_missing_newline_is_kept(tmp_path):
    path = tmp_path / SAMPLES
    path.write_text('{"id": "a"}\n{"id": "b"}')
    w = ResultWriter(tmp_path, {})
    assert w.done_ids() == {"a", "b"}
    w.append({"id": "c"})
    assert [json.loads(line)["id"] for line in _lines(path)] == ["a", "b", "c"]


def test_corrupt_middle_line_raises(tmp_path):
    (tmp_path / SAMPLES).write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(ValueError, match="corrupt"):
        ResultWriter(tmp_path, {})


def test_append_requires_id(tmp_path):
    with pytest.raises(ValueError, match="id"):
        ResultWriter(tmp_path, {}).append({"x": 1})


def test_summary_schema(tmp_path):
    config = {"method": {"name": "dense"}, "seed": 3}
    path = ResultWriter(tmp_path, config).finish({"accuracy": 0.5, "n_samples": 2})
    assert path == tmp_path / SUMMARY
    summary = json.loads(path.read_text())
    assert summary["accuracy"] == 0.5 and summary["n_samples"] == 2
    env = summary["env"]
    assert set(env) >= {"git_sha", "git_dirty", "python", "torch", "triton", "transformers", "gpu",
                        "hostname", "timestamp_utc", "config"}
    assert env["config"] == config
    assert env["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_sha"])
    assert env["git_dirty"] in (None, True, False)
    assert env["gpu"] and env["torch"] and env["python"].count(".") == 2
    assert datetime.fromisoformat(env["timestamp_utc"]).utcoffset().total_seconds() == 0


def test_git_sha_override_wins_over_the_checkout(tmp_path, monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("ANCHOR_HARNESS_GIT_SHA", sha)
    env = json.loads(ResultWriter(tmp_path, {}).finish({}).read_text())["env"]
    assert env["git_sha"] == sha and env["git_dirty"] is None


def test_summarize_by():
    rows = [{"case": "r", "length": 1, "err": 1.0, "d": 0.5}, {"case": "r", "length": 1, "err": 3.0},
            {"case": "s", "length": 1, "err": None, "d": 0.2}, {"case": "r", "length": 2, "err": 4.0}]
    out = summarize_by(rows, ["case", "length"], ["err", "d"])
    assert out == [{"case": "r", "length": 1, "err": 2.0, "d": 0.5, "count": 2},
                   {"case": "s", "length": 1, "err": None, "d": 0.2, "count": 1},
                   {"case": "r", "length": 2, "err": 4.0, "d": None, "count": 1}]
    assert summarize_by(rows, ["case"], "err")[0] == {"case": "r", "err": 8.0 / 3, "count": 3}
    with pytest.raises(ValueError, match="count"):
        summarize_by(rows, ["count"], "err")


CONFIG = {"model": {"name": "smollm2", "kind": "gguf"}, "method": {"name": "anchor", "theta": 12.0},
          "bench": {"name": "ruler", "lengths": [1024], "num_samples": 12, "template": "chat"},
          "seed": 0, "device": "cuda", "runner": {"shard": 0, "num_shards": 1, "decode": "loop"}}


def _config(**sections):
    cfg = json.loads(json.dumps(CONFIG))
    for section, values in sections.items():
        if isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return cfg


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    with ResultWriter(tmp_path, _config()) as w:
        w.append({"id": "a"})
    with pytest.raises(FingerprintMismatch) as err:
        ResultWriter(tmp_path, _config(method={"name": "dense", "theta": None}))
    assert 'method.name: "anchor" (in the folder) -> "dense" (this run)' in str(err.value)
    assert "method.theta: 12.0" in str(err.value)
    with pytest.raises(FingerprintMismatch, match="bench.template"):
        ResultWriter(tmp_path, _config(bench={"template": "base"}))
    # not result-affecting: device, sharding, the dynamic-cache decode modes, the number of samples;
    # 12 equals 12.0
    with ResultWriter(tmp_path, _config(device="cpu", bench={"num_samples": 3},
                                        runner={"shard": 0, "num_shards": 1, "decode": "hf_generate"},
                                        method={"theta": 12})) as again:
        assert again.done_ids() == {"a"}
    assert json.loads((tmp_path / "fingerprint.json").read_text())["fingerprint"]["method.name"] == "anchor"


def test_static_cache_decoding_is_another_config(tmp_path):
    # static-cache decoding changed GPU predictions against loop: a folder never mixes the two
    with ResultWriter(tmp_path, _config(runner={"decode": "loop"})) as w:
        w.append({"id": "a", "decode": "loop"})
    with pytest.raises(FingerprintMismatch, match='runner.decode_cache: "dynamic" .* -> "static"'):
        ResultWriter(tmp_path, _config(runner={"decode": "static"}))


@pytest.mark.parametrize("rows_decode, resumes", [(["loop", "hf_generate"], {"loop"}),
                                                  (["static"], {"static"}),
                                                  (["loop", "static"], set())])
def test_a_folder_fingerprinted_without_the_decode_cache_takes_it_from_its_rows(tmp_path, rows_decode, resumes):
    with ResultWriter(tmp_path, _config()) as w:
        for i, mode in enumerate(rows_decode):
            w.append({"id": f"r{i}", "decode": mode})
    record = json.loads((tmp_path / "fingerprint.json").read_text())
    del record["fingerprint"]["runner.decode_cache"]                   # as written before the key existed
    (tmp_path / "fingerprint.json").write_text(json.dumps(record))
    for mode in ("loop", "static"):
        if mode in resumes:
            ResultWriter(tmp_path, _config(runner={"decode": mode})).close()
        else:
            with pytest.raises(FingerprintMismatch, match="runner.decode_cache"):
                ResultWriter(tmp_path, _config(runner={"decode": mode}))


def test_a_new_commit_resumes_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("ANCHOR_HARNESS_GIT_SHA", "1" * 40)
    ResultWriter(tmp_path, _config()).close()
    monkeypatch.setenv("ANCHOR_HARNESS_GIT_SHA", "2" * 40)
    with ResultWriter(tmp_path, _config()) as w:
        env = json.loads(w.finish({}).read_text())["env"]
    assert [v["git_sha"] for v in env["code_versions"]] == ["1" * 40, "2" * 40]


HOLD = """
import sys, time
from benchmarks.runner.results import ResultWriter
w = ResultWriter(sys.argv[1], {})
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_fails_fast_and_a_dead_holders_lock_is_taken_over(tmp_path, repo_root):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=repo_root, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {holder.pid} on"):
            ResultWriter(tmp_path, {})
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / (SAMPLES + ".lock")).read_text()   # stale lock file left
    with ResultWriter(tmp_path, {}) as w:                                    # ... and taken over
        w.append({"id": "a"})
    assert f"pid {os.getpid()}" not in (tmp_path / (SAMPLES + ".lock")).read_text()   # released on close


def test_rows_of_every_samples_file_deduplicated(tmp_path):
    (tmp_path / SAMPLES).write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n{"id": "a", "x": 9}\n')
    (tmp_path / "samples.shard-1-of-2.jsonl").write_text('{"id": "c", "x": 3}\n{"id": "b", "x": 8}\n{"id": "d"')
    rows, duplicates = folder_rows(tmp_path)
    assert [(r["id"], r.get("x")) for r in rows] == [("a", 1), ("b", 2), ("c", 3)] and duplicates == 2
    with ResultWriter(tmp_path, {}, shard=0, num_shards=2) as w:       # a shard skips what any file holds
        assert w.samples_path.name == "samples.shard-0-of-2.jsonl" and w.done_ids() == {"a", "b", "c"}
    assert (tmp_path / "samples.shard-1-of-2.jsonl").read_text().endswith('{"id": "d"')   # others untouched


def test_failure_markers_per_shard_and_cleared_by_a_summary(tmp_path):
    mark_failed(tmp_path, "RuntimeError: boom", shard=1, num_shards=2)
    mark_failed(tmp_path, "interrupted")
    assert [p.name for p in failure_markers(tmp_path)] == ["FAILED", "FAILED.shard-1-of-2"]
    assert "boom" in (tmp_path / "FAILED.shard-1-of-2").read_text()
    write_summary(tmp_path, {"n_samples": 0}, {})
    assert failure_markers(tmp_path) == []
