"""The one benchmark registry: a benchmark name (``conf/bench/<name>.yaml``) -> how it runs.

A benchmark registers itself where it is defined, with the runner that executes it:

* ``generate`` (the generation runner, ``benchmarks.runner.generate``): tasks that provide
  ``load_examples(bench_cfg, tokenizer) -> list[Example]`` and optionally
  ``score(example, prediction)`` (``benchmarks/tasks/``);
* ``smoke`` (``benchmarks.runner.smoke``) and ``analysis`` (``benchmarks.analysis.runner``):
  runners that are their own benchmark.

Adding a task: one module in ``benchmarks/tasks/`` calling ``register_benchmark`` (plus its import
line in ``benchmarks/tasks/__init__.py``) and one ``conf/bench/<name>.yaml`` with the same name.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

RUNNERS = ("generate", "smoke", "analysis")
# Modules whose import registers the built-in benchmarks (imported on first lookup).
_BUILTIN = ("benchmarks.tasks", "benchmarks.runner.smoke", "benchmarks.analysis.runner")


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark.

    Attributes:
        name: registry key, equal to its ``conf/bench/<name>.yaml`` ``name``.
        runner: one of ``RUNNERS``.
        load_examples: ``(bench_cfg, tokenizer) -> list[Example]`` (``generate`` only).
        score: ``(example, prediction) -> float`` overriding ``Example.metric`` (optional).
    """

    name: str
    runner: str
    load_examples: Callable | None = None
    score: Callable | None = None


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(name: str, *, runner: str, load_examples: Callable | None = None,
                       score: Callable | None = None) -> Benchmark:
    """Register benchmark ``name`` run by ``runner``; generation tasks pass ``load_examples``."""
    if runner not in RUNNERS:
        raise ValueError(f"benchmark {name!r}: runner must be one of {RUNNERS}, got {runner!r}")
    if runner == "generate" and load_examples is None:
        raise ValueError(f"benchmark {name!r}: a generation task needs load_examples")
    if name in BENCHMARKS:
        raise ValueError(f"benchmark {name!r} registered twice")
    BENCHMARKS[name] = Benchmark(name, runner, load_examples, score)
    return BENCHMARKS[name]


def _load_builtins() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def list_benchmarks() -> list[str]:
    """Names of every registered benchmark."""
    _load_builtins()
    return sorted(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as ``name`` (``KeyError`` listing the available ones)."""
    _load_builtins()
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
