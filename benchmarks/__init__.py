"""Benchmarks of prefill attention methods, one concern per subpackage (imports only go down):

* ``tasks/``    - the benchmark tasks (RULER, LongBench, NIAH): examples, prompts, scoring, data
  assets. They know nothing of the runner; the contract is ``tasks.example.Example`` +
  ``load_examples(cfg, tokenizer)`` + optional ``score(example, prediction)``.
* ``runner/``   - running a method on a benchmark: the generation runner, the smoke runner, and
  the crash-safe result files (``samples.jsonl``, ``summary.json``).
* ``analysis/`` - the paper's attention analysis: capture q/k/v from a model, per layer/head
  density, recalls and errors against dense attention, latency on synthetic inputs.
* ``kernels/``  - kernel benchmarks on synthetic inputs (ours vs dense SDPA and the authors'
  algorithm), launch-configuration tuning.
* ``reports/``  - tables, heatmaps and the paper's figures, built from result files only.

Top-level modules are shared helpers: ``registry`` (the benchmark registry: name -> runner and
task module), ``config_files`` (conf/*.yaml outside Hydra), ``structured_inputs`` (synthetic
q/k/v), ``timing`` and ``tables`` (markdown).
"""
