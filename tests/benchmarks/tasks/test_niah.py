"""NIAH loader: grid, token budget, needle placement, determinism (fake and real tokenizer)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from benchmarks.registry import get_benchmark
from benchmarks.tasks import niah

PREFIX, SUFFIX = niah.TEMPLATE.split("{context}")
SUFFIX_START = SUFFIX.split("{question}")[0]

BASE = yaml.safe_load((Path(__file__).resolve().parents[3] / "conf/bench/niah.yaml").read_text())


class WordTokenizer:
    """Lossless toy tokenizer: whitespace runs, words and punctuation marks are tokens."""

    BOS = "<s>"

    def __init__(self):
        self.ids: dict[str, int] = {self.BOS: 0}
        self.pieces = [self.BOS]

    def encode(self, text, add_special_tokens=False):
        ids = [0] if add_special_tokens else []
        for piece in re.findall(r"\s+|\w+|[^\w\s]", text):
            if piece not in self.ids:
                self.ids[piece] = len(self.pieces)
                self.pieces.append(piece)
            ids.append(self.ids[piece])
        return ids

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return f"<user>{messages[0]['content']}</user><assistant>"


@pytest.fixture
def essays_dir(tmp_path):
    """Five small essays (~460 toy tokens each): a 3000-token haystack repeats them."""
    folder = tmp_path / "essays"
    folder.mkdir()
    for e in range(5):
        sentences = [f"Essay {e} line {j} says that topic {j * 7 % 13} matters a lot."
                     for j in range(20)]
        (folder / f"essay{e}.txt").write_text(" ".join(sentences) + "\n")
    return folder


def context_of(example) -> str:
    """The haystack-with-needle part of a (non-chat) prompt."""
    assert example.prompt.startswith(PREFIX)
    return example.prompt[len(PREFIX):example.prompt.rindex(SUFFIX_START)]


def needle_of(example) -> str:
    return niah.NEEDLE.format(city=example.meta["city"], number=example.targets[0])


def check_examples(examples, tok, lengths, depths, rounds):
    """Properties every NIAH example must have, whatever the tokenizer."""
    def n_tokens(text, special):
        return len(tok(text, add_special_tokens=special)["input_ids"])

    assert [(e.length, e.meta["depth"], e.meta["round"]) for e in examples] == [
        (n, d, r) for r in range(rounds) for n in lengths for d in depths]
    assert len({e.id for e in examples}) == len(examples)
    for e in examples:
        context, needle = context_of(e), needle_of(e)
        assert e.task == "niah" and e.metric == "niah_number" and e.max_new_tokens == 32
        assert e.add_special_tokens and e.meta["city"] in niah.CITIES
        assert re.fullmatch(r"\d{7}", e.targets[0])
        assert e.prompt.count(needle) == 1 and e.prompt.count(e.targets[0]) == 1
        assert n_tokens(e.prompt, True) + e.max_new_tokens <= e.length
        assert n_tokens(context, False) <= e.length - 200
        at = context.index(needle)
        depth = e.meta["depth"]
        if depth == 100:
            assert context.endswith(needle)
        elif at > 0:
            assert "." in context[max(0, at - 4):at]  # starts a sentence
        assert abs(at / len(context) - depth / 100) < 0.05


def test_grid_matches_paper():
    lengths, depths = niah.grid(16000, 128000, 9, 9)
    assert lengths == [16000, 30000, 44000, 58000, 72000, 86000, 100000, 114000, 128000]
    assert depths == [0, 12, 25, 38, 50, 62, 75, 88, 100]
    assert niah.grid(1000, 8000, 8, 9)[0] == [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
    with pytest.raises(ValueError, match="min_length"):
        niah.grid(8000, 1000, 8, 9)


def test_default_config_file(repo_root):
    conf = yaml.safe_load((repo_root / "conf" / "bench" / "niah.yaml").read_text())
    assert set(niah.SETTINGS) <= set(conf)
    assert conf["name"] == "niah" and get_benchmark("niah").runner == "generate"
    with pytest.raises(KeyError, match="rounds"):
        niah.load_examples({k: v for k, v in conf.items() if k != "rounds"}, WordTokenizer())


def test_fake_tokenizer_grid(essays_dir):
    tok = WordTokenizer()
    cfg = {**BASE, "min_length": 1000, "max_length": 3000, "n_lengths": 3, "n_depths": 5, "rounds": 2,
           "essays_dir": str(essays_dir)}
    examples = niah.load_examples(cfg, tok)
    check_examples(examples, tok, [1000, 2000, 3000],
                   [0, 25, 50, 75, 100], rounds=2)
    by_round = [context_of(e) for e in examples if e.length == 3000 and e.meta["depth"] == 0]
    assert by_round[0].startswith(niah.NEEDLE.split("{")[0])  # depth 0: needle first
    assert "Essay 0 line 0 " in by_round[0][:200] and "Essay 1 line 0 " in by_round[1][:200]  # rotation
    assert by_round[0].count("Essay 0 line 0 ") == 2  # essays repeated when too short
    assert niah.load_examples(cfg, WordTokenizer()) == examples  # deterministic
    reseeded = niah.load_examples(dict(cfg, seed=7), WordTokenizer())
    assert [e.targets for e in reseeded] != [e.targets for e in examples]


def test_chat_template_and_errors(essays_dir):
    cfg = {**BASE, "min_length": 1000, "max_length": 1000, "n_lengths": 1, "n_depths": 2,
           "essays_dir": str(essays_dir), "chat_template": True}
    examples = niah.load_examples(cfg, WordTokenizer())
    assert all(e.prompt.startswith("<user>" + PREFIX) and e.prompt.endswith("</user><assistant>")
               and not e.add_special_tokens for e in examples)
    with pytest.raises(ValueError, match="no room"):
        niah.load_examples(dict(cfg, min_length=210, max_length=210), WordTokenizer())
    with pytest.raises(FileNotFoundError, match="no essay"):
        niah.load_examples(dict(cfg, essays_dir=str(essays_dir / "missing")), WordTokenizer())


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's tokenizer if the model is cached (never downloads)."""
    from methods import models

    if not (models.default_cache_dir() / models.SMOLLM2_FILE).exists():
        pytest.skip("SmolLM2 not cached (python -m methods.models --fetch)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.smollm2_folder())


def test_real_tokenizer_and_essays(smollm2_tokenizer):
    from benchmarks.tasks import assets

    try:
        assets.ensure_essays()
    except RuntimeError as err:
        pytest.skip(f"essays unavailable: {err}")
    tok = smollm2_tokenizer
    cfg = {**BASE, "min_length": 2000, "max_length": 6000, "n_lengths": 2, "n_depths": 5, "rounds": 2}
    examples = niah.load_examples(cfg, tok)
    check_examples(examples, tok, [2000, 6000],
                   [0, 25, 50, 75, 100], rounds=2)
    assert niah.load_examples(cfg, tok) == examples
