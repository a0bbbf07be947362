"""The generation runner shared by RULER, LongBench and NIAH.

For every ``Example`` of this process's shard (``runner.shard`` of ``runner.num_shards``, by
``benchmarks.runner.plan.shard_of``) not yet in the run folder: tokenize, prefill with the
method patched into the model (timed, synchronised), decode greedily (dense attention, mode
``runner.decode``: ``benchmarks.runner.decode``), score, and append one line with the time of
each phase. The model is patched once for the whole run; per-example statistics come from a
``StatsRecorder`` reset before each example. Lengths beyond the model's context are refused
before anything runs unless ``runner.allow_beyond_context`` is true.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.registry import Benchmark
from benchmarks.runner import fingerprint as fp
from benchmarks.runner.decode import Decoder
from benchmarks.runner.plan import shard_of, write_plan
from benchmarks.runner.results import ResultWriter, summarize_by
from benchmarks.tasks.example import Example
from benchmarks.tasks.metrics import METRICS
from methods.hf_patch import StatsRecorder, patched

PHASES = ("tokenize_ms", "prefill_ms", "decode_ms", "score_ms")


@dataclass(frozen=True)
class RunnerOptions:
    """The ``runner`` block of the config (see ``conf/config.yaml``).

    Attributes:
        shard, num_shards: this process runs the examples with ``shard_of(id, num_shards) == shard``.
        decode: decode mode (``benchmarks.runner.decode.DECODE_MODES``).
        max_context: the model's context in tokens (None: unknown, not checked).
        allow_beyond_context: run lengths above ``max_context`` anyway.
    """

    shard: int = 0
    num_shards: int = 1
    decode: str = "loop"
    max_context: int | None = None
    allow_beyond_context: bool = False


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


def model_context(model_cfg: Mapping[str, Any], model) -> int | None:
    """The model's context in tokens: ``model.max_length`` of its config, else the loaded
    config's ``max_position_embeddings`` (None if neither)."""
    limit = model_cfg.get("max_length") or getattr(model.config, "max_position_embeddings", None)
    return int(limit) if limit else None


def _check_length(what: str, length: int, options: RunnerOptions) -> None:
    if options.max_context is not None and length > options.max_context and not options.allow_beyond_context:
        raise ValueError(f"{what} is {length} tokens, beyond the model's context of {options.max_context} "
                         f"(model.max_length, else its max_position_embeddings); lower it, or set "
                         f"runner.allow_beyond_context=true to run there anyway")


def check_lengths(bench_cfg: Mapping[str, Any], options: RunnerOptions) -> None:
    """Refuse a benchmark whose configured lengths exceed the model's context, before any work:
    ``bench.lengths`` (RULER) and ``bench.max_length`` (NIAH's longest context, LongBench's
    prompt budget)."""
    for key in ("lengths", "max_length"):
        value = bench_cfg.get(key)
        for length in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value]):
            if length is not None:
                _check_length(f"bench.{key} {length}", int(length), options)


def score_example(bench: Benchmark, example: Example, prediction: str) -> float:
    """The benchmark's own ``score`` if it has one (per-dataset post-processing), else the metric."""
    if bench.score is not None:
        return float(bench.score(example, prediction))
    return float(METRICS[example.metric](prediction, example.targets, example.meta))


def newline_token_id(tokenizer) -> int:
    """The id official LongBench stops samsum at: ``tokenizer.encode("\n", add_special_tokens=False)[-1]``."""
    return tokenizer.encode("\n", add_special_tokens=False)[-1]


