"""A character-level tokenizer of 128 ids for the tiny random test models (vocab_size 128).

``conf/model/tiny_llama.yaml`` and ``tiny_qwen2.yaml`` describe 2-layer random models with a
128-token vocabulary: no real tokenizer fits it. This one does (one id per character), so that
``python run.py model=tiny_llama model.tokenizer_from=benchmarks/tasks/tokenizers/ascii_chars ...``
drives the whole generation pipeline (prompts, prefill, decoding, scoring) in a minute or two. The
answers of a random model are noise: it checks plumbing, never accuracy.

Ids: ``<unk>`` 0, ``<s>`` 1 (added in front of every encoded text, as Llama's BOS), ``</s>`` 2,
``<pad>`` 3, then tab, newline, the 95 printable ASCII characters and ``EXTRA`` (common non-ASCII
punctuation and letters of English text) up to 128; any other character is ``<unk>``. Chat
template: ``<s>`` then ``user: <text>\\n`` per message and ``assistant:`` as generation prompt.

The files are committed under ``tokenizers/ascii_chars``; ``python -m benchmarks.tasks.char_tokenizer
--out DIR`` rebuilds them (a test checks that the committed ones are what ``build`` makes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "tokenizers" / "ascii_chars"
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
EXTRA = "’‘“”–—…éèàçüöäñáíóúâêô•°£€×"
VOCAB_SIZE = 128
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def no_tokenizer_message(model_name: str, vocab_size: int | None) -> str:
    """Why a benchmark cannot run a model without a tokenizer, and what to set."""
    if vocab_size is not None and vocab_size <= VOCAB_SIZE:
        folder = FOLDER.relative_to(Path.cwd()) if FOLDER.is_relative_to(Path.cwd()) else FOLDER
        fix = (f"for its {vocab_size}-token vocabulary add model.tokenizer_from={folder} (one id per "
               "character; a random model's answers are noise)")
    else:
        fix = "set model.tokenizer_from to a hub id or folder whose vocabulary fits the model's (smollm2 where it fits)"
    return (f"model {model_name!r} has no tokenizer (tokenizer_from: null): it is a shape-only random model "
            f"for tests and latency, and benchmarks need a tokenizer; {fix}")


def alphabet() -> list[str]:
    """Every id's string, in id order (``VOCAB_SIZE`` of them)."""
    chars = ["\t", "\n"] + [chr(c) for c in range(32, 127)] + list(EXTRA)
    tokens = SPECIAL + chars
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise AssertionError(f"the alphabet must hold {VOCAB_SIZE} distinct tokens, has {len(set(tokens))}")
    return tokens


def build():
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(alphabet())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")   # one piece per character
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", vocab["<s>"])])
    core.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=1 << 20, clean_up_tokenization_spaces=False)


def main(argv: list[str] | None = None) -> None:
    """CLI: write the tokenizer files to ``--out``."""
    parser = argparse.ArgumentParser(description="Write the 128-id character tokenizer of the tiny models.")
    parser.add_argument("--out", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    build().save_pretrained(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
