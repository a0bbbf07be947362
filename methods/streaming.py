"""``streaming``: StreamingLLM / A-shape attention (attention sinks + a local window), block-level."""
from __future__ import annotations

import math

import torch

from anchor.checks import check_qkv
from anchor.sparse_index import SparseIndex
from anchor.stats import AttentionStats, causal_pair_count
from methods.base import AttendedSet
from methods.index_builders import attend, check_backend, check_block, index_attended, index_from_tile_mask, list_rows
from methods.registry import register_method


def streaming_tile_mask(n_lists: int, *, block: int, global_window: int, local_window: int, q_len: int,
                        k_len: int, device: torch.device) -> torch.Tensor:
    """bool ``[n_lists, ceil(Lk / block)]``: the key tiles of each ``block``-row query list.

    A list whose last row sits at position ``P1`` keeps the tiles overlapping the sink
    ``[0, global_window)`` and the tiles overlapping ``[P1 - local_window + 1, P1]``, the window of
    its last row (tiles are ``block`` keys aligned to position 0). The kernel's causal mask then
    applies per row, so a row ``r`` positions before ``P1`` sees the sink tiles plus
    ``local_window - r`` to ``local_window - r + block - 1`` window keys (exactly
    ``local_window - r`` when ``local_window`` and the list are tile-aligned).
    """
    _, last, _ = list_rows(n_lists, block, q_len, k_len, device)
    t = torch.arange(math.ceil(k_len / block), device=device)
    sink = t * block < global_window
    lo = (last - local_window + 1).clamp(min=0) // block                  # first window tile
    return sink[None, :] | ((t[None, :] >= lo[:, None]) & (t[None, :] * block <= last[:, None]))


@register_method("streaming")
class Streaming:
    """StreamingLLM / A-shape prefill at block granularity.

    Each ``block_size``-row query block attends the tiles covering the first ``global_window``
    tokens and the ``local_window`` tokens ending at its last row (``streaming_tile_mask`` says
    exactly what is kept). No estimation; computed pairs = causally visible pairs of the kept
    tiles. Chunked prefill (``Lq < Lk``) runs natively (bottom-right causal).

    Differences from upstream: MInference's A-shape kernel is token-exact (every row sees its own
    ``n_local`` window, 64x64 tiles) and FlexPrefill/AnchorAttention's StreamingLLM baseline is a
    block-level Triton kernel of their own; here the window is that of the block's last row, so
    earlier rows of a block see up to ``block_size - 1`` fewer window keys, and a sink that is not a
    multiple of ``block_size`` is rounded up to whole tiles.

    Upstream ratio: FlexPrefill's ``streaming_llm_attention`` (and the AnchorAttention repo's copy)
    reports none, so ``stats.extra`` has no ``upstream_ratio``. ``degenerate_dense`` = 1 when the
    sink and window tiles cover every causally visible tile of every query block (e.g. a sequence
    no longer than ``global_window + local_window`` tokens, tile rounding included).
    """

    def __init__(self, *, global_window: int, local_window: int, block_size: int, backend: str):
        check_block("block_size", block_size)
        check_backend(backend)
        if global_window < 0 or local_window < 1:
            raise ValueError(f"need global_window >= 0 and local_window >= 1, "
                             f"got {global_window}, {local_window}")
        self.global_window, self.local_window = int(global_window), int(local_window)
        self.block_size, self.backend = block_size, backend

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` -> ``(out [B, Hq, Lq, D], stats)``.

        Stats stage ``sparse``: visible pairs of the kept tiles. ``layer_idx`` is unused.
        """
        B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
        scale = sm_scale if sm_scale is not None else D ** -0.5
        index, pairs = self.index(q, k)
        out = attend(q, k, v, index, sm_scale=scale, backend=self.backend)
        stats = AttentionStats(pairs={"sparse": pairs}, causal_pairs=causal_pair_count(Lq, Lk))
        stats.extra["degenerate_dense"] = float(self.degenerate(Lq, Lk))
        return out, stats

    def tiles(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """bool ``[n_lists, ceil(Lk / block_size)]``: the kept tiles (``streaming_tile_mask``)."""
        return streaming_tile_mask(math.ceil(q_len / self.block_size), block=self.block_size,
                                   global_window=self.global_window, local_window=self.local_window,
                                   q_len=q_len, k_len=k_len, device=device)

    def degenerate(self, q_len: int, k_len: int) -> bool:
        """Every causally visible tile of every query block kept (the result is dense attention)."""
        tiles = self.tiles(q_len, k_len, torch.device("cpu"))
        _, last, _ = list_rows(tiles.shape[0], self.block_size, q_len, k_len, tiles.device)
        visible = torch.arange(tiles.shape[1]) * self.block_size <= last[:, None]
        return bool((tiles | ~visible).all())

    def index(self, q: torch.Tensor, k: torch.Tensor) -> tuple[SparseIndex, torch.Tensor]:
        """``(index, visible pairs [B, Hq])`` of the kept tiles (the same for every head)."""
        B, Hq, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        tiles = self.tiles(Lq, Lk, q.device)
        return index_from_tile_mask(tiles.expand(B, Hq, *tiles.shape), tile=self.block_size,
                                    rows_per_list=self.block_size, q_len=Lq, k_len=Lk)

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None) -> AttendedSet:
        """Keys each row attends (kept tiles, causally clipped)."""
        return index_attended(self.index(q, k)[0], q.shape[2], k.shape[2])

    def __repr__(self) -> str:
        return (f"Streaming(global_window={self.global_window}, local_window={self.local_window}, "
                f"block_size={self.block_size}, backend={self.backend!r})")
