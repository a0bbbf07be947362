"""AnchorAttention timed stage by stage, as ``anchor.ops.anchor_attention`` runs them."""
from __future__ import annotations

from collections.abc import Callable

import torch

from anchor import ops
from anchor.tail import dense_causal_attention, query_aware_tail_attention


def anchor_stage_times(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, method,
                       ms: Callable[[Callable], float]) -> dict[str, float]:
    """``stage1_ms``, ``select_ms``, ``sparse_ms`` (stage 3, timed as stages 1 + 3 minus 1 since it
    overwrites stage 1's output) on the grouped rows ``[0, P)``, and ``tail_ms`` for the last
    ``N - P`` rows under the method's tail rule. ``method``: an ``AnchorMethod``; ``ms(fn)`` times
    ``fn()`` in milliseconds."""
    params = method.params
    N = q.shape[2]
    P = params.prefix_len(N)
    out: dict[str, float] = {}
    if P > 0:
        qp, kp, vp = q[:, :, :P], k[:, :, :P], v[:, :, :P]
        out["stage1_ms"] = ms(lambda: ops.run_stage1(qp, kp, vp, params))
        s1 = ops.run_stage1(qp, kp, vp, params)
        if method.zero_anchor:
            s1.abar.zero_()
        out["select_ms"] = ms(lambda: ops.run_selection(qp, kp, s1, params))
        sel = ops.run_selection(qp, kp, s1, params)
        both = ms(lambda: ops.run_sparse(qp, kp, vp, ops.run_stage1(qp, kp, vp, params), sel, params))
        out["sparse_ms"] = both - out["stage1_ms"]
    if P < N and params.tail == "dense":
        out["tail_ms"] = ms(lambda: dense_causal_attention(q[:, :, P:], k, v, params.scale(q.shape[-1])))
    elif P < N and params.tail == "query_aware":
        buf = torch.empty_like(q[:, :, P:])
        out["tail_ms"] = ms(lambda: query_aware_tail_attention(q, k, v, params, buf, ops.resume_sparse,
                                                               zero_anchor=method.zero_anchor))
    return out
