"""Throughput of the generation runner per decode mode (``runner.decode``), for the GPU (not CI).

    python scripts/runner_throughput.py --out $OUT      # SmolLM2 at 8k, Llama-3.1-8B (random) at 32k
    python scripts/runner_throughput.py --setups llama3_1_8b_random:32000 --tokenizer-from DIR --examples 3

Per setup ``<conf/model name or YAML file>:<tokens>``: NIAH examples of that length (the essays haystack; a
random-weight model borrows a tokenizer, ``--tokenizer-from``, default SmolLM2's) run through the
runner's own ``benchmarks.runner.generate.run_example`` with ``--method`` patched in, once per
decode mode: one warm-up example (compilation, CUDA graph capture; not counted), then
``--examples`` timed ones. Printed per mode: examples/hour, mean ms of each phase (tokenize,
prefill, decode, score), decode ms per step, and how many predictions equal the ``loop`` mode's
(the modes must agree; ``static`` decodes over a masked static cache, so on a GPU its sums may
differ in the last bits: this count is the check). Random weights give meaningless answers;
their budget is capped at ``--random-new-tokens`` new tokens (NIAH allows 32) and said so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.config_files import composed, conf_yaml  # noqa: E402
from benchmarks.runner.decode import DECODE_MODES, Decoder  # noqa: E402
from benchmarks.runner.generate import (PHASES, RunnerOptions, newline_token_id, run_example,  # noqa: E402
                                        stop_token_ids, throughput)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="smollm2:8000,llama3_1_8b_random:32000",
                        help="comma-separated <conf/model name or a model YAML file>:<context tokens>")
    parser.add_argument("--modes", default=",".join(DECODE_MODES))
    parser.add_argument("--method", default="dense", help="conf/method name patched in for the prefill")
    parser.add_argument("--examples", type=int, default=4, help="timed examples per mode (after one warm-up)")
    parser.add_argument("--tokenizer-from", default="smollm2", help="tokenizer of random-weight models")
    parser.add_argument("--random-new-tokens", type=int, default=32, help="new-token cap of random-weight models")
    parser.add_argument("--essays-dir", default=None, help="haystack essays (default: the cached ones)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for throughput.json")
    return parser.parse_args(argv)


def examples_for(length: int, count: int, tokenizer, essays_dir):
    """``count`` NIAH examples at ``length`` tokens (depths spread over the context)."""
    from benchmarks.registry import get_benchmark

    cfg = {**conf_yaml("bench", "niah"), "min_length": length, "max_length": length, "n_lengths": 1,
           "n_depths": count, "rounds": 1, "essays_dir": essays_dir}
    return get_benchmark("niah"), get_benchmark("niah").load_examples(cfg, tokenizer)


def run_setup(model_name: str, length: int, args) -> dict:
    """Every decode mode on one model and length; returns ``{mode: {...}}``."""
    import methods  # noqa: F401  (registers the methods)
    from methods.hf_patch import StatsRecorder, patched
    from methods.models import load_model
    from methods.registry import get_method

    model_cfg = (yaml.safe_load(Path(model_name).read_text()) if model_name.endswith(".yaml")
                 else composed("model", model_name))
    random_weights = model_cfg.get("kind") == "random"
    if random_weights:
        model_cfg["tokenizer_from"] = args.tokenizer_from
    model, tokenizer = load_model(model_cfg, args.device)
    bench, examples = examples_for(length, args.examples + 1, tokenizer, args.essays_dir)
    if random_weights:
        for ex in examples:
            ex.max_new_tokens = min(ex.max_new_tokens, args.random_new_tokens)
    device = torch.device(args.device)
    stop_ids, newline_id = stop_token_ids(model, tokenizer), newline_token_id(tokenizer)
    method = get_method(conf_yaml("method", args.method))
    results, reference = {}, None
    for mode in args.modes.split(","):
        options = RunnerOptions(decode=mode, max_context=None)
        decoder, recorder = Decoder(model, mode), StatsRecorder()
        with patched(model, method, recorder):
            rows = [run_example(bench, ex, tokenizer, decoder, recorder, stop_ids, newline_id, device, options)
                    for ex in examples]
        timed = rows[1:]
        predictions = [r["prediction"] for r in timed]
        reference = predictions if reference is None else reference
        speed = throughput(timed)
        results[mode] = {**speed, "same_as_first_mode": sum(a == b for a, b in zip(predictions, reference)),
                         "input_tokens": [r["input_tokens"] for r in timed],
                         "new_tokens": [r["new_tokens"] for r in timed]}
        split = ", ".join(f"{k[:-3]} {speed['phase_ms_mean'][k[:-3]]:.1f}" for k in PHASES)
        print(f"{model_name} @ {length} [{mode}]: {speed['examples_per_hour']:.0f} examples/hour; ms: {split}; "
              f"decode {speed['decode_ms_per_step'] or float('nan'):.2f} ms/step; same predictions as "
              f"{args.modes.split(',')[0]}: {results[mode]['same_as_first_mode']}/{len(timed)}", flush=True)
    note = f"random weights: answers meaningless, at most {args.random_new_tokens} new tokens" if random_weights else ""
    if note:
        print(f"  ({note})")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"model": model_name, "length": length, "method": args.method, "note": note, "modes": results}


def main(argv=None) -> int:
    args = parse_args(argv)
    report = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "setups": []}
    for setup in args.setups.split(","):
        name, length = setup.split(":")
        report["setups"].append(run_setup(name, int(length), args))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
