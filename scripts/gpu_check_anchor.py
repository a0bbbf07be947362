"""GPU correctness check of the AnchorAttention kernels in bf16/fp16, up to 128k tokens (not CI).

    python scripts/gpu_check_anchor.py --out $OUT          # H100: a few minutes
    TRITON_INTERPRET=1 python scripts/gpu_check_anchor.py --tiny --device cpu --out /tmp/check

For each case (``CASES``: odd lengths, GQA 32/8 and 28/4, head_dim 128/64, batch 1/2), tail rule
(``--tails``, default ``dense,query_aware``: the last ``N mod G`` rows attend every causal key, or
their own per-block selection) and theta:

1. selection: the kernel's key sets of the groups of rows ``[0, P)`` (``P = params.prefix_len(N)``;
   ``run_selection(...).index`` on the first ``P`` tokens) vs ``anchor_selection_reference``
   (fp32). The ``query_aware`` tail's selection is PyTorch on both paths (not compared). A disagreement on key ``j`` of group ``g`` is allowed only if its margin
   ``m = max_r (qbar_r . k_j * scale + theta - abar_r)`` satisfies ``|m| <= tol(g, j)`` with
   (``u`` = unit roundoff of the input dtype, ``|x| @ |y|`` = sum of absolute products)::

       tol = 2u * max_r scale |qbar_r| @ |k_j|                    # qbar rounded to the input dtype:
                                                                 # fp32 sums in another order may
                                                                 # round 1 ulp apart
           + g32 * (max_r scale |qbar_r| @ |k_j| + A)            # fp32 dot accumulation, g32 = D 2^-22
           + 8 eps32 * (|sbar| + |abar| + |theta|)               # log2 conversion and compare in fp32

   where ``A = scale max_i |q_i| max_j |k_j|`` bounds the anchor's logits. Anchors and scores use
   the unrounded inputs with fp32 accumulation in both codes, so nothing else differs.
2. output: the kernel output vs fp32 attention over the kernel's own key sets (stage-1 regions plus
   its selection; tail rows by the tail rule), so a tolerated selection flip does not count as
   output error (``err_tail_rows``: the same error on the tail rows alone, reported). Must be within
   ``2x`` the error of cuDNN SDPA (same dtype; flash if cuDNN refuses the shape, noted in
   ``noise_backend``) vs fp32 dense attention (floor ``1e-6`` for fp32 dry runs). The error vs
   ``anchor_attention_reference`` (its own selection, output rounded to the input dtype) is
   reported, not judged.
3. ``theta = inf`` (keep everything): the kernel output vs fp32 dense attention, same ``2x`` rule.

Above ``--full-ref-max`` tokens the references run on the first KV group only (memory).
Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default ``$OUT``), prints
PASS/FAIL per case and exits 1 if any case fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from anywhere

from anchor import ops  # noqa: E402
from anchor.params import AnchorParams  # noqa: E402
from anchor.reference import (  # noqa: E402
    AnchorSelection,
    anchor_attention_reference,
    anchor_selection_reference,
    attention_over_selection,
    dense_attention_reference,
)
from benchmarks.analysis.metrics import relative_error as rel_err  # noqa: E402
from benchmarks.structured_inputs import make_qkv  # noqa: E402
from methods.dense import dense_attention  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}
EPS32 = 2.0 ** -23
ERR_FLOOR = 1e-6


@dataclass(frozen=True)
class Case:
    """One input shape; every theta in ``thetas`` is checked on the same input."""

    N: int
    B: int
    Hq: int
    Hkv: int
    D: int
    dtype: str
    kind: str
    thetas: tuple[float, ...]
    block: int = 128
    step: int = 16

    @property
    def name(self) -> str:
        return (f"N{self.N}-B{self.B}-H{self.Hq}x{self.Hkv}-D{self.D}-{self.dtype}-{self.kind}"
                f"-b{self.block}s{self.step}")

    def params(self, theta: float, tail: str) -> AnchorParams:
        """The case's hyperparameters (default regions, ``tail_block_size`` 16)."""
        return AnchorParams(theta=theta, step=self.step, block_size=self.block, init_size=None, local_size=None,
                            tail=tail, tail_block_size=16)


INF = math.inf
CASES = [
    Case(4096, 2, 32, 8, 128, "bf16", "structured", (12.0, INF), block=64, step=8),
    Case(4096, 2, 28, 4, 64, "fp16", "random", (3.5, INF), block=32, step=8),
    Case(10000, 1, 32, 8, 128, "bf16", "random", (3.5,)),
    Case(10000, 2, 28, 4, 64, "bf16", "structured", (12.0, INF)),
    Case(32768 + 77, 1, 32, 8, 128, "bf16", "structured", (12.0, INF)),
    Case(32768 + 77, 1, 28, 4, 128, "fp16", "structured", (12.0,)),
    Case(131072, 1, 32, 8, 128, "bf16", "structured", (12.0, INF)),
]
TINY_CASES = [
    Case(250, 2, 4, 2, 32, "fp32", "structured", (12.0, INF), block=16, step=2),
    Case(201, 1, 4, 2, 32, "fp32", "structured", (1.0,), block=16, step=2),
    Case(193, 1, 6, 2, 16, "fp16", "random", (1.0,), block=16, step=2),
]


