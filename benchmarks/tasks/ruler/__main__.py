"""Prepare the RULER cache ahead of a run (RULER's ``prepare.py`` step).

    python -m benchmarks.tasks.ruler --tokenizer-from smollm2 --lengths 4096,8192 --num-samples 20 \\
        --out data/ruler_cache

Unset options take their values from ``conf/bench/ruler.yaml``. Only the tokenizer is loaded
(``load_tokenizer``), never the model weights.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.config_files import CONF_DIR
from benchmarks.tasks.ruler import cache_file, load_examples, load_tokenizer, settings


def model_config(name: str, conf_dir: Path = CONF_DIR / "model") -> dict[str, Any]:
    """``conf/model/<name>.yaml`` with its Hydra ``defaults`` (same-group parents) merged in."""
    from omegaconf import OmegaConf

    path = conf_dir / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in conf_dir.glob("*.yaml"))
        raise FileNotFoundError(f"no model config {path}; choose one of {choices}")
    own = OmegaConf.load(path)
    defaults = list(own.pop("defaults", None) or ["_self_"])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        part = own if entry == "_self_" else OmegaConf.create(model_config(str(entry), conf_dir))
        merged = OmegaConf.merge(merged, part)
    return OmegaConf.to_container(merged, resolve=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: generate (or find cached) samples for every task and length; print what is cached."""
    parser = argparse.ArgumentParser(description="Generate the RULER sample cache with a model's tokenizer.")
    parser.add_argument("--tokenizer-from", required=True, help="model config name in conf/model (e.g. smollm2)")
    parser.add_argument("--lengths", help="comma-separated target lengths, e.g. 4096,8192")
    parser.add_argument("--tasks", help="comma-separated task names (default: all 13)")
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--template", choices=["chat", "base"])
    parser.add_argument("--template-set", choices=["anchorattention", "ruler2024"])
    parser.add_argument("--data-dir", help="folder with squad.json and hotpotqa.json")
    parser.add_argument("--out", help="cache folder (bench cache_dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from omegaconf import OmegaConf

    bench = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "bench" / "ruler.yaml"), resolve=True)
    overrides = {"lengths": args.lengths and [int(x) for x in args.lengths.split(",")],
                 "tasks": args.tasks and args.tasks.split(","), "num_samples": args.num_samples,
                 "seed": args.seed, "template": args.template, "template_set": args.template_set,
                 "data_dir": args.data_dir, "cache_dir": args.out}
    bench.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = settings(bench)
        tokenizer = load_tokenizer(model_config(args.tokenizer_from))
        examples = load_examples(cfg, tokenizer)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    counts = Counter((ex.length, ex.task) for ex in examples)
    for length in cfg["lengths"]:
        for task in cfg["tasks"]:
            n = counts.get((length, task), 0)
            where = cache_file(cfg, tokenizer, task, length) if n else "unavailable"
            print(f"{length:>7} {task:<16} {n:>4} samples  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
