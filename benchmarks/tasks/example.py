"""One benchmark example: the contract between a benchmark's loader and the runner.

A benchmark module exposes ``load_examples(bench_cfg, tokenizer) -> list[Example]`` and scores
predictions with a metric from ``benchmarks.tasks.metrics.METRICS`` named by ``Example.metric``.
The runner tokenizes ``prompt`` (``add_special_tokens`` as given), generates greedily up to
``max_new_tokens``, and stores one ``samples.jsonl`` line per example.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """A prompt with its references.

    Attributes:
        id: unique within a run (used for resuming), e.g. ``"niah_single_1/4096/17"``.
        task: task name (tables group by it).
        length: target context length in tokens (tables group by it); NIAH: context length.
        prompt: the full model input text (chat template already applied when the benchmark wants it).
        max_new_tokens: generation budget.
        targets: reference answers.
        metric: name of the scoring function in ``benchmarks.tasks.metrics.METRICS``.
        add_special_tokens: passed to the tokenizer (False when ``prompt`` already holds BOS/template).
        meta: anything else worth keeping per sample (depth, all_classes, ...).
    """

    id: str
    task: str
    length: int
    prompt: str
    max_new_tokens: int
    targets: list[str]
    metric: str
    add_special_tokens: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
