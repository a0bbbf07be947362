"""GPU timing of MInference Vertical-Slash (methods/vertical_slash.py) by part, structured bf16 inputs (not CI).

    python scripts/vs_index_profile.py                                  # H100: a few minutes
    python scripts/vs_index_profile.py --lengths 32768 --sizes 256:1024 --repeats 5
    python scripts/vs_index_profile.py --run-rounding exact             # exact slash runs (tail columns)

Inputs: ``benchmarks.structured_inputs.make_qkv("structured", 1, 32, 8, n, 128, bf16, seed=0,
stripe_fraction=0.01)``. The method is ``conf/method/vertical_slash.yaml`` with each
``vertical:slash`` size of ``--sizes`` and ``run_rounding`` set by ``--run-rounding``
(``upstream``, the default, or ``exact``). For every length and size, after one warm-up call,
the median synchronised wall time over ``--repeats`` of ``VerticalSlash.select``,
``index_from_diagonals``, ``attend`` (the sparse kernel) and the whole call; whole tiles,
gathered columns and density (visible pairs / causal pairs, mean over heads); dense causal cuDNN
SDPA (``methods.dense.dense_attention``) for scale. At ``--check-length`` the Triton output on
fp16 copies of the inputs (fp32 needs more shared memory than the D=128 launch configuration
has) is compared with ``sparse_attention_reference`` (fp32) over the same index; exits 1 if the
relative error exceeds ``--check-tol`` (fp16 rounding of the output alone gives about 3e-4).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anchor.reference import sparse_attention_reference  # noqa: E402
from anchor.stats import causal_pair_count  # noqa: E402
from benchmarks.structured_inputs import make_qkv  # noqa: E402
from methods import get_method  # noqa: E402
from methods.dense import dense_attention  # noqa: E402
from methods.index_builders import RUN_ROUNDINGS, attend, index_from_diagonals  # noqa: E402

HQ, HKV, HEAD_DIM = 32, 8, 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="32768,131072", help="comma-separated sequence lengths")
    p.add_argument("--sizes", default="64:256,256:1024,1024:4096", help="comma-separated vertical:slash sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per part (median reported)")
    p.add_argument("--check-length", type=int, default=4096, help="length of the correctness check (0: skip)")
    p.add_argument("--check-tol", type=float, default=1e-3, help="largest relative error of the check")
    p.add_argument("--run-rounding", default="upstream", choices=RUN_ROUNDINGS,
                   help="VerticalSlash run_rounding: upstream (MInference's whole-block runs) or exact")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.sizes = [tuple(int(y) for y in x.split(":")) for x in args.sizes.split(",")]
    if any(len(s) != 2 for s in args.sizes):
        p.error("--sizes: expected vertical:slash pairs, e.g. 64:256,256:1024")
    return args


def build_method(vertical: int, slash: int, run_rounding: str):
    """``VerticalSlash`` from ``conf/method/vertical_slash.yaml`` with the given sizes and run rounding."""
    cfg = yaml.safe_load((REPO / "conf" / "method" / "vertical_slash.yaml").read_text())
    return get_method(dict(cfg, vertical_size=vertical, slash_size=slash, run_rounding=run_rounding))


def timed(fn, device: torch.device, repeats: int):
    """``(result of the last call, median ms)`` of ``repeats`` synchronised calls of ``fn``."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return result, statistics.median(times)


def profile(n: int, sizes: list[tuple[int, int]], run_rounding: str, device: torch.device, repeats: int) -> None:
    """Print one line per size at length ``n``."""
    q, k, v = make_qkv("structured", 1, HQ, HKV, n, HEAD_DIM, torch.bfloat16, device, seed=0, stripe_fraction=0.01)
    scale = HEAD_DIM ** -0.5
    _, t_dense = timed(lambda: dense_attention(q, k, v, backend="cudnn"), device, repeats)
    print(f"N={n}: dense cuDNN SDPA {t_dense:.1f} ms", flush=True)
    for vertical, slash in sizes:
        method = build_method(vertical, slash, run_rounding)
        method(q, k, v, sm_scale=scale)                                     # warm-up (compiles)
        sel, t_sel = timed(lambda: method.select(q, k, sm_scale=scale), device, repeats)
        (index, pairs), t_index = timed(lambda: index_from_diagonals(
            sel.offsets, sel.columns, sel.columns_valid, block=method.block_size, q_len=n, k_len=n,
            rounding=run_rounding), device, repeats)
        _, t_attend = timed(lambda: attend(q, k, v, index, sm_scale=scale, backend=method.backend), device, repeats)
        _, t_all = timed(lambda: method(q, k, v, sm_scale=scale), device, repeats)
        density = float(pairs.double().mean()) / causal_pair_count(n, n)
        print(f"N={n} v={vertical} s={slash} {run_rounding}: select {t_sel:.1f} ms, index {t_index:.1f} ms, "
              f"kernel {t_attend:.1f} ms, total {t_all:.1f} ms; full tiles {index.full_ids.numel()}, "
              f"columns {index.col_ids.numel()}, density {density:.3f}", flush=True)


def check(n: int, sizes: list[tuple[int, int]], run_rounding: str, device: torch.device, tol: float) -> bool:
    """Triton (fp16) vs ``sparse_attention_reference`` (fp32, same index) for every size at ``n``."""
    q, k, v = (x.half() for x in make_qkv("structured", 1, HQ, HKV, n, HEAD_DIM, torch.bfloat16, device,
                                           seed=0, stripe_fraction=0.01))
    scale = HEAD_DIM ** -0.5
    ok = True
    for vertical, slash in sizes:
        method = build_method(vertical, slash, run_rounding)
        index, _ = method.index(q, k, sm_scale=scale)
        out = attend(q, k, v, index, sm_scale=scale, backend="triton")
        ref = sparse_attention_reference(q.float(), k.float(), v.float(), index, sm_scale=scale)
        err = float((out.float() - ref).norm() / ref.norm())
        rounding = float((ref.half().float() - ref).norm() / ref.norm())
        ok &= err <= tol
        print(f"check N={n} v={vertical} s={slash} {run_rounding}: relative error {err:.2e} (fp16 rounding {rounding:.2e}; "
              f"{'ok' if err <= tol else 'FAIL'}, tol {tol:g}); full tiles {index.full_ids.numel()}, "
              f"columns {index.col_ids.numel()}", flush=True)
        del index, out, ref
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the check, then the timings; 1 if the check failed."""
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}", flush=True)
    ok = check(args.check_length, args.sizes, args.run_rounding, device, args.check_tol) if args.check_length else True
    for n in args.lengths:
        profile(n, args.sizes, args.run_rounding, device, args.repeats)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
