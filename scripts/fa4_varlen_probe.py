"""FA4 varlen with empty key sequences (``seqlen_k == 0``), causal and not, with ``return_lse``.

Run by ``scripts/gpu_check_fa4.py`` in a subprocess (a hang there must not stop the check); prints
one JSON line: per mode, ``ok`` and per sequence the error vs fp32 attention and LSE, or for an
empty one whether its rows are zero with ``-inf`` LSE. GPU only.
"""
from __future__ import annotations

import itertools
import json
import math

import torch

DEVICE = "cuda"
LSE_ATOL = 2e-3
BF16 = torch.bfloat16


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` in fp32."""
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def varlen_probe() -> dict:
    """Five sequences (two with no keys) through ``flash_attn_varlen_func``; the result dict."""
    from flash_attn.cute import flash_attn_varlen_func
    q_lens, k_lens = [100, 256, 77, 64, 130], [0, 300, 0, 1000, 130]
    Hq, Hkv, D = 32, 8, 128
    starts_q, starts_k = [0, *itertools.accumulate(q_lens)], [0, *itertools.accumulate(k_lens)]
    cu_q = torch.tensor(starts_q, dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor(starts_k, dtype=torch.int32, device=DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(sum(q_lens), Hq, D, device=DEVICE, generator=g).to(BF16)
    k = torch.randn(sum(k_lens), Hkv, D, device=DEVICE, generator=g).to(BF16)
    v = torch.randn(sum(k_lens), Hkv, D, device=DEVICE, generator=g).to(BF16)
    result = {}
    for causal in (False, True):
        out, lse = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(q_lens),
                                          max_seqlen_k=max(k_lens), causal=causal, return_lse=True)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        seqs = []
        for i, (lq, lk) in enumerate(zip(q_lens, k_lens)):
            o = out[starts_q[i]:starts_q[i + 1]].float()                  # [lq, Hq, D]
            ls = lse[:, starts_q[i]:starts_q[i + 1]]                      # [Hq, lq]
            if lk == 0:
                seqs.append({"k_len": 0, "out_all_zero": bool((o == 0).all()), "lse_all_neginf": bool(torch.isneginf(ls).all()),
                             "finite": bool(torch.isfinite(o).all())})
                continue
            qs = q[starts_q[i]:starts_q[i + 1]].float().transpose(0, 1)   # [Hq, lq, D]
            ks = k[starts_k[i]:starts_k[i + 1]].float().transpose(0, 1).repeat_interleave(Hq // Hkv, 0)
            vs = v[starts_k[i]:starts_k[i + 1]].float().transpose(0, 1).repeat_interleave(Hq // Hkv, 0)
            s = qs @ ks.transpose(1, 2) / math.sqrt(D)
            if causal:
                s = s.masked_fill(torch.arange(lk, device=DEVICE)[None] > torch.arange(lq, device=DEVICE)[:, None] + lk - lq,
                                  float("-inf"))
            ref = (s.softmax(-1) @ vs).transpose(0, 1)
            seqs.append({"k_len": lk, "err": rel(o, ref), "lse_max_abs": float((ls - s.logsumexp(-1)).abs().max())})
        ok = all(x.get("out_all_zero", True) and x.get("lse_all_neginf", True) and x.get("err", 0) < 0.02
                 and x.get("lse_max_abs", 0) < LSE_ATOL for x in seqs)
        result["causal" if causal else "noncausal"] = {"ok": ok, "seqs": seqs}
    return result


if __name__ == "__main__":
    print(json.dumps(varlen_probe()), flush=True)
