"""RULER template sets: ``anchorattention`` (the paper's copy, default) and ``ruler2024`` (official
RULER 2024) differ in cwe's template and answer prefix and in vt's in-context example only."""
from __future__ import annotations

import random

import pytest

from benchmarks.tasks.ruler import load_examples, variable_tracking, words
from benchmarks.tasks.ruler.templates import FAMILIES, RULER2024_CWE, PromptFormat, ruler2024_icl_template
from tests.benchmarks.tasks.test_ruler import WordTokenizer, cfg_for

TASKS = ["niah_single_1", "vt", "cwe", "fwe"]
VT = FAMILIES["variable_tracking"]
AA_CWE = FAMILIES["common_words_extraction"]


def examples(tmp_path, template_set, template="base", cache="cache"):
    cfg = cfg_for(tmp_path, tasks=TASKS, template=template, template_set=template_set, num_samples=1,
                  cache_dir=str(tmp_path / cache))
    return {ex.task: ex for ex in load_examples(cfg, WordTokenizer())}


@pytest.mark.parametrize("template", ["base", "chat"])
def test_sets_differ_only_in_cwe_and_vt(tmp_path, template):
    aa, r24 = examples(tmp_path, "anchorattention", template), examples(tmp_path, "ruler2024", template)
    for task in ("niah_single_1", "fwe"):
        assert aa[task].prompt == r24[task].prompt and aa[task].targets == r24[task].targets
    assert {ex.meta["template_set"] for ex in aa.values()} == {"anchorattention"}
    assert {ex.meta["template_set"] for ex in r24.values()} == {"ruler2024"}
    # cwe: both copies of the template (ICL example + task) and the answer prefix
    assert aa["cwe"].prompt.count('(not including very common words like "the", "and", etc.)') == 4
    assert aa["cwe"].prompt.endswith(AA_CWE["answer_prefix"])
    assert "not including" not in r24["cwe"].prompt and "excluding" not in r24["cwe"].prompt
    assert r24["cwe"].prompt.count("What are the 10 most common words in the above list?") == 2
    assert r24["cwe"].prompt.endswith(RULER2024_CWE["answer_prefix"])
    # vt: the task keeps its template in both sets; only the in-context example is cut upstream's way
    icls = {}
    for name, ex in (("aa", aa["vt"]), ("r24", r24["vt"])):
        start = ex.prompt.rindex("Memorize and track")
        assert ex.prompt[start:].startswith("Memorize and track the chain(s) of variable assignment hidden in "
                                            "the following text.\n\n")
        assert "in the text above." in ex.prompt[start:]
        icls[name] = ex.prompt[:start]
    assert "following text.\n\n" in icls["aa"] and "in the text above. Answer:" in icls["aa"]
    assert "hidden in the following text. " in icls["r24"] and "following text.\n\n" not in icls["r24"]
    cut = " in the text Answer:" if template == "base" else " in the text above.<|end|> Answer:"
    assert cut in icls["r24"] and "in the text above. Answer:" not in icls["r24"]


def test_ruler2024_icl_template_follows_upstream_cut():
    """variable_tracking.py L114-119 at NVIDIA/RULER 3b8928f: cut the model template, collapse
    whitespace, drop the last word, keep the answer prefix."""
    tok = WordTokenizer()
    base = ruler2024_icl_template(PromptFormat(tok, "base"), VT)
    assert base == ("Memorize and track the chain(s) of variable assignment hidden in the following text. "
                    "{context} Question: Find all variables that are assigned the value {query} in the text"
                    + VT["answer_prefix"])
    chat = ruler2024_icl_template(PromptFormat(tok, "chat"), VT)   # "<|assistant|>" is the dropped word
    assert chat == base.replace(" in the text Answer:", " in the text above.<|end|> Answer:")


def test_vt_icl_example_same_draw_other_text():
    """Same random draw, same context: only the template text around it differs."""
    icl = ruler2024_icl_template(PromptFormat(WordTokenizer(), "base"), VT)
    aa = variable_tracking.build(random.Random(3), 15, num_chains=1, num_hops=4, is_icl=True)
    r24 = variable_tracking.build(random.Random(3), 15, num_chains=1, num_hops=4, is_icl=True, icl_template=icl)
    assert r24.answers == aa.answers and r24.answer_prefix == ""
    expected = (aa.body + aa.answer_prefix).replace("following text.\n\n", "following text. ") \
        .replace("\nQuestion: Find", " Question: Find").replace(" in the text above. Answer:", " in the text Answer:")
    assert r24.body == expected


def test_cwe_same_draw_other_text():
    args = dict(length=1024, seed=42, freq_cw=30, freq_ucw=3, num_cw=10)
    aa = words.build_cwe(random.Random(5), 40, template_set="anchorattention", **args)
    r24 = words.build_cwe(random.Random(5), 40, template_set="ruler2024", **args)
    assert r24.answers == aa.answers
    swapped = aa.body
    for key in ("template", "answer_prefix"):
        for a, b in zip(AA_CWE[key].split("{context}"), RULER2024_CWE[key].split("{context}")):
            swapped = swapped.replace(a, b)
    assert swapped == r24.body and r24.answer_prefix == RULER2024_CWE["answer_prefix"]


def test_cache_files_are_per_set(tmp_path):
    examples(tmp_path, "anchorattention")
    examples(tmp_path, "ruler2024")
    files = sorted((tmp_path / "cache").rglob("*.jsonl"))
    by_set = {s: {f.name: f.read_text() for f in files if f"/{s}/" in str(f)} for s in ("anchorattention", "ruler2024")}
    assert len(files) == 2 * len(TASKS) and set(by_set["anchorattention"]) == set(by_set["ruler2024"])
    differ = {name for name in by_set["ruler2024"] if by_set["ruler2024"][name] != by_set["anchorattention"][name]}
    assert differ == {"vt-seed42-n1.jsonl", "cwe-seed42-n1.jsonl"}


def test_unknown_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="template_set"):
        examples(tmp_path, "ruler2025")
