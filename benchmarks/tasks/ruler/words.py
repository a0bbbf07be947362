"""RULER aggregation tasks: common words (cwe) and frequent coded words (fwe), mid-2024 version.

cwe (``common_words_extraction.py``):
  * vocabulary ``sorted(set(nouns + adjs + verbs))`` from wonderwords 2.2.0 (8169 words),
    shuffled with ``random.Random(seed)``; a list is ``random.sample(words, size)`` whose first
    ``num_cw`` words repeat ``freq_cw`` times and the rest ``freq_ucw`` times (6/1 below 4096
    tokens), seed-shuffled and rendered ``"1. w 2. w ..."``;
  * one ICL example (40 words, 10/3 repeats; 20 words, 3/1 below 4096) with its answers written
    right after the answer prefix, then ``"\\n"`` and the task; answers: the ``num_cw`` common words;
  * ``incremental`` 10, capped at the vocabulary size (upstream HEAD falls back to
    ``english_words.json`` at 128K instead).

fwe (``freq_words_extraction.py``):
  * ``length // 50`` random 6-letter coded words, sorted, seed-shuffled, ``vocab[0] = '...'``;
    word ``k`` appears ``int(size * k**-alpha / zeta(alpha))`` times; seed-shuffled, space-joined;
    answers ``vocab[1:4]``; one vocabulary per sample, kept while the sample shrinks;
  * sizing starts at ``length // 6`` words and moves by ``length // 32``, counting no answers.

``template_set`` (``templates.family``) picks cwe's template and answer prefix: the AnchorAttention
copy's (default) or official RULER 2024's; the list and its ICL example are built the same way.

Deviations: fwe's budget is ``length - tokens_to_generate`` (upstream HEAD; the paper's copy
used ``length``, so its prompts could overrun by 50 tokens); in ``chat`` mode the ICL examples
carry no model template (upstream repeated the full model template inside the example).
"""
from __future__ import annotations

import random
import string
from functools import lru_cache

import numpy as np

from benchmarks.tasks.ruler.niah import wonderwords_list
from benchmarks.tasks.ruler.sizing import Plan
from benchmarks.tasks.ruler.templates import FAMILIES, Draft, family

CWE_STEP = 10
CODED_WORD_LEN = 6


@lru_cache(maxsize=4)
def cwe_vocabulary(seed: int) -> tuple[str, ...]:
    """wonderwords 2.2.0 nouns + adjectives + verbs, deduplicated, sorted, seed-shuffled."""
    words = sorted(set(wonderwords_list("nounlist.txt") + wonderwords_list("adjectivelist.txt")
                       + wonderwords_list("verblist.txt")))
    random.Random(seed).shuffle(words)
    return tuple(words)


def numbered(words: list[str]) -> str:
    """``"1. a 2. b ..."``."""
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def word_list(rng: random.Random, seed: int, num_words: int, common_repeats: int, uncommon_repeats: int,
              common_nums: int) -> tuple[str, list[str]]:
    """RULER's ``get_example``: the numbered list and its ``common_nums`` common words."""
    full = rng.sample(cwe_vocabulary(seed), num_words)
    common, uncommon = full[:common_nums], full[common_nums:]
    words = common * common_repeats + uncommon * uncommon_repeats
    random.Random(seed).shuffle(words)
    return numbered(words), common


def build_cwe(rng: random.Random, size: int, *, length: int, seed: int, freq_cw: int, freq_ucw: int,
              num_cw: int, template_set: str) -> Draft:
    """One cwe sample of ``size`` distinct words, ICL example first."""
    if length < 4096:
        example, example_answers = word_list(rng, seed, 20, 3, 1, num_cw)
        context, answers = word_list(rng, seed, size, 6, 1, num_cw)
    else:
        example, example_answers = word_list(rng, seed, 40, 10, 3, num_cw)
        context, answers = word_list(rng, seed, size, freq_cw, freq_ucw, num_cw)
    spec = family("common_words_extraction", template_set)
    icl = spec["template"].format(context=example, query="") + spec["answer_prefix"] + numbered(example_answers)
    return Draft(body=icl + "\n" + spec["template"].format(context=context, query=""),
                 answer_prefix=spec["answer_prefix"], answers=answers, meta={})


def plan_cwe(rng: random.Random, length: int, seed: int, *, template_set: str, freq_cw: int = 30,
             freq_ucw: int = 3, num_cw: int = 10) -> Plan:
    """Sizing plan of cwe: distinct words grow by 10 up to the vocabulary size."""
    args = {"length": length, "seed": seed, "freq_cw": freq_cw, "freq_ucw": freq_ucw, "num_cw": num_cw,
            "template_set": template_set}
    return Plan(make=lambda size, _i: build_cwe(rng, size, **args), start=CWE_STEP, step=CWE_STEP,
                minimum=max(CWE_STEP, num_cw), maximum=len(cwe_vocabulary(seed)))


def coded_vocabulary(rng: random.Random, seed: int, vocab_size: int) -> list[str]:
    """``vocab_size`` distinct random 6-letter words, sorted, seed-shuffled, first one ``'...'``."""
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=CODED_WORD_LEN)) for _ in range(vocab_size)]
    while len(set(vocab)) < vocab_size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=CODED_WORD_LEN)))
    vocab = sorted(set(vocab))
    random.Random(seed).shuffle(vocab)
    vocab[0] = "..."  # the top-ranked word is noise
    return vocab


def build_fwe(vocab: list[str], size: int, *, seed: int, alpha: float) -> Draft:
    """One fwe sample of about ``size`` words drawn from ``vocab`` with zeta(alpha) frequencies."""
    from scipy.special import zeta

    ranks = np.arange(1, len(vocab) + 1)
    counts = (size * (ranks ** -alpha) / zeta(alpha)).astype(int)
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(seed).shuffle(words)
    spec = FAMILIES["freq_words_extraction"]
    return Draft(body=spec["template"].format(context=" ".join(words), query=""),
                 answer_prefix=spec["answer_prefix"], answers=vocab[1:4], meta={})


def plan_fwe(rng: random.Random, length: int, seed: int, *, alpha: float = 2.0) -> Plan:
    """Sizing plan of fwe: start at ``length // 6`` words, move by ``length // 32``."""
    vocab_size = length // 50
    if vocab_size < 4:
        raise ValueError(f"fwe needs length >= 200 (a vocabulary of length // 50 >= 4 words), got {length}")
    vocabs: dict[int, list[str]] = {}

    def make(size: int, index: int) -> Draft:
        if index not in vocabs:
            vocabs[index] = coded_vocabulary(rng, seed, vocab_size)
        return build_fwe(vocabs[index], size, seed=seed, alpha=float(alpha))

    step = length // 32
    return Plan(make=make, start=length // CODED_WORD_LEN, step=step, minimum=step, count_answers=False)
