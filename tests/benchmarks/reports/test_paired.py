"""benchmarks.reports.paired: runs compared on the examples they share."""
import json

import pandas as pd
import pytest

from benchmarks.reports import paired


def _run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _row(i, task, length, score, density=1.0):
    return {"id": f"{task}/{length}/{i}", "task": task, "length": length, "score": score, "density": density}


def test_only_shared_examples_count(tmp_path):
    ref = _run(tmp_path / "dense", [_row(0, "a", 8, 1.0), _row(1, "a", 8, 0.0), _row(0, "b", 8, 1.0),
                                    _row(0, "a", 16, 1.0)])
    part = _run(tmp_path / "sparse", [_row(0, "a", 8, 0.0, 0.5), _row(0, "b", 8, 1.0, 0.7)])   # unfinished run
    assert paired.main([str(ref), str(part), "--reference", "dense", "--out", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "paired.csv")
    row = df[df["run"] == "sparse"].iloc[0]
    assert row["length"] == 8 and row["examples"] == 2 and row["tasks"] == 2
    assert row["score dense"] == 100.0 and row["score sparse"] == 50.0          # a/8/1 and length 16 left out
    assert row["density sparse"] == pytest.approx(0.6)
    assert "## sparse vs dense" in (tmp_path / "out" / "paired.md").read_text()


def test_bad_reference_and_duplicate_names(tmp_path):
    a = _run(tmp_path / "x" / "run", [_row(0, "a", 8, 1.0)])
    b = _run(tmp_path / "y" / "run", [_row(0, "a", 8, 1.0)])
    with pytest.raises(ValueError, match="two runs named 'run'"):
        paired.load([a, b])
    with pytest.raises(SystemExit):
        paired.main([str(a), "--reference", "nope", "--out", str(tmp_path / "o")])
