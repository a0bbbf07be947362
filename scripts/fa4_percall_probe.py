"""Per-call wall time of the block methods on FlashAttention-4 block sparsity vs our Triton kernel
at SmolLM2's attention shape (9 query / 3 KV heads, D 64, bf16), the length changing from call to
call as in a RULER run (GPU with FA4 installed; not for CI):

    python scripts/fa4_percall_probe.py          # results/kernels/fa4_percall_h200.txt

Each printed line: method, kernel, then ``<tokens>:<ms>`` per call (synchronised wall time of the
whole method call: selection, index build and attention; the first call includes compilation).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402,F401  (registers the methods)
from benchmarks.config_files import conf_yaml  # noqa: E402
from methods.registry import get_method  # noqa: E402

LENGTHS = (3900, 4000, 4100, 3900, 8000, 7900, 8000, 6100, 8100, 8100)


def call_ms(method, n: int) -> float:
    """Wall time (ms) of one synchronised ``method(q, k, v)`` call on random inputs of ``n`` tokens."""
    q = torch.randn(1, 9, n, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 3, n, 64, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    method(q, k, k)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.manual_seed(0)
    for name in ("streaming", "flexprefill"):
        for backend in ("fa4", "triton"):
            method = get_method({**conf_yaml("method", name), "backend": backend})
            times = [call_ms(method, n) for n in LENGTHS]
            print(name, backend, " ".join(f"{n}:{t:.1f}" for n, t in zip(LENGTHS, times)), "ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
