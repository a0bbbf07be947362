"""Report: collecting run folders, method labels, score tables, NIAH heatmap files, CLI."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from matplotlib.figure import Figure

from benchmarks.reports import labels
from benchmarks.reports import runs as report

LENGTHS, DEPTHS = [1000, 2000], [0, 50, 100]


def write_run(folder, method, samples, bench="niah", in_env=True, summary=True, gpu=None, **bench_keys):
    """A run folder as the runner leaves it: samples.jsonl (+ summary.json)."""
    folder.mkdir(parents=True)
    lines = [json.dumps(s) for s in samples]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        config = {"bench": {"name": bench, **bench_keys}, "model": {"name": "tiny"}, "method": method}
        env = {"gpu": gpu} if gpu else {}
        body = {"env": {"config": config, **env}} if in_env else {"config": config, "env": env}
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


def test_method_labels_show_every_non_default_setting():
    """Every key differing from conf/method is shown, even for a single run; files sharing a
    method name (oracle_topk_stripe / _block, streaming / streaming_longbench) are told apart."""
    configs = [{"name": "anchor", "theta": 12, "step": 16}, {"name": "anchor", "theta": 8.0, "step": 16},
               {"name": "dense", "backend": "auto"},
               {"name": "oracle_topk", "granularity": "block", "k": 8, "block_size": 128},
               {"name": "oracle_topk", "granularity": "stripe", "k": 4096, "block_size": 128},
               {"name": "streaming", "global_window": 1024, "local_window": 1024, "block_size": 128},
               {"name": "anchor", "theta": 12.0, "step": 2, "block_size": 64},
               {"name": "unregistered", "x": 1}]
    assert labels.method_labels(configs) == [
        "anchor", "anchor (theta=8)", "dense", "oracle_topk_block (k=8)", "oracle_topk_stripe",
        "streaming_longbench", "anchor (block_size=64, step=2)", "unregistered (x=1)"]


def test_length_labels_tell_lengths_apart():
    assert labels.length_labels([600, 1200]) == ["0.6K", "1.2K"]
    assert labels.length_labels([1000, 2000, 16000, 128000]) == ["1K", "2K", "16K", "128K"]
    assert labels.length_labels([1024, 2048]) == ["1024", "2048"]
    assert labels.length_labels([1000, 1050, 300]) == ["1K", "1.05K", "0.3K"]


def test_load_results(results):
    with pytest.warns(UserWarning, match="unfinished"):
        df = report.load_results(results)
    assert len(df) == 3 * len(LENGTHS) * len(DEPTHS)
    assert sorted(df["label"].unique()) == ["anchor", "anchor (theta=10)", "dense"]
    assert set(df["model"]) == {"tiny"} and set(df["bench"]) == {"niah"}
    assert sorted(df["meta_depth"].unique()) == DEPTHS


def test_tables_and_heatmaps(results, tmp_path):
    with pytest.warns(UserWarning):
        df = report.load_results(results)
    tables = report.score_tables(df, "niah")
    by_len = tables["by_length"].loc["tiny"]
    assert list(by_len.columns) == ["1000", "2000", "Avg", "prefill_ms", "density", "device"]
    assert by_len.loc["anchor (theta=10)", "2000"] == pytest.approx(66.67)
    assert by_len.loc["anchor (theta=10)", "Avg"] == pytest.approx(83.33)
    assert by_len.loc["dense", "Avg"] == 100.0 and by_len.loc["anchor", "prefill_ms"] == 40.0
    assert pd.isna(by_len.loc["dense", "density"])
    assert tables["by_task"].loc[("tiny", "anchor (theta=10)"), "niah"] == pytest.approx(83.33)
    md = report.to_markdown(tables["by_length"])
    assert "| tiny | anchor (theta=10) | 100.00 | 66.67 | 83.33 | 20.00 | 0.25 | unknown |" in md
    assert "| tiny | dense | 100.00 | 100.00 | 100.00 | 100.00 | - | unknown |" in md

    pivot = report.niah_pivot(df, "tiny", "anchor (theta=10)")
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
    assert csv.loc[("tiny", "anchor (theta=10)"), "Avg"] == pytest.approx(83.33)


def test_heatmap_labels():
    pivot = pd.DataFrame([[1.0, 0.5], [0.0, float("nan")]], index=[0, 100], columns=[16000, 128000])
    fig = report.heatmap_figure(pivot, "m w/ anchor, 16K-128K Context")
    ax = fig.axes[0]
    assert ax.get_title() == "m w/ anchor, 16K-128K Context"
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
             "prefill_ms": 1.0, "density": None, "upstream_ratio": None, "degenerate_dense": None,
             "device": "cpu"}
            for t, n, s in [("a", 4096, 1.0), ("a", 4096, 0.0), ("b", 4096, 0.25), ("a", 8192, 1.0)]]
    rows.append(dict(rows[0], label="anchor", task="a"))  # anchor has no task b: no average
    tables = report.score_tables(pd.DataFrame(rows), "ruler")
    assert tables["by_task"].loc[("m", "dense")].to_dict() == pytest.approx(
        {"a": 66.67, "b": 25.0, "Avg": 45.83, "prefill_ms": 1.0, "density": float("nan"), "device": "cpu"},
        nan_ok=True)
    assert pd.isna(tables["by_task"].loc[("m", "anchor"), "Avg"])
    by_len = tables["by_length"].loc[("m", "dense")]  # a length: mean over tasks, not samples
    assert (by_len["4096"], by_len["8192"], by_len["Avg"]) == (37.5, 100.0, 68.75)
    assert "upstream_ratio" not in by_len and "dense_by_construction" not in by_len
    with pytest.raises(ValueError, match="no samples of bench 'niah'"):
        report.score_tables(pd.DataFrame(rows), "niah")


def test_heatmaps_label_lengths_and_settings_exactly(tmp_path):
    """600 and 1200 tokens are two columns with two labels; the title gives the real range and the
    method's non-default setting."""
    samples = [{"id": f"niah/{n}/{d}/0", "task": "niah", "length": n, "score": 1.0, "prefill_ms": 1.0,
                "density": 1.0, "dense_fallbacks": 0, "meta": {"depth": d}} for n in (600, 1200) for d in DEPTHS]
    write_run(tmp_path / "run", {"name": "anchor", "theta": 8.0, "backend": "auto"}, samples)
    df = report.load_results([tmp_path / "run"])
    fig = report.heatmap_figure(report.niah_pivot(df, "tiny", "anchor (theta=8)"), "t")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.6K", "1.2K"]
    written = report.write_niah_heatmaps(df, tmp_path / "out")
    assert {p.name for p in written} >= {"needle_viz_tiny_anchor_theta_8_0_6K_1_2K.png"}


