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
class TailSelection:
    """The ``query_aware`` tail's own selection: rows ``[P, N)`` in blocks of ``tail_block_size``.

    Attributes:
        keys: bool ``[B, Hq, n_tail_blocks, N]``: key ``j`` selected for tail block ``t`` (only
            candidates ``[init, L_g)`` of the tail's group ``g = P // G`` can be set).
        anchor: fp32 ``[B, Hq, T]``: row max of the scaled logits over each tail row's stage-1
            regions (nats).
        pooled_anchor: fp32 ``[B, Hq, n_tail_blocks]``: mean anchor of each tail block (zeros
            with ``zero_anchor`` or when the tail has no candidates).
        out, lse: with values given, the tail rows' fp32 attention over their stage-1 regions
            ``[B, Hq, T, D]`` (normalised) and its log-sum-exp ``[B, Hq, T]`` (log2 units): the
            state the sparse kernel resumes from. ``None`` otherwise.
    """

    keys: torch.Tensor
    anchor: torch.Tensor
    pooled_anchor: torch.Tensor
    out: torch.Tensor | None = None
    lse: torch.Tensor | None = None


@dataclass
class AnchorSelection:
    """What the anchor selection decided, for inspection and recall studies.

    Attributes:
        keys: bool ``[B, Hq, n_groups, N]``: key ``j`` selected for group ``g`` of the grouped
            rows ``[0, P)``, ``P = params.prefix_len(N)`` (only candidates ``[init, L_g)`` can be set).
        anchor: fp32 ``[B, Hq, N]``: row max of the scaled logits over the initial + local regions
            (natural-log units), i.e. the anchor of every query.
        pooled_anchor: fp32 ``[B, Hq, ceil(P / block_size)]``: mean anchor of each query block.
        tail: the ``query_aware`` tail's selection (``None`` for the other rules or without tail).
    """

    keys: torch.Tensor
    anchor: torch.Tensor
    pooled_anchor: torch.Tensor
    tail: TailSelection | None = None


def stage1_mask(params: AnchorParams, rows: torch.Tensor, n_keys: int) -> torch.Tensor:
    """bool ``[len(rows), n_keys]``: keys in the initial or local region of each query row."""
    j = torch.arange(n_keys, device=rows.device)[None, :]
    i = rows[:, None]
    g = i // params.group
    local_lo = torch.clamp((g + 1) * params.group - params.local, min=0).clamp(min=params.init)
    return (j <= i) & ((j < params.init) | (j >= local_lo))


