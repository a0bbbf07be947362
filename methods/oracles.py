"""Analysis methods: exact top-k / top-cdf oracles.

``oracle_topk`` / ``oracle_topcdf`` select keys from the exact dense attention probabilities
(fp32, chunked over query blocks), per query block of ``block_size`` rows: at ``stripe``
granularity the score of key ``j`` is ``sum_{i in block} p_ij``; at ``block`` granularity the
score of a ``block_size``-key tile is the sum of ``p`` over the tile.

Stats extras: no ``upstream_ratio`` (oracles have no upstream); ``degenerate_dense`` = 1 when the
selection keeps every visible key or tile by construction (top-k with ``k`` covering them all).
"""
from __future__ import annotations

import math

import torch

from anchor.checks import check_qkv
from anchor.sparse_index import SparseIndex
from anchor.stats import AttentionStats, causal_pair_count
from methods.base import AttendedSet
from methods.index_builders import (
    attend,
    check_backend,
    check_block,
    index_attended,
    index_from_key_mask,
    index_from_tile_mask,
    list_rows,
    pad_rows,
    stack_indices,
)
from methods.registry import register_method

GRANULARITIES = ("stripe", "block")
CHUNK_ELEMENTS = 2 ** 24          # fp32 probabilities held at once per (batch, KV head)


def block_scores(q: torch.Tensor, k: torch.Tensor, *, block: int, granularity: str, sm_scale: float,
                 rows: slice) -> torch.Tensor:
    """fp32 ``[g, c', n]``: exact probability mass per (query block, key or key tile).

    ``q [g, Lq, D]`` (the query heads of one KV head), ``k [Lk, D]``; ``rows`` is a
    block-aligned range of query rows (``c' = ceil(len(rows) / block)`` blocks); ``n = Lk``
    (stripe) or ``ceil(Lk / block)`` (block).
    """
    Lq, Lk = q.shape[1], k.shape[0]
    qc = q[:, rows].float()                                              # [g, c, D]
    pos = torch.arange(rows.start, rows.start + qc.shape[1], device=q.device) + (Lk - Lq)
    logits = (qc @ k.float().T) * sm_scale                               # [g, c, Lk]
    p = logits.masked_fill_(torch.arange(Lk, device=q.device) > pos[:, None], float("-inf")).softmax(-1)
    stripes = pad_rows(p, block).unflatten(1, (-1, block)).sum(2)       # [g, ceil(c / block), Lk]
    if granularity == "stripe":
        return stripes
    tiles = pad_rows(stripes.transpose(1, 2), block).unflatten(1, (-1, block)).sum(2)   # [g, n_tiles, c']
    return tiles.transpose(1, 2)


