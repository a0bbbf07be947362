"""Report: collecting run folders, method labels, score tables, NIAH heatmap files, CLI."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmarks.reports import runs as report

LENGTHS, DEPTHS = [1000, 2000], [0, 50, 100]


def write_run(folder, method, samples, bench="niah", in_env=True, summary=True):
    """A run folder as the runner leaves it: samples.jsonl (+ summary.json)."""
    folder.mkdir(parents=True)
    lines = [json.dumps(s) for s in samples]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        config = {"bench": {"name": bench}, "model": {"name": "tiny"}, "method": method}
        body = {"env": {"config": config}} if in_env else {"config": config, "env": {}}
        (folder / "summary.json").write_text(json.dumps(body))


def niah_samples(score, ms, density):
    """One sample per (length, depth) cell; ``score(length, depth)`` gives its score."""
    return [{"id": f"niah/{n}/{d}/0", "task": "niah", "length": n, "prediction": "x",
             "targets": ["1234567"], "score": score(n, d), "prefill_ms": ms, "density": density,
             "dense_fallbacks": 0, "meta": {"depth": d, "round": 0, "city": "Paris"}}
            for n in LENGTHS for d in DEPTHS]


@pytest.fixture
def results(tmp_path):
    """A multirun (dense, anchor at the default theta) and a separate run (anchor theta=10)."""
    anchor = {"name": "anchor", "theta": 12.0, "step": 16, "backend": "auto"}
    multi = tmp_path / "multiruns" / "2025-01-01"
    write_run(multi / "method=dense", {"name": "dense", "backend": "auto"},
              niah_samples(lambda n, d: 1.0, 100.0, None))
    write_run(multi / "method=anchor", anchor, niah_samples(lambda n, d: 1.0, 40.0, 0.5),
              in_env=False)
    write_run(multi / "unfinished", anchor, niah_samples(lambda n, d: 0.0, 1.0, 1.0), summary=False)
    single = tmp_path / "runs" / "anchor10"
    write_run(single, dict(anchor, theta=10), niah_samples(
        lambda n, d: 0.0 if (n, d) == (2000, 50) else 1.0, 20.0, 0.25))
    with open(single / "samples.jsonl", "a") as f:
        f.write('{"id": "niah/9')  # killed mid-write: ignored
    return [tmp_path / "multiruns", single]


def test_method_labels_show_varying_non_default_settings():
    configs = [{"name": "anchor", "theta": 12, "step": 16}, {"name": "anchor", "theta": 10, "step": 16},
               {"name": "dense"}, {"name": "oracle_topk", "k": 8}, {"name": "oracle_topk", "k": 32}]
    assert report.method_labels(configs) == [
        "anchor", "anchor(theta=10)", "dense", "oracle_topk(k=8)", "oracle_topk(k=32)"]


def test_load_results(results):
    with pytest.warns(UserWarning, match="unfinished"):
        df = report.load_results(results)
    assert len(df) == 3 * len(LENGTHS) * len(DEPTHS)
    assert sorted(df["label"].unique()) == ["anchor", "anchor(theta=10)", "dense"]
    assert set(df["model"]) == {"tiny"} and set(df["bench"]) == {"niah"}
    assert sorted(df["meta_depth"].unique()) == DEPTHS


def test_tables_and_heatmaps(results, tmp_path):
    with pytest.warns(UserWarning):
        df = report.load_results(results)
    tables = report.score_tables(df, "niah")
    by_len = tables["by_length"].loc["tiny"]
    assert list(by_len.columns) == ["1000", "2000", "Avg", "prefill_ms", "density"]
    assert by_len.loc["anchor(theta=10)", "2000"] == pytest.approx(66.67)
    assert by_len.loc["anchor(theta=10)", "Avg"] == pytest.approx(83.33)
    assert by_len.loc["dense", "Avg"] == 100.0 and by_len.loc["anchor", "prefill_ms"] == 40.0
    assert pd.isna(by_len.loc["dense", "density"])
    assert tables["by_task"].loc[("tiny", "anchor(theta=10)"), "niah"] == pytest.approx(83.33)
    md = report.to_markdown(tables["by_length"])
    assert "| tiny | anchor(theta=10) | 100.00 | 66.67 | 83.33 | 20.00 | 0.25 |" in md
    assert "| tiny | dense | 100.00 | 100.00 | 100.00 | 100.00 | - |" in md

    pivot = report.niah_pivot(df, "tiny", "anchor(theta=10)")
    assert list(pivot.index) == DEPTHS and list(pivot.columns) == LENGTHS
    assert pivot.loc[50, 2000] == 0.0 and pivot.loc[50, 1000] == 1.0

    out = tmp_path / "report"
    written = report.write_report(df, out)
    names = {p.name for p in written}
    assert {"niah_by_task.md", "niah_by_task.csv", "niah_by_length.md", "niah_by_length.csv",
            "report.md"} <= names
    for label in ["dense", "anchor", "anchor_theta_10"]:
        stem = out / f"needle_viz_tiny_{label}_1K_2K"
        assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert stem.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    csv = pd.read_csv(out / "niah_by_length.csv", index_col=[0, 1])
    assert csv.loc[("tiny", "anchor(theta=10)"), "Avg"] == pytest.approx(83.33)


def test_heatmap_labels():
    pivot = pd.DataFrame([[1.0, 0.5], [0.0, float("nan")]], index=[0, 100], columns=[16000, 128000])
    fig = report.heatmap_figure(pivot, "m w/anchor 128K Context")
    ax = fig.axes[0]
    assert ax.get_title() == "m w/anchor 128K Context"
    assert ax.get_xlabel() == "Context Length" and ax.get_ylabel() == "Depth Percent (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16K", "128K"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "100"]
    image = ax.images[0]
    assert image.get_clim() == (0, 1)
    assert image.cmap(0.0)[:3] == pytest.approx((0xF0 / 255, 0x49 / 255, 0x6E / 255))
    assert image.cmap(1.0)[:3] == pytest.approx((0x0C / 255, 0xD7 / 255, 0x9F / 255))


def test_cli(results, tmp_path, capsys):
    with pytest.warns(UserWarning):
        report.main([str(p) for p in results] + ["--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "report.md").exists()
    assert "niah_by_length.md" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no finished run"):
        report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="no such results folder"):
        report.main([str(tmp_path / "absent"), "--out", str(tmp_path / "none")])


def test_averages_are_plain_means_over_tasks():
    rows = [{"bench": "ruler", "model": "m", "label": "dense", "task": t, "length": n, "score": s,
             "prefill_ms": 1.0, "density": None}
            for t, n, s in [("a", 4096, 1.0), ("a", 4096, 0.0), ("b", 4096, 0.25), ("a", 8192, 1.0)]]
    rows.append(dict(rows[0], label="anchor", task="a"))  # anchor has no task b: no average
    tables = report.score_tables(pd.DataFrame(rows), "ruler")
    assert tables["by_task"].loc[("m", "dense")].to_dict() == pytest.approx(
        {"a": 66.67, "b": 25.0, "Avg": 45.83, "prefill_ms": 1.0, "density": float("nan")}, nan_ok=True)
    assert pd.isna(tables["by_task"].loc[("m", "anchor"), "Avg"])
    by_len = tables["by_length"].loc[("m", "dense")]  # a length: mean over tasks, not samples
    assert (by_len["4096"], by_len["8192"], by_len["Avg"]) == (37.5, 100.0, 68.75)
    with pytest.raises(ValueError, match="no samples of bench 'niah'"):
        report.score_tables(pd.DataFrame(rows), "niah")
