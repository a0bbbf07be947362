"""The generation runner shared by RULER, LongBench and NIAH.

For every ``Example`` of the benchmark not yet in ``samples.jsonl``: tokenize, prefill with the
method patched into the model (timed, synchronised), decode greedily (dense attention), score,
and append one line. The model is patched once for the whole run; per-example statistics come
from a ``StatsRecorder`` reset before each example.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.registry import Benchmark
from benchmarks.tasks.example import Example
from benchmarks.tasks.metrics import METRICS
from benchmarks.runner.results import ResultWriter, summarize_by
from benchmarks.timing import sync
from methods.hf_patch import StatsRecorder, patched


def stop_token_ids(model, tokenizer) -> set[int]:
    """Ids that end an answer: the generation config's EOS (int or list), the tokenizer's EOS and
    every other special token but BOS (e.g. a chat template's end-of-turn ``<|im_end|>``, which a
    GGUF-derived generation config may not list). Special tokens never belong to an answer."""
    ids = set(tokenizer.all_special_ids) - {tokenizer.bos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, stop_ids: set[int],
                    newline_id: int | None = None) -> tuple[list[int], float]:
    """Greedy decoding of ``input_ids [1, N]``; returns (new token ids, prefill milliseconds).

    Stops after a stop token (not returned) or at ``max_new_tokens``. With ``newline_id`` (LongBench
    samsum) that token also stops generation, and neither it nor a stop token may come first
    (the official ``min_length=context+1``). Prefill time covers the forward pass over the prompt.
    """
    from transformers import DynamicCache

    device = input_ids.device
    cache = DynamicCache()
    sync(device)
    start = time.perf_counter()
    logits = model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits[:, -1]
    sync(device)
    prefill_ms = (time.perf_counter() - start) * 1e3
    new: list[int] = []
    banned_first = sorted(stop_ids | {newline_id}) if newline_id is not None else []
    for step in range(max_new_tokens):
        if step == 0 and banned_first:
            logits[:, banned_first] = float("-inf")
        token = int(logits.argmax(-1))
        if token in stop_ids:
            break
        new.append(token)
        if token == newline_id:
            break
        step = torch.tensor([[token]], device=device)
        logits = model(input_ids=step, past_key_values=cache, use_cache=True).logits[:, -1]
    return new, prefill_ms


def score_example(bench: Benchmark, example: Example, prediction: str) -> float:
    """The benchmark's own ``score`` if it has one (per-dataset post-processing), else the metric."""
    if bench.score is not None:
        return float(bench.score(example, prediction))
    return float(METRICS[example.metric](prediction, example.targets, example.meta))


def newline_token_id(tokenizer) -> int:
    """The id official LongBench stops samsum at: ``tokenizer.encode("\n", add_special_tokens=False)[-1]``."""
    return tokenizer.encode("\n", add_special_tokens=False)[-1]


def summarize(rows: list[Mapping[str, Any]], requested_tasks: list[str] | None) -> dict[str, Any]:
    """Scores x100 per task, per (task, length), per length (mean over tasks) and overall.

    Means are taken on unrounded values; only the reported numbers are rounded (2 decimals).
    """
    raw: dict[str, dict[str, float]] = {}
    for r in summarize_by(rows, ["task", "length"], "score"):
        raw.setdefault(r["task"], {})[str(r["length"])] = 100 * r["score"]
    lengths = sorted({str(r["length"]) for r in rows}, key=int)
    by_length = {n: sum(s[n] for s in raw.values() if n in s) / max(1, sum(n in s for s in raw.values()))
                 for n in lengths}
    present = sorted(raw)
    return {
        "scores": {t: {n: round(v, 2) for n, v in s.items()} for t, s in raw.items()},
        "score_by_task": {r["task"]: round(100 * r["score"], 2) for r in summarize_by(rows, ["task"], "score")},
        "score_by_length": {n: round(v, 2) for n, v in by_length.items()},
        "score_avg": round(sum(by_length.values()) / max(1, len(by_length)), 2),
        "n_samples": len(rows),
        "prefill_ms_mean": sum(r["prefill_ms"] for r in rows) / max(1, len(rows)),
        "density_mean": sum(r["density"] for r in rows) / max(1, len(rows)),
        "dense_fallbacks": sum(r["dense_fallbacks"] for r in rows),
        "unavailable_tasks": sorted(set(requested_tasks or present) - set(present)),
    }


def run_generation(bench: Benchmark, bench_cfg, model, tokenizer, method, writer: ResultWriter,
                   device: torch.device, logger=None) -> dict[str, Any]:
    """Run the generation task ``bench`` (registry entry with ``load_examples``) with ``method``;
    return the summary."""
    examples = bench.load_examples(bench_cfg, tokenizer)
    if not examples:
        raise RuntimeError(f"benchmark {bench_cfg.get('name')} produced no examples: check its data and config")
    done = writer.done_ids()
    todo = [ex for ex in examples if ex.id not in done]
    print(f"[{bench_cfg.get('name')}] {len(examples)} examples, {len(examples) - len(todo)} already done")
    stop_ids = stop_token_ids(model, tokenizer)
    newline_id = newline_token_id(tokenizer)
    recorder = StatsRecorder()
    with patched(model, method, recorder):
        for ex in tqdm(todo, desc=str(bench_cfg.get("name")), unit="ex"):
            ids = tokenizer(ex.prompt, add_special_tokens=ex.add_special_tokens, return_tensors="pt").input_ids
            recorder.reset()
            new, prefill_ms = greedy_generate(model, ids.to(device), ex.max_new_tokens, stop_ids,
                                              newline_id if ex.meta.get("stop_at_newline") else None)
            prediction = tokenizer.decode(new, skip_special_tokens=True)
            row = {"id": ex.id, "task": ex.task, "length": ex.length, "input_tokens": ids.shape[1],
                   "prediction": prediction, "targets": ex.targets, "metric": ex.metric,
                   "score": score_example(bench, ex, prediction), "prefill_ms": prefill_ms,
                   "density": recorder.prefill_density(), "dense_fallbacks": recorder.dense_fallbacks(),
                   "meta": ex.meta}
            writer.append(row)
            if logger is not None:
                logger.log({"score": row["score"], "prefill_ms": prefill_ms, "density": row["density"]})
    tasks = bench_cfg.get("tasks") or bench_cfg.get("datasets")
    return summarize(writer.rows(), list(tasks) if tasks else None)
