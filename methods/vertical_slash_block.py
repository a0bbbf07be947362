"""``vertical_slash_block``: FlexPrefill's block-level Vertical-Slash, the AnchorAttention paper's
"Vertical_Slash" baseline, GQA native."""
from __future__ import annotations

import math

import torch

from anchor.checks import check_qkv
from anchor.stats import AttentionStats, causal_pair_count, dense_stats
from methods.base import AttendedSet, causal_attended
from methods.dense import dense_attention
from methods.flexprefill import last_block_profiles, sum_pool, vertical_slash_blocks
from methods.index_builders import attend, check_backend, check_block, index_attended, index_from_tile_mask
from methods.registry import register_method


@register_method("vertical_slash_block")
class VerticalSlashBlock:
    """Block vertical-slash: per head, the top ``ceil(vertical_size / block_size)`` key blocks
    and top ``ceil(slash_size / block_size)`` block diagonals, executed as whole
    ``block_size`` x ``block_size`` tiles (causal on the diagonal) by the shared sparse kernel.

    As ``get_vertical_slash_topk`` / ``vertical_slash_attention`` in bytedance/FlexPrefill@a24b27bf
    ``flex_prefill/ops/vertical_slash_attention.py`` (L436-601; copied as the AnchorAttention repo's
    ``anchor_attn/src/ops/vertical_slash_attention.py`` L482-580, sizes from its
    ``anchor_attn/src/modules/patch.py`` L23-27):

    * estimate from the softmax (fp32) of the last ``block_size`` **queries** (not the last
      block: ``q[:, -block_size:]``) against all keys, causal inside them (``last_block_profiles``);
    * ``vertical`` = per-key mean over those queries, sum-pooled per key block; ``slash`` = per
      token diagonal sum / ``block_size``, indexed by ``c = N - 1 - offset`` and sum-pooled in
      blocks from ``c = 0`` (``sum_all_diagonal_matrix`` + ``torch_bhn_sumpool``): block diagonal
      ``d`` collects the token offsets ``o`` with ``N - 1 - o`` in ``[(nb - 1 - d) * block,
      (nb - d) * block)``, so when ``N % block_size != 0`` offsets are binned from the last
      position, not from block boundaries (upstream's ``(num_blocks - 1) - topk`` indices);
    * key block 0 and the main block diagonal forced (score ``+inf``), then ``torch.topk`` of
      ``min(budget, nb)`` each (``vertical_slash_blocks``, shared with ``flexprefill``); query block
      ``r`` keeps key block ``c <= r`` if ``c`` is a kept vertical block or ``r - c`` a kept diagonal;
      both upstream kernels (``<= 16k`` vertical-slash kernel, ``> 16k`` block-wise kernel) compute
      this same set.

    Where the budgets cover every block (``nb <= max(vertical blocks, slash blocks, 2)``) the
    result is dense attention by construction: the estimate is skipped and dense attention runs
    (stage ``dense``, ``degenerate_dense = 1``, ``dense_fallback = 0``); upstream still computes
    the estimate and runs its sparse kernel over every block there (FlexPrefill above
    ``min(vertical, slash) * block_size`` tokens, the AnchorAttention copy always). This range
    contains FlexPrefill's short-input rule (``seq_len <= min(vertical, slash) * block_size`` ->
    flash attention, L557-558), which the AnchorAttention copy comments out (L549-551); both give
    dense attention there (the copy would crash below ``block_size`` tokens). Chunked prefill
    (``Lq < Lk``; upstream asserts ``q_len == k_len``) runs dense with ``dense_fallback = 1``.

    Differences from upstream: fp32 estimation logits scaled by ``sm_scale`` (upstream: input
    dtype, ``q / sqrt(head_dim)``, fp32 softmax); batch > 1, fp16/fp32 and any head dim (upstream's
    kernels: bf16, head dim 16-128); GQA reads shared K/V (upstream maps GQA in its kernels too).
    Upstream's ``causal_mask`` is a module global built on the first call's block size (a later
    call with a larger block would fail); ours is per call.

    Upstream ratio: FlexPrefill's ``vertical_slash_attention`` reports none (the AnchorAttention
    copy accepts ``return_computational_ratio`` and ignores it, L540), so ``stats.extra`` has no
    ``upstream_ratio``; ``degenerate_dense`` as above.
    """

    def __init__(self, *, vertical_size: int, slash_size: int, block_size: int, backend: str):
        check_block("block_size", block_size)
        check_backend(backend)
        if min(vertical_size, slash_size) < 1:
            raise ValueError(f"vertical_size and slash_size must be >= 1, got {vertical_size}, {slash_size}")
        self.vertical_size, self.slash_size = int(vertical_size), int(slash_size)
        self.block_size, self.backend = block_size, backend

    def budgets(self) -> tuple[int, int]:
        """Vertical and slash budgets in blocks (``ceil(size / block_size)``, before ``min(., nb)``)."""
        bs = self.block_size
        return math.ceil(self.vertical_size / bs), math.ceil(self.slash_size / bs)

    def degenerate(self, q_len: int, k_len: int) -> bool:
        """Every causal block kept by construction (full prefill whose budgets cover all blocks)."""
        return q_len == k_len and math.ceil(q_len / self.block_size) <= max(*self.budgets(), 2)

    def select(self, q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None) -> torch.Tensor:
        """bool ``[B, Hq, nb, nb]``: the kept (query block, key block) tiles of a full prefill."""
        B, Hq = q.shape[:2]
        bs = self.block_size
        scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
        vertical, slash = last_block_profiles(q, k, block=bs, sm_scale=scale)     # [B, Hq, N]
        vertical, slash = sum_pool(vertical, bs), sum_pool(slash, bs)             # [B, Hq, nb]
        nb = vertical.shape[-1]
        n_vertical, n_slash = (torch.full((B, Hq), min(n, nb), dtype=torch.int64, device=q.device)
                               for n in self.budgets())
        return vertical_slash_blocks(vertical, slash, n_vertical, n_slash)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` -> ``(out [B, Hq, Lq, D], stats)``.

        Stats stages: ``estimate`` = ``min(block_size, N) * N`` logits per head (the full product
        of the last queries, masked entries included) and ``sparse`` (visible pairs of the kept
        tiles); or ``dense`` (degenerate or chunked prefill). ``layer_idx`` is unused.
        """
        B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
        if Lq != Lk or self.degenerate(Lq, Lk):
            out = dense_attention(q, k, v, sm_scale=sm_scale)
            stats = dense_stats(B, Hq, Lq, Lk, fallback=Lq != Lk)
            stats.extra["degenerate_dense"] = float(Lq == Lk)
            return out, stats
        bs = self.block_size
        scale = sm_scale if sm_scale is not None else D ** -0.5
        blocks = self.select(q, k, sm_scale=scale)
        index, pairs = index_from_tile_mask(blocks, tile=bs, rows_per_list=bs, q_len=Lq, k_len=Lk)
        out = attend(q, k, v, index, sm_scale=scale, backend=self.backend)
        estimate = torch.full((B, Hq), min(bs, Lq) * Lk, dtype=torch.int64)
        stats = AttentionStats(pairs={"estimate": estimate, "sparse": pairs}, causal_pairs=causal_pair_count(Lq, Lk))
        stats.extra["degenerate_dense"] = 0.0
        return out, stats

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None) -> AttendedSet:
        """Keys each row attends (kept tiles, causally clipped; every causal key when dense)."""
        Lq, Lk = q.shape[2], k.shape[2]
        if Lq != Lk or self.degenerate(Lq, Lk):
            return causal_attended(Lq, Lk)
        bs = self.block_size
        index, _ = index_from_tile_mask(self.select(q, k, sm_scale=sm_scale), tile=bs, rows_per_list=bs,
                                        q_len=Lq, k_len=Lk)
        return index_attended(index, Lq, Lk)

    def __repr__(self) -> str:
        return (f"VerticalSlashBlock(vertical_size={self.vertical_size}, slash_size={self.slash_size}, "
                f"block_size={self.block_size}, backend={self.backend!r})")
