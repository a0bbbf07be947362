"""Selections -> ``SparseIndex`` for the baseline methods, with exact work accounting.

Every builder returns ``(index, pairs)``. Query rows are split into lists of ``rows_per_list``
consecutive rows (list ``l`` = rows ``[l * R, min((l + 1) * R, Lq))``, queries being the last
``Lq`` of ``Lk`` positions); key tiles are aligned to absolute key positions.

Pair-count convention (``index_pair_counts``): a list's **computed pairs** are its
(row, key) pairs that the bottom-right causal mask leaves visible, i.e. for every key of the
list (whole tile or gathered column) the number of the list's rows at or after that key. A whole
tile crossing the diagonal therefore counts only its causal pairs, and the kernel's masked
padding (tile parts after a row, unused gather slots) is not counted. A full causal index gives
exactly ``causal_pair_count(Lq, Lk)`` per head. No builder puts a tile starting after a list's
last row, or a column after it, in an index (they could only be masked); a whole tile holding
the last row may extend past it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anchor.ops import sparse_attention, use_triton
from anchor.reference import sparse_attention_reference
from anchor.sparse_index import SparseIndex, index_from_counts
from methods.base import AttendedSet

BACKENDS = ("auto", "triton", "torch")
KERNEL_TILES = (16, 32, 64, 128)
ID_BUDGET = 2 ** 26          # key ids (upper bound) built at once by ``index_from_diagonals``


def check_backend(backend: str) -> None:
    """Raise unless ``backend`` is ``auto`` (Triton on CUDA), ``triton`` or ``torch``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_block(name: str, value: int) -> None:
    """Raise unless ``value`` is a tile size the sparse kernel supports."""
    if value not in KERNEL_TILES:
        raise ValueError(f"{name} must be one of {KERNEL_TILES}, got {value!r}")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex, *,
           sm_scale: float, backend: str) -> torch.Tensor:
    """Causal attention of each row list over its index keys: ``[B, Hq, Lq, D]`` in q's dtype.

    ``triton`` runs ``anchor.ops.sparse_attention`` (CUDA, or CPU under ``TRITON_INTERPRET=1``);
    ``torch`` the fp32 ``sparse_attention_reference`` (materialises ``[B, Hq, Lq, Lk]``: small
    inputs only); ``auto``: Triton on CUDA, the reference otherwise (``anchor.ops.use_triton``).
    """
    check_backend(backend)
    if not use_triton(backend, q):
        return sparse_attention_reference(q, k, v, index, sm_scale=sm_scale, causal=True)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out, _ = sparse_attention(q, k, v, index, sm_scale=sm_scale, causal=True)
    return out


