"""Launch-configuration sweep for the AnchorAttention kernels (GPU only).

Times each stage over a small grid of tile sizes / warps / pipeline stages on ``random`` (full
density) and ``structured`` (1% stripes) inputs and prints one line per configuration; the best
ones are written by hand into ``anchor/ops.py`` (``STAGE1_CONFIG``, ``SCORE_CONFIG``,
``SPARSE_CONFIG``) and recorded in ``results/kernels/TUNING.md``.

    python -m benchmarks.kernels.tuning --length 131072 --head-dim 128
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton

import anchor.ops as ops
from anchor.params import AnchorParams
from benchmarks.structured_inputs import make_qkv


def _ms(fn, rep: int = 300) -> float:
    try:
        return triton.testing.do_bench(fn, warmup=30, rep=rep, return_mode="median")
    except Exception as err:  # e.g. a config needing more shared memory than the GPU has
        print(f"  skipped: {str(err)[:90]}")
        return float("nan")


def _sweep(name: str, table: dict, key: str, grid: dict, fn, rep: int = 300) -> dict:
    """Time ``fn`` for every config in the product ``grid``; keep the fastest in ``table[key]``."""
    results = []
    for values in itertools.product(*grid.values()):
        cfg = dict(zip(grid, values))
        table[key] = cfg
        t = _ms(fn, rep)
        print(f"{name} {cfg}: {t:.2f} ms", flush=True)
        if t == t:
            results.append((t, cfg))
    best = min(results, key=lambda r: r[0])
    table[key] = best[1]
    print(f"BEST {name}: {best[1]} {best[0]:.2f} ms", flush=True)
    return best[1]


def main(argv: list[str] | None = None) -> None:
    """Run the sweep at one length and head_dim (32 query / 8 KV heads, bf16)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=131072)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args(argv)
    N, D, key = args.length, args.head_dim, ("small" if args.head_dim <= 64 else "large")
    p = AnchorParams(theta=12.0, step=16, block_size=128, init_size=None, local_size=None, tail="dense",
                     tail_block_size=16)
    shape = dict(B=1, Hq=32, Hkv=8, N=N, D=D, dtype=torch.bfloat16, device="cuda", seed=0)
    qr, kr, vr = make_qkv("random", **shape)
    qs, ks, vs = make_qkv("structured", stripe_fraction=0.01, **shape)
    _sweep("stage1", ops.STAGE1_CONFIG, key,
           {"BLOCK_N": [64, 128], "num_warps": [4, 8], "num_stages": [2, 3]},
           lambda: ops.run_stage1(qr, kr, vr, p))
    s1r, s1s = ops.run_stage1(qr, kr, vr, p), ops.run_stage1(qs, ks, vs, p)
    _sweep("select", ops.SCORE_CONFIG, key, {"num_warps": [4, 8], "num_stages": [1, 2, 3]},
           lambda: ops.run_selection(qs, ks, s1s, p))
    sel_r, sel_s = ops.run_selection(qr, kr, s1r, p), ops.run_selection(qs, ks, s1s, p)
    _sweep("sparse-full", ops.SPARSE_CONFIG, key, {"GATHER": [128], "num_warps": [4, 8], "num_stages": [2, 3]},
           lambda: ops.run_sparse(qr, kr, vr, s1r, sel_r, p), rep=1500)
    _sweep("sparse-stripes", ops.SPARSE_CONFIG, key,
           {"GATHER": [64, 128], "num_warps": [4, 8], "num_stages": [2, 3, 4]},
           lambda: ops.run_sparse(qs, ks, vs, s1s, sel_s, p))


if __name__ == "__main__":
    main()
