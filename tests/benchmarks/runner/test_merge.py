"""Sharded generation runs on a toy benchmark (tiny random Llama, character tokenizer): shard
assignment, plans, the merged summary against the unsharded one, incomplete and mixed folders."""
from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path

import pytest
import torch
import yaml

import methods  # noqa: F401  (registers the methods)
from benchmarks.registry import Benchmark
from benchmarks.reports.runs import load_results
from benchmarks.runner import merge
from benchmarks.runner.generate import RunnerOptions, run_generation
from benchmarks.runner.plan import shard_of, status
from benchmarks.runner.results import ResultWriter, mark_failed
from benchmarks.tasks.example import Example
from methods.models import load_model
from methods.registry import get_method

TIMING = {"prefill_ms_mean", "throughput", "num_shards"}


class CharTokenizer:
    """Characters -> ids 3..127; 1 = BOS, 2 = EOS (the tiny Llama's vocabulary of 128)."""

    all_special_ids, bos_token_id, eos_token_id = [1, 2], 1, 2

    def encode(self, text, add_special_tokens=False):
        return ([1] if add_special_tokens else []) + [3 + ord(c) % 125 for c in text]

    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        return type("Encoding", (), {"input_ids": torch.tensor([self.encode(text, add_special_tokens)])})

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3 + 32) for i in ids if i > 2)


def toy_examples(cfg, tokenizer):
    return [Example(id=f"{task}/{i}", task=task, length=16 * (1 + i % 2), prompt=f"{task} question {i}: " * 3,
                    max_new_tokens=4, targets=["x"], metric="unused")
            for task in cfg["tasks"] for i in range(cfg["num_samples"])]


def toy_score(example, prediction):
    return zlib.crc32(prediction.encode()) % 3 / 2      # deterministic, varies with the prediction


TOY = Benchmark("toy", "generate", toy_examples, toy_score)


def config(num_samples=6, **method):
    return {"model": {"name": "tiny-llama"}, "method": {"name": "dense", "backend": "auto", **method},
            "bench": {"name": "toy", "tasks": ["t1", "t2"], "num_samples": num_samples}, "seed": 0}


@pytest.fixture(scope="module")
def model():
    cfg = yaml.safe_load((Path(__file__).resolve().parents[3] / "conf/model/tiny_llama.yaml").read_text())
    return load_model(cfg, "cpu")[0]


def run(model, folder, shard=0, num_shards=1, num_samples=6):
    cfg = config(num_samples)
    with ResultWriter(folder, cfg, shard=shard, num_shards=num_shards) as writer:
        run_generation(TOY, cfg["bench"], model, CharTokenizer(), get_method(cfg["method"]), writer,
                       torch.device("cpu"), options=RunnerOptions(shard=shard, num_shards=num_shards, max_context=512))


def test_shard_of_is_stable_and_spreads():
    assert [shard_of(f"t/{i}", 3) for i in range(8)] == [shard_of(f"t/{i}", 3) for i in range(8)]
    assert shard_of("niah/1000/0/0", 4) == int(__import__("hashlib").sha1(b"niah/1000/0/0").hexdigest(), 16) % 4
    counts = [sum(shard_of(f"t/{i}", 3) == s for i in range(300)) for s in range(3)]
    assert min(counts) > 70


def test_three_shards_merge_to_the_unsharded_summary(model, tmp_path):
    run(model, tmp_path / "one")
    whole = json.loads(merge.merge_folder(tmp_path / "one")[1][0].read_text())
    for shard in (0, 1):
        run(model, tmp_path / "three", shard, 3)
    state, written = merge.merge_folder(tmp_path / "three")
    assert not written and state.missing_shards == [2] and "shards never started: [2]" in state.describe()
    run(model, tmp_path / "three", 2, 3)
    state, written = merge.merge_folder(tmp_path / "three")
    merged = json.loads(written[0].read_text())
    assert {k: v for k, v in merged.items() if k not in TIMING | {"env"}} == \
        {k: v for k, v in whole.items() if k not in TIMING | {"env"}}
    assert merged["n_samples"] == 12 and merged["num_shards"] == 3 and merged["extra_rows"] == 0
    assert set(merged["throughput"]["phase_ms_mean"]) == {"tokenize", "prefill", "decode", "score"}
    one, three = load_results([tmp_path / "one"]), load_results([tmp_path / "three"])
    key = ["id", "prediction", "score"]
    assert one[key].sort_values("id").values.tolist() == three[key].sort_values("id").values.tolist()
    assert (tmp_path / "three" / "toy_by_task.md").exists()


def test_fewer_samples_on_resume_summarise_only_what_is_asked(model, tmp_path):
    run(model, tmp_path, num_samples=6)
    run(model, tmp_path, num_samples=2)
    state, written = merge.merge_folder(tmp_path)
    summary = json.loads(written[0].read_text())
    assert summary["n_samples"] == 4 and summary["n_expected"] == 4 and summary["extra_rows"] == 8
    assert len(load_results([tmp_path])) == 4                     # the tables use the same rows


def test_missing_examples_are_reported(model, tmp_path):
    run(model, tmp_path, 0, 2)
    run(model, tmp_path, 1, 2)
    rows = (tmp_path / "samples.shard-1-of-2.jsonl").read_text().splitlines()
    (tmp_path / "samples.shard-1-of-2.jsonl").write_text("\n".join(rows[1:]) + "\n")
    state = status(tmp_path)
    lost = json.loads(rows[0])["id"]
    assert not state.complete and state.missing == {1: [lost]} and f"shard 1: 1 examples missing, e.g. {lost}" \
        in state.describe()
    assert merge.main([str(tmp_path)]) == 1 and not (tmp_path / "summary.json").exists()


def test_merge_of_separate_folders_and_refusal_of_mixed_configs(model, tmp_path, capsys):
    for shard in range(2):
        run(model, tmp_path / f"s{shard}", shard, 2)
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["n_samples"] == 12
    with ResultWriter(tmp_path / "other", config(**{"backend": "math"}), shard=1, num_shards=2) as w:
        w.append({"id": "t1/0"})
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "other"), "--out", str(tmp_path / "bad")]) == 1
    assert 'method.backend: "auto" (in the folder) -> "math" (this run)' in capsys.readouterr().err


def test_merge_takes_a_legacy_folders_decode_cache_from_its_rows(model, tmp_path, capsys):
    for shard in range(2):
        run(model, tmp_path / f"s{shard}", shard, 2)
    record = json.loads((tmp_path / "s0" / "fingerprint.json").read_text())
    del record["fingerprint"]["runner.decode_cache"]                   # written before the key existed
    (tmp_path / "s0" / "fingerprint.json").write_text(json.dumps(record))
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    with ResultWriter(tmp_path / "st", {**config(), "runner": {"decode": "static"}}, shard=1, num_shards=2) as w:
        w.append({"id": "t1/0", "decode": "static"})
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "st"), "--out", str(tmp_path / "bad")]) == 1
    assert 'runner.decode_cache: "dynamic" (in the folder) -> "static" (this run)' in capsys.readouterr().err


def test_reports_skip_a_failed_folder(model, tmp_path):
    run(model, tmp_path / "ok")
    run(model, tmp_path / "bad")
    merge.merge_folder(tmp_path / "ok")
    merge.merge_folder(tmp_path / "bad")
    mark_failed(tmp_path / "bad", "RuntimeError: boom")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_results([tmp_path])
    assert set(df["run"]) == {str((tmp_path / "ok").resolve())}
    assert any("failed" in str(w.message) for w in caught)
