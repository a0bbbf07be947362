"""``anchor``: AnchorAttention (Triton kernels on GPU / interpreter, fp32 reference on CPU)."""
from __future__ import annotations

import dataclasses

import torch

from anchor.ops import anchor_attention, run_selection, run_stage1, selection_key_mask, use_triton
from anchor.params import AnchorParams
from anchor.reference import anchor_selection_reference, attended_mask, tail_selection_reference
from anchor.stats import AttentionStats, dense_stats
from methods.base import AttendedSet
from methods.dense import dense_attention
from methods.registry import register_method


@register_method("anchor")
class AnchorMethod:
    """AnchorAttention prefill.

    Full prefill (``Lq == Lk``) runs ``anchor.anchor_attention``. Chunked prefill (``Lq < Lk``)
    is not defined by the method (its groups assume positions from 0): it runs dense attention
    and is counted as a dense fallback. The Triton backend is forward-only (inference).

    The last ``N mod G`` rows (``G = block_size * step``) follow ``tail`` (``anchor/tail.py``):
    ``dense`` is the authors' wrapper (``modules/llama/anchor_attention.py``: those rows attend
    every causal key) and what the paper's RULER/LongBench/NIAH numbers were measured with (the
    question sits there); ``sparse`` puts them in a partial group sharing one pooled selection
    (it can lose the needle: the question is pooled with haystack rows); ``query_aware`` (ours)
    gives every ``tail_block_size`` tail rows their own selection.

    Deviations from the authors' code (see ``anchor/params.py``): every key is counted once
    (their selected keys in ``[128, 2048)`` were attended twice and the 128 keys before each
    group never); a length that is a multiple of 2048 runs normally (theirs returned zeros);
    GQA reads shared K/V instead of copies.
    """

    zero_anchor = False

    def __init__(self, *, theta: float, step: int, block_size: int, init_size: int | None,
                 local_size: int | None, tail: str, tail_block_size: int, dense_if_complete: bool,
                 backend: str):
        self.params = AnchorParams(theta=theta, step=step, block_size=block_size, init_size=init_size,
                                   local_size=local_size, tail=tail, tail_block_size=tail_block_size)
        self.dense_if_complete = dense_if_complete
        self.backend = backend

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` -> ``(out [B, Hq, Lq, D], stats)``."""
        if q.shape[2] != k.shape[2]:
            out = dense_attention(q, k, v, sm_scale=sm_scale)
            return out, dense_stats(q.shape[0], q.shape[1], q.shape[2], k.shape[2], fallback=True)
        params = dataclasses.replace(self.params, sm_scale=sm_scale) if sm_scale is not None else self.params
        return anchor_attention(q, k, v, params, backend=self.backend,
                                dense_if_complete=self.dense_if_complete, zero_anchor=self.zero_anchor)

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None) -> AttendedSet:
        """Keys each row attends: its initial + local regions and its group's selected keys; tail
        rows by the tail rule (every causal key, or regions plus their block's selection).

        Uses the same backend as ``__call__`` to decide the groups' selection (the tail's is
        PyTorch on both).
        """
        params = dataclasses.replace(self.params, sm_scale=sm_scale) if sm_scale is not None else self.params
        N = k.shape[2]
        P = params.prefix_len(N)
        tail = None
        if not use_triton(self.backend, q):
            sel = anchor_selection_reference(q, k, params, zero_anchor=self.zero_anchor)
            keys, tail = sel.keys, sel.tail
        elif P > 0:
            qp, kp, vp = q[:, :, :P], k[:, :, :P], v[:, :, :P]
            s1 = run_stage1(qp, kp, vp, params)
            if self.zero_anchor:
                s1.abar.zero_()
            keys = selection_key_mask(run_selection(qp, kp, s1, params), N)
        else:
            keys = torch.zeros(q.shape[0], q.shape[1], 0, N, dtype=torch.bool, device=q.device)
        if use_triton(self.backend, q) and params.tail == "query_aware" and P < N:
            tail = tail_selection_reference(q, k, params, zero_anchor=self.zero_anchor)
        return AttendedSet(n_keys=N, row_mask=lambda b, h, rows: attended_mask(
            params, keys[b, h], rows, None if tail is None else tail.keys[b, h]))


@register_method("anchor_zero")
class AnchorZeroMethod(AnchorMethod):
    """AnchorAttention "without anchor" (paper Table 4): stage 2 compares the pooled scores with 0
    instead of the pooled anchors (also for the ``query_aware`` tail); everything else as
    ``anchor``. The authors' code for this ablation ran the unmodified stages (see docs), so this
    is our reading of the paper's text."""

    zero_anchor = True