class _Oracle:
    """Shared driver: exact scores -> per-block selection -> ``SparseIndex`` -> sparse attention."""

    def __init__(self, granularity: str, block_size: int, backend: str):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        check_block("block_size", block_size)
        check_backend(backend)
        self.granularity, self.block_size, self.backend = granularity, block_size, backend

    def choose(self, scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """bool like ``scores [g, lists, n]``: the selection (``visible [lists, n]``)."""
        raise NotImplementedError

    def select(self, q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None
               ) -> tuple[SparseIndex, torch.Tensor]:
        """``(index, sparse pairs [B, Hq])`` of the selection; loops over (batch, KV head) and
        query-row chunks so memory stays ``O(g * n_lists * n)`` bool plus a bounded fp32 chunk."""
        B, Hq, Hkv, Lq, Lk, D = check_qkv(q, k, k)
        g, bs = Hq // Hkv, self.block_size
        scale = sm_scale if sm_scale is not None else D ** -0.5
        L = math.ceil(Lq / bs)
        n = Lk if self.granularity == "stripe" else math.ceil(Lk / bs)
        _, last, _ = list_rows(L, bs, Lq, Lk, q.device)
        step = 1 if self.granularity == "stripe" else bs
        visible = torch.arange(n, device=q.device) * step <= last[:, None]    # [L, n]
        chunk = bs * max(1, CHUNK_ELEMENTS // (g * bs * Lk))
        build = index_from_key_mask if self.granularity == "stripe" else index_from_tile_mask
        parts = []
        for b in range(B):
            for kh in range(Hkv):
                qh, kk = q[b, kh * g:(kh + 1) * g], k[b, kh].float()
                mask = torch.empty(g, L, n, dtype=torch.bool, device=q.device)
                for r0 in range(0, Lq, chunk):
                    rows = slice(r0, min(r0 + chunk, Lq))
                    lists = slice(r0 // bs, math.ceil(rows.stop / bs))
                    sc = block_scores(qh, kk, block=bs, granularity=self.granularity, sm_scale=scale, rows=rows)
                    mask[:, lists] = self.choose(sc, visible[lists])
                parts.append(build(mask[None], tile=bs, rows_per_list=bs, q_len=Lq, k_len=Lk))
        return stack_indices(parts, B, Hq)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``(out [B, Hq, Lq, D], stats)``. Stages: ``oracle`` = ``Lq * Lk`` logits per head (the
        exact pass, masked logits included) and ``sparse`` = visible pairs of the selection.
        Rows whose block kept no visible key output zeros. ``layer_idx`` is unused."""
        B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
        scale = sm_scale if sm_scale is not None else D ** -0.5
        index, pairs = self.select(q, k, sm_scale=scale)
        out = attend(q, k, v, index, sm_scale=scale, backend=self.backend)
        oracle = torch.full((B, Hq), Lq * Lk, dtype=torch.int64)
        stats = AttentionStats(pairs={"oracle": oracle, "sparse": pairs}, causal_pairs=causal_pair_count(Lq, Lk))
        stats.extra["degenerate_dense"] = float(self.degenerate(Lk))
        return out, stats

    def degenerate(self, k_len: int) -> bool:
        """The selection keeps every visible key by construction (never, unless a subclass says so)."""
        return False

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None) -> AttendedSet:
        """Keys each row attends (its block's selection, causally clipped)."""
        return index_attended(self.select(q, k, sm_scale=sm_scale)[0], q.shape[2], k.shape[2])


@register_method("oracle_topk")
class OracleTopK(_Oracle):
    """Per query block, the ``k`` causally visible keys (stripe) or key tiles (block) with the
    largest exact probability mass (``torch.topk`` order on ties); fewer when fewer are visible."""

    def __init__(self, *, granularity: str, k: int, block_size: int, backend: str):
        super().__init__(granularity, block_size, backend)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)

    def degenerate(self, k_len: int) -> bool:
        """``k`` covers every key (stripe) or key tile (block) a query block can see."""
        return self.k >= (k_len if self.granularity == "stripe" else math.ceil(k_len / self.block_size))

    def choose(self, scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        masked = scores.masked_fill(~visible, float("-inf"))
        top = masked.topk(min(self.k, scores.shape[-1]), -1)
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        return keep.scatter_(-1, top.indices, top.values > float("-inf"))

    def __repr__(self) -> str:
        return f"OracleTopK(granularity={self.granularity!r}, k={self.k}, block_size={self.block_size})"


@register_method("oracle_topcdf")
class OracleTopCdf(_Oracle):
    """Per query block, the fewest causally visible keys (stripe) or key tiles (block), taken by
    decreasing exact mass, whose mass reaches ``cdf`` x the block's total mass (its row count):
    an entry is kept if the mass ranked strictly before it is below the target."""

    def __init__(self, *, granularity: str, cdf: float, block_size: int, backend: str):
        super().__init__(granularity, block_size, backend)
        if not 0 < cdf <= 1:
            raise ValueError(f"cdf must be in (0, 1], got {cdf}")
        self.cdf = float(cdf)

    def choose(self, scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        sorted_s, order = scores.sort(-1, descending=True)
        before = sorted_s.cumsum(-1) - sorted_s                          # mass ranked before each entry
        keep = before < self.cdf * scores.sum(-1, keepdim=True)
        return torch.zeros_like(keep).scatter(-1, order, keep) & visible

    def __repr__(self) -> str:
        return f"OracleTopCdf(granularity={self.granularity!r}, cdf={self.cdf}, block_size={self.block_size})"
