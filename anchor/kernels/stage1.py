"""Stage 1 of AnchorAttention: attention over the initial region and the local window.

One program owns one query block of ``BLOCK_M`` rows (the pooling block). It runs a
FlashAttention-2 online softmax (log2 domain) over

* the initial keys ``[0, min(INIT, row_start))`` (no mask needed),
* the local keys ``[max(INIT, L_g), row_start)`` (no mask needed),
* the diagonal block ``[row_start, row_start + BLOCK_M)`` (causal mask),

and writes the normalised partial output (into the final output buffer), its log-sum-exp, the
block's pooled query and its pooled anchor (mean row max), which stages 2 and 3 reuse.
"""
import triton
import triton.language as tl

from anchor.kernels.sparse_fwd import load_rows, online_softmax_step


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, K, V, offs_m, offs_d, lo, hi,
                  stride_kn, stride_vn, n_keys, qk_scale,
                  BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
                  DOT: tl.constexpr):
    """Fold keys ``[lo, hi)`` into the online-softmax state ``(acc, l_i, m_i)``."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        k = load_rows(K, cols, offs_d, stride_kn, cols < n_keys, HEAD_DIM, BLOCK_D, MASKED)
        v = load_rows(V, cols, offs_d, stride_vn, cols < n_keys, HEAD_DIM, BLOCK_D, MASKED)
        # -- scores in log2 units --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale
        if MASKED:
            keep = (cols[None, :] <= offs_m[:, None]) & (cols[None, :] < n_keys)
            qk = tl.where(keep, qk, float("-inf"))
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, qk, v, DOT)
    return acc, l_i, m_i


@triton.jit
def _anchor_stage1_kernel(
    Q, K, V, Out, Lse, Qbar, Abar,  #
    stride_qb, stride_qh, stride_qn,  #
    stride_kb, stride_kh, stride_kn,  #
    stride_vb, stride_vh, stride_vn,  #
    stride_ob, stride_oh, stride_on,  #
    stride_lb, stride_lh,  #
    stride_pb, stride_ph, stride_pn,  #
    stride_ab, stride_ah,  #
    n_heads, n_ctx, qk_scale,  #
    GQA: tl.constexpr, GROUP: tl.constexpr, INIT: tl.constexpr, LOCAL: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,  #
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,  #
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // GQA
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    Out += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    row_start = pid_m * BLOCK_M
    offs_m = row_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n_ctx
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # -- regions: initial keys, local window of this group, diagonal block --
    group = row_start // GROUP
    local_lo = tl.maximum((group + 1) * GROUP - LOCAL, 0)
    local_lo = tl.maximum(local_lo, INIT)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, offs_m, offs_d, 0, tl.minimum(INIT, row_start),
                                  stride_kn, stride_vn, n_ctx, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, False, DOT)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, offs_m, offs_d, local_lo, row_start,
                                  stride_kn, stride_vn, n_ctx, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, False, DOT)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, offs_m, offs_d, row_start, row_start + BLOCK_M,
                                  stride_kn, stride_vn, n_ctx, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, True, DOT)

    # -- epilogue: normalised partial output, log-sum-exp, pooled query and anchor --
    out = acc / l_i[:, None]
    tl.store(Out + offs_m[:, None] * stride_on + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    lse_ptr = Lse + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh
    tl.store(lse_ptr + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    n_rows = tl.minimum(n_ctx - row_start, BLOCK_M).to(tl.float32)
    qbar = tl.sum(tl.where(row_ok[:, None], q.to(tl.float32), 0.0), 0) / n_rows
    qbar_ptr = Qbar + b.to(tl.int64) * stride_pb + h.to(tl.int64) * stride_ph + pid_m * stride_pn
    tl.store(qbar_ptr + offs_d, qbar.to(Qbar.dtype.element_ty), mask=d_ok)
    abar = tl.sum(tl.where(row_ok, m_i, 0.0), 0) / n_rows
    tl.store(Abar + b.to(tl.int64) * stride_ab + h.to(tl.int64) * stride_ah + pid_m, abar)
