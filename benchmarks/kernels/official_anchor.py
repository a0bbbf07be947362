"""fp32 PyTorch emulation of the authors' AnchorAttention (``yuzhouzhang9/Anchor-Attention`` @ fdc7420).

This is our own code, an emulation of the semantics of their code as read for this project
(notes kept outside this repository; the § numbers below are theirs), not their kernels. It
serves as "theirs" in ``benchmarks.kernels.compare --theirs``: the output their algorithm would
give on the same input, up to bf16 rounding inside their kernels (only the rounding of the pooled query, pooled
anchor and pooled score to the input's half type is emulated, as in §9.2).

Semantics, ``G = block * step`` (2048 with their defaults block 128, step 16):

* model wrapper (§2.6): the first ``P = N - N mod G`` queries go through the sparse operator on
  keys ``[0, P)``; the last ``N mod G`` queries get dense causal attention over all keys.
  Their ``pad == 0`` bug (all-zero output when ``G`` divides ``N``, §8.1) is not reproduced;
* stage 1: query ``i`` of group ``g = i // G`` attends to ``S1(i) = {j <= i : j < G or j >= g G}``;
  the anchor is the row max over ``S1(i)``;
* stage 2: for group ``g >= 1`` and each of its ``step`` query blocks ``r``: ``qbar_r`` = mean query,
  ``abar_r`` = mean anchor; key ``j`` of the candidate range is selected for the whole group iff
  some ``r`` has ``qbar_r . k_j * scale + theta >= abar_r`` (compared in log2 units, as they do);
  candidates are ``[block, g G - block)`` (``variant="official"``) or ``[G, g G)`` (``"clean"``);
* stage 3: the group's selected keys are added to ``S1(i)`` as a multiset: with ``"official"``
  keys in ``[block, G)`` are counted twice (weight 2 in numerator and denominator) and keys
  ``[g G - block, g G)`` are never attended for ``g >= 2`` (the 128-key gap); ``"clean"`` is a
  plain union, so with ``theta = inf`` it equals dense causal attention.

Block and step are parameters (their kernels assert ``step in {16, 32}``) so the emulation can be
tested at small sizes. Work goes by (batch, head, chunk of whole groups), so memory is
``O(chunk_groups * G * N)`` fp32 per call, bounded at 128k tokens.
"""
from __future__ import annotations

import torch

from anchor.checks import check_qkv
from anchor.reference import dense_attention_reference
from anchor.stats import AttentionStats, causal_pair_count

LOG2E = 1.4426950408889634
VARIANTS = ("official", "clean")


def official_candidates(g: int, n_keys: int, block: int, step: int, variant: str) -> tuple[int, int]:
    """Candidate key range ``[lo, hi)`` of group ``g`` (empty for ``g = 0``), clipped to ``n_keys``."""
    G = block * step
    lo, hi = (block, g * G - block) if variant == "official" else (G, g * G)
    hi = min(hi, n_keys)
    return lo, max(lo, hi)


