"""The 128-id character tokenizer that lets the tiny random models run benchmarks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from benchmarks.tasks import char_tokenizer as ct


def test_committed_files_are_what_build_makes(tmp_path):
    ct.main(["--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in ct.FOLDER.iterdir())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((ct.FOLDER / name).read_text()), name
    assert (tmp_path / "chat_template.jinja").read_text() == (ct.FOLDER / "chat_template.jinja").read_text()


def test_encodes_one_id_per_character_within_128():
    tok = AutoTokenizer.from_pretrained(ct.FOLDER)
    text = "VAR ABCDE = 12345.\nOne of the special magic numbers — “café”: 7654321."
    ids = tok(text).input_ids
    assert len(tok) == 128 and max(ids) < 128 and ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1 and tok.decode(ids, skip_special_tokens=True) == text
    assert tok("☃").input_ids == [tok.bos_token_id, tok.unk_token_id]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>user: hi\nassistant:" and tok.encode(chat, add_special_tokens=False)[0] == tok.bos_token_id


def test_missing_tokenizer_message_names_the_fix():
    assert "model.tokenizer_from=benchmarks/tasks/tokenizers/ascii_chars" in ct.no_tokenizer_message("tiny-llama", 128)
    assert "ascii_chars" not in ct.no_tokenizer_message("llama3.1-8b-random", 128256)


@pytest.mark.slow
def test_tiny_model_runs_ruler_with_it(repo_root, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "run.py", "model=tiny_llama", "method=dense", "bench=ruler",
                               "bench.lengths=[2048]", "bench.num_samples=1", "bench.tasks=[niah_single_1]",
                               f"bench.cache_dir={tmp_path / 'cache'}", "device=cpu",
                               "runner.allow_beyond_context=true", *args],        # a 512-position toy model
                              cwd=repo_root, env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True,
                              text=True, timeout=900)
    refused = run(f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode != 0 and "model.tokenizer_from=benchmarks/tasks/tokenizers/ascii_chars" in refused.stderr
    done = run("model.tokenizer_from=benchmarks/tasks/tokenizers/ascii_chars", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_samples"] == 1 and summary["unavailable_tasks"] == []


def test_vt_icl_too_long_for_the_tokenizer_is_named(tmp_path):
    from benchmarks.tasks.ruler import load_examples
    from tests.benchmarks.tasks.test_ruler import cfg_for

    tok = AutoTokenizer.from_pretrained(ct.FOLDER)
    with pytest.raises(ValueError, match="RULER task vt: its in-context example does not fit RULER's fixed 500-token"):
        load_examples(cfg_for(tmp_path, tasks=["vt"], lengths=[4096], num_samples=1), tok)