def throughput(rows: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Examples per hour (from the per-example wall time) and where the time goes: mean ms per
    phase, each phase's share, ms per decode step. None for rows without phase times."""
    timed = [r for r in rows if all(r.get(k) is not None for k in (*PHASES, "example_ms", "decode_steps"))]
    if not timed:
        return None
    total = sum(r["example_ms"] for r in timed)
    steps = sum(r["decode_steps"] for r in timed)
    return {
        "examples_per_hour": round(3.6e6 * len(timed) / total, 1) if total else None,
        "example_ms_mean": total / len(timed),
        "phase_ms_mean": {k[:-3]: sum(r[k] for r in timed) / len(timed) for k in PHASES},
        "phase_share": {k[:-3]: round(sum(r[k] for r in timed) / total, 4) if total else None for k in PHASES},
        "decode_ms_per_step": sum(r["decode_ms"] for r in timed) / steps if steps else None,
        "decode_modes": sorted({str(r.get("decode")) for r in timed}),
        "n_timed": len(timed),
    }


def _mean(values) -> float | None:
    """Mean of the non-None values (None if there are none: e.g. a method reporting no upstream ratio)."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(rows: list[Mapping[str, Any]], requested_tasks: list[str] | None) -> dict[str, Any]:
    """Scores x100 per task, per (task, length), per length (mean over tasks) and overall, cost
    means and ``throughput``.

    Means are taken on unrounded values; only the reported numbers are rounded (2 decimals).
    """
    raw: dict[str, dict[str, float]] = {}
    for r in summarize_by(rows, ["task", "length"], "score"):
        raw.setdefault(r["task"], {})[str(r["length"])] = 100 * r["score"]
    lengths = sorted({str(r["length"]) for r in rows}, key=int)
    by_length = {n: sum(s[n] for s in raw.values() if n in s) / max(1, sum(n in s for s in raw.values()))
                 for n in lengths}
    present = sorted(raw)
    summary = {
        "scores": {t: {n: round(v, 2) for n, v in s.items()} for t, s in raw.items()},
        "score_by_task": {r["task"]: round(100 * r["score"], 2) for r in summarize_by(rows, ["task"], "score")},
        "score_by_length": {n: round(v, 2) for n, v in by_length.items()},
        "score_avg": round(sum(by_length.values()) / max(1, len(by_length)), 2),
        "n_samples": len(rows),
        "prefill_ms_mean": sum(r["prefill_ms"] for r in rows) / max(1, len(rows)),
        "density_mean": sum(r["density"] for r in rows) / max(1, len(rows)),
        "dense_fallbacks": sum(r["dense_fallbacks"] for r in rows),
        "upstream_ratio_mean": _mean(r.get("upstream_ratio") for r in rows),
        "degenerate_dense_mean": _mean(r.get("degenerate_dense") for r in rows),
        "dense_backends": sorted({r["dense_backend"] for r in rows if r.get("dense_backend")}),
        "unavailable_tasks": sorted(set(requested_tasks or present) - set(present)),
    }
    speed = throughput(rows)
    if speed is not None:
        summary["throughput"] = speed
    return summary


def run_generation(bench: Benchmark, bench_cfg, model, tokenizer, method, writer: ResultWriter,
                   device: torch.device, logger=None, options: RunnerOptions = RunnerOptions()) -> None:
    """Run this shard of the generation task ``bench`` (registry entry with ``load_examples``)
    with ``method``: write the shard's plan, then one row per example into ``writer``.

    The summary is written separately (``benchmarks.runner.merge.merge_folder``) once the folder
    holds every shard's examples.
    """
    check_lengths(bench_cfg, options)
    examples = bench.load_examples(bench_cfg, tokenizer)
    if not examples:
        raise RuntimeError(f"benchmark {bench_cfg.get('name')} produced no examples: check its data and config")
    tasks = bench_cfg.get("tasks") or bench_cfg.get("datasets")
    write_plan(writer.out_dir, shard=options.shard, num_shards=options.num_shards, ids=[ex.id for ex in examples],
               digest=fp.digest(writer.fingerprint) if writer.fingerprint else None,
               requested_tasks=list(tasks) if tasks else None, config=writer.config)
    mine = [ex for ex in examples if shard_of(ex.id, options.num_shards) == options.shard]
    done = writer.done_ids()
    todo = [ex for ex in mine if ex.id not in done]
    note = f" (shard {options.shard} of {options.num_shards}: {len(mine)})" if options.num_shards > 1 else ""
    print(f"[{bench_cfg.get('name')}] {len(examples)} examples, {len(mine) - len(todo)} already done{note}")
    stop_ids = stop_token_ids(model, tokenizer)
    newline_id = newline_token_id(tokenizer)
    decoder = Decoder(model, options.decode)
    recorder = StatsRecorder()
    with patched(model, method, recorder):
        for ex in tqdm(todo, desc=str(bench_cfg.get("name")), unit="ex"):
            row = run_example(bench, ex, tokenizer, decoder, recorder, stop_ids, newline_id, device, options)
            writer.append(row)
            if logger is not None:
                logger.log({k: row[k] for k in ("score", "density", *PHASES)})


def run_example(bench: Benchmark, ex: Example, tokenizer, decoder: Decoder, recorder: StatsRecorder,
                stop_ids: set[int], newline_id: int, device: torch.device, options: RunnerOptions) -> dict:
    """Tokenize, generate and score one example; its samples row, phase times in ms."""
    start = time.perf_counter()
    ids = tokenizer(ex.prompt, add_special_tokens=ex.add_special_tokens, return_tensors="pt").input_ids
    tokenized = time.perf_counter()
    _check_length(f"example {ex.id}'s prompt", ids.shape[1], options)
    recorder.reset()
    gen = decoder.generate(ids.to(device), ex.max_new_tokens, stop_ids,
                           newline_id if ex.meta.get("stop_at_newline") else None)
    scoring = time.perf_counter()
    prediction = tokenizer.decode(gen.tokens, skip_special_tokens=True)
    score = score_example(bench, ex, prediction)
    end = time.perf_counter()
    return {"id": ex.id, "task": ex.task, "length": ex.length, "input_tokens": ids.shape[1],
            "prediction": prediction, "targets": ex.targets, "metric": ex.metric, "score": score,
            "prefill_ms": gen.prefill_ms, "density": recorder.prefill_density(),
            "dense_fallbacks": recorder.dense_fallbacks(), "upstream_ratio": recorder.upstream_ratio(),
            "degenerate_dense": recorder.degenerate_fraction(), "dense_backend": recorder.dense_backend(),
            "meta": ex.meta,
            "new_tokens": len(gen.tokens), "decode_steps": gen.decode_steps, "decode": options.decode,
            "tokenize_ms": (tokenized - start) * 1e3, "decode_ms": gen.decode_ms,
            "score_ms": (end - scoring) * 1e3, "example_ms": (end - start) * 1e3}
