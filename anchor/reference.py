"""Plain PyTorch references: the definition of every kernel's function, and the CPU path.

All functions take ``q [B, Hq, N, D]`` and ``k, v [B, Hkv, N, D]`` (query head ``h`` reads KV head
``h // (Hq // Hkv)``), compute in fp32 and work query-chunk by query-chunk, so memory stays at
``O(chunk * N)`` per head and they run on any device, including a GPU at 128k tokens.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anchor.checks import check_qkv
from anchor.params import AnchorParams
from anchor.sparse_index import SparseIndex
from anchor.stats import AttentionStats, causal_pair_count

LOG2E = 1.4426950408889634


def dense_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              sm_scale: float | None = None, chunk: int = 1024,
                              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Exact causal attention computed in fp32 (bottom-right aligned when ``Lq < Lk``); output in
    ``out_dtype`` (default q's dtype)."""
    B, Hq, Hkv, Lq, Lk, D = check_qkv(q, k, v)
    scale = sm_scale if sm_scale is not None else D ** -0.5
    rep = Hq // Hkv
    out = torch.empty_like(q, dtype=out_dtype or q.dtype)
    keys = torch.arange(Lk, device=q.device)
    for h in range(Hq):
        kf, vf = k[:, h // rep].float(), v[:, h // rep].float()          # [B, Lk, D]
        for s in range(0, Lq, chunk):
            qf = q[:, h, s:s + chunk].float()                            # [B, c, D]
            rows = torch.arange(s, s + qf.shape[1], device=q.device) + (Lk - Lq)
            scores = torch.einsum("bid,bjd->bij", qf, kf) * scale        # [B, c, Lk]
            scores.masked_fill_(keys[None, None, :] > rows[None, :, None], float("-inf"))
            out[:, h, s:s + chunk] = scores.softmax(-1) @ vf
    return out


@dataclass
class AnchorSelection:
    """What the anchor selection decided, for inspection and recall studies.

    Attributes:
        keys: bool ``[B, Hq, n_groups, N]``: key ``j`` selected for group ``g`` (only candidates
            ``[init, L_g)`` can be set).
        anchor: fp32 ``[B, Hq, N]``: row max of the scaled logits over the initial + local regions
            (natural-log units), i.e. the anchor of every query.
        pooled_anchor: fp32 ``[B, Hq, n_blocks]``: mean anchor of each query block.
    """

    keys: torch.Tensor
    anchor: torch.Tensor
    pooled_anchor: torch.Tensor


def stage1_mask(params: AnchorParams, rows: torch.Tensor, n_keys: int) -> torch.Tensor:
    """bool ``[len(rows), n_keys]``: keys in the initial or local region of each query row."""
    j = torch.arange(n_keys, device=rows.device)[None, :]
    i = rows[:, None]
    g = i // params.group
    local_lo = torch.clamp((g + 1) * params.group - params.local, min=0).clamp(min=params.init)
    return (j <= i) & ((j < params.init) | (j >= local_lo))


def attended_mask(params: AnchorParams, selected: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """bool ``[len(rows), N]``: every key row ``i`` attends to (stage-1 regions plus its group's
    selection). ``selected`` is one head's ``[n_groups, N]`` slice of ``AnchorSelection.keys``."""
    groups = rows // params.group
    return stage1_mask(params, rows, selected.shape[-1]) | selected[groups]


def pool_rows(x: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 mean of ``[..., N, D]`` over consecutive ``block`` rows (a short last block averages
    its own rows): ``[..., ceil(N / block), D]``."""
    n = x.shape[-2]
    padded = F.pad(x, (0, 0, 0, math.ceil(n / block) * block - n))
    sums = padded.unflatten(-2, (-1, block)).sum(-2, dtype=torch.float32)   # [..., nb, D]
    counts = (n - torch.arange(sums.shape[-2], device=x.device) * block).clamp(max=block)
    return sums / counts[:, None]


def anchor_selection_reference(q: torch.Tensor, k: torch.Tensor, params: AnchorParams,
                               chunk: int = 1024, zero_anchor: bool = False) -> AnchorSelection:
    """Stages 1-2 of AnchorAttention: anchors, pooled anchors and the stripe selection.

    Pooled queries are rounded to the input dtype before the product with the keys, as the
    kernels do; everything else is fp32. ``zero_anchor`` compares with 0 instead of the pooled
    anchors (the paper's "without anchor" ablation); ``pooled_anchor`` is then all zeros.
    """
    B, Hq, Hkv, Lq, N, D = check_qkv(q, k, k)
    if Lq != N:
        raise ValueError("AnchorAttention is defined for full prefill (Lq == Lk)")
    rep, scale, G, bs = Hq // Hkv, params.scale(D), params.group, params.block_size
    n_groups, n_blocks = math.ceil(N / G), math.ceil(N / bs)
    keys = torch.zeros(B, Hq, n_groups, N, dtype=torch.bool, device=q.device)
    anchor = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    pooled = torch.empty(B, Hq, n_blocks, dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(Hq):
            qf, kf = q[b, h].float(), k[b, h // rep].float()             # [N, D]
            for s in range(0, N, chunk):
                rows = torch.arange(s, min(s + chunk, N), device=q.device)
                sc = (qf[rows] @ kf[: rows[-1] + 1].T) * scale           # [c, <=N]
                sc.masked_fill_(~stage1_mask(params, rows, sc.shape[1]), float("-inf"))
                anchor[b, h, rows] = sc.amax(-1)
            pooled[b, h] = 0.0 if zero_anchor else pool_rows(anchor[b, h, :, None], bs)[:, 0]
            qbar = pool_rows(qf, bs).to(q.dtype).float()                 # [nb, D]
            for g in range(n_groups):
                lo, hi = params.candidate_range(g)
                hi = min(hi, N)
                if hi <= lo:
                    continue
                blocks = slice(g * params.step, min((g + 1) * params.step, n_blocks))
                sbar = (qbar[blocks] @ kf[lo:hi].T) * scale              # [step, hi-lo]
                hit = sbar + params.theta >= pooled[b, h, blocks, None]
                keys[b, h, g, lo:hi] = hit.any(0)
    return AnchorSelection(keys=keys, anchor=anchor, pooled_anchor=pooled)


@functools.lru_cache(maxsize=64)
def _fixed_pair_counts(params: AnchorParams, N: int) -> tuple[int, int, tuple[int, ...]]:
    """Per-head pairs of stage 1 and stage 2 (independent of the data) and rows per group."""
    G, bs = params.group, params.block_size
    rows = torch.arange(N, dtype=torch.int64)
    local_lo = torch.clamp((rows // G + 1) * G - params.local, min=0).clamp(min=params.init)
    stage1 = torch.minimum(rows + 1, torch.tensor(params.init)) + torch.clamp(rows + 1 - local_lo, min=0)
    select, rows_in_group = 0, []
    for g in range(math.ceil(N / G)):
        lo, hi = params.candidate_range(g)
        n_rows = min(N, (g + 1) * G) - g * G
        select += math.ceil(n_rows / bs) * max(0, min(hi, N) - lo)
        rows_in_group.append(n_rows)
    return int(stage1.sum()), select, tuple(rows_in_group)


def anchor_pair_counts(params: AnchorParams, N: int, selected_per_group: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pairs computed by each stage, ``[B, H]`` int64 each.

    ``selected_per_group``: int ``[B, H, n_groups]`` number of selected keys per group.
    Stage ``anchor``: initial + local regions; ``select``: pooled rows times candidates;
    ``sparse``: group rows times selected keys.
    """
    stage1, select, rows_in_group = _fixed_pair_counts(params, N)
    shape = selected_per_group.shape[:2]
    rows_t = torch.tensor(rows_in_group, dtype=torch.int64, device=selected_per_group.device)
    return {
        "anchor": torch.full(shape, stage1, dtype=torch.int64),
        "select": torch.full(shape, select, dtype=torch.int64),
        "sparse": (selected_per_group.to(torch.int64) * rows_t).sum(-1).cpu(),
    }


def attention_over_selection(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams,
                             keys: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """fp32 ``[B, Hq, N, D]``: every row attends its stage-1 regions plus ``keys [B, Hq, n_groups, N]``
    of its group (``attended_mask``)."""
    B, Hq, Hkv, _, N, D = check_qkv(q, k, v)
    rep, scale = Hq // Hkv, params.scale(D)
    out = torch.empty(B, Hq, N, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(Hq):
            qf, kf, vf = q[b, h].float(), k[b, h // rep].float(), v[b, h // rep].float()
            for s in range(0, N, chunk):
                rows = torch.arange(s, min(s + chunk, N), device=q.device)
                sc = (qf[rows] @ kf.T) * scale                           # [c, N]
                sc.masked_fill_(~attended_mask(params, keys[b, h], rows), float("-inf"))
                out[b, h, rows] = sc.softmax(-1) @ vf
    return out


def anchor_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams,
                               chunk: int = 512, zero_anchor: bool = False) -> tuple[torch.Tensor, AttentionStats]:
    """AnchorAttention in fp32: attention over stage-1 regions plus each group's selected keys.

    Returns ``(out [B, Hq, N, D] in q's dtype, AttentionStats)``; equals dense causal attention
    when ``theta`` keeps every candidate. ``zero_anchor``: see ``anchor_selection_reference``.
    """
    N = check_qkv(q, k, v)[4]
    sel = anchor_selection_reference(q, k, params, zero_anchor=zero_anchor)
    out = attention_over_selection(q, k, v, params, sel.keys, chunk).to(q.dtype)
    counts = anchor_pair_counts(params, N, sel.keys.sum(-1))
    return out, AttentionStats(pairs=counts, causal_pairs=causal_pair_count(N, N))


def sparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex, *,
                               sm_scale: float | None = None, causal: bool = True) -> torch.Tensor:
    """fp32 attention of each row list over its index keys (the function of ``ops.sparse_attention``).

    Queries are the last ``Lq`` positions; with ``causal`` keys after a query are masked. Rows
    with no key output zeros.
    """
    B, Hq, Hkv, Lq, Lk, D = check_qkv(q, k, v)
    scale = sm_scale if sm_scale is not None else D ** -0.5
    keys = index.to_key_mask(Lk)                                         # [B, Hq, n_lists, Lk]
    rows = torch.arange(Lq, device=q.device)
    allowed = keys[:, :, rows // index.rows_per_list]                    # [B, Hq, Lq, Lk]
    if causal:
        allowed = allowed & (torch.arange(Lk, device=q.device)[None, :] <= (rows + Lk - Lq)[:, None])
    qg = q.float().reshape(B, Hkv, Hq // Hkv, Lq, D)                    # query heads grouped by KV head
    scores = torch.einsum("bgrid,bgjd->bgrij", qg, k.float()).reshape(B, Hq, Lq, Lk) * scale
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    out = torch.einsum("bgrij,bgjd->bgrid", probs.reshape(B, Hkv, Hq // Hkv, Lq, Lk), v.float())
    return out.reshape(B, Hq, Lq, D).to(q.dtype)
