"""The notebooks run top to bottom on the CPU from the committed results (on a copy of them)."""
import shutil
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat", reason="dev extra (pip install -e '.[dev]')")
NotebookClient = pytest.importorskip("nbclient", reason="dev extra (pip install -e '.[dev]')").NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def _execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    return nb


@pytest.fixture
def results_copy(tmp_path, monkeypatch):
    """A copy of the committed ``results/`` without generated outputs, used through ANCHOR_RESULTS."""
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "results", copy, ignore=shutil.ignore_patterns("figures", "report"))
    monkeypatch.setenv("ANCHOR_RESULTS", str(copy))
    return copy


def test_paper_figures_notebook_rebuilds_every_figure(results_copy):
    _execute("paper_figures")
    out = results_copy / "figures"
    for name in ("fig6a_recall_vs_sparsity_N8192.png", "fig6b_latency_vs_recall.png", "fig6c_latency_vs_length.png",
                 "table1_block_vs_stripe.md", "table4_anchor_ablation.md", "fig4_heatmap_mass_recall_N8192.png",
                 "fig8_heatmap_sparsity_N8192.png", "fig9_10/fig9_heatmap_mass_recall_N8192.png",
                 "fig9_10/fig10_heatmap_sparsity_N8192.png"):
        assert (out / name).stat().st_size > 0, name
    assert "skipped" not in (out / "figures.md").read_text()
    t4 = pd.read_csv(out / "table4_anchor_ablation.csv")
    assert sorted(t4["variant"].value_counts().to_dict().items()) == [("With Anchor", 6), ("Without Anchor", 6)]
    c = pd.read_csv(out / "fig6c_latency_vs_length.csv")
    assert c["length"].max() == 131072 and {"anchor", "dense", "flexprefill"} <= set(c["label"])


def test_benchmark_tables_notebook_writes_tables(results_copy):
    _execute("benchmark_tables")
    written = {p.name for p in (results_copy / "report").iterdir()}
    assert any(n.startswith("ruler") for n in written) and any(n.endswith(".png") for n in written)
