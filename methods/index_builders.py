"""Selections -> ``SparseIndex`` for the baseline methods, with exact work accounting.

Every builder returns ``(index, pairs)``. Query rows are split into lists of ``rows_per_list``
consecutive rows (list ``l`` = rows ``[l * R, min((l + 1) * R, Lq))``, queries being the last
``Lq`` of ``Lk`` positions). Key tiles are aligned to absolute key positions
(``tile_unit == tile``), except in ``index_from_diagonals`` where a tile starts at any key
(``tile_unit == 1``).

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

from anchor.kernels.fa4 import fa4_sparse_attention, fa4_sparse_problem
from anchor.ops import sparse_attention, use_triton
from anchor.reference import sparse_attention_reference
from anchor.sparse_index import SparseIndex, index_from_counts
from methods.base import AttendedSet

BACKENDS = ("auto", "triton", "torch", "fa4")
RUN_ROUNDINGS = ("upstream", "exact")
KERNEL_TILES = (16, 32, 64, 128)
TABLE_BUDGET = 2 ** 24       # table entries built at once by ``index_from_diagonals`` (see there)
NO_RUN = 2 ** 62             # start and end of the unused run slots (after every real run)


def check_backend(backend: str) -> None:
    """Raise unless ``backend`` is ``auto`` (FA4 or Triton on CUDA), ``triton``, ``torch`` or ``fa4``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_rounding(rounding: str) -> None:
    """Raise unless ``rounding`` is a slash-run rounding of ``index_from_diagonals``."""
    if rounding not in RUN_ROUNDINGS:
        raise ValueError(f"run rounding must be one of {RUN_ROUNDINGS}, got {rounding!r}")


def check_block(name: str, value: int) -> None:
    """Raise unless ``value`` is a tile size the sparse kernel supports."""
    if value not in KERNEL_TILES:
        raise ValueError(f"{name} must be one of {KERNEL_TILES}, got {value!r}")


LAST_KERNEL: dict[str, str] = {}     # "attend": the kernel of the last ``attend`` call (benchmark tables)


