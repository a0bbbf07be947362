"""Sparse attention over a tile + column index (stage 3 of AnchorAttention, shared by baselines).

One program owns ``BLOCK_M`` query rows; rows ``[l * ROWS_PER_LIST, (l + 1) * ROWS_PER_LIST)``
share index list ``l``. A list holds ids of whole key tiles (``TILE`` consecutive keys from key
``id * TILE_UNIT``, loaded contiguously; ``TILE_UNIT`` is ``TILE`` for aligned tiles, 1 for tiles
starting anywhere) and positions of single keys (gathered ``GATHER`` at a time). With ``RESUME`` the
online softmax starts from a previous pass stored as normalised output + log-sum-exp (AnchorAttention's
stage 1); otherwise from scratch. ``STORE_LSE`` writes the final log-sum-exp (always without
``RESUME``; with it when a later merge needs the resumed result's LSE). With ``CAUSAL`` keys after a row's position are masked (queries
sit at absolute position ``row + CAUSAL_OFFSET``).
"""
import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, rows, offs_d, stride, row_ok, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              ROW_MASK: tl.constexpr):
    """Load rows ``rows`` (``[R]``) of a ``[*, HEAD_DIM]`` matrix as ``[R, BLOCK_D]`` (zero padded).

    Masks are emitted only where needed, so full-width unmasked loads stay vectorised.
    """
    ptrs = ptr + rows[:, None] * stride + offs_d[None, :]
    if ROW_MASK:
        return tl.load(ptrs, mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif HEAD_DIM == BLOCK_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def online_softmax_step(acc, l_i, m_i, qk, v, DOT: tl.constexpr):
    """Fold one tile of log2-domain scores ``qk [M, N]`` and values ``v [N, D]`` into the state.

    Rows whose scores are all ``-inf`` so far keep a zero state (no NaN). ``DOT``: ``tl.dot``
    input precision (``"ieee"`` for fp32 inputs, so they are not rounded to TF32).
    """
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(qk - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT)
    return acc, l_i, m_new


@triton.jit
def _sparse_fwd_kernel(
    Q, K, V, Out, Lse,  #
    FullOff, FullCnt, FullIds, ColOff, ColCnt, ColIds,  #
    stride_qb, stride_qh, stride_qn,  #
    stride_kb, stride_kh, stride_kn,  #
    stride_vb, stride_vh, stride_vn,  #
    stride_ob, stride_oh, stride_on,  #
    stride_lb, stride_lh,  #
    n_heads, n_q, n_lists, causal_offset, qk_scale,  #
    GQA: tl.constexpr, ROWS_PER_LIST: tl.constexpr, RESUME: tl.constexpr, CAUSAL: tl.constexpr,  #
    STORE_LSE: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,  #
    BLOCK_M: tl.constexpr, TILE: tl.constexpr, TILE_UNIT: tl.constexpr, GATHER: tl.constexpr,  #
    DOT: tl.constexpr,  #
):
    n_blocks = tl.num_programs(0)
    pid_m = n_blocks - 1 - tl.program_id(0)          # heaviest (last) blocks first
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // GQA
    row_start = pid_m * BLOCK_M
    list_id = pid_bh.to(tl.int64) * n_lists + row_start // ROWS_PER_LIST
    n_full = tl.load(FullCnt + list_id)
    n_col = tl.load(ColCnt + list_id)
    if n_full + n_col + (1 - RESUME) > 0:          # resumed rows with nothing to add are final
        full_base = FullIds + tl.load(FullOff + list_id)
        col_base = ColIds + tl.load(ColOff + list_id)
        Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
        Out += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
        Lse += b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh
        offs_m = row_start + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < n_q
        d_ok = offs_d < HEAD_DIM
        io_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=io_mask, other=0.0)
        if RESUME:
            m_i = tl.load(Lse + offs_m, mask=row_ok, other=0.0)
            l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
            acc = tl.load(Out + offs_m[:, None] * stride_on + offs_d[None, :], mask=io_mask, other=0.0).to(tl.float32)
        else:
            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        q_pos = offs_m + causal_offset

        # -- whole tiles, contiguous loads --
        offs_t = tl.arange(0, TILE)
        for i in range(0, n_full):
            cols = tl.load(full_base + i) * TILE_UNIT + offs_t
            k = load_rows(K, cols, offs_d, stride_kn, cols, HEAD_DIM, BLOCK_D, False)
            v = load_rows(V, cols, offs_d, stride_vn, cols, HEAD_DIM, BLOCK_D, False)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale
            if CAUSAL:
                qk = tl.where(cols[None, :] <= q_pos[:, None], qk, float("-inf"))
            acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, qk, v, DOT)

        # -- single keys, gathered --
        offs_g = tl.arange(0, GATHER)
        for c0 in range(0, n_col, GATHER):
            slot_ok = (c0 + offs_g) < n_col
            cols = tl.load(col_base + c0 + offs_g, mask=slot_ok, other=0)
            k = load_rows(K, cols, offs_d, stride_kn, slot_ok, HEAD_DIM, BLOCK_D, True)
            v = load_rows(V, cols, offs_d, stride_vn, slot_ok, HEAD_DIM, BLOCK_D, True)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale
            keep = slot_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= q_pos[:, None])
            qk = tl.where(keep, qk, float("-inf"))
            acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, qk, v, DOT)

        # -- epilogue (rows that saw no key output zeros) --
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(Out + offs_m[:, None] * stride_on + offs_d[None, :], out.to(Out.dtype.element_ty), mask=io_mask)
        if STORE_LSE:
            tl.store(Lse + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
