"""LongBench loader, prompts, truncation, modes and scoring on a tiny synthetic fixture folder."""
from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from benchmarks.registry import get_benchmark
from benchmarks.tasks import longbench as lb
from benchmarks.tasks.metrics import METRICS


class CharTokenizer:
    """One id per character plus a BOS (id 0) when ``add_special_tokens``; a toy chat template."""

    chat_template = "toy"

    def __call__(self, text, truncation=False, add_special_tokens=True):
        return SimpleNamespace(input_ids=([0] if add_special_tokens else []) + [ord(c) for c in text])

    def decode(self, ids, skip_special_tokens=False):
        return "".join("<s>" if i == 0 else chr(i) for i in ids if not (skip_special_tokens and i == 0))

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        assert add_generation_prompt and not tokenize
        return f"<s>[USER]{messages[0]['content']}[/USER][ASSISTANT]"


def _row(name, i, context, inp, answers, all_classes=None):
    return {"input": inp, "context": context, "answers": answers, "length": len(context.split()),
            "dataset": name, "language": "en", "all_classes": all_classes, "_id": f"{name}-{i}"}


TREC_CLASSES = ["Animal", "City", "Country", "Other location"]
ROWS = {
    "hotpotqa": [_row("hotpotqa", 0, "Passage 1:\nParis is the capital of France.", "What is the capital?", ["Paris"]),
                 _row("hotpotqa", 1, "Passage 1:\nBerlin {braces} stay.", "Which city?", ["Berlin"]),
                 _row("hotpotqa", 2, "Passage 1:\nRome.", "Where?", ["Rome"])],
    "trec": [_row("trec", 0, "Question: Where is Rome?\nType: City", "Question: Where is Paris?\nType:", ["City"],
                  TREC_CLASSES),
             _row("trec", 1, "Question: What barks?\nType: Animal", "Question: What meows?\nType:", ["Animal"],
                  TREC_CLASSES)],
    "samsum": [_row("samsum", 0, "Dialogue: A: hi\nSummary: A greets.", "Dialogue: B: bye\nSummary:",
                    ["B says goodbye."])],
    "lcc": [_row("lcc", 0, "def f(x):\n    y = '{input}'\n", "", ["    return x"])],
    "passage_retrieval_en": [_row("passage_retrieval_en", 0, "Paragraph 1: a\n\nParagraph 2: b", "b",
                                  ["Paragraph 2"])],
}


@pytest.fixture
def data_dir(tmp_path):
    for name, rows in ROWS.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _cfg(data_dir, **over):
    base = {"name": "longbench", "datasets": list(ROWS), "data_dir": str(data_dir), "source": "local",
            "max_length": 127500, "mode": "official", "limit": None}
    return OmegaConf.create({**base, **over})


@pytest.fixture(scope="module")
def real_tokenizer():
    """SmolLM2's tokenizer when its cached folder can be built, else None."""
    try:
        from transformers import AutoTokenizer

        from methods.models import smollm2_folder

        return AutoTokenizer.from_pretrained(smollm2_folder())
    except Exception as err:  # noqa: BLE001  (offline and uncached: the char tokenizer stands in)
        print(f"SmolLM2 tokenizer unavailable ({err}); using the char tokenizer")
        return None


