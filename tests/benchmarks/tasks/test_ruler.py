"""RULER generation: budgets, answers in the prompt, templates, determinism, cache, qa data."""
from __future__ import annotations

import itertools
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from benchmarks.tasks import ruler
from benchmarks.tasks.ruler import TASKS, load_examples, settings, sizing
from benchmarks.tasks.ruler.niah import KeyWords, key_words
from benchmarks.tasks.ruler.templates import FAMILIES, Draft, PromptFormat

SYNTHETIC = [t for t in TASKS if not t.startswith("qa")]
NOISE_TOKENS = 32
ESSAY_TASKS = {t for t, s in TASKS.items() if s["args"].get("type_haystack") == "essay"}


class WordTokenizer:
    """Deterministic stand-in tokenizer: one token per word or punctuation mark, BOS when asked."""

    name_or_path = "fake/word-tokenizer"
    chat_template = "<|user|>\n{content}<|end|>\n<|assistant|>\n"

    def encode(self, text, add_special_tokens=True):
        return [0] * add_special_tokens + [len(t) for t in re.findall(r"\w+|[^\w\s]", text)]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize and add_generation_prompt and messages[0]["role"] == "user"
        return self.chat_template.replace("{content}", messages[0]["content"])


@pytest.fixture(scope="module")
def synthetic_tasks():
    """The 11 non-qa tasks; the essay ones only when the essays are cached or downloadable."""
    from benchmarks.tasks.assets import ensure_essays

    try:
        ensure_essays()
        return SYNTHETIC
    except RuntimeError:
        return [t for t in SYNTHETIC if t not in ESSAY_TASKS]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer if its folder is already cached (never downloads)."""
    from transformers import AutoTokenizer

    from methods.models import default_cache_dir

    folder = default_cache_dir() / "SmolLM2-135M-Instruct.Q4_1.dequantized"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("SmolLM2 tokenizer not cached (python -m methods.models --fetch)")
    return AutoTokenizer.from_pretrained(folder)


def qa_fixture(folder: Path) -> Path:
    """Tiny squad.json / hotpotqa.json in the official schemas (answers are spans of the gold docs)."""
    rng = random.Random(0)
    vocab = ["alpha", "beta", "gamma", "delta", "river", "stone", "north", "cloud", "paper", "light"]

    def sentence(n):
        return " ".join(rng.choice(vocab) for _ in range(n)).capitalize() + "."

    articles = []
    for a in range(2):
        paragraphs = []
        for p in range(8):
            context = f"{sentence(30)} The answer {a}-{p} is Zorblat{a}{p}. {sentence(30)}"
            qas = [{"question": f"What is answer {a}-{p}?", "id": f"q{a}{p}", "is_impossible": False,
                    "answers": [{"text": f"Zorblat{a}{p}", "answer_start": context.index("Zorblat")}]},
                   {"question": f"Unanswerable {a}-{p}?", "id": f"u{a}{p}", "is_impossible": True,
                    "answers": [], "plausible_answers": [{"text": "x", "answer_start": 0}]}]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    (folder / "squad.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    hotpot = []
    for q in range(4):
        context = [[f"Title {q}-{i}", [sentence(10), " " + sentence(12)]] for i in range(10)]
        context[3][1].append(f" Its capital is Quuxville{q}.")
        hotpot.append({"_id": f"h{q}", "question": f"Capital of {q}?", "answer": f"Quuxville{q}",
                       "supporting_facts": [[f"Title {q}-3", 2]], "context": context, "type": "bridge",
                       "level": "hard"})
    (folder / "hotpotqa.json").write_text(json.dumps(hotpot))
    return folder


def cfg_for(tmp_path, **overrides):
    """conf/bench/ruler.yaml with test overrides."""
    base = yaml.safe_load((Path(__file__).resolve().parents[3] / "conf/bench/ruler.yaml").read_text())
    return {**base, "lengths": [1024], "num_samples": 2, "cache_dir": str(tmp_path / "cache"),
            "data_dir": str(tmp_path / "no-data"), **overrides}


def needle_map(prompt: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in re.findall(r"One of the special magic \w+ for (.+?) is: (\S+?)\.(?=\s|$)", prompt):
        found.setdefault(key, []).append(value)
    return found


def task_part(prompt: str, marker: str) -> str:
    """The real task's text: from the last occurrence of the template's opening (after any ICL)."""
    return prompt[prompt.rindex(marker):]


def check_answers(task: str, ex) -> None:
    """The property each task guarantees about its targets and the prompt."""
    family, args = TASKS[task]["family"], TASKS[task]["args"]
    prompt, targets = ex.prompt, ex.targets
    if family == "niah":
        query = re.search(r"The special magic \w+ for (.+?) mentioned in the provided text (?:is|are)$",
                          prompt).group(1)
        keys = re.split(r", and |, ", query)
        assert len(keys) == args.get("num_needle_q", 1)
        needles = needle_map(prompt)
        assert sorted(targets) == sorted(v for k in keys for v in needles[k])
        assert len(targets) == args.get("num_needle_q", 1) * args.get("num_needle_v", 1)
        singular = args.get("num_needle_q", 1) * args.get("num_needle_v", 1) == 1
        kind = args["type_needle_v"][:-1] if singular else args["type_needle_v"]
        opening = f"A special magic {kind} is hidden" if singular else f"Some special magic {kind} are hidden"
        assert opening in prompt and ("Some special" in prompt) != singular
        assert prompt.endswith(f" The special magic {kind} for {query} mentioned in the provided text "
                               + ("is" if singular else "are"))
    elif family == "variable_tracking":
        body = task_part(prompt, "Memorize and track")
        value = re.search(r"assgined the value (\d+), they are: $", prompt).group(1)
        assert len(targets) == 5 and f"VAR {targets[0]} = {value}" in body
        for prev, cur in itertools.pairwise(targets):
            assert f"VAR {cur} = VAR {prev} " in body
    elif family == "common_words_extraction":
        body = task_part(prompt, "Below is a numbered list")
        items = re.findall(r"\d+\. (.+?)(?= \d+\. |\nQuestion)", body)
        counts = Counter(items)
        common, rare = (6, 1) if ex.length < 4096 else (30, 3)
        assert len(targets) == 10 and all(counts[t] == common for t in targets)
        assert max(c for w, c in counts.items() if w not in targets) == rare
    elif family == "freq_words_extraction":
        context = re.search(r"coded words\. (.*)\nQuestion", prompt, re.DOTALL).group(1)
        counts = Counter(w for w in context.split(" ") if w != "...")
        top = [w for w, _ in counts.most_common(4)]
        assert top[:3] == targets and counts[top[2]] > counts[top[3]]
    else:
        assert any(t in prompt for t in targets) and "Document 1:\n" in prompt
        assert ex.meta["query"] in prompt


def check_budget(task, ex, fmt, cfg) -> None:
    """Prompt + tokens_to_generate fits the length, and one more haystack step would not.

    The step is redrawn with other random keys/values than the search's probe saw, so a few
    tokens (``NOISE_TOKENS``) of slack keep the check from depending on the draw.
    """
    ttg = FAMILIES[TASKS[task]["family"]]["tokens_to_generate"]
    tokens = fmt.count(ex.prompt)
    assert tokens == ex.meta["tokens"] and tokens + ttg <= ex.length
    plan = ruler.task_plan(task, ex.length, fmt, settings(cfg), random.Random(cfg.get("seed", 42)))
    size = ex.meta["haystack_size"]
    if plan.maximum is not None and size >= plan.maximum:
        return
    draft = plan.make(size + plan.step, int(ex.id.rsplit("/", 1)[1]))
    grown = fmt.render(draft) + (" " + " ".join(draft.answers) if plan.count_answers else "")
    assert fmt.count(grown) + ttg > ex.length - NOISE_TOKENS


@pytest.mark.parametrize("length", [1024, 2048])
@pytest.mark.parametrize("template", ["chat", "base"])
def test_fake_tokenizer_budgets_and_answers(tmp_path, synthetic_tasks, length, template):
    tok = WordTokenizer()
    cfg = cfg_for(tmp_path, lengths=[length], tasks=synthetic_tasks, template=template)
    examples = load_examples(cfg, tok)
    assert sorted({ex.task for ex in examples}) == sorted(synthetic_tasks)
    fmt = PromptFormat(tok, template)
    for ex in examples:
        check_budget(ex.task, ex, fmt, cfg)
        check_answers(ex.task, ex)
        assert ex.add_special_tokens == (template == "base")
        assert ex.metric == "string_match_all" and ex.length == length


@pytest.mark.parametrize("length", [1024, 2048])
def test_smollm2_tokenizer_budgets_and_answers(tmp_path, synthetic_tasks, smollm2_tokenizer, length):
    cfg = cfg_for(tmp_path, lengths=[length], tasks=synthetic_tasks)
    fmt = PromptFormat(smollm2_tokenizer, "chat")
    for ex in load_examples(cfg, smollm2_tokenizer):
        check_budget(ex.task, ex, fmt, cfg)
        check_answers(ex.task, ex)
        assert ex.prompt.startswith("<|im_start|>system\n")


def test_template_placement(tmp_path):
    tok = WordTokenizer()
    chat, base = (load_examples(cfg_for(tmp_path, tasks=["niah_single_1"], template=t), tok)[0]
                  for t in ("chat", "base"))
    prefix = " The special magic number for "
    assert chat.prompt.startswith("<|user|>\nA special magic number is hidden")
    assert "?<|end|>\n<|assistant|>\n" + prefix in chat.prompt and not chat.add_special_tokens
    assert base.prompt.startswith("A special magic number is hidden") and base.add_special_tokens
    assert "?" + prefix in base.prompt and "<|user|>" not in base.prompt
    for ex in (chat, base):
        assert ex.prompt.endswith(" mentioned in the provided text is")


def test_singularisation_only_when_one_query_and_value(tmp_path):
    tok = WordTokenizer()
    cfg = cfg_for(tmp_path, tasks=["niah_multikey_2", "niah_multikey_3"], num_samples=1)
    single, uuid_single = load_examples(cfg, tok)
    assert "A special magic number is" in single.prompt and "magic numbers for" in single.prompt  # needles plural
    assert "I will quiz you about the uuid afterwards" in uuid_single.prompt
    plural = PromptFormat(tok, "base").render(Draft("", FAMILIES["niah"]["answer_prefix"], [], {}))
    assert plural.endswith("are") and ruler.templates.singularise(plural).endswith(" is")


def test_deterministic_and_cache_round_trip(tmp_path, monkeypatch):
    tok = WordTokenizer()
    cfg = cfg_for(tmp_path, tasks=["niah_single_1", "vt", "cwe", "fwe"], lengths=[1024, 2048])
    first = load_examples(cfg, tok)
    files = sorted((tmp_path / "cache").rglob("*.jsonl"))
    assert len(files) == 8 and all(len(f.read_text().splitlines()) == 2 for f in files)
    row = json.loads(files[0].read_text().splitlines()[0])
    assert {"index", "input", "outputs", "length", "tokens", "size", "meta"} <= set(row)
    fresh = load_examples({**cfg, "cache_dir": str(tmp_path / "other")}, tok)
    assert fresh == first
    other_seed = load_examples({**cfg, "cache_dir": str(tmp_path / "other"), "seed": 7}, tok)
    assert [e.prompt for e in other_seed] != [e.prompt for e in first]
    monkeypatch.setattr(ruler, "generate_task", lambda *a: pytest.fail("cache miss"))
    assert load_examples(cfg, tok) == first


def test_max_new_tokens_policy(tmp_path):
    tok = WordTokenizer()
    per_task = load_examples(cfg_for(tmp_path, tasks=["vt", "fwe"]), tok)
    assert [e.max_new_tokens for e in per_task] == [30, 30, 50, 50]
    fixed = load_examples(cfg_for(tmp_path, tasks=["vt", "fwe"], max_new_tokens=128), tok)
    assert {e.max_new_tokens for e in fixed} == {128}
    assert [e.prompt for e in fixed] == [e.prompt for e in per_task]  # sizing keeps RULER's table


def test_qa_with_data_files(tmp_path):
    tok = WordTokenizer()
    data = qa_fixture(tmp_path)
    cfg = cfg_for(tmp_path, tasks=["qa_1", "qa_2"], data_dir=str(data), num_samples=3)
    examples = load_examples(cfg, tok)
    fmt = PromptFormat(tok, "chat")
    assert [e.task for e in examples] == ["qa_1"] * 3 + ["qa_2"] * 3
    assert examples[0].targets == ["Zorblat00"] and examples[3].targets == ["Quuxville0"]  # file order
    for ex in examples:
        check_budget(ex.task, ex, fmt, cfg)
        check_answers(ex.task, ex)
        assert ex.metric == "string_match_part" and ex.prompt.endswith("<|assistant|>\n Answer:")
    assert "Title 1-3\n" in examples[4].prompt  # every gold paragraph of a HotpotQA question is kept


def test_qa_unavailable_without_data(tmp_path, caplog, synthetic_tasks):
    tok = WordTokenizer()
    with caplog.at_level(logging.WARNING, logger="benchmarks.tasks.ruler"):
        examples = load_examples(cfg_for(tmp_path, tasks=synthetic_tasks + ["qa_1", "qa_2"], num_samples=1), tok)
    assert sorted({e.task for e in examples}) == sorted(synthetic_tasks)
    message = caplog.text
    assert "unavailable tasks qa_1, qa_2 (" in message and "squad.json not found" in message
    assert "hotpotqa.json" in message and f"RULER-{len(synthetic_tasks)}, not RULER" in message


def test_qa_bad_file_is_a_clear_error(tmp_path):
    (tmp_path / "squad.json").write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(ValueError, match="not in the official SQuAD"):
        load_examples(cfg_for(tmp_path, tasks=["qa_1"], data_dir=str(tmp_path)), WordTokenizer())


def test_too_short_length_names_task_and_minimum(tmp_path):
    with pytest.raises(ValueError, match=r"RULER task vt does not fit in length 256: .* at least (\d+)") as err:
        load_examples(cfg_for(tmp_path, tasks=["vt"], lengths=[256], num_samples=1), WordTokenizer())
    minimum = int(re.search(r"at least (\d+)", str(err.value)).group(1))
    assert len(load_examples(cfg_for(tmp_path, tasks=["vt"], lengths=[minimum], num_samples=1), WordTokenizer())) == 1


def grid_linear_scan(probe, budget, start, step, maximum=None):
    """RULER's mid-2024 linear search (without its off-by-one when a probe lands exactly on budget)."""
    n = start
    while True:
        if maximum is not None and n >= maximum:
            return maximum if probe(maximum) <= budget else n - step
        if probe(n) > budget:
            return n - step
        n += step


