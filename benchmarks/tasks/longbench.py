"""LongBench v1 (THUDM/LongBench, MIT): the 16 English and code datasets of the AnchorAttention table.

Ported from the official ``LongBench/pred.py`` and ``eval.py`` with ``config/dataset2prompt.json``
and ``config/dataset2maxlen.json``; data sources: ``docs/data.md``. Two modes:

* ``official`` (default), as ``pred.py``: ``prompt = dataset2prompt[name].format(**row)``; if the
  prompt has more than ``max_length`` tokens (counted with the tokenizer's special tokens), keep the
  first and last ``int(max_length/2)`` tokens, each half decoded with ``skip_special_tokens=True``;
  then the model's chat template, except for trec, triviaqa, samsum, lsht, lcc and repobench-p
  (raw prompt: the tokenizer adds its special tokens, as ``pred.py`` does). A tokenizer without a
  chat template gets the raw prompt (``pred.py::build_chat`` leaves unknown models' prompts as is).
  samsum stops at the first newline (``meta["stop_at_newline"]``).
* ``anchorattention``, as AnchorAttention's ``pred_longbench_v1.py`` / ``eval.py`` /
  ``my_utils/get_longbench.py``: the raw prompt (filled with ``str.replace``) with no truncation
  and no template for every dataset, BOS added by the tokenizer, no samsum
  newline stop, and predictions cut at ``CUT_MARKERS`` (then stripped) before scoring.

Scoring as ``eval.py``: trec, triviaqa, samsum (and lsht) keep the first line of the prediction
(``pred.lstrip('\\n').split('\\n')[0]``); the score is the max of the metric over the answers.

Data: ``<data_dir>/<name>.jsonl`` in the official schema (input, context, answers, length, dataset,
language, all_classes, _id; the files of ``data.zip`` in the HF dataset THUDM/LongBench), or the hub
with ``source: hub``. ``Example.length`` is the token budget ``max_length`` in official mode and 0
(untruncated) in anchorattention mode, so that tables group by dataset; the row's word count is
kept in ``meta["length_words"]``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.tasks.example import Example
from benchmarks.registry import register_benchmark
from benchmarks.tasks.metrics import METRICS

MODES = ("official", "anchorattention")
HUB_ID = "THUDM/LongBench"


@dataclass(frozen=True)
class Dataset:
    """One LongBench dataset: its ``dataset2prompt`` template, ``dataset2maxlen`` and metric name."""

    prompt: str
    max_new_tokens: int
    metric: str


_QA_MULTI = ("Answer the question based on the given passages. Only give me the answer and do not output any other "
             "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given "
             "passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:")
_QASPER_RULES = ("as concisely as you can, using a single phrase or sentence if possible. If the question cannot be "
                 "answered based on the information in the article, write \"unanswerable\". If the question is a "
                 "yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.")

# Verbatim from config/dataset2prompt.json (the typo "asconcisely" is upstream's), dataset2maxlen.json
# and eval.py's dataset2metric.
DATASETS: dict[str, Dataset] = {
    "narrativeqa": Dataset(
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:", 128, "qa_f1"),
    "qasper": Dataset(
        "You are given a scientific article and a question. Answer the question " + _QASPER_RULES
        + "\n\nArticle: {context}\n\n Answer the question based on the above article " + _QASPER_RULES
        + "\n\nQuestion: {input}\n\nAnswer:", 128, "qa_f1"),
    "multifieldqa_en": Dataset(
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the "
        "above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64, "qa_f1"),
    "hotpotqa": Dataset(_QA_MULTI, 32, "qa_f1"),
    "2wikimqa": Dataset(_QA_MULTI, 32, "qa_f1"),
    "musique": Dataset(_QA_MULTI, 32, "qa_f1"),
    "gov_report": Dataset(
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:", 512, "rouge_l"),
    "qmsum": Dataset(
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:", 512, "rouge_l"),
    "multi_news": Dataset(
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, "
        "write a one-page summary of all the news.\n\nSummary:", 512, "rouge_l"),
    "trec": Dataset(
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        64, "classification"),
    "triviaqa": Dataset(
        "Answer the question based on the given passage. Only give me the answer and do not output any other words. "
        "The following are some examples.\n\n{context}\n\n{input}", 32, "qa_f1"),
    "samsum": Dataset(
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        128, "rouge_l"),
    "passage_count": Dataset(
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
        "count of unique paragraphs after removing duplicates. The output format should only contain the number, "
        "such as 1, 2, 3, and so on.\n\nThe final answer is: ", 32, "count"),
    "passage_retrieval_en": Dataset(
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of "
        "the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", "
        "etc.\n\nThe answer is: ", 32, "retrieval"),
    "lcc": Dataset("Please complete the code given below. \n{context}Next line of code:\n", 64, "code_sim"),
    "repobench-p": Dataset("Please complete the code given below. \n{context}{input}Next line of code:\n",
                           64, "code_sim"),
}

# pred.py: "chat models are better off without build prompts on these tasks" (lsht is Chinese, not in DATASETS).
NO_CHAT_TEMPLATE = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
# eval.py: these keep only the first line of the prediction.
FIRST_LINE = frozenset({"trec", "triviaqa", "samsum", "lsht"})
# AnchorAttention eval.py::scorer cuts every prediction at these, in this order, then strips.
CUT_MARKERS = (".assistant", "\n\nQuestion", "</s>", "(Document", "\n\nAnswer", "(Passage")


def _data_path(bench_cfg: Mapping[str, Any], name: str) -> Path:
    return Path(str(bench_cfg.get("data_dir", "data/longbench"))) / f"{name}.jsonl"


def _read_local(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` rows (all if None) of a jsonl file; ``ValueError`` naming the file and
    line of a record that is not a JSON object."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                                 "expected one LongBench record per line (the official data.zip files)") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_hub(name: str, limit: int | None) -> list[dict[str, Any]]:
    """``datasets.load_dataset("THUDM/LongBench", name, split="test")``, as ``pred.py`` (network)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("bench.source=hub needs the `datasets` package: pip install -e '.[data]'") from err
    data = datasets.load_dataset(HUB_ID, name, split="test")
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return [dict(row) for row in data]


