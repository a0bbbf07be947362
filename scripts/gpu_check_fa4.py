"""GPU check of the FlashAttention-4 glue (anchor/kernels/fa4*.py, lse_merge.py) on an H200 (not CI).

Stage FA4 first (../shared/gpu/README.md: call 1 carries ``.fa4a``, call 2 ``.fa4b``), then:

    source .fa4b/install.sh && python scripts/gpu_check_fa4.py --out $OUT            # < 4 min
    source .fa4b/install.sh && python scripts/gpu_check_fa4.py --out $OUT --quick    # < 2 min

Sections (each case PASS / FAIL / ERROR / SKIP; an exception is reported, never fatal):

* ``dense``: ``fa4_dense`` vs fp32 attention (out and natural-log LSE): causal ``Lq == Lk`` and
  ``Lq < Lk``, GQA 32/8 and 14/2, D 128 / 64, bf16 / fp16, B 1-2, odd lengths, a decode row.
  Output bound: ``2 * max(SDPA error, rounding error of the fp32 reference) + 1e-4``; LSE: same
  ``-inf`` rows, ``|diff| <= 2e-3`` elsewhere. Also: ``Dense(backend="auto")`` runs FA4.
* ``sparse``: ``fa4_sparse_attention`` on random 128-tile indexes (diagonal tiles, empty lists,
  partial last tile, lists of 128 / 256 rows, per-head lists) and ``fa4_block_sparse`` on the
  shared causal / stage-1 patterns (pack_gqa on and off) vs fp32 attention over the same keys;
  the Triton kernel (``anchor.ops.sparse_attention``) on the same index is the noise baseline.
* ``merge``: the Triton LSE merge vs its reference; FA4 stage-1 blocks + the complementary causal
  blocks merged == dense causal attention.
* ``timing`` (bf16, 32/8 heads, D 128, B 1, random inputs, ``do_bench`` median): FA4 dense vs
  cuDNN and flash SDPA at 32k and 128k; at 128k the stage-1 pattern (initial 2048 + local 2048)
  on FA4 (shared blocks, per-head blocks, from a SparseIndex incl. conversion) vs Triton.
* ``varlen`` (``scripts/fa4_varlen_probe.py`` in a subprocess, 90 s timeout in case of a hang):
  ``flash_attn_varlen_func`` with ``seqlen_k == 0`` sequences, causal and not, ``return_lse``:
  zero rows / ``-inf`` LSE expected.
  Runs before the timings; ``--budget-s`` (default 225) skips what would run past it.

Writes ``fa4_check.json`` and ``fa4_check.md`` under ``--out`` after every section; exit 1 on any
FAIL / ERROR.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from anywhere

from anchor import ops  # noqa: E402
from anchor.kernels import fa4  # noqa: E402
from anchor.kernels.fa4_blocks import (  # noqa: E402
    blocks_attention_reference, blocks_from_index, blocks_from_tile_mask, causal_blocks, stage1_blocks)
from anchor.kernels.lse_merge import lse_log2_to_natural, merge_partials, merge_partials_reference  # noqa: E402
from anchor.params import AnchorParams  # noqa: E402
from methods.dense import Dense, dense_attention  # noqa: E402
from methods.index_builders import attend, index_from_tile_mask  # noqa: E402

BF16, FP16 = torch.bfloat16, torch.float16
LSE_ATOL = 2e-3
DEVICE = "cuda"
VARLEN_TIMEOUT_S = 90     # the probe compiles twice (~10-30 s); longer means a hang


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def lse_report(lse: torch.Tensor, ref: torch.Tensor) -> dict:
    """Max |diff| over finite rows and whether the ``-inf`` rows agree."""
    finite = torch.isfinite(ref)
    same_inf = bool(torch.equal(torch.isneginf(lse), torch.isneginf(ref)))
    diff = float((lse[finite] - ref[finite]).abs().max()) if bool(finite.any()) else 0.0
    return {"lse_max_abs": diff, "lse_same_neginf": same_inf, "neginf_rows": int((~finite).sum()),
            "lse_ok": same_inf and diff <= LSE_ATOL}


def qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, device=DEVICE, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, device=DEVICE, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, device=DEVICE, generator=g).to(dtype)
    return q, k, v


class Report:
    """Results, written after every section; deadline-aware."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.t0, self.budget = out, time.time(), budget_s
        self.checks: list[dict] = []
        self.timings: list[dict] = []
        self.env: dict = {}

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def run(self, section: str, name: str, fn, min_left: float = 15.0) -> None:
        """Run one check ``fn() -> dict`` (key ``ok`` decides PASS/FAIL); never raises."""
        t = time.time()
        if self.left() < min_left:
            rec = {"status": "SKIP", "why": "time budget"}
        else:
            try:
                rec = fn()
                rec["status"] = "PASS" if rec.pop("ok") else "FAIL"
            except Exception as err:                                     # report, continue
                rec = {"status": "ERROR", "error": f"{type(err).__name__}: {err}",
                       "trace": traceback.format_exc(limit=4)[-1500:]}
        rec.update(section=section, name=name, seconds=round(time.time() - t, 1))
        self.checks.append(rec)
        short = {k: v for k, v in rec.items() if k not in ("section", "name", "status", "trace")}
        print(f"[{rec['status']:5}] {section}/{name}: {json.dumps(short, default=str)}", flush=True)
        torch.cuda.empty_cache()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"env": self.env, "elapsed_s": round(time.time() - self.t0, 1), "checks": self.checks,
                "timings": self.timings}
        (self.out / "fa4_check.json").write_text(json.dumps(data, indent=2, default=str))
        lines = ["# FA4 GPU check", "", "```", json.dumps(self.env, indent=1, default=str), "```", "",
                 "| section | check | status | details |", "|---|---|---|---|"]
        for c in self.checks:
            det = {k: v for k, v in c.items() if k not in ("section", "name", "status", "trace")}
            lines.append(f"| {c['section']} | {c['name']} | {c['status']} | `{json.dumps(det, default=str)}` |")
        lines += ["", "| timing | ms (median) | note |", "|---|---|---|"]
        lines += [f"| {t['name']} | {t['ms']:.2f} | {t.get('note', '')} |" for t in self.timings]
        (self.out / "fa4_check.md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------- dense --

def dense_case(B, Hq, Hkv, Lq, Lk, D, dtype):
    def fn():
        q, k, v = qkv(B, Hq, Hkv, Lk, Lk, D, dtype, seed=Lq + Lk)
        q = q[:, :, Lk - Lq:]                                             # queries = last Lq positions
        out, lse = fa4.fa4_dense(q, k, v, return_lse=True)
        ref, ref_lse = blocks_attention_reference(q, k, v, causal_blocks(Lq, Lk, q.device))
        noise, noise_backend = sdpa_error(q, k, v, ref)
        err, rnd = rel(out, ref), rel(ref.to(dtype), ref)
        bound = 2 * max(noise, rnd) + 1e-4
        res = {"err": err, "bound": bound, "sdpa_err": noise, "sdpa_backend": noise_backend, "round_err": rnd,
               **lse_report(lse, ref_lse), "out_shape": list(out.shape), "out_stride": list(out.stride())}
        res["ok"] = err <= bound and res["lse_ok"] and out.shape == q.shape
        return res
    return fn


def sdpa_error(q, k, v, ref) -> tuple[float, str]:
    """Error of PyTorch's SDPA (same dtype) vs ``ref``: the low-precision noise level."""
    for backend in ("cudnn", "flash", "math"):
        try:
            return rel(dense_attention(q, k, v, backend=backend), ref), backend
        except (RuntimeError, ValueError):
            continue
    return 0.0, "none"


def dispatch_check():
    """``Dense(auto)`` runs FA4; a transposed ``[B, H, N, D]`` view reaches FA4 without a copy."""
    from flash_attn.cute.cute_dsl_utils import maybe_contiguous
    q, k, v = qkv(1, 32, 8, 300, 300, 128, BF16)
    method = Dense(backend="auto")
    out, _ = method(q, k, v)
    direct = fa4.fa4_dense(q, k, v)
    qt = q[:, :, 44:].transpose(1, 2)                                    # offset view, [B, N, H, D]
    no_copy = maybe_contiguous(qt).data_ptr() == qt.data_ptr()
    return {"last_backend": method.last_backend, "transpose_view_not_copied": no_copy,
            "ok": method.last_backend == "fa4" and bool(torch.equal(out, direct)) and no_copy}


# ---------------------------------------------------------------------------------- sparse --

def random_tiles(B, H, Lq, Lk, R, seed, density=0.3):
    """bool ``[B, H, L, T]`` random tiles + every list's diagonal tile; every 5th list empty."""
    g = torch.Generator().manual_seed(seed)
    L, T = math.ceil(Lq / R), math.ceil(Lk / 128)
    tiles = torch.rand(B, H, L, T, generator=g) < density
    last = (torch.clamp(torch.arange(L) * R + R, max=Lq) - 1 + Lk - Lq) // 128
    tiles[:, :, torch.arange(L), last] = True
    tiles[:, :, ::5] = False
    return tiles.to(DEVICE)


def sparse_index_case(B, Hq, Hkv, Lq, Lk, D, dtype, R):
    def fn():
        q, k, v = qkv(B, Hq, Hkv, Lk, Lk, D, dtype, seed=7 * Lq + Lk)
        q = q[:, :, Lk - Lq:]
        index, _ = index_from_tile_mask(random_tiles(B, Hq, Lq, Lk, R, seed=Lq), tile=128, rows_per_list=R,
                                        q_len=Lq, k_len=Lk)
        problem = fa4.fa4_sparse_problem(q, index, Lk)
        out, lse = fa4.fa4_sparse_attention(q, k, v, index, sm_scale=0.08)
        ref, ref_lse = blocks_attention_reference(q, k, v, blocks_from_index(index, q_len=Lq, k_len=Lk), sm_scale=0.08)
        tri, tri_lse = ops.sparse_attention(q, k, v, index, sm_scale=0.08, causal=True)
        via_attend = attend(q, k, v, index, sm_scale=0.08, backend="auto")
        err, noise, rnd = rel(out, ref), rel(tri, ref), rel(ref.to(dtype), ref)
        bound = 2 * max(noise, rnd) + 1e-4
        res = {"err": err, "bound": bound, "triton_err": noise, "round_err": rnd, **lse_report(lse, ref_lse),
               "triton_lse_max_abs": lse_report(lse_log2_to_natural(tri_lse), ref_lse)["lse_max_abs"],
               "fa4_problem": problem, "attend_auto_is_fa4": bool(torch.equal(via_attend, out)),
               "empty_rows_zero": bool((out.float()[torch.isneginf(ref_lse)] == 0).all())}
        res["ok"] = (problem is None and err <= bound and res["lse_ok"] and res["attend_auto_is_fa4"]
                     and res["empty_rows_zero"])
        return res
    return fn


def pattern_case(name, B, Hq, Hkv, Lq, Lk, D, dtype, pack_gqa):
    def fn():
        q, k, v = qkv(B, Hq, Hkv, Lk, Lk, D, dtype, seed=Lk)
        q = q[:, :, Lk - Lq:]
        if name == "causal":
            blocks = causal_blocks(Lq, Lk, q.device)
        else:
            blocks = stage1_blocks(Lk, init=2048, group=2048, local=2048, device=q.device)
        out, lse = fa4.fa4_block_sparse(q, k, v, blocks, pack_gqa=pack_gqa)
        ref, ref_lse = blocks_attention_reference(q, k, v, blocks)
        err, rnd = rel(out, ref), rel(ref.to(dtype), ref)
        res = {"err": err, "bound": 3 * rnd + 1e-4, "round_err": rnd, **lse_report(lse, ref_lse)}
        if name == "causal":
            res["vs_fa4_dense"] = rel(out, fa4.fa4_dense(q, k, v))
        res["ok"] = err <= res["bound"] and res["lse_ok"]
        return res
    return fn


# ----------------------------------------------------------------------------------- merge --

def merge_kernel_case():
    B, H, N, D = 2, 32, 3001, 128
    g = torch.Generator(device=DEVICE).manual_seed(0)
    o1, o2 = (torch.randn(B, H, N, D, device=DEVICE, generator=g).to(BF16) for _ in range(2))
    l1, l2 = (torch.randn(B, H, N, device=DEVICE, generator=g) * 5 for _ in range(2))
    l1[:, :, :100] = float("-inf")
    l2[:, :, 50:150] = float("-inf")
    out, lse = merge_partials(o1, l1, o2, l2)
    ref, ref_lse = merge_partials_reference(o1, l1, o2, l2)
    err = rel(out, ref)
    rep = lse_report(lse, ref_lse)
    return {"err": err, **rep, "ok": err <= 2 * rel(ref.to(BF16), ref) + 1e-4 and rep["lse_max_abs"] <= 1e-4
            and rep["lse_same_neginf"]}


def merge_union_case(N=8192):
    q, k, v = qkv(1, 32, 8, N, N, 128, BF16, seed=3)
    s1 = stage1_blocks(N, init=2048, group=2048, local=2048, device=q.device)
    M, T = s1.mask_cnt.shape[-1], math.ceil(N / 128)
    rest = causal_blocks(N, N, q.device).listed(T) & ~s1.listed(T)         # [1, 1, M, T]
    o1, l1 = fa4.fa4_block_sparse(q, k, v, s1)
    o2, l2 = fa4.fa4_block_sparse(q, k, v, blocks_from_tile_mask(rest, q_len=N, k_len=N))
    out, lse = merge_partials(o1, l1, o2, l2)
    ref, ref_lse = blocks_attention_reference(q, k, v, causal_blocks(N, N, q.device))
    dense_out, dense_lse = fa4.fa4_dense(q, k, v, return_lse=True)
    err, dense_err = rel(out, ref), rel(dense_out, ref)
    rep = lse_report(lse, ref_lse)
    return {"err": err, "fa4_dense_err": dense_err, **rep, "blocks": [M, T],
            "ok": err <= 2 * max(dense_err, rel(ref.to(BF16), ref)) + 1e-4 and rep["lse_ok"]}


# ---------------------------------------------------------------------------------- timing --

def bench(fn) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def timing_dense(rep: Report, N: int):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = qkv(1, 32, 8, N, N, 128, BF16, seed=N)
    flops = 4 * 32 * 128 * (N * (N + 1) // 2)

    def sdpa(backend):
        def fn():
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return fn
    for name, fn in (("fa4", lambda: fa4.fa4_dense(q, k, v)), ("sdpa_cudnn", sdpa(SDPBackend.CUDNN_ATTENTION)),
                     ("sdpa_flash", sdpa(SDPBackend.FLASH_ATTENTION))):
        def one(fn=fn, name=name):
            ms = bench(fn)
            rep.timings.append({"name": f"dense {name} N={N}", "ms": ms, "note": f"{flops / ms / 1e9:.0f} TFLOP/s"})
            return {"ms": ms, "ok": True}
        rep.run("timing", f"dense-{name}-{N}", one, min_left=30 + 4 * N / 32768)


def timing_stage1(rep: Report, N: int):
    q, k, v = qkv(1, 32, 8, N, N, 128, BF16, seed=1)
    shared = stage1_blocks(N, init=2048, group=2048, local=2048, device=q.device)
    T = math.ceil(N / 128)
    tiles = shared.listed(T).expand(1, q.shape[1], -1, -1)               # [1, Hq, M, T]
    index, _ = index_from_tile_mask(tiles, tile=128, rows_per_list=128, q_len=N, k_len=N)
    per_head = blocks_from_index(index, q_len=N, k_len=N)
    params = AnchorParams(theta=12.0, step=16, block_size=128, init_size=None, local_size=None, tail="sparse",
                          tail_block_size=16)
    o1, l1 = fa4.fa4_block_sparse(q, k, v, shared)
    cases = [("fa4 shared blocks", lambda: fa4.fa4_block_sparse(q, k, v, shared)),
             ("fa4 per-head blocks", lambda: fa4.fa4_block_sparse(q, k, v, per_head)),
             ("fa4 from SparseIndex (incl. conversion)", lambda: fa4.fa4_sparse_attention(q, k, v, index)),
             ("index -> blocks conversion only", lambda: blocks_from_index(index, q_len=N, k_len=N)),
             ("triton sparse_attention, same index", lambda: ops.sparse_attention(q, k, v, index)),
             ("triton anchor stage 1 (out, lse, pooled q, anchors)", lambda: ops.run_stage1(q, k, v, params)),
             ("lse merge of two such partials (Triton)", lambda: merge_partials(o1, l1, o1, l1))]
    for name, fn in cases:
        def one(fn=fn, name=name):
            ms = bench(fn)
            rep.timings.append({"name": f"stage-1 pattern N={N}: {name}", "ms": ms})
            return {"ms": ms, "ok": True}
        rep.run("timing", f"stage1-{N}-{name}", one, min_left=25)


# ---------------------------------------------------------------------------------- varlen --

def varlen_check():
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fa4_varlen_probe.py"))],
                              capture_output=True, text=True, timeout=VARLEN_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return {"ok": False, "timeout_s": VARLEN_TIMEOUT_S, "stderr": str(err.stderr or "")[-1500:]}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "returncode": proc.returncode, "stderr": proc.stderr[-1500:]}
    res = json.loads(lines[-1])
    return {**res, "ok": all(r["ok"] for r in res.values())}


# ------------------------------------------------------------------------------------ main --

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results/fa4_check")))
    p.add_argument("--quick", action="store_true", help="fewer cases, timings at 32k only")
    p.add_argument("--budget-s", type=float, default=225.0, help="skip what would run past this")
    args = p.parse_args(argv)
    rep = Report(args.out, args.budget_s)
    t = time.time()
    installed = fa4.fa4_installed()
    rep.env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
               "capability": torch.cuda.get_device_capability(), "fa4_installed": installed,
               "fa4_import_s": round(time.time() - t, 1), "fa4_import_problem": fa4._import_problem(),
               "quick": args.quick}
    try:
        from importlib.metadata import version
        rep.env["flash_attn_4"] = version("flash-attn-4")
        import triton
        rep.env["triton"] = triton.__version__
    except Exception as err:
        rep.env["version_error"] = str(err)
    print(json.dumps(rep.env, default=str), flush=True)
    if not installed:
        rep.write()
        print("FA4 is not importable: run `source .fa4b/install.sh` first (../shared/gpu/README.md)")
        return 1
    q = args.quick
    dense = [(1, 32, 8, 4097, 4097, 128, BF16), (2, 32, 8, 1000, 3001, 128, BF16),
             (2, 14, 2, 2049, 2049, 64, BF16), (1, 14, 2, 1537, 1537, 128, FP16),
             (1, 32, 8, 513, 2500, 64, FP16), (2, 32, 8, 1, 1025, 128, BF16)]
    for case in (dense[:3] if q else dense):
        B, Hq, Hkv, Lq, Lk, D, dt = case
        rep.run("dense", f"B{B}-H{Hq}x{Hkv}-Lq{Lq}-Lk{Lk}-D{D}-{str(dt)[6:]}", dense_case(*case))
    rep.run("dense", "auto-dispatch", dispatch_check)
    rep.write()
    sparse = [(2, 32, 8, 2048, 2048, 128, BF16, 128), (1, 32, 8, 1000, 3001, 128, BF16, 256),
              (2, 14, 2, 1111, 1111, 64, FP16, 128)]
    for case in (sparse[:2] if q else sparse):
        B, Hq, Hkv, Lq, Lk, D, dt, R = case
        rep.run("sparse", f"index-B{B}-H{Hq}x{Hkv}-Lq{Lq}-Lk{Lk}-D{D}-{str(dt)[6:]}-R{R}", sparse_index_case(*case))
    patterns = [("causal", 1, 32, 8, 3000, 3000, 128, BF16, None), ("causal", 2, 32, 8, 700, 2900, 128, BF16, False),
                ("stage1", 1, 32, 8, 8192, 8192, 128, BF16, None), ("stage1", 1, 32, 8, 8192, 8192, 128, BF16, False)]
    for name, *case in (patterns[::2] if q else patterns):
        B, Hq, Hkv, Lq, Lk, D, dt, pack = case
        rep.run("sparse", f"{name}-B{B}-Lq{Lq}-Lk{Lk}-pack_gqa={pack}", pattern_case(name, *case))
    rep.write()
    rep.run("merge", "kernel-vs-reference", merge_kernel_case)
    rep.run("merge", "stage1+rest==dense-8192", merge_union_case)
    rep.write()
    rep.run("varlen", "seqlen_k=0 sequences (subprocess)", varlen_check, min_left=60)
    rep.write()
    for N in ([32768] if q else [32768, 131072]):
        timing_dense(rep, N)
        rep.write()
    timing_stage1(rep, 32768 if q else 131072)
    rep.write()
    bad = [c for c in rep.checks if c["status"] in ("FAIL", "ERROR")]
    print(f"{len(rep.checks) - len(bad)}/{len(rep.checks)} checks without FAIL/ERROR in "
          f"{time.time() - rep.t0:.0f} s; wrote {args.out}/fa4_check.json and fa4_check.md", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
