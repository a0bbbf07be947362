"""``flexprefill``: FlexPrefill (ByteDance, ICLR 2025) block-sparse prefill, GQA native."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anchor.checks import check_qkv
from anchor.reference import pool_rows
from anchor.stats import AttentionStats, causal_pair_count, dense_stats
from methods.base import AttendedSet, causal_attended
from methods.dense import dense_attention
from methods.index_builders import attend, check_backend, check_block, index_attended, index_from_tile_mask
from methods.registry import register_method
from methods.vertical_slash import vs_scores


@dataclass
class FlexSelection:
    """What FlexPrefill decided for every (batch, query head).

    Attributes:
        blocks: bool ``[B, Hq, nb, nb]``: key block ``c`` kept for query block ``r``.
        query_aware: bool ``[B, Hq]``: sqrt-JS divergence below ``tau``.
        js: fp32 ``[B, Hq]``: sqrt of the Jensen-Shannon divergence (natural log).
        n_vertical, n_slash: int64 ``[B, Hq]``: vertical / slash block budgets used.
        estimate_pairs: int64 ``[B, Hq]``: logits computed by the estimation.
    """

    blocks: torch.Tensor
    query_aware: torch.Tensor
    js: torch.Tensor
    n_vertical: torch.Tensor
    n_slash: torch.Tensor
    estimate_pairs: torch.Tensor


def score_cover_topk(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """int64 ``[...]``: 1 + number of sorted-descending entries whose running sum stays ``<= gamma``."""
    cumsum = torch.sort(x, dim=-1, descending=True).values.cumsum(-1)
    return (cumsum <= gamma).sum(-1) + 1


def sqrt_js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``sqrt(JS(p || q))`` over the last dim, with ``0 * log 0 = 0``."""
    m = (p + q) / 2
    kl_pm = torch.where(p > 0, p * torch.log(p / m), 0.0).sum(-1)
    kl_qm = torch.where(q > 0, q * torch.log(q / m), 0.0).sum(-1)
    return torch.sqrt(0.5 * kl_pm + 0.5 * kl_qm)


def sum_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """``[..., N] -> [..., ceil(N / block)]`` sums of consecutive entries (zero right pad)."""
    n = x.shape[-1]
    return F.pad(x, (0, math.ceil(n / block) * block - n)).unflatten(-1, (-1, block)).sum(-1)


def _top_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """bool like ``scores [..., n]``: the top ``counts[...]`` entries of each row."""
    top = scores.topk(min(int(counts.max()), scores.shape[-1]), -1).indices
    keep = torch.arange(top.shape[-1], device=scores.device) < counts[..., None]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, keep)