def attended_mask(params: AnchorParams, selected: torch.Tensor, rows: torch.Tensor,
                  tail_keys: torch.Tensor | None = None) -> torch.Tensor:
    """bool ``[len(rows), N]``: every key row ``i`` attends under ``params.tail``.

    Rows ``i < P = params.prefix_len(N)``: stage-1 regions plus the selection of group ``i // G``
    (``selected``: one head's ``[n_groups, N]`` slice of ``AnchorSelection.keys``). Tail rows:
    every causal key (``dense``) or stage-1 regions plus the selection of their tail block
    (``query_aware``; ``tail_keys``: one head's ``[n_tail_blocks, N]`` slice of ``TailSelection.keys``).
    """
    n_keys = selected.shape[-1]
    P = params.prefix_len(n_keys)
    mask = stage1_mask(params, rows, n_keys)
    head = rows < P
    mask[head] |= selected[rows[head] // params.group]
    if not head.all():
        tail_rows = rows[~head]
        if params.tail == "dense":
            mask[~head] = torch.arange(n_keys, device=rows.device)[None, :] <= tail_rows[:, None]
        elif tail_keys is None:
            raise ValueError("query_aware tail rows need tail_keys (AnchorSelection.tail.keys)")
        else:
            mask[~head] |= tail_keys[(tail_rows - P) // params.tail_block_size]
    return mask


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
    """Stages 1-2 of AnchorAttention: anchors, pooled anchors and the stripe selection of the
    groups of rows ``[0, P)`` (and, for ``query_aware``, the tail's selection).

    Pooled queries are rounded to the input dtype before the product with the keys, as the
    kernels do; everything else is fp32. ``zero_anchor`` compares with 0 instead of the pooled
    anchors (the paper's "without anchor" ablation); ``pooled_anchor`` is then all zeros.
    """
    B, Hq, Hkv, Lq, N, D = check_qkv(q, k, k)
    if Lq != N:
        raise ValueError("AnchorAttention is defined for full prefill (Lq == Lk)")
    rep, scale, G, bs = Hq // Hkv, params.scale(D), params.group, params.block_size
    P = params.prefix_len(N)
    n_groups, n_blocks = math.ceil(P / G), math.ceil(P / bs)
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
            pooled[b, h] = 0.0 if zero_anchor else pool_rows(anchor[b, h, :P, None], bs)[:, 0]
            qbar = pool_rows(qf[:P], bs).to(q.dtype).float()             # [nb, D]
            for g in range(n_groups):
                lo, hi = params.candidate_range(g)
                hi = min(hi, N)
                if hi <= lo:
                    continue
                blocks = slice(g * params.step, min((g + 1) * params.step, n_blocks))
                sbar = (qbar[blocks] @ kf[lo:hi].T) * scale              # [step, hi-lo]
                hit = sbar + params.theta >= pooled[b, h, blocks, None]
                keys[b, h, g, lo:hi] = hit.any(0)
    tail = tail_selection_reference(q, k, params, zero_anchor=zero_anchor) \
        if params.tail == "query_aware" and P < N else None
    return AnchorSelection(keys=keys, anchor=anchor, pooled_anchor=pooled, tail=tail)


def tail_selection_reference(q: torch.Tensor, k: torch.Tensor, params: AnchorParams, zero_anchor: bool = False,
                             v: torch.Tensor | None = None) -> TailSelection:
    """The ``query_aware`` tail's selection (any heads slice ``q [B, Hq, N, D]``, ``k [B, Hkv, N, D]``).

    Rows ``[P, N)`` (``P = N - N mod G``) form blocks of ``tail_block_size`` rows (the last one
    may be short). Per row, the anchor is the row max over its stage-1 regions; per block, the
    pooled query (mean of its rows, rounded to the input dtype) and pooled anchor (mean). Key
    ``j`` in the candidates ``[init, L_g)`` of group ``g = P // G`` is kept for the block if
    ``qbar . k_j * scale + theta >= abar`` (``abar = 0`` with ``zero_anchor``). Each block keeps
    its own keys (no OR over blocks). With ``v`` the same scores also give the stage-1 attention
    state (``TailSelection.out``/``lse``). fp32, one KV head at a time: memory
    ``O(rep * T * (init + local + T))``.
    """
    B, Hq, Hkv, _, N, D = check_qkv(q, k, k)
    rep, scale, G, tb = Hq // Hkv, params.scale(D), params.group, params.tail_block_size
    P = N - N % G
    T, nb = N - P, math.ceil((N - P) / tb)
    lo, hi = params.candidate_range(P // G)
    dev = q.device
    keys = torch.zeros(B, Hq, nb, N, dtype=torch.bool, device=dev)
    anchor = torch.empty(B, Hq, T, device=dev)
    pooled = torch.zeros(B, Hq, nb, device=dev)
    out = None if v is None else torch.empty(B, Hq, T, D, device=dev)
    lse = None if v is None else torch.empty(B, Hq, T, device=dev)
    rows = torch.arange(P, N, device=dev)
    local_lo = min(N, max(params.init, params.local_start(P // G)))
    s1_keys = torch.cat([torch.arange(0, min(params.init, N), device=dev), torch.arange(local_lo, N, device=dev)])
    future = s1_keys[None, :] > rows[:, None]                            # [T, n_s1]
    for b in range(B):
        for hk in range(Hkv):
            heads = slice(hk * rep, (hk + 1) * rep)
            qt, kf = q[b, heads, P:].float(), k[b, hk].float()           # [rep, T, D], [N, D]
            sc = (qt @ kf[s1_keys].T) * scale                            # [rep, T, n_s1]
            sc.masked_fill_(future, float("-inf"))
            anchor[b, heads] = sc.amax(-1)
            if v is not None:
                lse_nat = sc.logsumexp(-1)                               # [rep, T]
                out[b, heads] = (sc - lse_nat[..., None]).exp() @ v[b, hk, s1_keys].float()
                lse[b, heads] = lse_nat * LOG2E
            if hi <= lo:                                                 # no candidates
                continue
            if not zero_anchor:
                pooled[b, heads] = pool_rows(anchor[b, heads, :, None], tb)[..., 0]
            qbar = pool_rows(qt, tb).to(q.dtype).float()                 # [rep, nb, D]
            sbar = (qbar @ kf[lo:hi].T) * scale                          # [rep, nb, hi-lo]
            keys[b, heads, :, lo:hi] = sbar + params.theta >= pooled[b, heads, :, None]
    return TailSelection(keys=keys, anchor=anchor, pooled_anchor=pooled, out=out, lse=lse)


@functools.lru_cache(maxsize=64)
def _fixed_pair_counts(params: AnchorParams, N: int) -> tuple[int, int, tuple[int, ...]]:
    """Per-head pairs of stage 1 and stage 2 of the grouped rows ``[0, N)`` (independent of the
    data) and rows per group."""
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


@functools.lru_cache(maxsize=64)
def _tail_fixed_pair_counts(params: AnchorParams, N: int) -> tuple[int, int, tuple[int, ...]]:
    """``query_aware`` tail: stage-1 pairs of rows ``[P, N)``, pooled tail rows x candidates, rows
    per tail block (``P = N - N mod G``)."""
    P = N - N % params.group
    rows = torch.arange(P, N, dtype=torch.int64)
    local_lo = max(params.init, params.local_start(P // params.group))
    stage1 = torch.clamp(rows + 1, max=params.init) + torch.clamp(rows + 1 - local_lo, min=0)
    lo, hi = params.candidate_range(P // params.group)
    tb = params.tail_block_size
    rows_in_block = tuple(min(tb, N - s) for s in range(P, N, tb))
    return int(stage1.sum()), len(rows_in_block) * (hi - lo), rows_in_block


def anchor_pair_counts(params: AnchorParams, N: int, selected_per_group: torch.Tensor,
                       selected_per_tail_block: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Pairs computed by each stage of an ``N``-token call, ``[B, H]`` int64 each.

    ``selected_per_group``: int ``[B, H, n_groups]`` selected keys per group of the grouped rows
    ``[0, P)``; ``selected_per_tail_block``: int ``[B, H, n_tail_blocks]`` (``query_aware``).
    Stages ``anchor`` (initial + local pairs of rows ``[0, P)``), ``select`` (pooled rows x
    candidates), ``sparse`` (group rows x selected keys), then by tail rule: ``dense`` adds
    ``tail`` (every causal pair of rows ``[P, N)``); ``query_aware`` adds ``tail_anchor``
    (stage-1 pairs of the tail rows: their anchors and partial attention), ``tail_select``
    (pooled tail rows x candidates) and ``tail_sparse`` (tail block rows x the block's selected
    keys); ``sparse`` adds nothing.
    """
    P = params.prefix_len(N)
    stage1, select, rows_in_group = _fixed_pair_counts(params, P)
    shape = selected_per_group.shape[:2]
    rows_t = torch.tensor(rows_in_group, dtype=torch.int64, device=selected_per_group.device)
    counts = {
        "anchor": torch.full(shape, stage1, dtype=torch.int64),
        "select": torch.full(shape, select, dtype=torch.int64),
        "sparse": (selected_per_group.to(torch.int64) * rows_t).sum(-1).cpu(),
    }
    if params.tail == "dense":
        counts["tail"] = torch.full(shape, causal_pair_count(N, N) - causal_pair_count(P, P), dtype=torch.int64)
    elif params.tail == "query_aware":
        t_stage1, t_select, rows_in_block = _tail_fixed_pair_counts(params, N)
        if selected_per_tail_block is None:
            selected_per_tail_block = torch.zeros(*shape, len(rows_in_block), dtype=torch.int64)
        rows_b = torch.tensor(rows_in_block, dtype=torch.int64, device=selected_per_tail_block.device)
        counts["tail_anchor"] = torch.full(shape, t_stage1, dtype=torch.int64)
        counts["tail_select"] = torch.full(shape, t_select, dtype=torch.int64)
        counts["tail_sparse"] = (selected_per_tail_block.to(torch.int64) * rows_b).sum(-1).cpu()
    return counts


def anchor_stats(params: AnchorParams, N: int, selected_per_group: torch.Tensor,
                 selected_per_tail_block: torch.Tensor | None = None) -> AttentionStats:
    """``AttentionStats`` of an ``N``-token AnchorAttention call (arguments: ``anchor_pair_counts``).

    ``extra["degenerate_dense"]``: 1.0 when no group (nor the ``query_aware`` tail) has
    candidates, so the result is dense attention by construction, else 0.0.
    ``extra["upstream_ratio"]``: the authors' operator ratio (anchor_attn_v4.py L271),
    ``sum_{b,h,g} |Sel_g| / (B * H * P * P / G // 2)`` over the groups of the ``P`` rows the
    grouped operator sees (``P = N`` for ``sparse``; the ``query_aware`` tail is not included, as
    upstream has none); absent when that denominator is 0.
    """
    B, H = selected_per_group.shape[:2]
    P, G = params.prefix_len(N), params.group
    extra = {"degenerate_dense": 0.0 if params.has_candidates(N) else 1.0}
    denom = B * H * P * P / G // 2
    if denom > 0:
        extra["upstream_ratio"] = float(selected_per_group.sum()) / denom
    return AttentionStats(pairs=anchor_pair_counts(params, N, selected_per_group, selected_per_tail_block),
                          causal_pairs=causal_pair_count(N, N), extra=extra)


def attention_over_selection(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams,
                             keys: torch.Tensor, chunk: int = 512, tail_keys: torch.Tensor | None = None
                             ) -> torch.Tensor:
    """fp32 ``[B, Hq, N, D]``: every row attends the keys of ``attended_mask`` (``keys [B, Hq,
    n_groups, N]``, ``tail_keys [B, Hq, n_tail_blocks, N]`` for the ``query_aware`` tail)."""
    B, Hq, Hkv, _, N, D = check_qkv(q, k, v)
    rep, scale = Hq // Hkv, params.scale(D)
    out = torch.empty(B, Hq, N, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(Hq):
            qf, kf, vf = q[b, h].float(), k[b, h // rep].float(), v[b, h // rep].float()
            tk = None if tail_keys is None else tail_keys[b, h]
            for s in range(0, N, chunk):
                rows = torch.arange(s, min(s + chunk, N), device=q.device)
                sc = (qf[rows] @ kf.T) * scale                           # [c, N]
                sc.masked_fill_(~attended_mask(params, keys[b, h], rows, tk), float("-inf"))
                out[b, h, rows] = sc.softmax(-1) @ vf
    return out


def anchor_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams,
                               chunk: int = 512, zero_anchor: bool = False) -> tuple[torch.Tensor, AttentionStats]:
    """AnchorAttention in fp32: attention over stage-1 regions plus each group's selected keys,
    the last ``N mod G`` rows following ``params.tail`` (``dense``: ``dense_attention_reference``).

    Returns ``(out [B, Hq, N, D] in q's dtype, AttentionStats)`` (``anchor_stats``); equals dense
    causal attention when ``theta`` keeps every candidate. ``zero_anchor``: see
    ``anchor_selection_reference``.
    """
    N, D = check_qkv(q, k, v)[4:]
    sel = anchor_selection_reference(q, k, params, zero_anchor=zero_anchor)
    P = params.prefix_len(N)
    if params.tail == "dense":
        out = torch.empty_like(q)
        out[:, :, :P] = attention_over_selection(q[:, :, :P], k[:, :, :P], v[:, :, :P], params,
                                                 sel.keys[..., :P], chunk)
        out[:, :, P:] = dense_attention_reference(q[:, :, P:], k, v, params.scale(D))
    else:
        tail_keys = None if sel.tail is None else sel.tail.keys
        out = attention_over_selection(q, k, v, params, sel.keys, chunk, tail_keys).to(q.dtype)
    tail_counts = None if sel.tail is None else sel.tail.keys.sum(-1)
    return out, anchor_stats(params, N, sel.keys.sum(-1), tail_counts)


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
