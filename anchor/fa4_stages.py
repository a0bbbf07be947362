"""AnchorAttention's work that FlashAttention-4 runs faster than our Triton kernels (Hopper).

Stage 1 stays on Triton: stage 2 needs each row's maximum stage-1 score (the anchor), and FA4
(4.0.0b36) returns only the log-sum-exp (its row maximum never leaves registers). What moves:

* the dense rows (the ``dense`` tail, a dense fallback): ``anchor.tail.dense_causal_attention``;
* stage 3's whole 128-key tiles, when they hold enough pairs (``FA4_TILE_FRACTION``): FA4 block
  sparsity over the tiles, our Triton kernel resuming stage 1 over the single keys (writing its
  log-sum-exp), and one merge through the log-sum-exps (``anchor.kernels.lse_merge``);
* a complete selection with ``dense_if_complete`` recomputes every row densely through the dense
  path above (FA4 dense on the H200 ran at 660 TFLOP/s, FA4 block sparsity over all candidate
  blocks at 88% of that, so recomputing stage 1's 4.6% of the pairs is the cheaper way).

Every path computes the same key sets as the Triton path; only the kernels change.
"""
from __future__ import annotations

import torch

from anchor.kernels.fa4 import fa4_block_sparse, fa4_installed
from anchor.kernels.fa4_blocks import KV_BLOCK, blocks_from_index
from anchor.kernels.lse_merge import lse_natural_to_log2, merge_partials
from anchor.sparse_index import SparseIndex

# Whole-tile pairs / (B * Hq * causal pairs) from which stage 3's tiles go to FA4: below it the
# fixed cost of the merge (one read of both partial outputs, one write) outweighs FA4's faster
# tiles (H200, 128k: merge ~1 ms; Triton tiles ~465 vs FA4 ~600 TFLOP/s).
FA4_TILE_FRACTION = 0.05


def fa4_sparse_ready(q: torch.Tensor, tile: int) -> bool:
    """FA4 block sparsity can run stage-3 tiles of ``q``: CUDA sm90, fp16/bf16, head_dim <= 128,
    128-key tiles, FlashAttention-4 installed."""
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 128 and tile == KV_BLOCK
            and torch.cuda.get_device_capability(q.device)[0] == 9 and fa4_installed())


def split_index(index: SparseIndex) -> tuple[SparseIndex, SparseIndex]:
    """``(whole tiles only, single keys only)`` views of ``index`` (no copies of the id arrays)."""
    zeros = torch.zeros_like(index.col_cnt)
    tiles = SparseIndex(index.full_off, index.full_cnt, index.full_ids, torch.zeros_like(index.col_off), zeros,
                        index.col_ids[:0], index.tile, index.rows_per_list, index.tile_unit)
    cols = SparseIndex(torch.zeros_like(index.full_off), torch.zeros_like(index.full_cnt), index.full_ids[:0],
                       index.col_off, index.col_cnt, index.col_ids, index.tile, index.rows_per_list, index.tile_unit)
    return tiles, cols


def tiles_worth_fa4(q: torch.Tensor, index: SparseIndex) -> bool:
    """Stage 3 of ``index`` should run its whole tiles on FA4 (``FA4_TILE_FRACTION``)."""
    if index.tile_unit != index.tile or not fa4_sparse_ready(q, index.tile):
        return False
    B, Hq, N = q.shape[0], q.shape[1], q.shape[2]
    tile_pairs = index.full_ids.numel() * index.tile * index.rows_per_list
    return tile_pairs >= FA4_TILE_FRACTION * B * Hq * N * (N + 1) / 2


def stage3_tiles_on_fa4(q, k, v, out: torch.Tensor, lse: torch.Tensor, index: SparseIndex, sm_scale: float,
                        resume_columns) -> None:
    """Stage 3 with whole tiles on FA4: ``resume_columns(q, k, v, out, lse, cols_index, sm_scale)``
    folds the single keys into the stage-1 state and updates ``lse`` (log2); FA4 computes the tiles;
    the merge writes ``out`` in place."""
    tiles, cols = split_index(index)
    N = q.shape[2]
    out_t, lse_t = fa4_block_sparse(q, k, v, blocks_from_index(tiles, q_len=N, k_len=N), sm_scale=sm_scale)
    if cols.col_ids.numel():
        resume_columns(q, k, v, out, lse, cols, sm_scale)
    merge_partials(out, lse, out_t, lse_natural_to_log2(lse_t), base2=True, out=out)