def test_heatmap_title_names_the_range(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(report, "heatmap_figure", lambda pivot, title: titles.append(title) or Figure())
    write_run(tmp_path / "run", {"name": "dense", "backend": "auto"}, niah_samples(lambda n, d: 1.0, 1.0, 1.0))
    report.write_niah_heatmaps(report.load_results([tmp_path / "run"]), tmp_path / "out")
    assert titles == ["tiny w/ dense, 1K-2K Context"]


def smoke_samples(density, extra=None):
    return [{"id": f"{case}-{n}", "length": n, "case": case, "density": density, "rel_err": 1e-6,
             "max_abs_err": 1e-5, "time_ms": 3.0, "stats": {"density": density, **(extra or {})}}
            for n in (1000, 2500) for case in ("random", "structured")]


def test_smoke_runs_get_a_table(tmp_path, capsys):
    """Smoke runs used to give header-only score tables: now method x case x length costs."""
    write_run(tmp_path / "smoke", {"name": "anchor", "theta": 12.0, "step": 2, "block_size": 64},
              smoke_samples(0.4, {"upstream_ratio": 0.1, "degenerate_dense": 0.0}), bench="smoke", gpu="cpu")
    report.main([str(tmp_path / "smoke"), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "smoke_by_length.md").read_text()
    assert "| anchor (block_size=64, step=2) | structured | 2500 | 0.40 | 1.00e-06 | 1.00e-05 | 3.00 | 0.10 | 0.00 | cpu |" in md
    assert "`time_ms` on device `cpu` is not comparable" in md and "anchor_attn_v4.py" in md
    assert "smoke_by_length.md" in capsys.readouterr().out


def test_analysis_runs_point_to_the_figures_tool(tmp_path, results):
    """Analysis runs used to give header-only tables and exit 0: now an error naming the tool."""
    write_run(tmp_path / "analysis", {"name": "dense", "backend": "auto"},
              [{"id": "a", "kind": "accuracy", "layer": 0, "density": 1.0}], bench="analysis")
    with pytest.raises(SystemExit, match=r"benchmarks\.reports\.figures"):
        report.main([str(tmp_path / "analysis"), "--out", str(tmp_path / "out")])
    with pytest.warns(UserWarning) as caught:
        df = report.load_results([*results, tmp_path / "analysis"])
    assert any(re.search(r"analysis run\(s\).*benchmarks\.reports\.figures", str(w.message)) for w in caught)
    assert set(df["bench"]) == {"niah"}


def test_cost_columns_are_explained(tmp_path):
    """Density above 1, upstream ratios, dense-by-construction samples and CPU timings get footnotes."""
    def ruler(density, extra, n=1024):
        return [{"id": f"vt/{n}/{i}", "task": "vt", "length": n, "score": 1.0, "prefill_ms": 5.0,
                 "density": density, "dense_fallbacks": 0, **extra} for i in range(2)]
    write_run(tmp_path / "oracle", {"name": "oracle_topk", "granularity": "stripe", "k": 4096, "block_size": 128},
              ruler(3.0, {}), bench="ruler", gpu="cpu")
    write_run(tmp_path / "anchor", {"name": "anchor", "theta": 12.0},
              ruler(1.02, {"upstream_ratio": 0.0, "degenerate_dense": 1.0}), bench="ruler", gpu="cpu")
    write_run(tmp_path / "flex", {"name": "flexprefill", "gamma": 0.95},
              ruler(0.4, {"upstream_ratio": 0.3, "degenerate_dense": 0.0}), bench="ruler", gpu="NVIDIA H200",
              template_set="ruler2024")
    df = report.load_results([tmp_path])
    by_len = report.score_tables(df, "ruler")["by_length"].loc["tiny"]
    assert by_len.loc["oracle_topk_stripe", "density"] == 3.0
    assert by_len.loc["anchor", "dense_by_construction"] == 1.0
    assert by_len.loc["flexprefill [ruler2024]", "upstream_ratio"] == 0.3
    assert pd.isna(by_len.loc["oracle_topk_stripe", "upstream_ratio"])
    assert by_len.loc["flexprefill [ruler2024]", "device"] == "NVIDIA H200"
    report.write_report(df, tmp_path / "out")
    md = (tmp_path / "out" / "ruler_by_length.md").read_text()
    for needle in ["can exceed 1", "oracle_topk: none reported", "flexprefill: FlexPrefill's computational_ratio",
                   "anchor: the authors' operator ratio", "dense attention by construction",
                   "`prefill_ms` on device `cpu` is not comparable", "`[ruler2024]`"]:
        assert needle in md, needle
    assert "can exceed 1" in (tmp_path / "out" / "report.md").read_text()