def resolve_attend_backend(backend: str, q: torch.Tensor, k: torch.Tensor, index: SparseIndex) -> str:
    """The kernel ``attend`` runs for ``backend``: ``"fa4"``, ``"triton"`` or ``"torch"`` (see there)."""
    check_backend(backend)
    if backend == "fa4" or (backend == "auto" and fa4_sparse_problem(q, index, k.shape[2]) is None):
        return "fa4"
    return "triton" if use_triton(backend, q) else "torch"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex, *,
           sm_scale: float, backend: str) -> torch.Tensor:
    """Causal attention of each row list over its index keys: ``[B, Hq, Lq, D]`` in q's dtype.

    ``triton`` runs ``anchor.ops.sparse_attention`` (CUDA, or CPU under ``TRITON_INTERPRET=1``);
    ``torch`` the fp32 ``sparse_attention_reference`` (materialises ``[B, Hq, Lq, Lk]``: small
    inputs only); ``fa4`` FlashAttention-4's block sparsity (``anchor.kernels.fa4``: whole aligned
    128-key tiles, lists of a multiple of 128 rows, CUDA sm90, fp16/bf16, head_dim <= 128, the
    ``fa4`` extra; raises with the reason otherwise); ``auto``: FA4 where it can run, else Triton
    on CUDA, the reference otherwise. Every kernel computes the same key sets.
    """
    ran = resolve_attend_backend(backend, q, k, index)
    LAST_KERNEL["attend"] = ran
    if ran == "fa4":
        return fa4_sparse_attention(q, k, v, index, sm_scale=sm_scale)[0]
    if ran == "torch":
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
    start = index.full_ids.long() * index.tile_unit
    hi = (last[lst] + 1 - start).clamp(min=0)                            # rows seeing the tile's first key
    lo = (last[lst] + 1 - (start + index.tile)).clamp(min=0)            # ... its key just after the tile
    total.index_add_(0, full_owner // L, _causal_sum(hi, n_rows[lst]) - _causal_sum(lo, n_rows[lst]))
    col_owner = torch.repeat_interleave(owners, index.col_cnt.reshape(-1).long())
    lst = col_owner % L
    seen = (last[lst] + 1 - index.col_ids.long()).clamp(min=0)
    total.index_add_(0, col_owner // L, torch.minimum(seen, n_rows[lst]))
    return total.reshape(B, H).cpu()


def _fill_index(full_cnt: torch.Tensor, full_ids: torch.Tensor, col_cnt: torch.Tensor, col_ids: torch.Tensor,
                tile: int, rows_per_list: int, tile_unit: int) -> SparseIndex:
    """A ``SparseIndex`` from per-list counts and list-major id tensors."""
    index = index_from_counts(full_cnt, col_cnt, tile, rows_per_list, tile_unit)
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
                        partial.to(torch.int32) * tail_keys.numel(), col_ids, tile, rows_per_list, tile)
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


def _ranges(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments of ``lengths[s]`` entries concatenated: ``(segment id, position in segment)``."""
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    return seg, torch.arange(seg.numel(), device=seg.device) - first[seg]


def _diagonal_runs(offsets: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the key ranges ``[-d, -d + width)`` of every diagonal offset ``d`` (per head).

    ``offsets``: int64 ``[B, H, S]`` (duplicates allowed). Returns ``(run_start, run_end)``,
    int64 ``[B, H, M]`` relative to a list's first row, ascending and disjoint; unused slots
    (heads with fewer runs) have ``start = end = NO_RUN``.
    """
    a = torch.sort(-offsets, dim=-1).values                              # range starts, ascending
    new = torch.ones_like(a, dtype=torch.bool)
    new[..., 1:] = a[..., 1:] - a[..., :-1] > width                      # a gap opens a new run
    run_id = torch.cumsum(new, -1) - 1
    n_runs = new.sum(-1)
    big = torch.full_like(a, NO_RUN)
    run_start = big.scatter_reduce(-1, run_id, a, reduce="amin", include_self=False)
    run_end = big.scatter_reduce(-1, run_id, a + width, reduce="amax", include_self=False)
    m = int(n_runs.max())
    return run_start[..., :m].contiguous(), run_end[..., :m].contiguous()


def index_from_diagonals(offsets: torch.Tensor, columns: torch.Tensor, columns_valid: torch.Tensor, *,
                         block: int, q_len: int, k_len: int, rounding: str) -> tuple[SparseIndex, torch.Tensor]:
    """Vertical-slash index: per ``block``-row list, diagonal ranges plus single columns.

    For a list whose first row sits at position ``P0`` and last at ``P1``, diagonal offset ``d``
    (query position minus key position) contributes the ``block`` keys ``[P0 - d, P0 - d + block)``
    (MInference's 64-wide range of a 64-row block, also for a short last list); ranges ending at
    or before key 0 are dropped and the others merge into runs (ascending by start):

    * ``rounding="exact"``: runs are the exact union (overlapping or adjacent ranges merge),
      clipped to ``[0, P1]``. A run ``[a, b)`` is stored as ``(b - a) // block`` whole tiles
      starting at ``a, a + block, ...`` and its last ``(b - a) % block`` keys as columns.
    * ``rounding="upstream"``: MInference's ``convert_vertical_slash_indexes``. A run starts at
      its first range's start (0 for a range crossing key 0, upstream's shift to ``[0, block)``)
      and its end is rounded up to a multiple of ``block`` keys from that start after every
      range; a range starting at or before that rounded end joins the run
      (``_upstream_runs``). A run ``[a, a + m * block)`` is stored as whole tiles from ``a``, the
      ones starting after ``P1`` dropped (invisible). End of sequence: a tile that would pass
      key ``k_len`` (only in lists with ``P1 > k_len - block``) is stored as its keys up to
      ``P1`` as columns, since the kernel loads whole tiles unmasked; upstream masks its keys
      from ``k_len`` on and causality those after ``P1``, so the key set is upstream's.

    Tiles are unaligned (``tile = block``, ``tile_unit = 1``). Columns are added where not inside
    a run and at or before ``P1``; columns are ascending per list. ``pairs`` counts each run's
    visible keys (``index_pair_counts``).

    Args:
        offsets: int64 ``[B, H, S]`` diagonal offsets ``>= 0`` (pad with duplicates of a real offset).
        columns: int64 ``[B, H, V]`` distinct key positions; ``columns_valid``: bool ``[B, H, V]``.
        rounding: ``"upstream"`` or ``"exact"``.

    Heads are processed in chunks of at most ``TABLE_BUDGET`` (list, diagonal) + (list, column)
    + (diagonal, residue mod ``block``) entries (one head at a time beyond it); ids are then
    expanded exactly (at most ``block - 1`` columns per run and list).
    """
    check_rounding(rounding)
    B, H, S = offsets.shape
    V = columns.shape[-1]
    per_head = math.ceil(q_len / block) * (S + V) + S * block
    step = max(1, TABLE_BUDGET // per_head)
    flat = [x.reshape(B * H, 1, x.shape[-1]) for x in (offsets, columns, columns_valid)]   # [B*H, 1, S or V]
    parts = [_diagonal_index(*(x[i:i + step] for x in flat), block=block, q_len=q_len, k_len=k_len,
                             rounding=rounding) for i in range(0, B * H, step)]
    return stack_indices(parts, B, H)


def _upstream_runs(rs: torch.Tensor, re: torch.Tensor, first: torch.Tensor, block: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """MInference's rounded merge of the exact runs ``[rs, re)`` (``_diagonal_runs``) per list.

    Upstream scans the ranges by start keeping a run ``[A, E)``, ``E = A + block * m``; a range
    ending after ``E`` adds ``block`` to ``E``, one starting after ``E`` opens a new run. So a run
    anchored at ``A`` takes the next exact run iff the gap before it holds no key congruent to
    ``A`` mod ``block``, and ends at ``A`` plus its exact extent rounded up to whole blocks. A run
    whose ranges cross key 0 is anchored at key 0 (rounding from 0 covers upstream's shifted
    ``[0, block)``). Each head's chain of anchors (``next``) is the same in every list but for the
    first run, which depends on where key 0 falls; the chains are walked by pointer doubling.

    Args:
        rs, re: int64 ``[B, H, K]`` exact runs relative to a list's first row (``NO_RUN`` padded).
        first: int64 ``[L]`` absolute position of each list's first row.
    Returns:
        ``(start, end)`` int64 ``[B, H, L, T]`` absolute, ascending; unused slots start (and end)
        at ``>= NO_RUN``.
    """
    B, H, K = rs.shape
    L = first.numel()
    alive = rs < NO_RUN                                                  # [B, H, K] real exact runs
    n_runs = alive.sum(-1, keepdim=True)                                 # [B, H, 1]
    gap = torch.full_like(rs, block)                                     # >= block: holds every residue
    gap[..., :-1] = torch.where(alive[..., 1:], rs[..., 1:] - re[..., :-1], block)
    residues = torch.arange(block, device=rs.device)
    stops = (residues - re[..., None]) % block < gap[..., None]          # [B, H, K, block]
    run_idx = torch.arange(K, device=rs.device)[:, None]
    # last[k, r]: last exact run of a run that holds exact run k and is anchored at residue r.
    last = torch.where(stops, run_idx, K).flip(-2).cummin(-2).values.flip(-2)     # [B, H, K, block]
    own_last = last.gather(-1, (rs % block)[..., None]).squeeze(-1)      # [B, H, K] run anchored at k
    nxt = torch.where(alive & (own_last + 1 < n_runs), own_last + 1, K)
    length = torch.where(alive, -(-(re.gather(-1, own_last) - rs) // block) * block, 0)
    pad = torch.full((B, H, 1), K, dtype=torch.int64, device=rs.device)
    zero = torch.zeros_like(pad)
    nxt, length = torch.cat([nxt, pad], -1), torch.cat([length, zero], -1)     # [B, H, K + 1]: node K = end
    start = torch.cat([rs, zero + NO_RUN], -1)
    # First run of each list: from the first exact run ending after key 0, anchored at key 0 if it crosses it.
    rel0 = (-first).expand(B, H, L).contiguous()                         # [B, H, L]: key 0 relative to P0
    k0 = torch.searchsorted(re, rel0, right=True)
    has = k0 < n_runs
    k0 = k0.clamp(max=K - 1)
    anchor = torch.maximum(rs.gather(-1, k0), rel0)
    end0 = last.reshape(B, H, K * block).gather(-1, k0 * block + anchor % block)    # [B, H, L]
    a0 = torch.where(has, first + anchor, NO_RUN)
    e0 = a0 + torch.where(has, -(-(re.gather(-1, end0) - anchor) // block) * block, 0)
    after = torch.where(has & (end0 + 1 < n_runs), end0 + 1, K)         # anchor of each list's second run
    # Pointer doubling: jumps[i] = next^(2**i); count = real runs on the chain from each anchor.
    count = torch.cat([alive.long(), zero], -1)
    jumps = [nxt]
    for _ in range(K.bit_length()):
        count = count + count.gather(-1, jumps[-1])
        jumps.append(jumps[-1].gather(-1, jumps[-1]))
    T = int((has * (1 + count.gather(-1, after))).max().clamp(min=1))
    steps = torch.arange(T - 1, device=rs.device)
    node = after[..., None].expand(B, H, L, T - 1).reshape(B, H, -1)    # [B, H, L * (T - 1)]: anchor t + 1
    for i in range(max(T - 2, 0).bit_length()):
        hop = ((steps >> i) & 1).bool().repeat(L)
        node = torch.where(hop, jumps[i].gather(-1, node), node)
    a = first[:, None] + start.gather(-1, node).reshape(B, H, L, T - 1)
    e = a + length.gather(-1, node).reshape(B, H, L, T - 1)
    return torch.cat([a0[..., None], a], -1), torch.cat([e0[..., None], e], -1)


def _diagonal_index(offsets: torch.Tensor, columns: torch.Tensor, columns_valid: torch.Tensor, *,
                    block: int, q_len: int, k_len: int, rounding: str) -> tuple[SparseIndex, torch.Tensor]:
    """``index_from_diagonals`` for one chunk of heads (all at once, no global sort)."""
    B, H, _ = offsets.shape
    L = math.ceil(q_len / block)
    first, last, n_rows = list_rows(L, block, q_len, k_len, offsets.device)
    rs, re = _diagonal_runs(offsets, block)                              # [B, H, K] relative to P0
    if rounding == "exact":
        a = (first[:, None] + rs[:, :, None, :]).clamp(min=0)            # [B, H, L, M] absolute
        e = first[:, None] + re[:, :, None, :]
    else:
        a, e = _upstream_runs(rs, re, first, block)                      # [B, H, L, M] absolute
    M = a.shape[-1]
    b = torch.minimum(e, last[:, None] + 1)                              # end of the visible keys
    length = (b - a).clamp(min=0)                                        # 0 for clipped-away / unused runs
    if rounding == "exact":
        n_full = length // block
    else:                                                                # a tile passing k_len: columns
        n_full = -(-length // block)
        n_full = n_full - ((a + n_full * block > k_len) & (length > 0)).long()
    rem = (length - n_full * block).clamp(min=0)                         # tail keys, gathered as columns
    # Columns (sorted per head): those inside a run are covered, those after the last row invisible.
    columns, order = columns.sort(-1)
    columns_valid = columns_valid.gather(-1, order)
    cols = columns[:, :, None, :].expand(B, H, L, columns.shape[-1])     # [B, H, L, V]
    run = torch.searchsorted(a, cols.contiguous(), right=True) - 1       # last run starting at or before
    inside = (run >= 0) & (cols < e.gather(-1, run.clamp(min=0)))
    keep = columns_valid[:, :, None, :] & ~inside & (cols <= last[:, None])
    index = index_from_counts(n_full.sum(-1, dtype=torch.int32), rem.sum(-1) + keep.sum(-1), block, block, 1)
    seg, pos = _ranges(n_full.reshape(-1))                               # list-major, runs ascending
    index.full_ids.copy_(a.reshape(-1)[seg] + pos * block)
    # Column slots of a list in key order: a run's tail comes after the tails of earlier runs and
    # the kept columns before the run (run index < r); a kept column after the tails of runs <= its run.
    tails_incl = torch.cumsum(rem, -1)                                   # [B, H, L, M]
    cols_by_run = torch.zeros(B, H, L, M + 1, dtype=torch.int64, device=a.device)
    cols_by_run.scatter_add_(-1, run + 1, keep.long())                  # slot 0: before every run
    cols_before = torch.cumsum(cols_by_run, -1)[..., :M]                # kept columns in runs < r
    tail_slot = index.col_off[..., None] + tails_incl - rem + cols_before
    seg, pos = _ranges(rem.reshape(-1))
    index.col_ids[tail_slot.reshape(-1)[seg] + pos] = ((b - rem).reshape(-1)[seg] + pos).to(torch.int32)
    tails_upto = torch.where(run >= 0, tails_incl.gather(-1, run.clamp(min=0)), 0)   # [B, H, L, V]
    col_slot = index.col_off[..., None] + torch.cumsum(keep, -1) - 1 + tails_upto
    index.col_ids[col_slot[keep]] = cols[keep].to(torch.int32)
    # Visible pairs (``index_pair_counts``) per run (its tiles and tail together) and kept column.
    hi = (last[:, None] + 1 - a).clamp(min=0)                           # rows seeing a run's first key
    lo = (last[:, None] + 1 - b).clamp(min=0)                           # ... its key just after it
    run_pairs = torch.where(length > 0, _causal_sum(hi, n_rows[:, None]) - _causal_sum(lo, n_rows[:, None]), 0)
    col_pairs = torch.minimum(last[:, None] + 1 - cols, n_rows[:, None]) * keep
    pairs = run_pairs.sum((-1, -2)) + col_pairs.sum((-1, -2))          # [B, H]
    return index, pairs.cpu()


def pad_rows(x: torch.Tensor, block: int) -> torch.Tensor:
    """Zero-pad dim -2 of ``[..., N, D]`` to a multiple of ``block``."""
    n = x.shape[-2]
    return F.pad(x, (0, 0, 0, math.ceil(n / block) * block - n))


def stack_indices(parts: list[tuple[SparseIndex, torch.Tensor]], batch: int, heads: int
                  ) -> tuple[SparseIndex, torch.Tensor]:
    """Join ``(index, pairs)`` built for consecutive chunks of the flattened ``(batch, head)``
    axis (same lists, tile and tile_unit) into one ``[batch, heads]`` index and pairs."""
    first = parts[0][0]
    L = first.n_lists
    full_cnt = torch.cat([p.full_cnt.reshape(-1, L) for p, _ in parts]).reshape(batch, heads, L)
    col_cnt = torch.cat([p.col_cnt.reshape(-1, L) for p, _ in parts]).reshape(batch, heads, L)
    index = _fill_index(full_cnt, torch.cat([p.full_ids for p, _ in parts]), col_cnt,
                        torch.cat([p.col_ids for p, _ in parts]), first.tile, first.rows_per_list,
                        first.tile_unit)
    return index, torch.cat([c.reshape(-1) for _, c in parts]).reshape(batch, heads)