def index_attended(index: SparseIndex, q_len: int, k_len: int) -> AttendedSet:
    """The keys each row attends under ``index`` with the causal mask (for recall studies;
    materialises ``[B, H, n_lists, k_len]`` bools)."""
    keys = index.to_key_mask(k_len)

    def row_mask(b: int, h: int, rows: torch.Tensor) -> torch.Tensor:
        visible = torch.arange(k_len, device=rows.device)[None, :] <= (rows + k_len - q_len)[:, None]
        return keys[b, h, rows // index.rows_per_list] & visible
    return AttendedSet(n_keys=k_len, row_mask=row_mask)


def list_rows(n_lists: int, rows_per_list: int, q_len: int, k_len: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int64 ``[n_lists]`` each: absolute position of each list's first and last row, row count."""
    first = torch.arange(n_lists, device=device, dtype=torch.int64) * rows_per_list
    n_rows = (q_len - first).clamp(max=rows_per_list)
    offset = k_len - q_len
    return first + offset, first + offset + n_rows - 1, n_rows


def _causal_sum(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``sum_{u=1..x} min(u, n)`` for ``x >= 0`` (int64, elementwise)."""
    return torch.where(x <= n, x * (x + 1) // 2, n * (n + 1) // 2 + (x - n) * n)


def index_pair_counts(index: SparseIndex, q_len: int, k_len: int) -> torch.Tensor:
    """int64 ``[B, H]`` (CPU): causally visible (row, key) pairs of the index (module docstring)."""
    B, H, L = index.full_cnt.shape
    device = index.full_cnt.device
    _, last, n_rows = list_rows(L, index.rows_per_list, q_len, k_len, device)
    owners = torch.arange(B * H * L, device=device)
    total = torch.zeros(B * H, dtype=torch.int64, device=device)
    # Key j is seen by min(n_rows, max(0, last + 1 - j)) rows of its list.
    full_owner = torch.repeat_interleave(owners, index.full_cnt.reshape(-1).long())
    lst = full_owner % L
    start = index.full_ids.long() * index.tile
    hi = (last[lst] + 1 - start).clamp(min=0)                            # rows seeing the tile's first key
    lo = (last[lst] + 1 - (start + index.tile)).clamp(min=0)            # ... its key just after the tile
    total.index_add_(0, full_owner // L, _causal_sum(hi, n_rows[lst]) - _causal_sum(lo, n_rows[lst]))
    col_owner = torch.repeat_interleave(owners, index.col_cnt.reshape(-1).long())
    lst = col_owner % L
    seen = (last[lst] + 1 - index.col_ids.long()).clamp(min=0)
    total.index_add_(0, col_owner // L, torch.minimum(seen, n_rows[lst]))
    return total.reshape(B, H).cpu()


def _fill_index(full_cnt: torch.Tensor, full_ids: torch.Tensor, col_cnt: torch.Tensor, col_ids: torch.Tensor,
                tile: int, rows_per_list: int) -> SparseIndex:
    """A ``SparseIndex`` from per-list counts and list-major id tensors."""
    index = index_from_counts(full_cnt, col_cnt, tile, rows_per_list)
    index.full_ids.copy_(full_ids)
    index.col_ids.copy_(col_ids)
    return index


def index_from_tile_mask(tiles: torch.Tensor, *, tile: int, rows_per_list: int, q_len: int,
                         k_len: int) -> tuple[SparseIndex, torch.Tensor]:
    """Index of whole key tiles from a bool tile mask ``[B, H, n_lists, ceil(Lk / tile)]``.

    Tiles starting after a list's last row are dropped (fully masked). A selected last tile
    that is partial (``Lk % tile != 0``) becomes gathered columns (the kernel loads whole tiles
    without bounds checks). Returns ``(index, pairs [B, H])``.
    """
    B, H, L, n_tiles = tiles.shape
    if n_tiles != math.ceil(k_len / tile):
        raise ValueError(f"tile mask has {n_tiles} tiles, expected ceil({k_len} / {tile})")
    _, last, _ = list_rows(L, rows_per_list, q_len, k_len, tiles.device)
    starts = torch.arange(n_tiles, device=tiles.device) * tile
    tiles = tiles & (starts[None, :] <= last[:, None])                  # [B, H, L, n_tiles]
    n_whole = k_len // tile
    whole = tiles[..., :n_whole]
    full_ids = whole.reshape(-1, n_whole).nonzero()[:, 1]               # list-major, ascending
    tail = n_tiles - n_whole                                             # 0 or 1 partial tile
    partial = tiles[..., n_whole:].any(-1) if tail else torch.zeros_like(tiles[..., 0])
    tail_keys = torch.arange(n_whole * tile, k_len, device=tiles.device)
    col_ids = tail_keys.repeat(int(partial.sum()))
    index = _fill_index(whole.sum(-1, dtype=torch.int32), full_ids,
                        partial.to(torch.int32) * tail_keys.numel(), col_ids, tile, rows_per_list)
    return index, index_pair_counts(index, q_len, k_len)


def index_from_key_mask(mask: torch.Tensor, *, tile: int, rows_per_list: int, q_len: int,
                        k_len: int) -> tuple[SparseIndex, torch.Tensor]:
    """Index from a bool key mask ``[B, H, n_lists, Lk]`` (``SparseIndex.from_key_mask``).

    Keys after each list's last row are dropped first. Aligned tiles that are entirely selected
    become whole tiles, the other keys columns. Memory ``O(B * H * n_lists * Lk)``.
    """
    _, last, _ = list_rows(mask.shape[2], rows_per_list, q_len, k_len, mask.device)
    mask = mask & (torch.arange(k_len, device=mask.device)[None, :] <= last[:, None])
    index = SparseIndex.from_key_mask(mask, tile, rows_per_list)
    return index, index_pair_counts(index, q_len, k_len)


def _expand(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments ``[starts[s], starts[s] + lengths[s])`` concatenated: ``(segment id, value)``."""
    lengths = lengths.clamp(min=0)
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    return seg, starts[seg] + torch.arange(seg.numel(), device=seg.device) - first[seg]


def _diagonal_runs(offsets: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the key ranges ``[-d, -d + width)`` of every diagonal offset ``d`` (per head).

    ``offsets``: int64 ``[B, H, S]`` (duplicates allowed). Returns ``(run_start, run_end)``,
    int64 ``[B, H, M]`` relative to a list's first row, ascending and disjoint; unused slots
    (heads with fewer runs) have ``start = end = 2**62``.
    """
    a = torch.sort(-offsets, dim=-1).values                              # range starts, ascending
    new = torch.ones_like(a, dtype=torch.bool)
    new[..., 1:] = a[..., 1:] - a[..., :-1] > width                      # a gap opens a new run
    run_id = torch.cumsum(new, -1) - 1
    n_runs = new.sum(-1)
    big = torch.full_like(a, 2 ** 62)
    run_start = big.scatter_reduce(-1, run_id, a, reduce="amin", include_self=False)
    run_end = big.scatter_reduce(-1, run_id, a + width, reduce="amax", include_self=False)
    m = int(n_runs.max())
    return run_start[..., :m].contiguous(), run_end[..., :m].contiguous()


def index_from_diagonals(offsets: torch.Tensor, columns: torch.Tensor, columns_valid: torch.Tensor, *,
                         block: int, q_len: int, k_len: int) -> tuple[SparseIndex, torch.Tensor]:
    """Vertical-slash index: per ``block``-row list, diagonal ranges plus single columns.

    For a list whose first row sits at position ``P0`` and last at ``P1``, diagonal offset ``d``
    (query position minus key position) contributes the ``block`` keys ``[P0 - d, P0 - d + block)``
    (MInference's 64-wide range of a 64-row block, also for a short last list); overlapping or
    adjacent ranges merge into runs. Columns are added where not inside a run. Everything is
    clipped to ``[0, P1]``. Runs are stored as whole ``block``-aligned tiles plus their unaligned
    ends as columns (``tile = block``).

    Args:
        offsets: int64 ``[B, H, S]`` diagonal offsets (pad with duplicates of a real offset).
        columns: int64 ``[B, H, V]`` key positions; ``columns_valid``: bool ``[B, H, V]``.

    Heads are processed in chunks whose bound on key ids (``n_lists * min(Lk, S * block + V)``
    per head) stays within ``ID_BUDGET``, one head at a time beyond it.
    """
    B, H, S = offsets.shape
    V = columns.shape[-1]
    per_head = math.ceil(q_len / block) * (min(k_len, S * block + V) + 2 * S)   # ids + runs of a head
    step = max(1, ID_BUDGET // per_head)
    flat = [x.reshape(B * H, 1, x.shape[-1]) for x in (offsets, columns, columns_valid)]
    parts = [_diagonal_index(*(x[i:i + step] for x in flat), block=block, q_len=q_len, k_len=k_len)
             for i in range(0, B * H, step)]
    return stack_indices(parts, B, H)


def _diagonal_index(offsets: torch.Tensor, columns: torch.Tensor, columns_valid: torch.Tensor, *,
                    block: int, q_len: int, k_len: int) -> tuple[SparseIndex, torch.Tensor]:
    """``index_from_diagonals`` for one chunk of heads (all at once)."""
    B, H, _ = offsets.shape
    device = offsets.device
    L = math.ceil(q_len / block)
    first, last, _ = list_rows(L, block, q_len, k_len, device)
    rs, re = _diagonal_runs(offsets, block)                              # [B, H, M]
    M = rs.shape[-1]
    a = (first[:, None] + rs[:, :, None, :]).clamp(min=0)                # [B, H, L, M] absolute
    b = torch.minimum(first[:, None] + re[:, :, None, :], last[:, None] + 1)
    valid = (b > a) & (rs < 2 ** 62)[:, :, None, :]
    b = torch.where(valid, b, a)
    t_lo, t_hi = -(-a // block), b // block                             # whole tiles [t_lo, t_hi)
    n_full = torch.where(valid, (t_hi - t_lo).clamp(min=0), 0)
    _, full_ids = _expand(t_lo.reshape(-1), n_full.reshape(-1))          # list-major, ascending
    has_full = n_full > 0
    edge_start = torch.stack([a, torch.where(has_full, t_hi * block, b)], -1)   # [B, H, L, M, 2]
    edge_end = torch.stack([torch.where(has_full, t_lo * block, b), b], -1)
    seg, edge_cols = _expand(edge_start.reshape(-1), (edge_end - edge_start).reshape(-1))
    edge_owner = seg // (2 * M)
    # Columns inside a run are already covered; columns after the list's last row are invisible.
    rel = columns[:, :, None, :] - first[:, None]                        # [B, H, L, V]
    run = torch.searchsorted(rs, rel.reshape(B, H, -1), right=True).reshape(rel.shape) - 1
    inside = (run >= 0) & (rel < re.gather(-1, run.clamp(min=0).reshape(B, H, -1)).reshape(rel.shape))
    keep = columns_valid[:, :, None, :] & ~inside & (columns[:, :, None, :] <= last[:, None])
    col_owner = keep.nonzero()
    col_owner = (col_owner[:, 0] * H + col_owner[:, 1]) * L + col_owner[:, 2]
    col_vals = columns[:, :, None, :].expand_as(keep)[keep]
    owner = torch.cat([edge_owner, col_owner])
    order = torch.argsort(owner * k_len + torch.cat([edge_cols, col_vals]))
    col_ids = torch.cat([edge_cols, col_vals])[order]
    col_cnt = torch.bincount(owner, minlength=B * H * L).reshape(B, H, L)
    index = _fill_index(n_full.sum(-1, dtype=torch.int32), full_ids, col_cnt.to(torch.int32), col_ids,
                        block, block)
    return index, index_pair_counts(index, q_len, k_len)


def pad_rows(x: torch.Tensor, block: int) -> torch.Tensor:
    """Zero-pad dim -2 of ``[..., N, D]`` to a multiple of ``block``."""
    n = x.shape[-2]
    return F.pad(x, (0, 0, 0, math.ceil(n / block) * block - n))


def stack_indices(parts: list[tuple[SparseIndex, torch.Tensor]], batch: int, heads: int
                  ) -> tuple[SparseIndex, torch.Tensor]:
    """Join ``(index, pairs)`` built for consecutive chunks of the flattened ``(batch, head)``
    axis (same lists and tiles) into one ``[batch, heads]`` index and pairs."""
    first = parts[0][0]
    L = first.n_lists
    full_cnt = torch.cat([p.full_cnt.reshape(-1, L) for p, _ in parts]).reshape(batch, heads, L)
    col_cnt = torch.cat([p.col_cnt.reshape(-1, L) for p, _ in parts]).reshape(batch, heads, L)
    index = _fill_index(full_cnt, torch.cat([p.full_ids for p, _ in parts]), col_cnt,
                        torch.cat([p.col_ids for p, _ in parts]), first.tile, first.rows_per_list)
    return index, torch.cat([c.reshape(-1) for _, c in parts]).reshape(batch, heads)
