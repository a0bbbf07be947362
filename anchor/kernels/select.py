"""Stage 2 of AnchorAttention: difference-aware stripe selection, then compaction.

``_anchor_score_kernel``: one program owns one tile of ``TILE`` candidate keys and a chunk of
query heads sharing a KV head; it loads the key tile once and, for every group whose candidate
range contains the tile, compares the pooled queries' scores with the pooled anchors. A key is
selected for a group if any pooled row ``r`` of the group has
``qbar_r . k_j * scale + theta >= abar_r`` (log2 units inside). Hits are written as a bitmask
(``BITS`` keys per int32 word) and a per-tile count.

``_anchor_compact_kernel``: one program per (batch, head, group) turns the bitmask into the
sparse index: ids of fully selected tiles (loaded contiguously by stage 3) and positions of keys
selected in partially selected tiles (gathered by stage 3).
"""
import triton
import triton.language as tl

from anchor.kernels.sparse_fwd import load_rows


@triton.jit
def _anchor_score_kernel(
    K, Qbar, Abar, Bits, Counts,  #
    stride_kb, stride_kh, stride_kn,  #
    stride_pb, stride_ph, stride_pn,  #
    stride_ab, stride_ah,  #
    stride_bb, stride_bh, stride_bg,  #
    stride_cb, stride_ch, stride_cg,  #
    n_kv_heads, n_head_chunks, n_groups, n_blocks, qk_scale, theta,  #
    GQA: tl.constexpr, HEADS: tl.constexpr, STEP: tl.constexpr, STEP_P: tl.constexpr,  #
    GROUP: tl.constexpr, INIT: tl.constexpr, LOCAL: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr, BITS: tl.constexpr,  #
    DOT: tl.constexpr,  #
):
    pid_t = tl.program_id(0)
    pid = tl.program_id(1)
    b = pid // (n_kv_heads * n_head_chunks)
    hk = (pid // n_head_chunks) % n_kv_heads
    h0 = hk * GQA + (pid % n_head_chunks) * HEADS
    t0 = pid_t * TILE
    if t0 >= INIT:
        offs_n = t0 + tl.arange(0, TILE)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        k = load_rows(K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh, offs_n, offs_d, stride_kn,
                      offs_n, HEAD_DIM, BLOCK_D, False)
        # rows = (head in chunk, pooled block in group): [HEADS * STEP_P]
        rows = tl.arange(0, HEADS * STEP_P)
        hh = rows // STEP_P
        ss = rows % STEP_P
        head = h0 + hh
        head_ok = (hh + (pid % n_head_chunks) * HEADS) < GQA
        word = tl.arange(0, TILE // BITS)
        bit_shift = tl.arange(0, BITS)
        chunk_heads = h0 + tl.arange(0, HEADS)
        chunk_ok = (tl.arange(0, HEADS) + (pid % n_head_chunks) * HEADS) < GQA
        # first group whose candidate range [INIT, L_g) contains the whole tile
        g_lo = tl.maximum((t0 + TILE + LOCAL + GROUP - 1) // GROUP - 1, 0)
        for g in range(g_lo, n_groups):
            blk = g * STEP + ss
            ok = head_ok & (ss < STEP) & (blk < n_blocks)
            qbar = tl.load(Qbar + b.to(tl.int64) * stride_pb + head.to(tl.int64)[:, None] * stride_ph
                           + blk[:, None] * stride_pn + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
            abar = tl.load(Abar + b.to(tl.int64) * stride_ab + head.to(tl.int64) * stride_ah + blk,
                           mask=ok, other=float("inf"))
            # -- pooled scores vs pooled anchors, OR over the group's blocks --
            sbar = tl.dot(qbar, tl.trans(k), input_precision=DOT) * qk_scale
            hit = ((sbar + theta) >= abar[:, None]).to(tl.int32)
            hit = tl.max(tl.reshape(hit, (HEADS, STEP_P, TILE)), 1)      # [HEADS, TILE]
            words = tl.sum(tl.reshape(hit, (HEADS, TILE // BITS, BITS)) << bit_shift[None, None, :], 2)
            bits_ptr = (Bits + b.to(tl.int64) * stride_bb + chunk_heads.to(tl.int64)[:, None] * stride_bh
                        + g * stride_bg + pid_t * (TILE // BITS) + word[None, :])
            tl.store(bits_ptr, words, mask=chunk_ok[:, None])
            cnt_ptr = (Counts + b.to(tl.int64) * stride_cb + chunk_heads.to(tl.int64) * stride_ch
                       + g * stride_cg + pid_t)
            tl.store(cnt_ptr, tl.sum(hit, 1), mask=chunk_ok)


@triton.jit
def _anchor_compact_kernel(
    Bits, FullOff, ColOff, FullIds, ColIds,  #
    stride_bb, stride_bh, stride_bg,  #
    n_heads, n_groups,  #
    GROUP: tl.constexpr, INIT: tl.constexpr, LOCAL: tl.constexpr,  #
    TILE: tl.constexpr, BITS: tl.constexpr, CHUNK: tl.constexpr,  #
):
    g = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hi = tl.maximum((g + 1) * GROUP - LOCAL, 0)
    t_lo = INIT // TILE
    t_hi = hi // TILE
    list_id = pid_bh.to(tl.int64) * n_groups + g
    full_pos = tl.load(FullOff + list_id)
    col_pos = tl.load(ColOff + list_id)
    bits_base = Bits + b.to(tl.int64) * stride_bb + h.to(tl.int64) * stride_bh + g * stride_bg
    offs_t = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, TILE)
    for c0 in range(t_lo, t_hi, CHUNK):
        tiles = c0 + offs_t
        t_ok = tiles < t_hi
        # -- expand bits of CHUNK tiles: [CHUNK, TILE] --
        word_ptr = bits_base + tiles[:, None] * (TILE // BITS) + offs_k[None, :] // BITS
        words = tl.load(word_ptr, mask=t_ok[:, None], other=0)
        bits = (words >> (offs_k[None, :] % BITS)) & 1
        n_sel = tl.sum(bits, 1)
        full = n_sel == TILE
        # -- fully selected tiles: store tile ids --
        full_i = full.to(tl.int32)
        f_rank = tl.cumsum(full_i, 0) - full_i
        tl.store(FullIds + full_pos + f_rank, tiles, mask=full)
        full_pos += tl.sum(full_i, 0)
        # -- partially selected tiles: store key positions --
        part = tl.reshape(tl.where(full[:, None], 0, bits), (CHUNK * TILE,))
        keys = tl.reshape(tiles[:, None] * TILE + offs_k[None, :], (CHUNK * TILE,))
        p_rank = tl.cumsum(part, 0) - part
        tl.store(ColIds + col_pos + p_rank, keys, mask=part != 0)
        col_pos += tl.sum(part, 0)