def pooled_queries(q: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 ``[nb, D]`` mean of each ``block`` rows of ``q [N, D]`` (last block partial), rounded to q's dtype."""
    N, D = q.shape
    nb = math.ceil(N / block)
    sums = F.pad(q.float(), (0, 0, 0, nb * block - N)).view(nb, block, D).sum(1)   # [nb, D]
    counts = torch.clamp(N - torch.arange(nb, device=q.device) * block, max=block)
    return (sums / counts[:, None]).to(q.dtype).float()


def compare_selection(q, k, kern: torch.Tensor, params: AnchorParams, ref: AnchorSelection) -> dict:
    """Kernel key sets ``kern [B, H, nG, N]`` vs the fp32 reference ``ref``, with the margin tolerance."""
    B, H, N, D = q.shape
    P = params.prefix_len(N)
    rep, scale, u = H // k.shape[1], params.scale(D), UNIT_ROUNDOFF[q.dtype]
    g32 = D * 2.0 ** -22
    res = {"selected_ref": int(ref.keys.sum()), "selected_kernel": int(kern.sum()), "disagree": 0,
           "disagree_outside_tol": 0, "outside_candidates": 0, "within_tol": 0, "max_tol": 0.0,
           "max_bad_margin": 0.0}
    for b in range(B):
        for h in range(H):
            kf = k[b, h // rep].float()
            qbar = pooled_queries(q[b, h, :P], params.block_size)          # [nb, D]
            abar = ref.pooled_anchor[b, h]                                  # [nb] nats
            a_bound = scale * float(q[b, h].float().norm(dim=-1).max() * kf.norm(dim=-1).max())
            for g in range(kern.shape[2]):
                lo, hi = params.candidate_range(g)
                hi = min(hi, N)
                outside = kern[b, h, g].clone()
                outside[lo:max(lo, hi)] = False
                res["outside_candidates"] += int(outside.sum())
                if hi <= lo:
                    continue
                rows = slice(g * params.step, min((g + 1) * params.step, qbar.shape[0]))
                sbar = qbar[rows] @ kf[lo:hi].T * scale                     # [step, hi - lo]
                margin = (sbar + params.theta - abar[rows, None]).amax(0)
                absdot = (qbar[rows].abs() @ kf[lo:hi].abs().T * scale).amax(0)
                theta_term = abs(params.theta) if math.isfinite(params.theta) else 0.0
                tol = (2 * u * absdot + g32 * (absdot + a_bound)
                       + 8 * EPS32 * (sbar.abs().amax(0) + abar[rows].abs().max() + theta_term))
                diff = kern[b, h, g, lo:hi] != ref.keys[b, h, g, lo:hi]
                bad = diff & ~(margin.abs() <= tol)
                res["disagree"] += int(diff.sum())
                res["disagree_outside_tol"] += int(bad.sum())
                res["within_tol"] += int((margin.abs() <= tol).sum())
                res["max_tol"] = max(res["max_tol"], float(tol.max()))
                if bad.any():
                    res["max_bad_margin"] = max(res["max_bad_margin"], float(margin[bad].abs().max()))
    res["ok"] = res["disagree_outside_tol"] == 0 and res["outside_candidates"] == 0
    return res


def noise_floor(q, k, v, dense32: torch.Tensor) -> tuple[float, str]:
    """Relative error of dense SDPA in the input dtype vs fp32: cuDNN, flash if cuDNN refuses the
    shape (the math kernel on CPU dry runs)."""
    for backend in ("cudnn", "flash") if q.is_cuda else ("math",):
        try:
            return rel_err(dense_attention(q, k, v, backend=backend), dense32), backend
        except RuntimeError as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            print(f"[check] SDPA {backend} unavailable for q{tuple(q.shape)}: {err}", flush=True)
    raise RuntimeError("neither cuDNN nor flash SDPA ran: no noise floor")


def check_case(case: Case, args: argparse.Namespace) -> list[dict]:
    """All checks of one case; one result dict per theta."""
    device, dtype = torch.device(args.device), DTYPES[case.dtype]
    q, k, v = make_qkv(case.kind, case.B, case.Hq, case.Hkv, case.N, case.D, dtype, device, args.seed,
                       stripe_fraction=args.stripe_fraction)
    n_kv = case.Hkv if case.N <= args.full_ref_max else 1
    hs = n_kv * case.Hq // case.Hkv
    qs, ks, vs = (x[:, :h].contiguous() for x, h in ((q, hs), (k, n_kv), (v, n_kv)))  # heads checked vs fp32
    dense32 = dense_attention_reference(qs, ks, vs, out_dtype=torch.float32)
    noise, noise_backend = noise_floor(qs, ks, vs, dense32)
    limit = max(2 * noise, ERR_FLOOR)
    results = []
    for tail, theta in ((tail, theta) for tail in args.tails.split(",") for theta in case.thetas):
        t0 = time.perf_counter()
        params = case.params(theta, tail)
        P = params.prefix_len(case.N)
        out, stats = ops.anchor_attention(q, k, v, params, backend="triton")
        s1 = ops.run_stage1(q[:, :, :P], k[:, :, :P], v[:, :, :P], params)
        kern = ops.run_selection(q[:, :, :P], k[:, :, :P], s1, params).index.to_key_mask(P)[:, :hs]
        kern = F.pad(kern, (0, case.N - P))                                  # [B, hs, nG, N]
        del s1
        ref = anchor_selection_reference(qs, ks, params)
        r = {"case": case.name, "tail": tail, "theta": theta, "ref_heads": hs, "sdpa_vs_fp32": noise,
             "noise_backend": noise_backend, "limit": limit, "density": stats.density,
             "upstream_ratio": stats.extra.get("upstream_ratio"), **compare_selection(qs, ks, kern, params, ref)}
        same_keys = attention_over_selection(qs, ks, vs, params, kern,
                                             tail_keys=None if ref.tail is None else ref.tail.keys)
        r["err_same_keys"] = rel_err(out[:, :hs], same_keys)
        r["err_tail_rows"] = rel_err(out[:, :hs, P:], same_keys[:, :, P:]) if P < case.N else None
        ref_out, ref_stats = anchor_attention_reference(qs, ks, vs, params)
        r["err_vs_reference"] = rel_err(out[:, :hs], ref_out)
        r["density_ref_heads"] = float(stats.density_per_head()[:, :hs].mean())
        r["density_reference"] = ref_stats.density
        del ref_out, kern, same_keys, ref
        checks = [r["ok"], r["err_same_keys"] <= limit]
        if math.isinf(theta):
            r["err_vs_dense"] = rel_err(out[:, :hs], dense32)
            checks.append(r["err_vs_dense"] <= limit)
        r["ok"] = all(checks)
        r["seconds"] = time.perf_counter() - t0
        del out
        print(f"{'PASS' if r['ok'] else 'FAIL'} {case.name} tail={tail} theta={theta}: "
              f"err_same_keys={r['err_same_keys']:.3g} err_tail_rows={math.nan if r['err_tail_rows'] is None else r['err_tail_rows']:.3g} "
              f"err_vs_dense={r.get('err_vs_dense', math.nan):.3g} limit={limit:.3g} "
              f"err_vs_reference={r['err_vs_reference']:.3g} disagree={r['disagree']} "
              f"(outside tol {r['disagree_outside_tol']}, max tol {r['max_tol']:.3g} nats, "
              f"{r['within_tol']} keys within tol) density={r['density']:.4f} ({r['seconds']:.1f}s)", flush=True)
        results.append(r)
    del q, k, v, qs, ks, vs, dense32
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def write_report(results: list[dict], cases: list[Case], out_dir: Path, device: torch.device) -> None:
    """``gpu_check.json`` (cases, results, versions) and ``gpu_check.md`` (one line per check)."""
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "triton": triton.__version__, "argv": sys.argv}
    (out_dir / "gpu_check.json").write_text(json.dumps(
        {"env": env, "cases": [asdict(c) for c in cases], "results": results}, indent=2, default=str) + "\n")
    cols = ["case", "tail", "theta", "ok", "err_same_keys", "err_tail_rows", "err_vs_dense", "limit", "sdpa_vs_fp32",
            "noise_backend", "err_vs_reference",
            "disagree", "disagree_outside_tol", "within_tol", "max_tol", "density", "density_reference",
            "upstream_ratio"]
    fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [f"# AnchorAttention GPU check: {'PASS' if all(r['ok'] for r in results) else 'FAIL'}", "",
             f"{env['device']}; torch {env['torch']}; triton {env['triton']}; `{' '.join(sys.argv)}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "-")) for c in cols) + " |" for r in results]
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run every case; write the report; return 0 if all pass, else 1."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results/gpu_check")))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="small CPU cases (dry run under TRITON_INTERPRET=1)")
    p.add_argument("--max-n", type=int, default=None, help="skip cases longer than this")
    p.add_argument("--full-ref-max", type=int, default=40000, help="longer inputs: first KV group only")
    p.add_argument("--stripe-fraction", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tails", default="dense,query_aware", help="tail rules to check, comma-separated")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("CPU runs need TRITON_INTERPRET=1 set before Python starts (Triton interpreter)")
    torch.backends.cuda.matmul.allow_tf32 = False                          # fp32 references stay fp32
    cases = [c for c in (TINY_CASES if args.tiny else CASES) if args.max_n is None or c.N <= args.max_n]
    results = []
    for case in cases:
        results.extend(check_case(case, args))
        write_report(results, cases, args.out, device)                    # partial report survives a crash
    n_fail = sum(not r["ok"] for r in results)
    print(f"{'PASS' if n_fail == 0 else 'FAIL'}: {len(results) - n_fail}/{len(results)} checks passed; "
          f"report in {args.out}/gpu_check.md")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
