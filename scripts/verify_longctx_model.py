"""Checks that ``model=qwen2_5_coder_0_5b`` is the 32k-context model it claims to be (CPU).

    python scripts/verify_longctx_model.py tokenizer chat          # ~1 min
    nice python scripts/verify_longctx_model.py nll needle --dtype bf16 --threads 2   # 32k + 4k/8k/16k

Each check prints its numbers and writes ``<out>/check_<check>.json`` (default
``results/longctx_model``). ``--dtype bf16`` (weights, activations and logits in bf16, NLL summed
in fp64) is ~3x cheaper than fp32 on a CPU with AMX. What they do:

* ``tokenizer``: special-token ids, the chat template (the GGUF's ``tokenizer.chat_template``,
  default system prompt), no BOS added, qwen2 pre-tokenization (one digit per token), and an
  encode/decode round trip over the essays, code and non-Latin text.
* ``chat``: greedy answers to two chat prompts.
* ``nll``: the first ``--tokens`` tokens of the 49 Paul Graham essays (sorted, joined by a blank
  line) in ONE forward pass; mean next-token NLL (nats) per position window; beside it the NLL of
  the same tokens when each 1024-token block is fed alone (what long context adds).
* ``needle``: the harness's NIAH prompt (``benchmarks.tasks.niah``, chat template, depth 50 %, seed 0)
  at each length; probability of the needle's first digit at the first answer position, and at
  the first position where greedy decoding emits a digit; the greedy answer.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.models import load_model  # noqa: E402

MODEL_CFG = {"name": "qwen2.5-coder-0.5b-instruct", "kind": "gguf-parts", "gguf": "qwen2_5_coder_0_5b",
             "gguf_path": None}
WINDOWS = [(0, 1024), (1024, 2048), (2048, 4096), (4096, 8192), (8192, 16384), (16384, 32768)]
CHAT_PROMPTS = ["Write a Python function that reverses a string.", "What is the capital of France?"]


def essays_text() -> str:
    from benchmarks.tasks.niah import essay_texts

    return "\n\n".join(essay_texts())


def check_tokenizer(model, tok) -> dict:
    """Offline checks of the GGUF tokenizer against documented Qwen2.5 behaviour."""
    from gguf import GGUFReader

    from methods.gguf_parts import QWEN2_5_CODER_0_5B, ensure_split_gguf

    reader = GGUFReader(ensure_split_gguf(QWEN2_5_CODER_0_5B))
    gguf_template = reader.fields["tokenizer.chat_template"].contents()
    specials = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    samples = [essays_text()[:200_000], "def f(x):\n    return x[::-1]  # 反转字符串\n\t\r\n",
               "Ünïcödé — 日本語のテキスト, русский текст, emoji 🤗🚀, numbers 3.14159 and 1,000,000."]
    round_trip = all(tok.decode(tok.encode(s, add_special_tokens=False)) == s for s in samples)
    out = {
        "special_ids": specials,
        "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
        "encode_hello_world": tok.encode("Hello world"),   # no BOS / EOS added by encode
        "digits_12345": [tok.decode([i]) for i in tok.encode("12345")],
        "chat_template_equals_gguf": tok.chat_template == gguf_template,
        "chat_prompt": chat,
        "round_trip_ok": round_trip,
        "round_trip_tokens": sum(len(tok.encode(s, add_special_tokens=False)) for s in samples),
        "vocab_size_tokenizer": len(tok), "vocab_size_model": model.config.vocab_size,
        "generation_eos": model.generation_config.eos_token_id,
    }
    out["ok"] = (specials == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
                 and out["chat_template_equals_gguf"] and round_trip
                 and 151643 not in out["encode_hello_world"] and out["digits_12345"] == list("12345")
                 and chat.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                                     "helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                                     "<|im_start|>assistant\n"))
    return out


def check_chat(model, tok) -> dict:
    answers = {}
    for prompt in CHAT_PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        ids = tok(text, return_tensors="pt").input_ids.to(model.device)
        out = model.generate(ids, max_new_tokens=96, do_sample=False)
        answers[prompt] = tok.decode(out[0, ids.shape[1]:])
    return answers


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """NLL (nats, fp64) of ``ids[1:]`` given their prefixes, from one forward over ``ids`` [1, N];
    the lm_head runs in chunks so the [N, vocab] logits are never all materialised."""
    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]   # [N, hidden]
    nll = []
    for s in range(0, ids.shape[1] - 1, chunk):
        logits = model.lm_head(hidden[s:s + chunk][: ids.shape[1] - 1 - s]).double()  # [c, vocab]
        target = ids[0, s + 1:s + 1 + logits.shape[0]]
        nll.append(-torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0])
    return torch.cat(nll)  # [N - 1], entry t = NLL of token t + 1


def check_nll(model, tok, n_tokens: int, block: int = 1024) -> dict:
    ids = torch.tensor([tok.encode(essays_text(), add_special_tokens=False)[:n_tokens]], device=model.device)
    if ids.shape[1] < n_tokens:
        raise ValueError(f"the essays hold only {ids.shape[1]} tokens")
    t0 = time.time()
    full = token_nll(model, ids).cpu()                            # [N - 1]
    seconds_full = time.time() - t0
    print(f"full forward of {n_tokens} tokens: {seconds_full:.0f} s, mean NLL {float(full.mean()):.4f}; "
          + ", ".join(f"{lo}-{hi}: {float(full[max(lo - 1, 0):hi - 1].mean()):.4f}" for lo, hi in WINDOWS
                      if lo < n_tokens), flush=True)
    local = torch.cat([token_nll(model, ids[:, s:s + block]).cpu() for s in range(0, n_tokens, block)])
    # ``local`` drops each block's first target; align: position p (predicting token p + 1) is
    # in ``local`` unless p + 1 starts a block.
    keep = torch.tensor([(p + 1) % block != 0 for p in range(n_tokens - 1)])
    windows = []
    for lo, hi in WINDOWS:
        if lo >= n_tokens:
            break
        sel = torch.zeros(n_tokens - 1, dtype=torch.bool)
        sel[max(lo - 1, 0):hi - 1] = True                         # targets lo..hi-1 (target 0 has none)
        both = sel & keep
        windows.append({"window": f"{lo}-{hi}", "targets": int(sel.sum()),
                        "nll_full_context": float(full[sel].mean()),
                        "nll_block_local": float(local[both[keep]].mean()),
                        "nll_full_same_targets": float(full[both].mean())})
    return {"tokens": n_tokens, "seconds_full_forward": seconds_full, "mean_nll": float(full.mean()),
            "ppl": math.exp(float(full.mean())), "block": block, "windows": windows}


@torch.no_grad()
def check_needle(model, tok, length: int, depth: int = 50, max_new: int = 16) -> dict:
    from transformers import DynamicCache

    from benchmarks.runner.decode import cache_argument
    from benchmarks.tasks.niah import load_examples

    cfg = {"min_length": length, "max_length": length, "n_lengths": 1, "n_depths": 3, "rounds": 1,
           "buffer": 200, "seed": 0, "chat_template": True, "essays_dir": None}
    example = next(e for e in load_examples(cfg, tok) if e.meta["depth"] == depth)
    number = example.targets[0]
    first_digit = tok.convert_tokens_to_ids(number[0])
    ids = torch.tensor([tok.encode(example.prompt, add_special_tokens=False)], device=model.device)
    t0 = time.time()
    cache = DynamicCache(config=model.config)
    kw = cache_argument(model)                                      # cache= or past_key_values=
    logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[0, -1]
    p_first = float(torch.softmax(logits.double(), -1)[first_digit])   # (synchronises a GPU)
    seconds = time.time() - t0
    generated, p_at_digit = [], None
    for _ in range(max_new):
        probs = torch.softmax(logits.double(), -1)
        nxt = int(probs.argmax())
        if p_at_digit is None and tok.decode([nxt]).strip().isdigit():
            p_at_digit = float(probs[first_digit])
        if nxt == tok.eos_token_id:
            break
        generated.append(nxt)
        step = torch.tensor([[nxt]], device=model.device)
        logits = model(input_ids=step, use_cache=True, **{kw: cache}).logits[0, -1]
    answer = tok.decode(generated)
    return {"length": length, "prompt_tokens": ids.shape[1], "depth": depth, "number": number,
            "p_first_digit_at_answer_start": p_first, "p_first_digit_where_greedy_emits_digit": p_at_digit,
            "answer": answer, "correct": number in answer, "seconds_prefill": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="+", choices=["tokenizer", "chat", "nll", "needle"])
    parser.add_argument("--tokens", type=int, default=32768, help="nll: tokens in the forward pass")
    parser.add_argument("--lengths", default="4096,8192,16384", help="needle: prompt lengths")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=Path("results/longctx_model"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(MODEL_CFG, args.device, dtype=args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    for check in args.checks:
        if check == "tokenizer":
            result = check_tokenizer(model, tok)
        elif check == "chat":
            result = check_chat(model, tok)
        elif check == "nll":
            result = check_nll(model, tok, args.tokens)
        else:
            result = [check_needle(model, tok, int(n)) for n in args.lengths.split(",")]
        text = json.dumps({"device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
                           "result": result},
                          indent=1, ensure_ascii=False)
        print(f"== {check}\n{text}", flush=True)
        (args.out / f"check_{check}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
