"""The sparse index: the contract between a selection (which keys) and the sparse kernel.

Query rows are split into lists of ``rows_per_list`` consecutive rows that attend to the same
keys. Each list holds whole key tiles (``tile`` consecutive keys, loaded contiguously by the
kernel) and positions of single keys (gathered). Tile id ``t`` covers keys
``[t * tile_unit, t * tile_unit + tile)``: ``tile_unit == tile`` (aligned tiles, the default)
or ``tile_unit == 1`` (a tile may start at any key). Flattened over ``(b, h, list)``, each list's
entries start at ``*_off`` and number ``*_cnt``. Within a list, tile ids and key positions are
ascending, tiles do not overlap each other or the list's columns, and no tile extends past the
last key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SparseIndex:
    """Tile + column index for ``B x H`` heads and ``n_lists`` row lists (shapes below).

    Attributes:
        full_off, col_off: int64 ``[B, H, n_lists]`` start of each list in ``full_ids`` / ``col_ids``.
        full_cnt, col_cnt: int32 ``[B, H, n_lists]`` entries per list.
        full_ids: int32 ``[total_full]`` tile ids (keys ``[t * tile_unit, t * tile_unit + tile)``).
        col_ids: int32 ``[total_cols]`` key positions.
        tile: keys per whole tile.
        rows_per_list: query rows sharing a list.
        tile_unit: key stride of ``full_ids``: ``tile`` (aligned tile ids) or ``1`` (first keys).
    """

    full_off: torch.Tensor
    full_cnt: torch.Tensor
    full_ids: torch.Tensor
    col_off: torch.Tensor
    col_cnt: torch.Tensor
    col_ids: torch.Tensor
    tile: int
    rows_per_list: int
    tile_unit: int

    def __post_init__(self):
        if self.tile_unit not in (1, self.tile):
            raise ValueError(f"tile_unit must be 1 or tile={self.tile}, got {self.tile_unit}")

    @property
    def n_lists(self) -> int:
        """Row lists per head."""
        return self.full_cnt.shape[-1]

    def keys_per_list(self) -> torch.Tensor:
        """int64 ``[B, H, n_lists]``: keys attended by each list (tiles count ``tile`` keys)."""
        return self.full_cnt.to(torch.int64) * self.tile + self.col_cnt.to(torch.int64)

    def to_key_mask(self, n_keys: int) -> torch.Tensor:
        """bool ``[B, H, n_lists, n_keys]``: the keys of every list."""
        B, H, L = self.full_cnt.shape
        n_tiles = math.ceil(n_keys / self.tile)
        flat = torch.zeros(B * H * L, n_tiles * self.tile, dtype=torch.bool, device=self.full_cnt.device)
        owners = torch.arange(B * H * L, device=flat.device)
        full_owner = torch.repeat_interleave(owners, self.full_cnt.reshape(-1).long())
        col_owner = torch.repeat_interleave(owners, self.col_cnt.reshape(-1).long())
        starts = self.full_ids.long() * self.tile_unit
        tile_keys = starts[:, None] + torch.arange(self.tile, device=flat.device)     # [total_full, tile]
        flat[full_owner[:, None].expand_as(tile_keys), tile_keys] = True
        flat[col_owner, self.col_ids.long()] = True
        return flat[:, :n_keys].reshape(B, H, L, n_keys)

    @classmethod
    def from_key_mask(cls, mask: torch.Tensor, tile: int, rows_per_list: int) -> "SparseIndex":
        """Build the index from a bool key mask ``[B, H, n_lists, n_keys]``.

        Aligned tiles whose keys are all selected become whole tiles (``tile_unit == tile``);
        other selected keys become columns.
        """
        B, H, L, n_keys = mask.shape
        n_tiles = math.ceil(n_keys / tile)
        padded = F.pad(mask, (0, n_tiles * tile - n_keys))               # [B, H, L, n_tiles * tile]
        tiles = padded.reshape(B, H, L, n_tiles, tile)
        full = tiles.all(-1)                                             # [B, H, L, n_tiles]
        cols = (tiles & ~full[..., None]).reshape(B, H, L, n_tiles * tile)
        full_cnt = full.sum(-1, dtype=torch.int32)
        col_cnt = cols.sum(-1, dtype=torch.int32)
        return cls(
            full_off=_exclusive_cumsum(full_cnt), full_cnt=full_cnt,
            full_ids=full.reshape(-1, n_tiles).nonzero()[:, 1].to(torch.int32),
            col_off=_exclusive_cumsum(col_cnt), col_cnt=col_cnt,
            col_ids=cols.reshape(-1, n_tiles * tile).nonzero()[:, 1].to(torch.int32),
            tile=tile, rows_per_list=rows_per_list, tile_unit=tile)


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    """int64 exclusive prefix sum over the flattened ``counts``, reshaped like it."""
    flat = counts.reshape(-1).to(torch.int64)
    return (torch.cumsum(flat, 0) - flat).reshape(counts.shape)


def index_from_counts(full_cnt: torch.Tensor, col_cnt: torch.Tensor, tile: int,
                      rows_per_list: int, tile_unit: int | None = None) -> SparseIndex:
    """Offsets and (uninitialised) id buffers sized exactly for the given per-list counts.

    ``tile_unit`` defaults to ``tile`` (aligned tile ids). One host synchronisation reads the
    two totals.
    """
    full_total, col_total = torch.stack([full_cnt.sum(), col_cnt.sum()]).tolist()
    device = full_cnt.device
    return SparseIndex(
        full_off=_exclusive_cumsum(full_cnt), full_cnt=full_cnt.to(torch.int32),
        full_ids=torch.empty(int(full_total), dtype=torch.int32, device=device),
        col_off=_exclusive_cumsum(col_cnt), col_cnt=col_cnt.to(torch.int32),
        col_ids=torch.empty(int(col_total), dtype=torch.int32, device=device),
        tile=tile, rows_per_list=rows_per_list, tile_unit=tile if tile_unit is None else tile_unit)