def _check_config(bench_cfg: Mapping[str, Any]) -> tuple[list[str], str, str]:
    """The requested dataset names, the mode and the source, validated."""
    names = list(bench_cfg.get("datasets") or DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown LongBench datasets {unknown}; available: {list(DATASETS)}")
    mode = str(bench_cfg.get("mode", "official"))
    if mode not in MODES:
        raise ValueError(f"bench.mode must be one of {MODES}, got {mode!r}")
    source = str(bench_cfg.get("source", "local"))
    if source not in ("local", "hub"):
        raise ValueError(f"bench.source must be local or hub, got {source!r}")
    if source == "local":
        missing = [str(_data_path(bench_cfg, n)) for n in names if not _data_path(bench_cfg, n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"LongBench data missing: {missing}. Expected the official jsonl files (from data.zip of the HF "
                f"dataset {HUB_ID}, schema: input, context, answers, length, dataset, language, all_classes, _id) "
                f"in bench.data_dir={bench_cfg.get('data_dir', 'data/longbench')!r}; or set bench.source=hub "
                f"(needs the `datasets` package and network), or restrict bench.datasets=[...] to those present "
                f"(sources: docs/data.md).")
    return names, mode, source


def truncate_middle(prompt: str, tokenizer, max_length: int) -> tuple[str, bool]:
    """``pred.py``: if ``prompt`` has more than ``max_length`` tokens (special tokens included), keep
    the first and last ``int(max_length/2)``, each decoded with ``skip_special_tokens=True``.
    Returns the prompt and whether it was truncated."""
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= max_length:
        return prompt, False
    half = int(max_length / 2)
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[-half:], skip_special_tokens=True)), True


def build_prompt(name: str, row: Mapping[str, Any], tokenizer, max_length: int, mode: str) -> tuple[str, bool, dict]:
    """The model input for one row: ``(prompt, add_special_tokens, info)`` in the given mode.

    ``info``: ``truncated`` and ``chat_template`` (whether each was applied).
    """
    template = DATASETS[name].prompt
    if mode == "anchorattention":
        # get_longbench.py fills with str.replace ({input} inside the context is replaced too).
        prompt = template.replace("{context}", row["context"]).replace("{input}", row["input"])
        return prompt, True, {"truncated": False, "chat_template": False}
    prompt = template.format(**row)
    prompt, truncated = truncate_middle(prompt, tokenizer, max_length)
    if name in NO_CHAT_TEMPLATE or not getattr(tokenizer, "chat_template", None):
        return prompt, True, {"truncated": truncated, "chat_template": False}
    # The template's text already holds BOS/headers: the runner must not add special tokens again.
    templated = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                              add_generation_prompt=True, tokenize=False)
    return templated, False, {"truncated": truncated, "chat_template": True}


def load_examples(bench_cfg: Mapping[str, Any], tokenizer) -> list[Example]:
    """One ``Example`` per row of every dataset of ``bench_cfg.datasets`` (first ``limit`` rows each).

    ``bench_cfg``: ``datasets``, ``data_dir``, ``source`` (local | hub), ``max_length`` (prompt token
    budget, official mode), ``mode`` (official | anchorattention), ``limit`` (null: all rows).
    """
    names, mode, source = _check_config(bench_cfg)
    limit = bench_cfg.get("limit")
    limit = None if limit is None else int(limit)
    max_length = int(bench_cfg.get("max_length", 127500))
    examples: list[Example] = []
    for name in names:
        rows = _read_hub(name, limit) if source == "hub" else _read_local(_data_path(bench_cfg, name), limit)
        spec = DATASETS[name]
        for row in rows:
            prompt, add_special, info = build_prompt(name, row, tokenizer, max_length, mode)
            meta = {"mode": mode, "all_classes": row.get("all_classes"),
                    "length_words": row.get("length"), **info}
            if name == "samsum" and mode == "official":
                meta["stop_at_newline"] = True   # pred.py: eos_token_id=[eos, id of "\n"]
            examples.append(Example(
                id=f"{name}/{row['_id']}", task=name, length=max_length if mode == "official" else 0,
                prompt=prompt, max_new_tokens=spec.max_new_tokens, targets=list(row["answers"]),
                metric=spec.metric, add_special_tokens=add_special, meta=meta))
    return examples


def postprocess(example: Example, prediction: str) -> str:
    """The prediction as ``eval.py`` scores it: in anchorattention mode cut at ``CUT_MARKERS`` and
    strip (AnchorAttention ``eval.py``); then the first line for trec/triviaqa/samsum/lsht."""
    if example.meta.get("mode") == "anchorattention":
        for marker in CUT_MARKERS:
            prediction = prediction.split(marker)[0]
        prediction = prediction.strip()
    if example.task in FIRST_LINE:
        prediction = prediction.lstrip("\n").split("\n")[0]
    return prediction


def score(example: Example, prediction: str) -> float:
    """``eval.py``: the max over ``example.targets`` of the dataset's metric, after ``postprocess``."""
    return METRICS[example.metric](postprocess(example, prediction), example.targets, example.meta)


register_benchmark("longbench", runner="generate", load_examples=load_examples, score=score)
