"""benchmarks.analysis.runner on a tiny random Llama (CPU, torch backends): rows, metric ranges, resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.analysis import runner as analysis
from benchmarks.analysis.runner import expand_sweep, run_analysis
from benchmarks.runner.results import ResultWriter
from methods.models import load_model

REPO_ROOT = Path(__file__).resolve().parents[3]

LENGTH, LAYERS, HEADS = 128, 2, 4           # tiny_llama: 2 layers, 4 query / 2 KV heads
TINY = {"block_size": 16, "backend": "torch"}
SWEEP = [
    {"method": "anchor", "param": "theta", "values": [2.0, 12.0],
     "overrides": {**TINY, "step": 2, "dense_if_complete": False}},
    {"method": "oracle_topk_stripe", "param": "k", "values": [16], "overrides": TINY},
    {"method": "streaming", "param": ["global_window", "local_window"], "values": [[16, 32]],
     "overrides": TINY},
    {"method": "dense", "param": None},
]


def _cfg(**extra) -> dict:
    return {"name": "analysis", "runner": "analysis", "lengths": [LENGTH], "layers": None,
            "sweep": SWEEP, "metrics_tol": [0.01, 0.005], "per_head": True,
            "latency": {"enabled": True, "kind": "structured", "lengths": [256], "stripe_fraction": 0.01,
                        "shapes": {"q_heads": 4, "kv_heads": 2, "head_dim": 16}}, **extra}


def _tokens(tokenizer, length: int) -> torch.Tensor:
    """Stand-in for the essays: seeded ids below the tiny vocabulary (128)."""
    return torch.randint(3, 128, (1, length), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny_model():
    """The 2-layer random Llama of ``conf/model/tiny_llama.yaml`` on CPU (fp32)."""
    model, _ = load_model(yaml.safe_load((REPO_ROOT / "conf/model/tiny_llama.yaml").read_text()), "cpu")
    return model


def test_rows_metrics_and_resume(tiny_model, tmp_path, monkeypatch):
    writer = ResultWriter(tmp_path, {"model": {"name": "tiny-llama"}})
    summary = run_analysis(_cfg(), tiny_model, None, writer, "cpu", token_fn=_tokens)
    rows = writer.rows()
    assert len(rows) == 5 * LAYERS * HEADS                   # 5 settings x layers x heads
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["kind"] == "accuracy" and r["model"] == "tiny-llama" for r in rows)
    for r in rows:
        assert 0 <= r["mass_recall"] <= 1 + 1e-6
        for key in ("output_recall_0.01", "output_recall_0.005"):
            assert 0 <= r[key] <= 1
        assert r["output_recall_0.005"] <= r["output_recall_0.01"]
        assert 0 < r["density_sparse"] <= r["density"] + 1e-12
        assert r["density"] == pytest.approx(sum(r["stages"].values()))
        assert r["relative_error"] >= 0 and r["layer_ms"] >= 0
    dense = [r for r in rows if r["label"] == "dense"]
    assert all(r["density"] == 1 and r["mass_recall"] == pytest.approx(1) and r["output_recall_0.005"] == 1
               and r["relative_error"] < 1e-5 and r["setting"] == "default" for r in dense)
    topk = [r for r in rows if r["label"] == "oracle_topk_stripe"]
    assert all(r["stages"]["oracle"] > 1 and r["density_sparse"] < 1 for r in topk)   # 16 of <= 128 keys
    anchor = {r["setting"]: r for r in rows if r["label"] == "anchor" and r["layer"] == 0 and r["head"] == 0}
    assert anchor["theta=2.0"]["density_sparse"] <= anchor["theta=12.0"]["density_sparse"]
    assert anchor["theta=12.0"]["is_default"] and not anchor["theta=2.0"]["is_default"]
    stream = next(r for r in rows if r["label"] == "streaming")
    assert stream["value"] == [16, 32] and stream["param"] == "global_window,local_window"

    assert summary["n_accuracy"] == len(rows) and summary["n_latency"] == 0
    assert len(summary["by_setting"]) == 5 and all(g["count"] == LAYERS * HEADS for g in summary["by_setting"])
    assert any("latency skipped" in n for n in summary["notes"])          # CPU: no timings

    def no_capture(*args, **kwargs):
        raise AssertionError("resume must not capture again")
    monkeypatch.setattr(analysis, "capture_qkv", no_capture)
    again = ResultWriter(tmp_path, {})
    run_analysis(_cfg(), tiny_model, None, again, "cpu", token_fn=_tokens)
    assert again.rows() == rows


def test_partial_resume_writes_only_missing_rows(tiny_model, tmp_path):
    sweep = [SWEEP[3]]
    first = ResultWriter(tmp_path, {})
    run_analysis(_cfg(sweep=sweep), tiny_model, None, first, "cpu", token_fn=_tokens)
    kept = first.rows()[:3]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    second = ResultWriter(tmp_path, {})
    run_analysis(_cfg(sweep=sweep), tiny_model, None, second, "cpu", token_fn=_tokens)
    rows = second.rows()
    assert rows[:3] == kept and len(rows) == LAYERS * HEADS and len({r["id"] for r in rows}) == len(rows)


def test_head_means_and_token_offset(tiny_model, tmp_path):
    writer = ResultWriter(tmp_path, {})
    run_analysis(_cfg(sweep=[SWEEP[1]], per_head=False, token_offset=5, layers=[1]), tiny_model, None,
                 writer, "cpu", token_fn=_tokens)
    rows = writer.rows()
    assert len(rows) == 1 and rows[0]["head"] == "mean" and rows[0]["layer"] == 1
    assert rows[0]["token_offset"] == 5 and 0 < rows[0]["mass_recall"] < 1


def test_expand_sweep_labels_and_errors():
    settings = expand_sweep(SWEEP)
    assert [s.setting for s in settings] == ["theta=2.0", "theta=12.0", "k=16",
                                            "global_window=16,local_window=32", "default"]
    assert settings[0].method_cfg["step"] == 2 and settings[2].method_cfg["name"] == "oracle_topk"
    with pytest.raises(ValueError, match="no hyperparameter"):
        expand_sweep([{"method": "anchor", "param": "tehta", "values": [1.0]}])
    with pytest.raises(ValueError, match="repeats"):
        expand_sweep([SWEEP[3], SWEEP[3]])
    with pytest.raises(ValueError, match="does not match"):
        expand_sweep([{"method": "streaming", "param": ["global_window", "local_window"], "values": [[1]]}])
    with pytest.raises(ValueError, match="unknown keys"):
        expand_sweep([{"method": "dense", "parm": None}])


def test_latency_rows_with_stubbed_cuda(tmp_path, monkeypatch):
    """The CUDA-only latency part, with do_bench and the input maker stubbed onto CPU tensors."""
    made = []

    def fake_make_qkv(kind, B, Hq, Hkv, N, D, dtype, device, seed, stripe_fraction):
        made.append((kind, Hq, Hkv, N, D, dtype))
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(B, Hq, N, D, generator=gen), torch.randn(B, Hkv, N, D, generator=gen),
                torch.randn(B, Hkv, N, D, generator=gen))
    monkeypatch.setattr(analysis, "make_qkv", fake_make_qkv)
    monkeypatch.setattr(analysis, "bench_ms", lambda fn, device, timing: 1.5)
    sweep = [{**SWEEP[0], "values": [12.0]}, {**SWEEP[1], "latency": False}, SWEEP[3]]
    writer = ResultWriter(tmp_path, {})
    notes = analysis.run_latency(_cfg(sweep=sweep), expand_sweep(sweep), writer, torch.device("cuda"))
    rows = writer.rows()
    assert notes == [] and [r["label"] for r in rows] == ["anchor", "dense"]    # oracle: latency false
    assert made == [("structured", 4, 2, 256, 16, torch.bfloat16)]
    assert all(r["kind"] == "latency" and r["ms"] == 1.5 and r["length"] == 256 for r in rows)
    assert rows[1]["density"] == 1 and 0 < rows[0]["density_sparse"] <= 1
    analysis.run_latency(_cfg(sweep=sweep), expand_sweep(sweep), writer, torch.device("cuda"))
    assert len(writer.rows()) == 2                                              # resume: nothing new


def test_layers_outside_the_model_are_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="outside the model"):
        run_analysis(_cfg(layers=[0, 15]), tiny_model, None, ResultWriter(tmp_path, {}), "cpu", token_fn=_tokens)
