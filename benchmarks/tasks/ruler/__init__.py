"""RULER (NVIDIA/RULER, Apache-2.0): 13 synthetic long-context tasks, generated with the model's
own tokenizer to each target length, following the RULER copy AnchorAttention used (a mid-2024
snapshot, identical to FlexPrefill's): its task list, arguments, templates, sizing and metrics.

``load_examples(bench_cfg, tokenizer)`` returns one ``Example`` per (length, task, sample).
Samples are cached as jsonl, one file per (tokenizer, template set, template, length, task, seed,
num_samples) under ``cache_dir``; generation is deterministic, and a cache hit skips it.
``python -m benchmarks.tasks.ruler`` fills the cache ahead of a run.

Settings (``conf/bench/ruler.yaml``; a plain dict with the same keys works too):
  tasks, lengths, num_samples (AnchorAttention: 64, upstream 500), seed (42),
  template_set (``anchorattention`` = the paper's RULER copy | ``ruler2024`` = official RULER
  2024's cwe template and vt in-context example, see ``templates.py``),
  template (``chat`` | ``base``, see ``templates.py``),
  max_new_tokens (``per_task`` = RULER's tokens_to_generate | an int, 128 = AnchorAttention's
  ``pred.py``; sizing always reserves the per-task value, as in the paper's run),
  data_dir (``squad.json``, ``hotpotqa.json`` for qa_1/qa_2), cache_dir.
Relative paths are taken from the current directory.

qa_1/qa_2 need the SQuAD/HotpotQA files. Without them (and without a cached copy) they are
skipped with a logged warning naming the file to supply; the 11 other tasks still run, and the
average over them is RULER-11, not RULER (the runner can tell from the examples' tasks).

Deviations from the paper's RULER copy are listed in each generator's docstring; globally:
one ``random.Random(seed)`` stream per (task, length) replaces the per-process global RNGs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.tasks.example import Example
from benchmarks.registry import register_benchmark
from benchmarks.tasks.ruler import niah, qa, sizing, variable_tracking, words
from benchmarks.tasks.ruler.templates import FAMILIES, TEMPLATE_SETS, PromptFormat

log = logging.getLogger(__name__)

def _task(family: str, **args: Any) -> dict[str, Any]:
    metric = "string_match_part" if family == "qa" else "string_match_all"
    return {"family": family, "args": args, "metric": metric}


_WORDS_NUMBERS = {"type_needle_k": "words", "type_needle_v": "numbers"}
# RULER's synthetic.yaml; the "noise" haystack is spelled "repeat" in the paper's copy.
TASKS: dict[str, dict[str, Any]] = {
    "niah_single_1": _task("niah", type_haystack="noise", **_WORDS_NUMBERS),
    "niah_single_2": _task("niah", type_haystack="essay", **_WORDS_NUMBERS),
    "niah_single_3": _task("niah", type_haystack="essay", type_needle_k="words", type_needle_v="uuids"),
    "niah_multikey_1": _task("niah", type_haystack="essay", num_needle_k=4, **_WORDS_NUMBERS),
    "niah_multikey_2": _task("niah", type_haystack="needle", **_WORDS_NUMBERS),
    "niah_multikey_3": _task("niah", type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids"),
    "niah_multivalue": _task("niah", type_haystack="essay", num_needle_v=4, **_WORDS_NUMBERS),
    "niah_multiquery": _task("niah", type_haystack="essay", num_needle_q=4, **_WORDS_NUMBERS),
    "vt": _task("variable_tracking", num_chains=1, num_hops=4),
    "cwe": _task("common_words_extraction", freq_cw=30, freq_ucw=3, num_cw=10),
    "fwe": _task("freq_words_extraction", alpha=2.0),
    "qa_1": _task("qa", dataset="squad"),
    "qa_2": _task("qa", dataset="hotpotqa"),
}

SETTINGS = ("tasks", "lengths", "num_samples", "seed", "template_set", "template", "max_new_tokens", "data_dir",
            "cache_dir")
CACHE_VERSION = 1  # bump when generated prompts change, so that stale caches are not reused
_PROBE = "RULER cache key: The grass is green.\nVAR ABCDE = 12345 8715a103-43da-4043 diligent-fox 1234567"


def settings(bench_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validated settings from ``bench_cfg`` (DictConfig or dict with every key of ``SETTINGS``;
    their values live in ``conf/bench/ruler.yaml``)."""
    missing = [key for key in SETTINGS if bench_cfg.get(key) is None]
    if missing:
        raise KeyError(f"RULER settings missing {missing}: start from conf/bench/ruler.yaml")
    cfg = {key: bench_cfg.get(key) for key in SETTINGS}
    cfg["tasks"] = [str(t) for t in cfg["tasks"]]
    unknown = [t for t in cfg["tasks"] if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown RULER tasks {unknown}; choose from {list(TASKS)}")
    cfg["lengths"] = [int(n) for n in cfg["lengths"]]
    if not cfg["lengths"] or min(cfg["lengths"]) < 256:
        raise ValueError(f"RULER lengths must be a non-empty list of ints >= 256, got {cfg['lengths']}")
    for key in ("num_samples", "seed"):
        cfg[key] = int(cfg[key])
    if cfg["num_samples"] < 1:
        raise ValueError(f"num_samples must be >= 1, got {cfg['num_samples']}")
    policy = cfg["max_new_tokens"]
    if policy != "per_task" and not (isinstance(policy, int) and not isinstance(policy, bool) and policy > 0):
        raise ValueError(f"max_new_tokens must be 'per_task' or a positive int, got {policy!r}")
    cfg["template"], cfg["template_set"] = str(cfg["template"]), str(cfg["template_set"])
    if cfg["template_set"] not in TEMPLATE_SETS:
        raise ValueError(f"unknown RULER template_set {cfg['template_set']!r}; choose one of {TEMPLATE_SETS}")
    cfg["data_dir"], cfg["cache_dir"] = Path(cfg["data_dir"]), Path(cfg["cache_dir"])
    return cfg


class TaskUnavailable(RuntimeError):
    """A task cannot be generated here (qa without its data file) and has no cached copy."""


def tokenizer_id(tokenizer: Any) -> str:
    """Cache key of a tokenizer: its (base) name plus a digest of its encoding and chat template."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    path = Path(name)
    name = path.name if path.is_absolute() or path.exists() else name.replace("/", "--")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    fingerprint = [tokenizer.encode(_PROBE, add_special_tokens=True), getattr(tokenizer, "chat_template", None)]
    digest = hashlib.sha256(json.dumps(fingerprint, default=str).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def cache_file(cfg: Mapping[str, Any], tokenizer: Any, task: str, length: int) -> Path:
    """``<cache_dir>/v1/<tokenizer>/<template_set>/<template>/<length>/<task>-seed<seed>-n<num_samples>.jsonl``."""
    return (Path(cfg["cache_dir"]) / f"v{CACHE_VERSION}" / tokenizer_id(tokenizer) / cfg["template_set"]
            / cfg["template"] / str(length) / f"{task}-seed{cfg['seed']}-n{cfg['num_samples']}.jsonl")


def task_plan(task: str, length: int, fmt: PromptFormat, cfg: Mapping[str, Any],
              rng: random.Random) -> sizing.Plan:
    """Sizing plan of ``task`` at ``length``, drawing from ``rng``."""
    spec, seed = TASKS[task], cfg["seed"]
    family, args = spec["family"], dict(spec["args"])
    if family == "niah":
        return niah.plan(rng, length, seed, **args)
    if family == "variable_tracking":
        return variable_tracking.plan(rng, fmt, template_set=cfg["template_set"], **args)
    if family == "common_words_extraction":
        return words.plan_cwe(rng, length, seed, template_set=cfg["template_set"], **args)
    if family == "freq_words_extraction":
        return words.plan_fwe(rng, length, seed, **args)
    return qa.plan(rng, seed, cfg["num_samples"], data_dir=Path(cfg["data_dir"]), **args)


def generate_task(task: str, length: int, fmt: PromptFormat, cfg: Mapping[str, Any]) -> list[sizing.Sample]:
    """Generate ``num_samples`` samples of ``task`` at ``length`` (no cache), from ``Random(seed)``."""
    try:
        plan = task_plan(task, length, fmt, cfg, random.Random(cfg["seed"]))
    except sizing.TooShort as err:     # vt's in-context example has its own, fixed budget
        raise ValueError(f"RULER task {task}: its in-context example does not fit RULER's fixed "
                         f"{variable_tracking.ICL_LENGTH}-token budget with this tokenizer ({err}), whatever the "
                         f"length; drop {task} from bench.tasks") from err
    ttg = FAMILIES[TASKS[task]["family"]]["tokens_to_generate"]
    try:
        samples = sizing.generate(plan, fmt, length - ttg, cfg["num_samples"])
    except sizing.TooShort as err:
        raise ValueError(
            f"RULER task {task} does not fit in length {length}: its smallest prompt has {err.needed} tokens "
            f"(+ {ttg} to generate), so it needs a length of at least {err.needed + ttg} with this tokenizer "
            f"and template; raise bench.lengths or drop {task} from bench.tasks ({err})") from err
    if plan.maximum is not None and any(s.size == plan.maximum for s in samples):
        log.warning("RULER %s at %d: the haystack is used in full (%d) and prompts stay below the target "
                    "length (RULER's mid-2024 cap)", task, length, plan.maximum)
    return samples


def _read_cache(path: Path, num_samples: int) -> list[dict[str, Any]] | None:
    """Rows of a complete cache file, or ``None`` (missing or damaged: regenerate)."""
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as err:
        log.warning("RULER cache %s is damaged (%s); regenerating", path, err)
        return None
    return rows if len(rows) == num_samples else None


def _write_cache(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as jsonl atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def task_rows(task: str, length: int, fmt: PromptFormat, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cached or freshly generated rows of one (task, length); ``TaskUnavailable`` if neither.

    Rows follow RULER's jsonl (``index``, ``input`` incl. answer prefix, ``outputs``, ``length`` =
    prompt tokens + tokens_to_generate) plus ``tokens``, ``size`` (haystack) and ``meta``.
    """
    path = cache_file(cfg, fmt.tokenizer, task, length)
    rows = _read_cache(path, cfg["num_samples"])
    if rows is not None:
        return rows
    spec = TASKS[task]
    if spec["family"] == "qa":
        reason = qa.missing_reason(spec["args"]["dataset"], Path(cfg["data_dir"]))
        if reason:
            raise TaskUnavailable(reason)
    ttg = FAMILIES[spec["family"]]["tokens_to_generate"]
    rows = [{"index": s.index, "input": s.prompt, "outputs": s.answers, "length": s.tokens + ttg,
             "tokens": s.tokens, "size": s.size, "meta": s.meta}
            for s in generate_task(task, length, fmt, cfg)]
    _write_cache(path, rows)
    return rows


def load_examples(bench_cfg: Mapping[str, Any], tokenizer: Any) -> list[Example]:
    """RULER examples for every selected length and task (cached; generated on a cache miss).

    Args:
        bench_cfg: settings (see the module docstring).
        tokenizer: the model's tokenizer (``encode``; ``apply_chat_template`` for ``chat``).
    """
    cfg = settings(bench_cfg)
    fmt = PromptFormat(tokenizer, cfg["template"])
    examples, skipped = [], {}
    for length in cfg["lengths"]:
        for task in cfg["tasks"]:
            try:
                rows = task_rows(task, length, fmt, cfg)
            except TaskUnavailable as err:
                skipped[task] = str(err)
                continue
            family = TASKS[task]["family"]
            ttg = FAMILIES[family]["tokens_to_generate"]
            budget = ttg if cfg["max_new_tokens"] == "per_task" else cfg["max_new_tokens"]
            examples += [Example(
                id=f"{task}/{length}/{row['index']}", task=task, length=length, prompt=row["input"],
                max_new_tokens=budget, targets=list(row["outputs"]), metric=TASKS[task]["metric"],
                add_special_tokens=fmt.add_special_tokens,
                meta={**row["meta"], "tokens": row["tokens"], "tokens_to_generate": ttg,
                      "haystack_size": row["size"], "template": cfg["template"],
                      "template_set": cfg["template_set"], "seed": cfg["seed"]})
                for row in rows]
    if skipped:
        ran = len(cfg["tasks"]) - len(skipped)
        log.warning("RULER: unavailable tasks %s (%s). The other %d tasks run: report their average as "
                    "RULER-%d, not RULER.", ", ".join(skipped), "; ".join(skipped.values()), ran, ran)
    return examples


def load_tokenizer(model_cfg: Mapping[str, Any]) -> Any:
    """The tokenizer of a ``conf/model`` config without loading the model.

    ``gguf``: the SmolLM2 folder of ``methods.models.smollm2_folder()``; ``gguf-parts``: the folder
    of ``methods.models.split_gguf_folder``; ``hf``: ``path``; ``random``: ``tokenizer_from``
    (``smollm2`` or a hub id/folder), required.
    """
    from transformers import AutoTokenizer

    from methods.models import smollm2_folder, split_gguf_folder

    kind, name = model_cfg.get("kind"), model_cfg.get("name")
    if kind == "gguf":
        return AutoTokenizer.from_pretrained(smollm2_folder())
    if kind == "gguf-parts":
        return AutoTokenizer.from_pretrained(split_gguf_folder(model_cfg))
    if kind == "hf":
        if not model_cfg.get("path"):
            raise KeyError(f"model config {name!r} (kind hf) needs `path`")
        return AutoTokenizer.from_pretrained(str(model_cfg["path"]))
    if kind == "random":
        source = model_cfg.get("tokenizer_from")
        if source is None:
            from benchmarks.tasks.char_tokenizer import no_tokenizer_message

            vocab = (model_cfg.get("random_config") or {}).get("vocab_size")
            raise ValueError(no_tokenizer_message(str(name), vocab) + " (needed to generate RULER prompts)")
        return AutoTokenizer.from_pretrained(smollm2_folder() if source == "smollm2" else str(source))
    raise ValueError(f"unknown model kind {kind!r}; choose gguf, gguf-parts, hf or random")


register_benchmark("ruler", runner="generate", load_examples=load_examples)
