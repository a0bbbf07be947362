"""The last ``T = N mod G`` rows of a prefill on the fast path (``G = block_size * step``).

These rows do not fill a group. ``AnchorParams.tail`` says what they attend (``anchor/params.py``):

* ``dense`` (the authors' wrapper, modules/llama/anchor_attention.py L72-100, and so the paper's
  numbers): every causal key, computed by ``dense_causal_attention``. Unlike the authors' code a
  length that is a multiple of ``G`` has no tail and runs normally (theirs sliced
  ``query[:, :-0]`` and returned zeros there); we do not reproduce that bug.
* ``query_aware`` (ours): ``query_aware_tail_attention``: one PyTorch pass over the tail rows'
  stage-1 scores gives their anchors, their per-block selection and their partial attention
  (``anchor.reference.tail_selection_reference``); the sparse kernel then folds each block's
  selected keys into that partial result, as stage 3 does for the groups. The stage-1 pairs are
  computed once (stats ``tail_anchor``), so the tail costs its regions plus its selection.
* ``sparse``: no tail; the last, partial group runs like the others.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from anchor.kernels.fa4 import fa4_dense, fa4_dense_problem
from anchor.params import AnchorParams
from anchor.reference import dense_attention_reference, tail_selection_reference
from anchor.sparse_index import SparseIndex

MASK_BUDGET = 1 << 28      # bool elements of one head chunk's tail key mask (256 MiB)


def dense_causal_attention(q_tail: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of the last ``T`` query positions over all ``N`` keys (bottom-right
    aligned): the ``dense`` tail (``T < N``) and the dense fallback (``T == N``).

    ``q_tail [B, Hq, T, D]``, ``k, v [B, Hkv, N, D]`` (GQA native, never repeated). CUDA:
    FlashAttention-4 when installed (``anchor.kernels.fa4``), else SDPA (cuDNN first when
    ``T == N``; otherwise PyTorch's lower-right causal bias, which runs the flash kernel where it
    applies); elsewhere the fp32 reference. Output in q's dtype.
    """
    T, N = q_tail.shape[2], k.shape[2]
    if not q_tail.is_cuda:
        return dense_attention_reference(q_tail, k, v, scale)
    if fa4_dense_problem(q_tail) is None:
        return fa4_dense(q_tail, k, v, sm_scale=scale, causal=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        if T == N:
            return F.scaled_dot_product_attention(q_tail, k, v, is_causal=True, scale=scale, enable_gqa=True)
        return F.scaled_dot_product_attention(q_tail, k, v, attn_mask=causal_lower_right(T, N), scale=scale,
                                              enable_gqa=True)


def query_aware_tail_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams,
                               out_tail: torch.Tensor, resume: Callable, *, zero_anchor: bool = False
                               ) -> torch.Tensor:
    """The ``query_aware`` tail rows ``[P, N)`` written into ``out_tail [B, Hq, T, D]``.

    ``q [B, Hq, N, D]``, ``k, v [B, Hkv, N, D]``. Per chunk of whole KV heads (its key mask
    within ``MASK_BUDGET`` elements): ``tail_selection_reference`` with values gives the anchors,
    the selection and the rows' fp32 attention over their stage-1 regions in one pass over the
    stage-1 scores; that partial output goes to ``out_tail`` (in its dtype) and
    ``resume(q_tail, k, v, out, lse, index, sm_scale)`` (the sparse kernel resuming from
    ``out``/``lse``, ``anchor.ops``) folds in each block's selected keys, indexed by a
    ``SparseIndex`` of ``tail_block_size`` rows per list and ``block_size`` key tiles. Returns
    int64 ``[B, Hq, n_tail_blocks]`` selected keys per tail block.
    """
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    rep, tb = Hq // Hkv, params.tail_block_size
    P = N - N % params.group
    nb = math.ceil((N - P) / tb)
    counts = torch.zeros(B, Hq, nb, dtype=torch.int64)
    kv_chunk = max(1, min(Hkv, MASK_BUDGET // max(1, B * rep * nb * N)))
    for kv0 in range(0, Hkv, kv_chunk):
        kv1 = min(Hkv, kv0 + kv_chunk)
        heads = slice(kv0 * rep, kv1 * rep)
        ks, vs = k[:, kv0:kv1], v[:, kv0:kv1]
        sel = tail_selection_reference(q[:, heads], ks, params, zero_anchor=zero_anchor, v=vs)
        out_tail[:, heads] = sel.out
        if sel.keys.any():
            index = SparseIndex.from_key_mask(sel.keys, params.block_size, tb)
            resume(q[:, heads, P:], ks, vs, out_tail[:, heads], sel.lse, index, params.scale(D))
        counts[:, heads] = sel.keys.sum(-1).cpu()
    return counts
