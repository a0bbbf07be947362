"""RULER QA tasks (``scripts/data/synthetic/qa.py``, mid-2024 version): qa_1 SQuAD, qa_2 HotpotQA.

Data, read from ``<data_dir>/squad.json`` (the official SQuAD 2.0 ``dev-v2.0.json``) and
``<data_dir>/hotpotqa.json`` (the official ``hotpot_dev_distractor_v1.json``), as RULER does:
  * SQuAD: documents ``sorted(set(paragraph contexts))``; every answerable question (file order)
    with all its answer texts, its own paragraph as gold and the other paragraphs of its article
    as ``more_context``;
  * HotpotQA: documents ``sorted(set(f"{title}\\n{''.join(sentences)}"))``; every question with
    ``[answer]`` and its (usually 10) context paragraphs as gold.

A sample ``i`` asks question ``i`` (RULER's ``index + pre_samples`` with one chunk); its documents
are the gold ones, then same-article ones (SQuAD), then random others until ``size``, shuffled with
``random.Random(seed)`` and rendered ``"Document {i}:\\n{doc}"`` joined by ``"\\n\\n"``. The search
probes question 0; ``incremental`` 10 documents, capped at the corpus size.

Deviation: when ``size`` is below the number of gold documents they are all kept (upstream
raised inside its retry loop and never stopped).
"""
from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmarks.tasks.ruler.sizing import Plan
from benchmarks.tasks.ruler.templates import FAMILIES, Draft

FILES = {"squad": "squad.json", "hotpotqa": "hotpotqa.json"}
SOURCES = {
    "squad": "SQuAD 2.0 dev set (dev-v2.0.json from https://rajpurkar.github.io/SQuAD-explorer/)",
    "hotpotqa": "HotpotQA dev distractor set (hotpot_dev_distractor_v1.json from https://hotpotqa.github.io/)",
}
STEP = 10


def missing_reason(dataset: str, data_dir: Path) -> str | None:
    """``None`` if the dataset file exists, else a message saying what to put where."""
    path = data_dir / FILES[dataset]
    if path.is_file():
        return None
    return f"{path} not found: save the {SOURCES[dataset]} there as {FILES[dataset]}"


def read_squad(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """RULER's ``read_squad`` on the parsed ``dev-v2.0.json``: ``(qas, docs)``."""
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    doc_index = {c: i for i, c in enumerate(docs)}
    qas = []
    for article in data["data"]:
        article_docs = [doc_index[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            own = doc_index[p["context"]]
            for qa in p["qas"]:
                if not qa["is_impossible"]:
                    qas.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                "context": [own], "more_context": [i for i in article_docs if i != own]})
    return qas, docs


def read_hotpotqa(data: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """RULER's ``read_hotpotqa`` on the parsed ``hotpot_dev_distractor_v1.json``: ``(qas, docs)``."""
    docs = sorted({f"{title}\n{''.join(sents)}" for d in data for title, sents in d["context"]})
    doc_index = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [doc_index[f"{title}\n{''.join(sents)}"] for title, sents in d["context"]]}
           for d in data]
    return qas, docs


@lru_cache(maxsize=2)
def load(dataset: str, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Questions and documents of ``dataset`` read from ``path`` (cached per file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return read_squad(data) if dataset == "squad" else read_hotpotqa(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not in the official {SOURCES[dataset]} format: {err!r}") from err


def build(rng: random.Random, size: int, qa: dict[str, Any], docs: list[str], *, seed: int) -> Draft:
    """One qa sample: question ``qa`` among ``size`` documents."""
    gold, more = qa["context"], qa.get("more_context", [])
    if size < len(docs):
        if size - len(gold) > len(more):
            taken = set(gold + more)
            others = [i for i in range(len(docs)) if i not in taken]
            chosen = gold + more + rng.sample(others, size - len(gold) - len(more))
        else:
            chosen = gold + rng.sample(more, max(0, size - len(gold)))
        picked = [docs[i] for i in chosen]
    else:
        picked = list(docs)
    random.Random(seed).shuffle(picked)
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(picked))
    family = FAMILIES["qa"]
    return Draft(body=family["template"].format(context=context, query=qa["query"]),
                 answer_prefix=family["answer_prefix"], answers=list(qa["outputs"]),
                 meta={"query": qa["query"], "num_docs": len(picked)})


def plan(rng: random.Random, seed: int, num_samples: int, *, dataset: str, data_dir: Path) -> Plan:
    """Sizing plan of qa_1/qa_2: documents grow by 10 up to the corpus size."""
    if dataset not in FILES:
        raise ValueError(f"unknown qa dataset {dataset!r}; choose one of {sorted(FILES)}")
    reason = missing_reason(dataset, data_dir)
    if reason:
        raise FileNotFoundError(reason)
    qas, docs = load(dataset, (data_dir / FILES[dataset]).resolve())
    if num_samples > len(qas):
        raise ValueError(f"{dataset} has {len(qas)} usable questions, fewer than num_samples={num_samples}")
    return Plan(make=lambda size, index: build(rng, size, qas[index], docs, seed=seed), start=STEP, step=STEP,
                minimum=min(STEP, len(docs)), maximum=len(docs))
