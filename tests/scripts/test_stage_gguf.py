"""GPU staging of a GGUF: split into ignored part folders, the printed calls rejoin it (small file)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from scripts import stage_gguf


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository with one tracked file and a 10,000-byte 'GGUF' outside it; cwd = the repo."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "README.md").write_text("tracked\n")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(10_000))
    monkeypatch.chdir(root)
    return root, gguf


def _stage(capsys, gguf: Path, stage_dir: Path) -> tuple[list[dict], str]:
    assert stage_gguf.main(["--gguf", str(gguf), "--part-mib", str(4096 / 2**20),
                            "--stage-dir", str(stage_dir)]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], out


def _device(call: dict, root: Path) -> subprocess.CompletedProcess:
    """Run one printed call as the device machine would: in the repo root, carried folder present."""
    assert all((root / c).is_dir() for c in call["carry"])
    return subprocess.run(["bash", "-c", call["command"]], cwd=root, capture_output=True, text=True)


def test_split_calls_and_join_round_trip(repo, tmp_path, capsys):
    root, gguf = repo
    stage_dir = tmp_path / "gguf_stage"
    calls, out = _stage(capsys, gguf, stage_dir)
    assert [c["carry"] for c in calls] == [[".gguf-stage/p01"], [".gguf-stage/p02"], [".gguf-stage/p03"]]
    assert [c["call"] for c in calls] == [1, 2, 3] and all(c["of"] == 3 for c in calls)
    sizes = [f.stat().st_size for f in sorted((root / ".gguf-stage").rglob("*.part*"))]
    assert sizes == [4096, 4096, 1808]
    assert "join.sh" in calls[-1]["command"] and "join.sh" not in calls[0]["command"]
    assert f"ANCHOR_HARNESS_QWEN_CODER_GGUF={stage_dir}/model.gguf" in out
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=root,
                                  capture_output=True, text=True, check=True).stdout.strip())
    assert "/.gguf-stage/" in (root / exclude).read_text().splitlines()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                          text=True).stdout.strip() == "?? README.md"  # the part folders are ignored
    for call in calls:
        done = _device(call, root)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(stage_dir / "model.gguf")
    assert (stage_dir / "model.gguf").read_bytes() == gguf.read_bytes()
    assert sorted(p.name for p in stage_dir.iterdir()) == ["model.gguf"]  # parts removed
    assert _device(calls[-1], root).returncode == 0  # joined already: a repeated last call is fine


def test_join_reports_missing_and_corrupt_parts(repo, tmp_path, capsys):
    root, gguf = repo
    stage_dir = tmp_path / "gguf_stage"
    calls, _ = _stage(capsys, gguf, stage_dir)
    done = _device(calls[-1], root)  # a cold machine: parts 1 and 2 never arrived
    assert done.returncode == 3 and "model.gguf.part01 model.gguf.part02" in done.stderr
    for call in calls[:-1]:
        _device(call, root)
    part = stage_dir / "model.gguf.part02"
    part.write_bytes(b"\0" + part.read_bytes()[1:])
    done = _device(calls[-1], root)
    assert done.returncode == 4 and "model.gguf.part02: FAILED" in done.stderr
    assert not (stage_dir / "model.gguf").exists() and not (stage_dir / "model.gguf.partial").exists()


def test_restaging_replaces_old_parts(repo, tmp_path, capsys):
    root, gguf = repo
    _stage(capsys, gguf, tmp_path / "s")
    assert stage_gguf.main(["--gguf", str(gguf), "--stage-dir", str(tmp_path / "s")]) == 0  # default 40 MiB
    calls = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(calls) == 1 and sorted(p.name for p in (root / ".gguf-stage").iterdir()) == ["p01"]