@pytest.mark.parametrize("slope,offset", [(1, 0), (3, 17), (0.7, 400)])
@pytest.mark.parametrize("budget", [500, 1000, 4000, 9000])
def test_largest_fitting_matches_linear_search(slope, offset, budget):
    def probe(n):
        return int(offset + slope * n)

    for start, step, maximum in [(5, 5, None), (25, 25, None), (500, 500, 4000), (10, 10, 1234)]:
        if probe(start) > budget:
            with pytest.raises(ValueError, match="smallest size"):
                sizing.largest_fitting(probe, budget, start=start, step=step, minimum=step, maximum=maximum)
            continue
        expected = grid_linear_scan(probe, budget, start, step, maximum)
        got = sizing.largest_fitting(probe, budget, start=start, step=step, minimum=step, maximum=maximum)
        assert got == expected


def test_largest_fitting_shrinks_below_start():
    """fwe starts at length // 6 and may have to move down the grid."""
    got = sizing.largest_fitting(lambda n: 2 * n, 300, start=1000, step=32, minimum=32)
    assert got == max(1000 - 32 * k for k in range(31) if 2 * (1000 - 32 * k) <= 300)


def test_fit_sample_steps_back_per_sample():
    tok = WordTokenizer()
    fmt = PromptFormat(tok, "base")
    plan = sizing.Plan(make=lambda n, i: Draft("w " * (n + 7 * i), "", ["x"], {}), start=10, step=10, minimum=10)
    samples = sizing.generate(plan, fmt, budget=101, num_samples=3)
    # BOS + n words: the search (probing sample 0 plus " x") stops at 90, 100 would need 102;
    # sample 2 has 14 more words and steps back to 80.
    assert [(s.size, s.tokens) for s in samples] == [(90, 91), (90, 98), (80, 95)]
    with pytest.raises(ValueError, match="smallest size"):
        sizing.fit_sample(plan, fmt, budget=5, size=10, index=0)


