"""Block lists in FlashAttention-4's block-sparse layout, built in plain PyTorch (no FA4 import).

FA4 (``flash_attn.cute``, ``block_sparse_tensors=BlockSparseTensorsTorch(...)``) takes, per
(batch, head, 128-row query block ``m``), two lists of 128-key block ids: *mask* blocks (scores
pass through the mask: here the bottom-right causal mask) and *full* blocks (every pair visible).
``FA4Blocks`` holds them as plain tensors; ``anchor.kernels.fa4`` wraps them in FA4's NamedTuple
only at call time, so everything here runs and is tested on CPU.

Conventions (this project's, ``anchor.sparse_index``): queries are the last ``Lq`` of ``Lk``
positions; query block ``m`` holds query rows ``[128 m, 128 m + 128)`` (absolute positions
``+ Lk - Lq``); key block ``t`` holds keys ``[128 t, 128 t + 128)``; the last key block may be
partial (FA4 masks keys ``>= Lk`` itself). A listed block is *full* iff its last key is at or
before the block's first query position (so it is inside ``[0, Lk)``), else *mask*; blocks
starting after the block's last query position are never listed (they would be fully masked).
On sm90 FA4 applies the causal mask to full blocks too (``flash_fwd_sm90.py``: ``mask_fn`` is
passed for both lists), so the split only orders the work there; sm100 skips masking full blocks.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from anchor.sparse_index import SparseIndex

Q_BLOCK = 128   # FA4 sm90 query tile for head_dim <= 128 with 128-row sparse blocks
KV_BLOCK = 128  # FA4 sm90 key tile (tile_n) for head_dim <= 128: sparse KV blocks must equal it


@dataclass(frozen=True)
class FA4Blocks:
    """Per-query-block key-block lists (FA4 ``BlockSparseTensorsTorch`` fields).

    Attributes:
        mask_cnt, full_cnt: int32 ``[b, h, M]``, ``M = ceil(Lq / 128)``; ``b`` is 1 or the batch,
            ``h`` 1 (same lists for every head: FA4 may then pack GQA heads) or the query heads.
        mask_idx, full_idx: int32 ``[b, h, M, W]``, ascending block ids packed left (entries past
            the count are 0 and never read); ``W <= ceil(Lk / 128)``.
        q_block, kv_block: rows per query block, keys per key block (128, 128).
    """

    mask_cnt: torch.Tensor
    mask_idx: torch.Tensor
    full_cnt: torch.Tensor
    full_idx: torch.Tensor
    q_block: int = Q_BLOCK
    kv_block: int = KV_BLOCK

    def listed(self, n_kv_blocks: int) -> torch.Tensor:
        """bool ``[b, h, M, n_kv_blocks]``: blocks in either list."""
        out = torch.zeros(*self.mask_cnt.shape, n_kv_blocks + 1, dtype=torch.bool, device=self.mask_cnt.device)
        for cnt, idx in ((self.mask_cnt, self.mask_idx), (self.full_cnt, self.full_idx)):
            used = torch.arange(idx.shape[-1], device=idx.device) < cnt[..., None].long()
            out.scatter_(-1, torch.where(used, idx.long(), n_kv_blocks), True)   # unused -> spare slot
        return out[..., :n_kv_blocks]

    def key_mask(self, rows: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
        """bool ``[b, h, len(rows), Lk]``: keys query rows ``rows`` (0-based among ``Lq``) attend
        (listed blocks, causally clipped, inside ``[0, Lk)``) — the function FA4 computes."""
        return _rows_key_mask(self.listed(math.ceil(k_len / self.kv_block)), rows, q_len, k_len)


def _rows_key_mask(listed: torch.Tensor, rows: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """bool ``[..., len(rows), Lk]`` from a listed-block mask ``[..., M, T]`` (see ``key_mask``)."""
    keys = torch.arange(k_len, device=rows.device)
    allowed = listed[..., rows // Q_BLOCK, :][..., keys // KV_BLOCK]       # [..., R, Lk]
    return allowed & (keys[None, :] <= (rows + k_len - q_len)[:, None])


def index_fa4_problem(index: SparseIndex, k_len: int) -> str | None:
    """Why FA4 cannot run ``index`` (structure only), or ``None``.

    FA4 needs aligned 128-key tiles (``tile_unit == tile == 128``), lists of a multiple of 128
    rows, and no gathered columns except the whole partial last tile (keys
    ``[128 * (Lk // 128), Lk)``, which ``index_from_tile_mask`` stores as columns). Checking the
    columns reads them (one host synchronisation when there are any).
    """
    if index.tile != KV_BLOCK or index.tile_unit != index.tile:
        return f"FA4 needs aligned {KV_BLOCK}-key tiles (got tile={index.tile}, tile_unit={index.tile_unit})"
    if index.rows_per_list % Q_BLOCK:
        return f"FA4 needs lists of a multiple of {Q_BLOCK} rows (got rows_per_list={index.rows_per_list})"
    tail = k_len % KV_BLOCK
    if index.col_ids.numel() == 0:
        return None
    if tail == 0 or bool(((index.col_cnt != 0) & (index.col_cnt != tail)).any()):
        return "FA4 cannot gather single keys (the index has columns besides a whole partial last tile)"
    expected = torch.arange(k_len - tail, k_len, device=index.col_ids.device, dtype=index.col_ids.dtype)
    if not bool((index.col_ids.view(-1, tail) == expected).all()):
        return "FA4 cannot gather single keys (the index has columns besides a whole partial last tile)"
    return None


def _block_rows(q_len: int, k_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 ``[M]`` each: absolute position of each query block's first and last row."""
    first = torch.arange(math.ceil(q_len / Q_BLOCK), device=device, dtype=torch.int64) * Q_BLOCK
    last = torch.clamp(first + Q_BLOCK, max=q_len) - 1
    return first + k_len - q_len, last + k_len - q_len


def _pack(owner: torch.Tensor, tile: torch.Tensor, b: int, h: int, q_len: int, k_len: int) -> FA4Blocks:
    """``FA4Blocks`` from entries ``(owner = (bi * h + hi) * M + m, key block)`` sorted by owner,
    blocks ascending within an owner. Invisible entries are dropped, the rest split full/mask."""
    M = math.ceil(q_len / Q_BLOCK)
    first, last = _block_rows(q_len, k_len, owner.device)
    m = owner % M
    start = tile * KV_BLOCK
    visible = start <= last[m]
    full = visible & (start + KV_BLOCK - 1 <= first[m])
    parts = []
    for keep in (visible & ~full, full):
        own, ids = owner[keep], tile[keep]
        cnt = torch.bincount(own, minlength=b * h * M)                   # [b * h * M]
        parts.append((own, ids, cnt))
    width = max([1] + [int(cnt.max()) for _, _, cnt in parts if cnt.numel()])
    tensors = []
    for own, ids, cnt in parts:
        pos = torch.arange(own.numel(), device=own.device) - (torch.cumsum(cnt, 0) - cnt)[own]
        idx = torch.zeros(b * h * M, width, dtype=torch.int32, device=owner.device)
        idx[own, pos] = ids.to(torch.int32)
        tensors += [cnt.to(torch.int32).reshape(b, h, M), idx.reshape(b, h, M, width)]
    return FA4Blocks(mask_cnt=tensors[0], mask_idx=tensors[1], full_cnt=tensors[2], full_idx=tensors[3])


def blocks_from_tile_mask(tiles: torch.Tensor, *, q_len: int, k_len: int) -> FA4Blocks:
    """``FA4Blocks`` from a bool tile mask ``[b, h, ceil(Lq / 128), ceil(Lk / 128)]`` (tiles
    starting after a block's last row are dropped). Memory ``O(entries)`` beyond the mask."""
    b, h, M, T = tiles.shape
    if M != math.ceil(q_len / Q_BLOCK) or T != math.ceil(k_len / KV_BLOCK):
        raise ValueError(f"tile mask {tuple(tiles.shape)} does not match Lq={q_len}, Lk={k_len} in "
                         f"{Q_BLOCK}x{KV_BLOCK} blocks")
    nz = tiles.reshape(b * h * M, T).nonzero()                          # row-major: owners, then blocks
    return _pack(nz[:, 0], nz[:, 1], b, h, q_len, k_len)


def blocks_from_index(index: SparseIndex, *, q_len: int, k_len: int) -> FA4Blocks:
    """``FA4Blocks`` with the same key sets as ``index`` under the causal mask.

    Each list of ``rows_per_list = S * 128`` rows becomes ``S`` query blocks with its tiles; a
    whole partial last tile stored as columns becomes key block ``Lk // 128``. Raises
    ``ValueError`` with the reason if ``index_fa4_problem`` finds one. Memory ``O(entries * S)``.
    """
    problem = index_fa4_problem(index, k_len)
    if problem:
        raise ValueError(problem)
    B, H, L = index.full_cnt.shape
    S, M = index.rows_per_list // Q_BLOCK, math.ceil(q_len / Q_BLOCK)
    if L != math.ceil(q_len / index.rows_per_list):
        raise ValueError(f"index has {L} lists, expected ceil({q_len} / {index.rows_per_list})")
    device = index.full_cnt.device
    lists = torch.arange(B * H * L, device=device)
    owner = torch.repeat_interleave(lists, index.full_cnt.reshape(-1).long())     # [nnz], list-major
    tile = index.full_ids.long()
    has_tail = index.col_cnt.reshape(-1) > 0
    if bool(has_tail.any()):                                             # tail block after the whole tiles
        owner = torch.cat([owner, lists[has_tail]])
        tile = torch.cat([tile, torch.full_like(lists[has_tail], k_len // KV_BLOCK)])
        order = torch.sort(owner, stable=True).indices
        owner, tile = owner[order], tile[order]
    if S > 1:                                                            # one entry per sub-block
        sub = torch.arange(S, device=device)
        m = (owner % L)[:, None] * S + sub                               # [nnz, S]
        owner = ((owner // L)[:, None] * M + m).reshape(-1)
        tile = tile[:, None].expand(-1, S).reshape(-1)
        inside = (m < M).reshape(-1)
        order = torch.sort(owner[inside], stable=True).indices
        owner, tile = owner[inside][order], tile[inside][order]
    else:
        owner = (owner // L) * M + owner % L
    return _pack(owner, tile, B, H, q_len, k_len)


@functools.lru_cache(maxsize=16)
def _causal_blocks(q_len: int, k_len: int, device: str) -> FA4Blocks:
    tiles = torch.ones(1, 1, math.ceil(q_len / Q_BLOCK), math.ceil(k_len / KV_BLOCK), dtype=torch.bool,
                       device=device)
    return blocks_from_tile_mask(tiles, q_len=q_len, k_len=k_len)


def causal_blocks(q_len: int, k_len: int, device: torch.device | str) -> FA4Blocks:
    """Every causally visible block, shared by all batches and heads (``[1, 1, ...]``); cached per
    shape and device (do not modify the tensors)."""
    return _causal_blocks(q_len, k_len, str(torch.device(device)))


@functools.lru_cache(maxsize=16)
def _stage1_blocks(n: int, init: int, group: int, local: int, device: str) -> FA4Blocks:
    first = torch.arange(math.ceil(n / Q_BLOCK), device=device) * Q_BLOCK           # [M]
    start = torch.arange(math.ceil(n / KV_BLOCK), device=device) * KV_BLOCK         # [T]
    local_lo = torch.clamp((first // group + 1) * group - local, min=0).clamp(min=init)
    tiles = (start[None, :] < init) | (start[None, :] >= local_lo[:, None])         # [M, T]
    return blocks_from_tile_mask(tiles[None, None], q_len=n, k_len=n)


def stage1_blocks(n: int, *, init: int, group: int, local: int, device: torch.device | str) -> FA4Blocks:
    """AnchorAttention's stage-1 key set (``anchor.reference.stage1_mask``: the initial ``init``
    keys plus the query's local window ``[max(init, (g + 1) * group - local), i]``) as blocks,
    shared by all heads; cached per shape and device. ``init``, ``group`` and ``local`` must be
    multiples of 128 (then the key set is block-exact)."""
    if init % KV_BLOCK or group % Q_BLOCK or local % KV_BLOCK:
        raise ValueError(f"init={init}, group={group}, local={local} must be multiples of {KV_BLOCK}")
    return _stage1_blocks(n, init, group, local, str(torch.device(device)))


def blocks_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: FA4Blocks, *,
                               sm_scale: float | None = None, chunk: int = 1024
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 attention over ``blocks.key_mask`` (the function of ``fa4_block_sparse``), chunked.

    ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` (GQA native). Returns ``(out [B, Hq, Lq, D],
    lse [B, Hq, Lq] natural log)``, both fp32; rows with no key: zeros and ``-inf``.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    scale = sm_scale if sm_scale is not None else D ** -0.5
    listed = blocks.listed(math.ceil(Lk / blocks.kv_block))               # [b, h, M, T]
    out = torch.zeros(B, Hq, Lq, D, dtype=torch.float32, device=q.device)
    lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float32, device=q.device)
    for h in range(Hq):
        kf, vf = k[:, h // (Hq // Hkv)].float(), v[:, h // (Hq // Hkv)].float()         # [B, Lk, D]
        for s in range(0, Lq, chunk):
            rows = torch.arange(s, min(s + chunk, Lq), device=q.device)
            allowed = _rows_key_mask(listed[:, min(h, listed.shape[1] - 1)], rows, Lq, Lk)   # [b, c, Lk]
            scores = torch.einsum("bid,bjd->bij", q[:, h, rows].float(), kf) * scale
            scores = scores.masked_fill(~allowed, float("-inf"))
            lse[:, h, rows] = torch.logsumexp(scores, -1)
            out[:, h, rows] = scores.softmax(-1).nan_to_num(0.0) @ vf
    return out, lse