def last_block_profiles(q: torch.Tensor, k: torch.Tensor, *, block: int, sm_scale: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexPrefill's token-level vertical and slash profiles, fp32 ``[B, Hq, N]`` each.

    Softmax (fp32) of the last ``min(block, N)`` queries against all keys (bottom-right causal
    inside them), as ``get_active_blocks`` / ``get_vertical_slash_topk`` compute it:
    ``vertical[j]`` = mean over those queries of ``p[i, j]``; ``slash[c]`` = sum over the queries
    of the probabilities on diagonal offset ``N - 1 - c`` (``sum_all_diagonal_matrix``), divided
    by the number of queries. ``c = N - 1`` is the main diagonal.
    """
    n_last = min(block, q.shape[2])
    vertical, slash = vs_scores(q, k, sm_scale=sm_scale, last_q=block)   # [B, Hq, N] sums, slash by offset
    return vertical / n_last, slash.flip(-1) / n_last


def vertical_slash_blocks(vertical: torch.Tensor, slash: torch.Tensor, n_vertical: torch.Tensor,
                          n_slash: torch.Tensor) -> torch.Tensor:
    """bool ``[B, Hq, nb, nb]``: FlexPrefill's block vertical-slash pattern (causal blocks only).

    ``vertical``, ``slash``: fp32 ``[B, Hq, nb]`` block-pooled profiles (``slash[s]`` holds block
    diagonal ``nb - 1 - s``, the binning of ``transform_veritcal_slash_idx``); ``n_vertical``,
    ``n_slash``: int64 ``[B, Hq]`` budgets in blocks. Key block 0 and the main block diagonal are
    forced (score ``+inf``), then the top ``n`` of each (``torch.topk`` order on ties); query block
    ``r`` keeps key block ``c <= r`` if ``c`` is a kept vertical block or ``r - c`` a kept diagonal.
    """
    vertical, slash = vertical.clone(), slash.clone()
    vertical[..., 0] = float("inf")
    slash[..., -1] = float("inf")
    v_keep = _top_mask(vertical, n_vertical)                             # [B, Hq, nb] key blocks
    s_keep = _top_mask(slash, n_slash).flip(-1)                          # [B, Hq, nb] by block offset
    nb = vertical.shape[-1]
    r = torch.arange(nb, device=vertical.device)
    diag = r[:, None] - r[None, :]                                       # [nb, nb]: query - key block
    causal = diag >= 0
    return (v_keep[:, :, None, :] & causal) | (s_keep[..., diag.clamp(min=0)] & causal)


def flexprefill_selection(q: torch.Tensor, k: torch.Tensor, *, gamma: float, tau: float, min_budget: int,
                          max_budget: int | None, block: int, sm_scale: float) -> FlexSelection:
    """FlexPrefill's ``get_active_blocks`` for a full prefill (``Lq == Lk = N > 2 * block``).

    1. ``last_block_profiles``: vertical and slash profiles of the last ``block`` queries.
    2. Budgets: ``score_cover_topk(., gamma) // block + 1`` blocks each, clamped to
       ``[ceil(min_budget / block), min(ceil(max_budget / block), nb)]``.
    3. ``js = sqrt(JS(softmax(mean(last queries) . pooled keys), vertical sum-pooled per block))``;
       ``js < tau`` makes the head query-aware: both budgets drop to the minimum.
    4. ``vertical_slash_blocks``: top vertical key blocks (block 0 forced) for every query block
       at or after them, top slash block-diagonals (main diagonal forced; token diagonals binned
       as upstream: position ``c = N - 1 - offset`` pooled in blocks of ``block`` from ``c = 0``).
    5. Query-aware heads add the cells (query block, key block) of the block-causal pooled
       estimate ``softmax(pooled q . pooled k)`` (each row sums to 1) in decreasing mass, ranked
       over the whole grid (not per row), while the cumulative mass stays ``<= gamma * nb``.
       These cells may lie above the block diagonal at ``gamma = 1`` (zero mass, as upstream);
       the index builder drops them.
    """
    B, Hq, Hkv, N, _, D = check_qkv(q, k, k)
    nb = math.ceil(N / block)
    min_blocks = math.ceil(min_budget / block)
    max_blocks = nb if max_budget is None else min(math.ceil(max_budget / block), nb)
    vertical, slash = last_block_profiles(q, k, block=block, sm_scale=sm_scale)   # [B, Hq, N]
    n_vertical = (score_cover_topk(vertical, gamma) // block + 1).clamp(min_blocks, max_blocks)
    n_slash = (score_cover_topk(slash, gamma) // block + 1).clamp(min_blocks, max_blocks)
    vertical, slash = sum_pool(vertical, block), sum_pool(slash, block)   # [B, Hq, nb]

    avg_k = pool_rows(k, block)                                          # [B, Hkv, nb, D] fp32
    last_q = q[:, :, N - block:].float().mean(-2).reshape(B, Hkv, Hq // Hkv, D) * sm_scale
    pooled = torch.einsum("bkgd,bkjd->bkgj", last_q, avg_k).reshape(B, Hq, nb).softmax(-1)
    js = sqrt_js_divergence(pooled, vertical)
    query_aware = js < tau
    n_vertical = torch.where(query_aware, min_blocks, n_vertical)
    n_slash = torch.where(query_aware, min_blocks, n_slash)
    blocks = vertical_slash_blocks(vertical, slash, n_vertical, n_slash)

    estimate = torch.full((B, Hq), block * N + nb, dtype=torch.int64)
    qa = query_aware.nonzero()                                           # [n_qa, 2] (b, h)
    if qa.numel():
        r = torch.arange(nb, device=q.device)
        causal = r[:, None] >= r[None, :]                                # [nb, nb] block-causal
        avg_q = pool_rows(q[qa[:, 0], qa[:, 1]], block) * sm_scale       # [n_qa, nb, D]
        grid = avg_q @ avg_k[qa[:, 0], qa[:, 1] // (Hq // Hkv)].transpose(-1, -2)   # [n_qa, nb, nb]
        probs = grid.masked_fill(~causal, float("-inf")).softmax(-1).flatten(1)
        sorted_p, order = probs.sort(-1, descending=True)
        cover = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, sorted_p.cumsum(-1) <= gamma * nb)
        blocks[qa[:, 0], qa[:, 1]] |= cover.reshape(-1, nb, nb)
        estimate[qa[:, 0].cpu(), qa[:, 1].cpu()] += nb * nb
    return FlexSelection(blocks=blocks, query_aware=query_aware, js=js, n_vertical=n_vertical,
                         n_slash=n_slash, estimate_pairs=estimate)


def block_ratios(blocks: torch.Tensor) -> tuple[float, float]:
    """FlexPrefill's ``computational_ratio`` of a selection ``[B, H, nb, nb]`` and the
    AnchorAttention repo's variant of it: kept blocks (every cell counted once, as upstream's
    ``torch.unique``'d flat indices) over ``B * H * nb * nb``, and over ``B * H * nb (nb + 1) / 2``."""
    B, H, nb, _ = blocks.shape
    kept = float(blocks.sum())
    return kept / (B * H * nb * nb), kept / (B * H * nb * (nb + 1) / 2)


@register_method("flexprefill")
class FlexPrefill:
    """FlexPrefill: per head, query-aware (pooled estimate + gamma coverage) or vertical-slash
    block pattern, executed as whole ``block_size`` x ``block_size`` tiles (causal on the
    diagonal) by the shared sparse kernel. Selection: ``flexprefill_selection``.

    Short inputs (``Lq <= max(2 * block_size, ceil(min_budget / block_size) * block_size)``) run
    dense as upstream, and chunked prefill (``Lq < Lk``, unsupported upstream) runs dense too; both
    are counted (``dense_fallback = 1``, stage ``dense``).

    Differences from ``flex_prefill_attention.py`` (bytedance/FlexPrefill@a24b27bf): budgets use
    ``// block_size`` (upstream hard-codes ``// 128``, wrong for other block sizes); estimates use
    ``sm_scale`` (upstream ``1/sqrt(head_dim)`` regardless of the softmax scale) and fp32 logits
    and pooling; the JS divergence treats ``0 * log 0`` as 0 (upstream gives NaN, i.e. the
    vertical-slash branch, when a pooled probability underflows); batch > 1 is supported
    (upstream asserts batch 1); all heads are selected in one vectorised pass (upstream loops over
    query-aware heads and ``unique``s per head); blocks above the block diagonal, which a
    query-aware head can select at ``gamma = 1``, are dropped (fully masked).

    Upstream ratios (``stats.extra``): ``upstream_ratio`` is FlexPrefill's
    ``computational_ratio`` (``flex_prefill_attention.py`` L1867-1876): kept blocks (the
    ``unique``'d flat block indices of every (batch, head), above-diagonal cells included) over
    ``B * Hq * nb * nb``, the full square; 1 on the short-input fallback (L1851-1853), absent on
    chunked prefill (upstream asserts ``q_len == k_len``). ``upstream_ratio_anchor_repo`` is the
    AnchorAttention repo's copy (``anchor_attn/src/ops/flex_prefill_attention.py`` L1905-1915):
    the same count over ``B * Hq * nb (nb + 1) / 2``, the causal blocks; absent on fallbacks (that
    copy has no short-input rule). ``degenerate_dense`` = 1 where the selection keeps every
    causal block by construction (``nb <= 2``, or both budgets clamped to ``>= nb``): exactly the
    short-input rule's range when ``max_budget`` is null.
    """

    def __init__(self, *, gamma: float, tau: float, min_budget: int, max_budget: int | None,
                 block_size: int, backend: str):
        check_block("block_size", block_size)
        check_backend(backend)
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        # Budgets of >= 1 block keep the forced key block 0 and main diagonal in every head.
        if min_budget < 1 or (max_budget is not None and max_budget < 1):
            raise ValueError(f"need min_budget >= 1 and max_budget null or >= 1, got {min_budget}, {max_budget}")
        self.gamma, self.tau = float(gamma), float(tau)
        self.min_budget, self.max_budget = int(min_budget), max_budget
        self.block_size, self.backend = block_size, backend

    def select(self, q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None) -> FlexSelection:
        """The blocks this method keeps for a full prefill ``q``, ``k`` (``flexprefill_selection``)."""
        scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
        return flexprefill_selection(q, k, gamma=self.gamma, tau=self.tau, min_budget=self.min_budget,
                                     max_budget=self.max_budget, block=self.block_size, sm_scale=scale)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` -> ``(out [B, Hq, Lq, D], stats)``.

        Stats stages: ``estimate`` (last-block logits ``block * N``, pooled JS row ``nb``, plus
        ``nb * nb`` pooled logits for query-aware heads) and ``sparse`` (visible pairs of the
        kept tiles); or ``dense`` with ``dense_fallback = 1``. ``layer_idx`` is unused.
        """
        B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
        bs = self.block_size
        if self.falls_back(Lq, Lk):
            out = dense_attention(q, k, v, sm_scale=sm_scale)
            stats = dense_stats(B, Hq, Lq, Lk, fallback=True)
            stats.extra["degenerate_dense"] = float(self.degenerate(Lq, Lk))
            if Lq == Lk:
                stats.extra["upstream_ratio"] = 1.0
            return out, stats
        scale = sm_scale if sm_scale is not None else D ** -0.5
        sel = self.select(q, k, sm_scale=scale)
        index, pairs = index_from_tile_mask(sel.blocks, tile=bs, rows_per_list=bs, q_len=Lq, k_len=Lk)
        out = attend(q, k, v, index, sm_scale=scale, backend=self.backend)
        stats = AttentionStats(pairs={"estimate": sel.estimate_pairs, "sparse": pairs},
                               causal_pairs=causal_pair_count(Lq, Lk))
        stats.extra["query_aware_fraction"] = float(sel.query_aware.float().mean())
        square, causal = block_ratios(sel.blocks)
        stats.extra.update(upstream_ratio=square, upstream_ratio_anchor_repo=causal,
                           degenerate_dense=float(self.degenerate(Lq, Lk)))
        return out, stats

    def degenerate(self, q_len: int, k_len: int) -> bool:
        """Every causal block kept by construction (full prefill, ``nb <= 2`` or budgets ``>= nb``)."""
        bs = self.block_size
        nb = math.ceil(q_len / bs)
        cap = math.inf if self.max_budget is None else math.ceil(self.max_budget / bs)
        return q_len == k_len and (nb <= 2 or min(math.ceil(self.min_budget / bs), cap) >= nb)

    def falls_back(self, q_len: int, k_len: int) -> bool:
        """Dense instead of sparse: chunked prefill, or FlexPrefill's short-input rule."""
        bs = self.block_size
        return q_len != k_len or q_len <= max(2 * bs, math.ceil(self.min_budget / bs) * bs)

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None) -> AttendedSet:
        """Keys each row attends (kept blocks, causally clipped; every causal key on fallback)."""
        Lq, Lk = q.shape[2], k.shape[2]
        if self.falls_back(Lq, Lk):
            return causal_attended(Lq, Lk)
        sel = self.select(q, k, sm_scale=sm_scale)
        index, _ = index_from_tile_mask(sel.blocks, tile=self.block_size, rows_per_list=self.block_size,
                                        q_len=Lq, k_len=Lk)
        return index_attended(index, Lq, Lk)

    def __repr__(self) -> str:
        return (f"FlexPrefill(gamma={self.gamma}, tau={self.tau}, min_budget={self.min_budget}, "
                f"max_budget={self.max_budget}, block_size={self.block_size}, backend={self.backend!r})")
