"""benchmarks.reports.figures on fake analysis rows: every file written, Table 1 / Table 4 values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.reports import figures
from benchmarks.runner.results import ResultWriter

# (label, param, value, is_default, mass_recall, output_recall_0.01, density_sparse)
POINTS = [
    ("oracle_topk_block", "k", 1, False, 0.70, 0.60, 0.10),
    ("oracle_topk_block", "k", 2, False, 0.85, 0.80, 0.20),
    ("oracle_topk_block", "k", 4, False, 0.95, 0.90, 0.40),
    ("oracle_topk_stripe", "k", 128, False, 0.82, 0.81, 0.10),
    ("oracle_topk_stripe", "k", 256, False, 0.93, 0.91, 0.20),
    ("oracle_topk_stripe", "k", 512, False, 0.99, 0.97, 0.40),
    ("oracle_topcdf_stripe", "cdf", 0.9, False, 0.90, 0.85, 0.30),
    ("oracle_topcdf_stripe", "cdf", 0.95, True, 0.95, 0.92, 0.50),
    *[("anchor", "theta", t, t == 12.0, 0.90 + 0.01 * i, 0.80 + 0.02 * i, 0.05 * (i + 1))
      for i, t in enumerate([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])],
    *[("anchor_zero", "theta", t, t == 12.0, 0.95, 0.90, 0.5 + 0.05 * i)
      for i, t in enumerate([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])],
    ("vertical_slash", "vertical_size,slash_size", [64, 256], False, 0.97, 0.95, 0.6),
]
LATENCY = {("anchor", "theta=12.0"): 2.0, ("anchor_zero", "theta=12.0"): 6.0, ("dense", "default"): 10.0}


def _setting(param, value) -> str:
    if isinstance(value, list):
        return ",".join(f"{k}={v}" for k, v in zip(param.split(","), value))
    return f"{param}={value}"


def _fake_run(folder, latency: bool = True):
    """A finished analysis run: 2 layers x 2 heads per point (head 1 = head 0 +- 0.01: same mean)."""
    writer = ResultWriter(folder, {"bench": {"name": "analysis"}})
    for label, param, value, default, mass, out, dens in POINTS:
        setting = _setting(param, value)
        for layer in range(2):
            for head, delta in enumerate((-0.01, 0.01)):
                writer.append({
                    "id": f"acc/8192/{label}/{setting}/L{layer}/H{head}", "kind": "accuracy",
                    "model": "fake", "length": 8192, "layer": layer, "head": head, "label": label,
                    "method": label, "param": param, "value": value, "setting": setting,
                    "is_default": default, "density": dens + 0.1, "density_sparse": dens + delta,
                    "stages": {"sparse": dens}, "mass_recall": mass + delta,
                    "output_recall_0.01": out + delta, "output_recall_0.005": out - 0.1,
                    "relative_error": 0.1, "dense_fallback": 0, "layer_ms": 1.0 + layer})
    if latency:
        for (label, setting), ms in LATENCY.items():
            for n in (8192, 16384):
                writer.append({"id": f"lat/{label}/{setting}/N{n}", "kind": "latency", "length": n,
                               "label": label, "method": label, "param": setting.split("=")[0],
                               "value": None, "setting": setting, "is_default": True,
                               "input": "structured", "q_heads": 32, "kv_heads": 8, "head_dim": 128,
                               "ms": ms * n / 8192, "density": 0.1, "density_sparse": 0.05})
    writer.finish({"bench": "analysis"})


def test_every_file_and_table_values(tmp_path):
    _fake_run(tmp_path / "runs" / "a")
    out = tmp_path / "figs"
    figures.main([str(tmp_path / "runs"), "--out", str(out)])
    names = {"fig6a_recall_vs_sparsity_N8192.png", "fig6_points_N8192.csv", "fig6b_latency_vs_recall.png",
             "fig6c_latency_vs_length.png", "fig6c_latency_vs_length.csv", "table1_block_vs_stripe.md",
             "table1_block_vs_stripe.csv", "table1_points.md", "table1_points.csv",
             "table4_anchor_ablation.md", "table4_anchor_ablation.csv",
             "fig4_heatmap_mass_recall_N8192.png", "fig4_heatmap_output_recall_0.01_N8192.png",
             "fig4_heatmap_output_recall_0.005_N8192.png", "fig8_heatmap_sparsity_N8192.png",
             "heatmaps_N8192.csv", "figures.md"}
    assert names <= {p.name for p in out.iterdir()}
    assert all((out / n).stat().st_size > 0 for n in names)
    assert "skipped" not in (out / "figures.md").read_text()

    t1 = pd.read_csv(out / "table1_block_vs_stripe.csv", keep_default_na=False, na_values=[""])
    topk = t1[(t1["strategy"] == "top-k") & (t1["recall_metric"] == "mass_recall")].set_index("target_recall_%")
    assert topk.loc[80, "block_setting"] == "k=2" and topk.loc[80, "block_sparsity_%"] == pytest.approx(80)
    assert topk.loc[80, "stripe_setting"] == "k=128" and topk.loc[80, "stripe_sparsity_%"] == pytest.approx(90)
    assert topk.loc[80, "stripe_minus_block_sparsity_%"] == pytest.approx(10)
    assert topk.loc[95, "block_sparsity_%"] == pytest.approx(60) and topk.loc[95, "stripe_setting"] == "k=512"
    assert topk.loc[99, "block_setting"] == "-" and math.isnan(topk.loc[99, "block_sparsity_%"])
    assert set(t1["strategy"]) == {"top-k", "top-cdf"}      # top-cdf: stripe only, block "-"

    t4 = pd.read_csv(out / "table4_anchor_ablation.csv")
    assert len(t4) == 12 and list(t4["variant"][:1]) == ["With Anchor"]
    row = t4[(t4["variant"] == "With Anchor") & (t4["theta"] == 12.0)].iloc[0]
    assert row["sparsity_%"] == pytest.approx(85) and row["mass_recall_%"] == pytest.approx(92)
    assert row["output_recall_0.01_%"] == pytest.approx(84) and row["sparsity_all_stages_%"] == pytest.approx(75)
    assert row["layer_ms"] == pytest.approx(1.5) and row["latency_ms_N16384"] == pytest.approx(4.0)
    zero = t4[(t4["variant"] == "Without Anchor") & (t4["theta"] == 15.0)].iloc[0]
    assert zero["sparsity_%"] == pytest.approx(25) and math.isnan(zero["latency_ms_N16384"])

    c = pd.read_csv(out / "fig6c_latency_vs_length.csv")
    assert set(c["label"]) == {"anchor", "anchor_zero", "dense"} and len(c) == 6
    heat = pd.read_csv(out / "heatmaps_N8192.csv")
    assert set(heat.groupby("label")["setting"].first().items()) == {
        ("anchor", "theta=12.0"), ("oracle_topcdf_stripe", "cdf=0.95"), ("oracle_topk_stripe", "k=256")}
    assert len(heat) == 3 * 4


def test_without_latency_rows_skips_latency_figures(tmp_path):
    _fake_run(tmp_path / "run", latency=False)
    written = figures.write_figures([tmp_path / "run"], tmp_path / "figs", chosen={"anchor": "theta=10.0"})
    names = {p.name for p in written}
    assert "fig6b_latency_vs_recall.png" not in names and "fig6c_latency_vs_length.png" not in names
    assert "table4_anchor_ablation.md" in names and "fig6a_recall_vs_sparsity_N8192.png" in names
    assert (tmp_path / "figs" / "figures.md").read_text().count("skipped") == 2
    assert "latency_ms" not in pd.read_csv(tmp_path / "figs" / "table4_anchor_ablation.csv").columns
    heat = pd.read_csv(tmp_path / "figs" / "heatmaps_N8192.csv")
    assert set(heat.loc[heat["label"] == "anchor", "setting"]) == {"theta=10.0"}


def test_heatmap_figure_numbers_and_only_parts(tmp_path):
    _fake_run(tmp_path / "run", latency=False)
    out = tmp_path / "figs"
    figures.main([str(tmp_path / "run"), "--out", str(out), "--heatmap-figures", "9,10", "--only", "heatmaps"])
    names = {p.name for p in out.iterdir()}
    assert names == {"fig9_heatmap_mass_recall_N8192.png", "fig9_heatmap_output_recall_0.01_N8192.png",
                     "fig9_heatmap_output_recall_0.005_N8192.png", "fig10_heatmap_sparsity_N8192.png",
                     "heatmaps_N8192.csv", "figures.md"}
    index = (out / "figures.md").read_text()
    assert "Figs. 9/10 heatmaps" in index and "Table 4" not in index
    with pytest.raises(ValueError, match="unknown parts"):
        figures.write_figures([tmp_path / "run"], out, only=["fig7"])
    with pytest.raises(SystemExit):
        figures.main([str(tmp_path / "run"), "--out", str(out), "--heatmap-figures", "9"])


def test_load_analysis_names_metrics_apart(tmp_path):
    _fake_run(tmp_path / "run")
    acc, lat = figures.load_analysis([tmp_path])
    assert figures.recall_metrics(acc) == ["mass_recall", "output_recall_0.01", "output_recall_0.005"]
    assert (acc["sparsity"] == 1 - acc["density_sparse"]).all() and len(lat) == 6
    assert acc.loc[acc["label"] == "vertical_slash", "value"].iloc[0] == "[64, 256]"
    with pytest.raises(FileNotFoundError):
        figures.load_analysis([tmp_path / "missing"])
