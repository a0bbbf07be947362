"""GPU check and timing of AnchorAttention's tail rules (CUDA only; not CI).

    python scripts/gpu_bench_tail.py --out $OUT        # H100/H200: about two minutes

1. ``dense_causal_attention`` (the ``dense`` tail: the last ``N mod 2048`` rows over all keys,
   bottom-right causal, GQA 32/8, D 128, bf16) vs fp32 dense attention at N = 10000 and 32845, and
   which SDPA backends accept PyTorch's lower-right causal bias (``lower_right_<backend>``: error
   vs fp32, or the refusal).
2. At N = 131071 (a 2047-row tail): milliseconds of the tail by ``dense_causal_attention``, by SDPA
   with an explicit boolean mask per backend, and by the Triton sparse kernel with every tile, and
   of full dense attention (cuDNN) for scale.
3. ``anchor_attention`` (theta 12, authors' regions, structured inputs) per tail rule at
   N = 131071 and 130047: milliseconds, density per stage, ``upstream_ratio``, peak extra memory.

Writes ``tail_bench.json`` under ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from anywhere

from anchor import ops  # noqa: E402
from anchor.params import AnchorParams  # noqa: E402
from anchor.reference import dense_attention_reference  # noqa: E402
from anchor.sparse_index import SparseIndex  # noqa: E402
from anchor.tail import dense_causal_attention  # noqa: E402
from benchmarks.structured_inputs import make_qkv  # noqa: E402

SCALE = 128 ** -0.5


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def ms(fn) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def sdpa_backends():
    from torch.nn.attention import SDPBackend
    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def check_dense_tail(res: dict, dev: torch.device) -> None:
    """Part 1: error of the dense tail vs fp32 (first 2 KV groups), backends of the lower-right bias."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    for N in (10000, 32768 + 77):
        q, k, v = make_qkv("structured", 1, 32, 8, N, 128, torch.bfloat16, dev, 0)
        P = N - N % 2048
        ref = dense_attention_reference(q[:, :8, P:], k[:, :2], v[:, :2], out_dtype=torch.float32)
        res[f"err_dense_tail_N{N}"] = rel(dense_causal_attention(q[:, :, P:], k, v, SCALE)[:, :8], ref)
        for name, backend in sdpa_backends().items():
            try:
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(q[:, :, P:], k, v, attn_mask=causal_lower_right(N - P, N),
                                                         enable_gqa=True)
                res[f"lower_right_{name}_N{N}"] = rel(out[:, :8], ref)
            except RuntimeError as err:
                res[f"lower_right_{name}_N{N}"] = f"refused: {str(err)[:100]}"


def time_dense_tail(res: dict, dev: torch.device) -> None:
    """Part 2: the 2047-row tail at 131071 tokens, four ways."""
    from torch.nn.attention import sdpa_kernel
    N = 131071
    q, k, v = make_qkv("structured", 1, 32, 8, N, 128, torch.bfloat16, dev, 0)
    P = N - N % 2048
    qt = q[:, :, P:]
    res["ms_tail_dense_causal_attention"] = ms(lambda: dense_causal_attention(qt, k, v, SCALE))
    mask = torch.arange(N, device=dev)[None, :] <= torch.arange(P, N, device=dev)[:, None]     # [T, N]
    for name, backend in sdpa_backends().items():
        try:
            with sdpa_kernel(backend):
                res[f"ms_tail_bool_mask_{name}"] = ms(
                    lambda: F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, enable_gqa=True))
        except RuntimeError as err:
            res[f"ms_tail_bool_mask_{name}"] = f"refused: {str(err)[:100]}"
    every_tile = torch.ones(1, 32, math.ceil((N - P) / 128), N, dtype=torch.bool, device=dev)
    index = SparseIndex.from_key_mask(every_tile, 128, 128)
    res["ms_tail_triton_sparse_all_tiles"] = ms(lambda: ops.sparse_attention(qt, k, v, index, causal=True))
    res["ms_full_dense"] = ms(lambda: dense_causal_attention(q, k, v, SCALE))


def time_rules(res: dict, dev: torch.device) -> None:
    """Part 3: anchor_attention per tail rule."""
    q, k, v = make_qkv("structured", 1, 32, 8, 131071, 128, torch.bfloat16, dev, 0)
    for N in (131071, 130047):
        qq, kk, vv = (x[:, :, :N].contiguous() for x in (q, k, v))
        for tail in ("dense", "sparse", "query_aware"):
            p = AnchorParams(theta=12.0, step=16, block_size=128, init_size=None, local_size=None, tail=tail,
                             tail_block_size=16)
            _, stats = ops.anchor_attention(qq, kk, vv, p)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ops.anchor_attention(qq, kk, vv, p)
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            res[f"anchor_N{N}_{tail}"] = {"ms": ms(lambda: ops.anchor_attention(qq, kk, vv, p)),
                                          "density": stats.density, "stages": stats.stage_density(),
                                          "extra": stats.extra, "peak_extra_mib": peak}
            print(tail, N, json.dumps(res[f"anchor_N{N}_{tail}"]), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/gpu_bench_tail"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False                      # fp32 references stay fp32
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with torch.no_grad():
        for part in (check_dense_tail, time_dense_tail, time_rules):
            part(res, dev)
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tail_bench.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