def _stage1_mask(rows: torch.Tensor, n_keys: int, G: int) -> torch.Tensor:
    """bool ``[len(rows), n_keys]``: ``S1(i)`` = first ``G`` keys plus the query's own ``G``-chunk, causal."""
    j = torch.arange(n_keys, device=rows.device)[None, :]
    i = rows[:, None]
    return (j <= i) & ((j < G) | (j >= (i // G) * G))


def _round(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``x`` rounded through ``dtype`` and back to fp32 (identity when ``dtype`` is None)."""
    return x if dtype is None else x.to(dtype).float()


@torch.no_grad()
def official_anchor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: float,
                              block: int = 128, step: int = 16, variant: str = "official",
                              sm_scale: float | None = None, chunk_groups: int = 1,
                              ) -> tuple[torch.Tensor, torch.Tensor, AttentionStats]:
    """Emulate the authors' prefill attention (wrapper + 3 stages) in fp32.

    Args:
        q: ``[B, Hq, N, D]``; k, v: ``[B, Hkv, N, D]`` (expanded to ``Hq`` heads as ``repeat_kv``).
        theta: selection margin in nats (``inf`` keeps every candidate).
        variant: ``"official"`` (their ranges: double counting and gap) or ``"clean"``.
        chunk_groups: groups of queries processed at once (memory ``~ 5 * chunk_groups * G * N * 4`` bytes).

    Returns:
        ``out`` fp32 ``[B, Hq, N, D]``; ``sel`` bool ``[B, Hq, P // G, P]`` (selected keys per
        group); stats with stages ``anchor`` (stage 1), ``select`` (pooled rows x candidates),
        ``sparse`` (group rows x selected keys) and ``dense_tail``, and ``extra["official_ratio"]``,
        their reported ratio ``sum |Sel_g| / (B H P P / G // 2)`` (§2.8).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    B, Hq, Hkv, Lq, N, D = check_qkv(q, k, v)
    if Lq != N:
        raise ValueError("the emulation covers full prefill only (Lq == Lk)")
    G, rep = block * step, Hq // Hkv
    c = (sm_scale if sm_scale is not None else D ** -0.5) * LOG2E        # log2-domain scale
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else None
    P = N - N % G
    n_groups = P // G
    out = torch.empty(B, Hq, N, D, dtype=torch.float32, device=q.device)
    sel = torch.zeros(B, Hq, n_groups, P, dtype=torch.bool, device=q.device)
    if P < N:                                                            # wrapper: dense tail over all keys
        out[:, :, P:] = dense_attention_reference(q[:, :, P:], k, v, sm_scale, out_dtype=torch.float32)
    for b in range(B):
        for h in range(Hq):
            qf, kf, vf = q[b, h, :P].float(), k[b, h // rep, :P].float(), v[b, h // rep, :P].float()
            for g0 in range(0, n_groups, chunk_groups):
                g1 = min(g0 + chunk_groups, n_groups)
                rows = torch.arange(g0 * G, g1 * G, device=q.device)
                n_keys = g1 * G                                          # causal: keys [0, last row]
                s2 = (qf[rows] @ kf[:n_keys].T) * c                      # [C, n_keys] log2 units
                s1 = _stage1_mask(rows, n_keys, G)
                anchor = s2.masked_fill(~s1, float("-inf")).amax(-1)     # [C]
                qbar = _round(qf[rows].view(g1 - g0, step, block, D).mean(2), half)   # [g, step, D]
                abar = _round(anchor.view(g1 - g0, step, block).mean(2), half)        # [g, step]
                sbar = _round(torch.einsum("gsd,nd->gsn", qbar, kf[:n_keys]) * c, half)  # [g, step, n_keys]
                hit = (sbar + theta * LOG2E >= abar[..., None]).any(1)  # [g, n_keys]
                for gi in range(g0, g1):
                    lo, hi = official_candidates(gi, n_keys, block, step, variant)
                    sel[b, h, gi, lo:hi] = hit[gi - g0, lo:hi]
                weight = s1.float() + sel[b, h, g0:g1, :n_keys].repeat_interleave(G, 0).float()  # [C, n_keys]
                if variant == "clean":
                    weight.clamp_(max=1.0)
                m = s2.masked_fill(weight == 0, float("-inf")).amax(-1, keepdim=True)
                p = torch.exp2(s2 - m) * weight
                out[b, h, rows] = (p @ vf[:n_keys]) / p.sum(-1, keepdim=True)
    return out, sel, _official_stats(sel, N, block, step, variant)


def _official_stats(sel: torch.Tensor, N: int, block: int, step: int, variant: str) -> AttentionStats:
    """Pairs computed by their operator, per (batch, head), for ``sel [B, H, n_groups, P]``."""
    B, H, n_groups, P = sel.shape
    G = block * step
    rows = torch.arange(P, dtype=torch.int64)
    g = rows // G
    stage1 = torch.where(g <= 1, rows + 1, G + rows + 1 - g * G).sum()  # |S1(i)|, their init/local
    n_cand = sum(max(0, hi - lo) for lo, hi in
                 (official_candidates(gi, P, block, step, variant) for gi in range(n_groups)))
    shape = (B, H)
    pairs = {
        "anchor": torch.full(shape, int(stage1), dtype=torch.int64),
        "select": torch.full(shape, step * n_cand, dtype=torch.int64),
        "sparse": sel.sum((-1, -2)).to(torch.int64).cpu() * G,
        "dense_tail": torch.full(shape, causal_pair_count(N, N) - causal_pair_count(P, P), dtype=torch.int64),
    }
    ratio = float(sel.sum()) / max(B * H * P * P / G // 2, 1)
    return AttentionStats(pairs=pairs, causal_pairs=causal_pair_count(N, N), extra={"official_ratio": ratio})