def test_key_words_equal_the_sorted_set():
    adjs = ["old", "old-fashioned", "olden", "ol", "a b", "x-rated", "x", "old"]
    nouns = ["oak", "off-white", "ox", "zebra", "A'b", "fashioned-x", "x", "ñu"]
    keys = KeyWords(adjs, nouns)
    assert list(keys) == sorted({f"{a}-{n}" for a in adjs for n in nouns})
    assert keys[-1] == list(keys)[-1] and len(key_words()) == 6_175_260  # wonderwords 2.2.0


def test_tasks_and_config(repo_root):
    from omegaconf import OmegaConf

    from benchmarks.registry import get_benchmark

    assert len(TASKS) == 13
    assert {t for t, s in TASKS.items() if s["metric"] == "string_match_part"} == {"qa_1", "qa_2"}
    conf = OmegaConf.to_container(OmegaConf.load(repo_root / "conf/bench/ruler.yaml"))
    assert conf.pop("name") == "ruler" and get_benchmark("ruler").runner == "generate"
    assert set(conf) == set(ruler.SETTINGS) and conf["tasks"] == list(TASKS)
    with pytest.raises(KeyError, match="num_samples"):
        ruler.settings({k: v for k, v in conf.items() if k != "num_samples"})
    for bad in ({"tasks": ["nope"]}, {"template": "llama"}, {"max_new_tokens": "all"}, {"lengths": []}):
        with pytest.raises(ValueError):
            load_examples(cfg_for(Path("/nonexistent"), **bad), WordTokenizer())


def test_load_tokenizer_and_model_configs():
    from benchmarks.tasks.ruler.__main__ import model_config

    cfg = model_config("llama3_1_8b_random")
    assert cfg["kind"] == "random" and cfg["random_config"]["num_hidden_layers"] == 32  # parent merged
    with pytest.raises(ValueError, match="tokenizer_from"):
        ruler.load_tokenizer(cfg)
    with pytest.raises(FileNotFoundError, match="choose one of"):
        model_config("no_such_model")


def test_prepare_cli_writes_the_cache(tmp_path, monkeypatch, capsys):
    from benchmarks.tasks.ruler import __main__ as cli

    monkeypatch.setattr(cli, "load_tokenizer", lambda model_cfg: WordTokenizer())
    code = cli.main(["--tokenizer-from", "smollm2", "--lengths", "1024", "--tasks", "niah_single_1,qa_1",
                     "--num-samples", "1", "--out", str(tmp_path / "cache"), "--data-dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 2
    assert "niah_single_1" in lines[0] and lines[0].endswith("niah_single_1-seed42-n1.jsonl")
    assert lines[1].split()[1:] == ["qa_1", "0", "samples", "unavailable"]
    assert len(list((tmp_path / "cache").rglob("*.jsonl"))) == 1