def test_dataset_table_matches_upstream():
    assert list(lb.DATASETS) == ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
                                 "gov_report", "qmsum", "multi_news", "trec", "triviaqa", "samsum", "passage_count",
                                 "passage_retrieval_en", "lcc", "repobench-p"]
    maxlen = {n: d.max_new_tokens for n, d in lb.DATASETS.items()}
    assert maxlen == {"narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32,
                      "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32,
                      "samsum": 128, "passage_count": 32, "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64}
    assert all(d.metric in METRICS for d in lb.DATASETS.values())
    assert "asconcisely" in lb.DATASETS["narrativeqa"].prompt          # upstream's typo, kept
    assert lb.DATASETS["repobench-p"].prompt == "Please complete the code given below. \n{context}{input}Next line of code:\n"


def test_conf_lists_all_datasets(repo_root):
    cfg = OmegaConf.load(repo_root / "conf/bench/longbench.yaml")
    assert cfg.name == "longbench" and get_benchmark("longbench").runner == "generate" and cfg.mode == "official"
    assert list(cfg.datasets) == list(lb.DATASETS)


def test_official_prompts_and_template_exceptions(data_dir):
    examples = lb.load_examples(_cfg(data_dir), CharTokenizer())
    assert [e.id for e in examples][:3] == ["hotpotqa/hotpotqa-0", "hotpotqa/hotpotqa-1", "hotpotqa/hotpotqa-2"]
    by_id = {e.id: e for e in examples}
    hot = by_id["hotpotqa/hotpotqa-1"]
    raw = lb.DATASETS["hotpotqa"].prompt.format(**ROWS["hotpotqa"][1])
    assert "Berlin {braces} stay." in raw and raw.endswith("Question: Which city?\nAnswer:")
    assert hot.prompt == f"<s>[USER]{raw}[/USER][ASSISTANT]" and hot.add_special_tokens is False
    assert (hot.max_new_tokens, hot.metric, hot.targets, hot.length) == (32, "qa_f1", ["Berlin"], 127500)
    for name in ("trec", "samsum", "lcc"):                 # raw prompt, the tokenizer adds BOS
        ex = by_id[f"{name}/{name}-0"]
        assert ex.prompt == lb.DATASETS[name].prompt.format(**ROWS[name][0]) and ex.add_special_tokens
        assert ex.meta["chat_template"] is False
    assert by_id["lcc/lcc-0"].prompt.endswith("y = '{input}'\nNext line of code:\n")
    assert by_id["samsum/samsum-0"].meta["stop_at_newline"] is True
    assert "stop_at_newline" not in by_id["trec/trec-0"].meta
    assert by_id["trec/trec-0"].meta["all_classes"] == TREC_CLASSES


def test_middle_truncation_char_tokenizer(data_dir):
    tok = CharTokenizer()
    prompt = lb.DATASETS["hotpotqa"].prompt.format(**ROWS["hotpotqa"][0])
    max_length = 101                                        # half = 50; the head's BOS is dropped on decode
    out, truncated = lb.truncate_middle(prompt, tok, max_length)
    assert truncated and out == prompt[:49] + prompt[-50:]
    assert lb.truncate_middle(prompt, tok, len(prompt) + 1) == (prompt, False)   # BOS counts: fits exactly
    assert lb.truncate_middle(prompt, tok, len(prompt))[1]


def test_middle_truncation_keeps_head_and_tail(data_dir, real_tokenizer):
    tok = real_tokenizer or CharTokenizer()
    long_row = _row("hotpotqa", 9, " ".join(f"word{i}" for i in range(3000)), "What is word5?", ["word5"])
    (data_dir / "hotpotqa.jsonl").write_text(json.dumps(long_row) + "\n")
    max_length = 300
    [ex] = lb.load_examples(_cfg(data_dir, datasets=["hotpotqa"], max_length=max_length), tok)
    prompt = lb.DATASETS["hotpotqa"].prompt.format(**long_row)
    ids = tok(prompt).input_ids
    head = tok.decode(ids[:150], skip_special_tokens=True)
    tail = tok.decode(ids[-150:], skip_special_tokens=True)
    assert ex.meta["truncated"] and ex.meta["chat_template"] and not ex.add_special_tokens
    assert head + tail in ex.prompt
    assert head.startswith("Answer the question based on the given passages.")
    assert tail.endswith("Question: What is word5?\nAnswer:")
    assert len(tok(head + tail).input_ids) <= max_length


def test_real_chat_template(data_dir, real_tokenizer):
    if real_tokenizer is None:
        pytest.skip("SmolLM2 tokenizer unavailable")
    [ex] = lb.load_examples(_cfg(data_dir, datasets=["hotpotqa"], limit=1), real_tokenizer)
    assert ex.prompt.startswith("<|im_start|>") and ex.prompt.endswith("<|im_start|>assistant\n")
    assert not ex.add_special_tokens


def test_tokenizer_without_chat_template_gets_raw_prompt(data_dir):
    tok = CharTokenizer()
    tok.chat_template = None
    [ex] = lb.load_examples(_cfg(data_dir, datasets=["hotpotqa"], limit=1), tok)
    assert ex.prompt == lb.DATASETS["hotpotqa"].prompt.format(**ROWS["hotpotqa"][0]) and ex.add_special_tokens


def test_anchorattention_mode(data_dir):
    examples = lb.load_examples(_cfg(data_dir, mode="anchorattention", max_length=10), CharTokenizer())
    by_id = {e.id: e for e in examples}
    hot = by_id["hotpotqa/hotpotqa-0"]
    assert hot.prompt == lb.DATASETS["hotpotqa"].prompt.format(**ROWS["hotpotqa"][0])   # no cut, no template
    assert hot.add_special_tokens and hot.length == 0 and not hot.meta["truncated"]
    assert "stop_at_newline" not in by_id["samsum/samsum-0"].meta
    # str.replace filling, as AnchorAttention: "{input}" inside lcc's code is replaced by the (empty) input
    assert by_id["lcc/lcc-0"].prompt.endswith("y = ''\nNext line of code:\n")
    assert lb.postprocess(hot, "Paris.assistant\n\nmore") == "Paris"
    assert lb.postprocess(hot, " Paris (Passage 2)\n\nQuestion: x") == "Paris"
    assert lb.postprocess(hot, "Paris\n\nAnswer: Rome") == "Paris"
    assert lb.postprocess(hot, "Paris</s>x (Document 1)") == "Paris"
    assert lb.score(hot, "Paris\n\nQuestion: What about Rome?") == 1.0
    trec = by_id["trec/trec-0"]
    assert lb.postprocess(trec, "\n\nCity\nQuestion: next") == "City"


def test_official_postprocess_and_score(data_dir):
    by_id = {e.id: e for e in lb.load_examples(_cfg(data_dir), CharTokenizer())}
    hot, trec = by_id["hotpotqa/hotpotqa-0"], by_id["trec/trec-0"]
    assert lb.postprocess(hot, "Paris.assistant") == "Paris.assistant"     # no cut list in official mode
    assert lb.postprocess(hot, "Paris\nis it") == "Paris\nis it"           # hotpotqa keeps all lines
    assert lb.postprocess(trec, "\nCity\nCountry") == "City"                # first line only
    assert lb.score(trec, "\nCity\nCountry") == 1.0
    assert lb.score(trec, "City or Country") == 0.5
    assert lb.score(hot, "The answer is Paris") == pytest.approx(0.5)       # answer is paris vs paris: P 1/3, R 1
    assert lb.score(by_id["samsum/samsum-0"], "B says goodbye.\nDialogue: C") == pytest.approx(1.0, abs=1e-6)
    assert lb.score(by_id["lcc/lcc-0"], "```\n    return x\n") == 1.0
    assert lb.score(by_id["passage_retrieval_en/passage_retrieval_en-0"], "Paragraph 2") == 1.0


def test_limit(data_dir):
    examples = lb.load_examples(_cfg(data_dir, datasets=["hotpotqa", "trec"], limit=1), CharTokenizer())
    assert [e.id for e in examples] == ["hotpotqa/hotpotqa-0", "trec/trec-0"]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        lb.load_examples(_cfg(tmp_path, datasets=["hotpotqa", "lcc"]), CharTokenizer())
    message = str(err.value)
    assert str(tmp_path / "hotpotqa.jsonl") in message and str(tmp_path / "lcc.jsonl") in message
    assert "source=hub" in message and "THUDM/LongBench" in message


def test_hub_without_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)      # import datasets -> ImportError
    with pytest.raises(ImportError, match="datasets"):
        lb.load_examples(_cfg(tmp_path, datasets=["hotpotqa"], source="hub"), CharTokenizer())


def test_bad_config(data_dir):
    with pytest.raises(ValueError, match="unknown LongBench datasets"):
        lb.load_examples(_cfg(data_dir, datasets=["lsht"]), CharTokenizer())
    with pytest.raises(ValueError, match="mode"):
        lb.load_examples(_cfg(data_dir, mode="fast"), CharTokenizer())


def test_malformed_jsonl_names_file_and_line(data_dir):
    """A bad record is reported with its file and its line in the file (blank lines counted), not
    as a bare JSONDecodeError at "line 1"."""
    path = data_dir / "hotpotqa.jsonl"
    path.write_text(json.dumps(ROWS["hotpotqa"][0]) + "\n\n" + '{"input": "cut off\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: not valid JSON")) as err:
        lb.load_examples(_cfg(data_dir, datasets=["hotpotqa"]), CharTokenizer())
    assert not isinstance(err.value, json.JSONDecodeError)
    path.write_text('["a list"]\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 1: expected a JSON object")):
        lb.load_examples(_cfg(data_dir, datasets=["hotpotqa"]), CharTokenizer())
