"""Benchmark tasks: what a model is asked and how its answer is scored. Importing this package
registers every task with ``benchmarks.registry``.

Each task module provides ``load_examples(bench_cfg, tokenizer) -> list[Example]`` and may provide
``score(example, prediction) -> float``; the generation runner needs nothing else. Adding a task:
one module here (plus its import line below) and one ``conf/bench/<name>.yaml``.
"""
from benchmarks.tasks import longbench, niah, ruler  # noqa: F401  (registration)
