"""Dry runs of the kernel comparison and the end-to-end prefill benchmark (CPU, tiny shapes)."""
import pandas as pd
import pytest

from benchmarks.kernels import compare, prefill

SMALL = ["--hq", "4", "--hkv", "2", "--head-dim", "16", "--dtype", "fp32", "--device", "cpu", "--cpu-reps", "1"]


def test_compare_rows_columns_and_files(tmp_path):
    argv = ["--lengths", "96", "--inputs", "random,structured:0.1", "--dense-backends", "math,fa4",
            "--method", "anchor:block_size=16,step=2", "--method", "flexprefill:block_size=16,min_budget=16",
            "--method", "xattention:block_size=16,stride=4", "--sweep", "anchor:theta=4|8,block_size=16",
            "--sweep-length", "96", "--theirs", "--out", str(tmp_path), *SMALL]
    rows = compare.main(argv)
    df = pd.read_csv(tmp_path / "cpu.csv")
    assert len(rows) == len(df) == 2 * (1 + 3 + 2 + 1)        # per input: dense math (fa4 skipped), 3 methods, 2 sweeps, theirs
    assert set(df["input"]) == {"random", "structured:0.1"}
    assert {"N", "input", "method", "setting", "ms", "density", "rel_err", "tflops"} <= set(df.columns)
    anchor = df[(df["method"] == "anchor") & (df["setting"] == "block_size=16,step=2")]
    assert (anchor["rel_err"] < 1e-5).all() and anchor["stage1_ms"].notna().all()
    assert (df.loc[df["method"] == "dense", "density"] == 1).all()
    assert df.loc[df["method"] == "flexprefill", "estimate_ms"].notna().all()
    theirs = df[df["method"] == "anchor_authors_fp32_emulation"]
    assert len(theirs) == 2 and theirs["rel_err"].notna().all() and theirs["ms"].isna().all()
    assert "python -m benchmarks.kernels.compare --lengths 96" in (tmp_path / "cpu.md").read_text()


def test_sweep_expansion_and_bad_specs():
    assert compare.expand_sweeps(["anchor:theta=8|10"]) == ["anchor:theta=8", "anchor:theta=10"]
    assert compare.parse_input("structured:0.05") == ("structured", 0.05)
    with pytest.raises(SystemExit, match="not key=value"):
        prefill.parse_method("anchor:thetta=3")


def test_prefill_times_methods_and_projects(tmp_path):
    argv = ["--model", "tiny_llama", "--lengths", "64", "--method", "dense", "--method",
            "anchor:block_size=16,step=2", "--device", "cpu", "--out", str(tmp_path)]
    df = prefill.main(argv)
    assert list(df["method"]) == ["dense", "anchor"] and (df["ms"] > 0).all()
    assert df.loc[0, "density"] == 1.0 and df.loc[1, "density"] <= 1.5
    kernels = pd.DataFrame([{"N": 64, "method": "dense", "setting": "default", "input": "random", "ms": 1.0},
                            {"N": 64, "method": "anchor", "setting": "block_size=16,step=2",
                             "input": "structured:0.01", "ms": 0.5}])
    projected = prefill.project(df, kernels, n_layers=2, projection_input="structured:0.01")
    non_attention = df.loc[0, "ms"] - 2 * 1.0
    assert projected.loc[0, "projected_ms"] == pytest.approx(non_attention + 2.0)
    assert projected.loc[1, "projected_ms"] == pytest.approx(non_attention + 1.0)
