"""Token inputs of the analysis runner (``bench.input`` of ``conf/bench/analysis.yaml``).

* ``essays``: the Paul Graham essays, concatenated (``essay_tokens``);
* ``ruler:<task>``: one RULER prompt of ``<task>`` (``benchmarks.tasks.ruler``, settings of
  ``conf/bench/ruler.yaml``: chat template, seed 42, the RULER cache), generated a little longer
  than asked and cut to its last ``length`` tokens, so the question stays at the end. This is
  the "distinct dataset" of the paper's Figs. 9/10 (e.g. ``ruler:niah_multikey_2``, a haystack of
  key-value lines instead of prose).

Every input function maps ``(tokenizer, length)`` to int64 ``[1, length]`` token ids.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.config_files import conf_yaml
from benchmarks.tasks.assets import ensure_essays

TokenFn = Callable[[Any, int], torch.Tensor]           # (tokenizer, length) -> [1, length] ids
RULER_MARGIN = 256                                      # extra prompt tokens asked of the generator


def essay_tokens(tokenizer, length: int) -> torch.Tensor:
    """``[1, length]`` token ids of the Paul Graham essays (sorted by file name, concatenated)."""
    text = "\n\n".join(p.read_text() for p in sorted(ensure_essays().glob("*.txt")))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :length]
    if ids.shape[1] < length:
        raise ValueError(f"the essays give only {ids.shape[1]} tokens, fewer than {length}")
    return ids


def ruler_tokens(task: str) -> TokenFn:
    """``(tokenizer, length) -> [1, length]``: the last ``length`` tokens of RULER sample 0 of
    ``task`` generated at ``length + tokens_to_generate + RULER_MARGIN`` (module docstring)."""
    from benchmarks.tasks import ruler
    from benchmarks.tasks.ruler.templates import PromptFormat

    if task not in ruler.TASKS:
        raise ValueError(f"unknown RULER task {task!r}; choose from {list(ruler.TASKS)}")

    def tokens(tokenizer: Any, length: int) -> torch.Tensor:
        ttg = ruler.FAMILIES[ruler.TASKS[task]["family"]]["tokens_to_generate"]
        cfg = ruler.settings({**conf_yaml("bench", "ruler"), "tasks": [task], "num_samples": 1,
                              "lengths": [length + ttg + RULER_MARGIN]})
        fmt = PromptFormat(tokenizer, cfg["template"])
        row = ruler.task_rows(task, cfg["lengths"][0], fmt, cfg)[0]
        ids = tokenizer(row["input"], add_special_tokens=fmt.add_special_tokens, return_tensors="pt").input_ids
        if ids.shape[1] < length:
            raise ValueError(f"RULER {task} gave a {ids.shape[1]}-token prompt, fewer than {length}")
        return ids[:, -length:]
    return tokens


def input_tokens(spec: str) -> TokenFn:
    """The input function named by ``spec``: ``essays`` or ``ruler:<task>``."""
    if spec == "essays":
        return essay_tokens
    if spec.startswith("ruler:"):
        return ruler_tokens(spec.split(":", 1)[1])
    raise ValueError(f"unknown analysis input {spec!r}; use 'essays' or 'ruler:<task>'")
