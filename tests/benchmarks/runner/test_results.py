"""ResultWriter: durable appends, resume (truncated last line included), summary schema."""
from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from benchmarks.runner.results import SAMPLES, SUMMARY, ResultWriter, summarize_by


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
