"""Public AnchorAttention operators: input checks, allocation, launches, statistics.

``anchor_attention`` runs the three Triton stages on CUDA (or on CPU tensors under
``TRITON_INTERPRET=1``) and the PyTorch reference otherwise. The stage functions are public so
benchmarks can time them one by one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anchor.checks import check_qkv, check_triton_inputs, triton_available, use_triton
from anchor.fa4_stages import stage3_tiles_on_fa4, tiles_worth_fa4
from anchor.kernels.select import _anchor_compact_kernel, _anchor_score_kernel
from anchor.kernels.sparse_fwd import _sparse_fwd_kernel
from anchor.kernels.stage1 import _anchor_stage1_kernel
from anchor.params import AnchorParams
from anchor.reference import LOG2E, anchor_attention_reference, anchor_stats
from anchor.sparse_index import SparseIndex, index_from_counts
from anchor.stats import AttentionStats, causal_pair_count
from anchor.tail import dense_causal_attention, query_aware_tail_attention

COMPACT_CHUNK = 16   # tiles expanded per step of the compaction kernel

# Launch configurations per kernel, measured on an H100 (results/kernels/TUNING.md); keyed by
# "small" (head_dim <= 64) / "large" head_dim. The interpreter ignores num_warps / num_stages.
STAGE1_CONFIG = {"small": {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
                 "large": {"BLOCK_N": 128, "num_warps": 8, "num_stages": 3}}
SCORE_CONFIG = {"small": {"num_warps": 4, "num_stages": 3},
                "large": {"num_warps": 4, "num_stages": 2}}
SPARSE_CONFIG = {"small": {"GATHER": 128, "num_warps": 4, "num_stages": 2},
                 "large": {"GATHER": 128, "num_warps": 8, "num_stages": 3}}



def _config(table: dict, x: torch.Tensor, head_dim: int) -> dict:
    """The launch configuration for ``head_dim``; warps/stages dropped off CUDA."""
    cfg = dict(table["small" if head_dim <= 64 else "large"])
    if not x.is_cuda:
        cfg.pop("num_warps"), cfg.pop("num_stages")
    return cfg


@dataclass
class Stage1Result:
    """Output of stage 1.

    Attributes:
        out: ``[B, Hq, N, D]`` attention over the initial + local regions, normalised (stage 3
            resumes from it in place).
        lse: fp32 ``[B, Hq, N]`` log2-sum-exp2 of the stage-1 scores (log2 units).
        qbar: ``[B, Hq, n_blocks, D]`` pooled queries, rounded to the input dtype.
        abar: fp32 ``[B, Hq, n_blocks]`` pooled anchors (mean row max, log2 units).
    """

    out: torch.Tensor
    lse: torch.Tensor
    qbar: torch.Tensor
    abar: torch.Tensor


@dataclass
class Selection:
    """Output of stage 2: the bitmask, per-tile counts and the compacted index.

    Attributes:
        bits: int32 ``[B, Hq, n_groups, words]`` one bit per (group, key), ``min(32, block)`` keys
            per word; only candidate words are meaningful.
        counts: int32 ``[B, Hq, n_groups, n_tiles]`` selected keys per (group, key tile).
        index: the ``SparseIndex`` (one list per group) consumed by stage 3.
        complete: every candidate of every group was selected (the result is dense attention).
    """

    bits: torch.Tensor
    counts: torch.Tensor
    index: SparseIndex
    complete: bool


def _word_bits(tile: int) -> int:
    """Keys per int32 word of the selection bitmask."""
    return min(32, tile)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def dot_precision(q: torch.Tensor) -> str:
    """``tl.dot`` input precision of the kernels: ``"ieee"`` for fp32 inputs (the same function as
    the fp32 references, instead of TF32's 10-bit mantissas on GPUs), ``"tf32"`` otherwise (fp16
    and bf16 tensor-core dots, where the setting has no effect)."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _check_out(out: torch.Tensor, like: torch.Tensor) -> None:
    """``out`` must match ``like``'s shape, dtype and device and have unit stride in ``D``."""
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device or out.stride(-1) != 1:
        raise ValueError(f"out must be a {like.dtype} {tuple(like.shape)} tensor on {like.device} with unit "
                         f"last stride, got {out.dtype} {tuple(out.shape)} on {out.device}, strides {out.stride()}")


def run_stage1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams, *,
               out: torch.Tensor | None = None) -> Stage1Result:
    """Stage 1: online softmax over initial + local regions, pooled queries and anchors.

    ``out``: where to write the partial output (``[B, Hq, N, D]`` like q, may be a view of a
    larger buffer, e.g. a row slice); a new tensor if ``None``. Tensors may be strided views
    with unit stride in ``D``.
    """
    B, Hq, Hkv, _, N, D = check_qkv(q, k, v)
    check_triton_inputs(q, k, v)
    bs = params.block_size
    n_blocks = math.ceil(N / bs)
    if out is None:
        out = torch.empty_like(q)
    _check_out(out, q)
    lse = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    qbar = torch.empty(B, Hq, n_blocks, D, dtype=q.dtype, device=q.device)
    abar = torch.empty(B, Hq, n_blocks, dtype=torch.float32, device=q.device)
    cfg = _config(STAGE1_CONFIG, q, D)
    block_n = min(cfg.pop("BLOCK_N"), bs)
    block_n = block_n if q.is_cuda else bs        # interpreter: fewer, larger tiles run faster
    _anchor_stage1_kernel[(n_blocks, B * Hq)](
        q, k, v, out, lse, qbar, abar,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        qbar.stride(0), qbar.stride(1), qbar.stride(2),
        abar.stride(0), abar.stride(1),
        Hq, N, params.scale(D) * LOG2E,
        GQA=Hq // Hkv, GROUP=params.group, INIT=params.init, LOCAL=params.local,
        HEAD_DIM=D, BLOCK_D=_next_pow2(D), BLOCK_M=bs, BLOCK_N=block_n, DOT=dot_precision(q), **cfg)
    return Stage1Result(out=out, lse=lse, qbar=qbar, abar=abar)


def run_selection(q: torch.Tensor, k: torch.Tensor, s1: Stage1Result, params: AnchorParams, *,
                  compact_if_complete: bool = True) -> Selection:
    """Stage 2: per-group stripe selection against the pooled anchors, compacted into an index.

    With ``compact_if_complete=False`` a complete selection (every candidate kept) is not
    compacted: its index buffers are left unwritten (the caller computes dense attention).
    """
    B, Hq, Hkv, _, N, D = check_qkv(q, k, k)
    check_triton_inputs(q, k)
    gqa, tile, G = Hq // Hkv, params.block_size, params.group
    n_groups, n_blocks = math.ceil(N / G), math.ceil(N / tile)
    n_tiles = math.ceil(N / tile)
    bits = torch.zeros(B, Hq, n_groups, n_tiles * tile // _word_bits(tile), dtype=torch.int32, device=q.device)
    counts = torch.zeros(B, Hq, n_groups, n_tiles, dtype=torch.int32, device=q.device)
    score_tiles = params.local_start(n_groups - 1) // tile        # tiles below the last group's window
    if score_tiles > params.init // tile:
        step_p = _next_pow2(params.step)
        heads = min(_next_pow2(gqa), max(1, 64 // step_p))
        step_p = max(step_p, 16 // heads)
        chunks = math.ceil(gqa / heads)
        _anchor_score_kernel[(score_tiles, B * Hkv * chunks)](
            k, s1.qbar, s1.abar, bits, counts,
            k.stride(0), k.stride(1), k.stride(2),
            s1.qbar.stride(0), s1.qbar.stride(1), s1.qbar.stride(2),
            s1.abar.stride(0), s1.abar.stride(1),
            bits.stride(0), bits.stride(1), bits.stride(2),
            counts.stride(0), counts.stride(1), counts.stride(2),
            Hkv, chunks, n_groups, n_blocks, params.scale(D) * LOG2E, params.theta * LOG2E,
            GQA=gqa, HEADS=heads, STEP=params.step, STEP_P=step_p,
            GROUP=G, INIT=params.init, LOCAL=params.local,
            HEAD_DIM=D, BLOCK_D=_next_pow2(D), TILE=tile, BITS=_word_bits(tile), DOT=dot_precision(q),
            **_config(SCORE_CONFIG, q, D))
    full = counts == tile
    index = index_from_counts(full.sum(-1, dtype=torch.int32),
                              torch.where(full, 0, counts).sum(-1, dtype=torch.int32), tile, G)
    n_candidates = sum(max(0, min(hi, N) - lo) for lo, hi in map(params.candidate_range, range(n_groups)))
    n_selected = index.full_ids.numel() * tile + index.col_ids.numel()
    complete = n_candidates > 0 and n_selected == B * Hq * n_candidates
    if n_selected > 0 and (compact_if_complete or not complete):
        _anchor_compact_kernel[(n_groups, B * Hq)](
            bits, index.full_off, index.col_off, index.full_ids, index.col_ids,
            bits.stride(0), bits.stride(1), bits.stride(2),
            Hq, n_groups,
            GROUP=G, INIT=params.init, LOCAL=params.local, TILE=tile, BITS=_word_bits(tile),
            CHUNK=COMPACT_CHUNK)
    return Selection(bits=bits, counts=counts, index=index, complete=complete)


def _launch_sparse(q, k, v, out, lse, index: SparseIndex, sm_scale: float, *, resume: bool, causal: bool,
                   store_lse: bool = False):
    B, Hq, Hkv, Lq, Lk, D = check_qkv(q, k, v)
    check_triton_inputs(q, k, v)
    _check_out(out, q)
    block_m = min(128, index.rows_per_list & -index.rows_per_list)     # largest power of two dividing it
    if block_m < 16:
        raise ValueError(f"rows_per_list={index.rows_per_list} must be a multiple of 16")
    cfg = _config(SPARSE_CONFIG, q, D)
    gather = cfg.pop("GATHER")
    _sparse_fwd_kernel[(math.ceil(Lq / block_m), B * Hq)](
        q, k, v, out, lse,
        index.full_off, index.full_cnt, index.full_ids, index.col_off, index.col_cnt, index.col_ids,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        Hq, Lq, index.n_lists, Lk - Lq, sm_scale * LOG2E,
        GQA=Hq // Hkv, ROWS_PER_LIST=index.rows_per_list, RESUME=int(resume), CAUSAL=causal,
        STORE_LSE=store_lse or not resume,
        HEAD_DIM=D, BLOCK_D=_next_pow2(D), BLOCK_M=block_m, TILE=index.tile,
        TILE_UNIT=index.tile_unit, GATHER=gather, DOT=dot_precision(q), **cfg)


def run_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s1: Stage1Result, sel: Selection,
               params: AnchorParams) -> torch.Tensor:
    """Stage 3: fold each group's selected keys into the stage-1 state; returns ``s1.out`` (in place).

    Whole tiles go to FlashAttention-4 when installed and they hold enough of the work
    (``anchor.fa4_stages.tiles_worth_fa4``); otherwise everything runs in the Triton kernel."""
    scale = params.scale(q.shape[-1])
    if tiles_worth_fa4(q, sel.index):
        stage3_tiles_on_fa4(q, k, v, s1.out, s1.lse, sel.index, scale, resume_columns)
    else:
        _launch_sparse(q, k, v, s1.out, s1.lse, sel.index, scale, resume=True, causal=False)
    return s1.out


def resume_sparse(q, k, v, out, lse, index: SparseIndex, sm_scale: float) -> None:
    """Fold ``index``'s keys into a normalised partial output ``out`` with log2 LSE ``lse`` (in place)."""
    _launch_sparse(q, k, v, out, lse, index, sm_scale, resume=True, causal=False)


def resume_columns(q, k, v, out, lse, index: SparseIndex, sm_scale: float) -> None:
    """``resume_sparse`` that also writes the resumed log-sum-exp into ``lse`` (for a merge)."""
    _launch_sparse(q, k, v, out, lse, index, sm_scale, resume=True, causal=False, store_lse=True)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex, *,
                     sm_scale: float | None = None, causal: bool = True, out: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each row list over its index keys (Triton). Used by the block/column baselines
    and the ``query_aware`` tail. Forward only (inference): inputs requiring grad are refused.

    Args:
        q: ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Lk, D]``; queries are the last ``Lq`` positions.
        index: one list per ``index.rows_per_list`` query rows; whole tiles start at
            ``full_ids * index.tile_unit`` (aligned or not).
        causal: mask keys after each query's position (needed when lists reach the diagonal).
        out: where to write the output (like q; may be a strided view); a new tensor if ``None``.

    Returns:
        ``(out [B, Hq, Lq, D], lse [B, Hq, Lq] fp32 in log2 units)``; rows with no key give zeros.
    """
    check_qkv(q, k, v)
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
    _launch_sparse(q, k, v, out, lse, index, scale, resume=False, causal=causal)
    return out, lse


def selection_key_mask(sel: Selection, n_keys: int) -> torch.Tensor:
    """bool ``[B, Hq, n_groups, n_keys]``: keys selected for each group (from the bitmask); keys
    past the selection's own length (e.g. a ``dense`` tail's) are False."""
    word_bits = _word_bits(sel.index.tile)
    shifts = torch.arange(word_bits, device=sel.bits.device, dtype=torch.int32)
    bits = (sel.bits[..., None] >> shifts) & 1                          # [B, H, nG, words, bits]
    keys = bits.flatten(-2)[..., :n_keys].bool()
    return F.pad(keys, (0, n_keys - keys.shape[-1]))


def anchor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AnchorParams, *,
                     backend: str = "auto", dense_if_complete: bool = False, zero_anchor: bool = False
                     ) -> tuple[torch.Tensor, AttentionStats]:
    """AnchorAttention prefill: causal attention over the initial tokens, the local window and the
    keys each group of ``block_size * step`` queries selects against its pooled anchor; the last
    ``N mod (block_size * step)`` rows follow ``params.tail`` (``anchor/tail.py``: ``dense`` as the
    authors' wrapper and the paper, ``sparse`` as one partial group, or ``query_aware``).

    Args:
        q: ``[B, Hq, N, D]``; k, v: ``[B, Hkv, N, D]`` (GQA: query head ``h`` uses KV head
            ``h // (Hq // Hkv)``; K/V are never repeated). fp16/bf16 (fp16/fp32 for the CPU
            interpreter, which refuses bf16). Any ``N``; ``D`` any size up to 256 (padded to a power
            of two inside). The Triton path is forward-only: inputs requiring grad (with grad
            mode on) are refused; the ``torch`` backend supports autograd.
        params: hyperparameters (``conf/method/anchor.yaml`` holds the defaults).
        backend: ``triton``, ``torch`` (the fp32 reference) or ``auto`` (see ``use_triton``).
        dense_if_complete: when the selection kept every candidate of every group (the grouped
            rows are then exactly dense causal attention), compute them with the dense kernel
            (``anchor.tail.dense_causal_attention``: FlashAttention-4 when installed, else cuDNN
            SDPA) instead of the sparse kernel. Counted as a dense fallback: stats stage
            ``dense`` holds their causal pairs on top of the estimation stages.
        zero_anchor: compare pooled scores with 0 instead of the pooled anchors (the paper's
            "without anchor" ablation, Table 4).

    Returns:
        ``(out [B, Hq, N, D], AttentionStats)`` (``anchor.reference.anchor_stats``). Stats stages:
        ``anchor`` (initial + local pairs), ``select`` (pooled rows x candidate keys), ``sparse``
        (group rows x selected keys), and the tail's (``anchor_pair_counts``); extras
        ``degenerate_dense`` and ``upstream_ratio``.

    Extra memory (Triton path) beyond the output: fp32 log-sum-exp ``B*Hq*N``; pooled queries
    ``B*Hq*(N/block)*D`` and anchors; a bitmask of ``B*Hq*ceil(N/G)*N/32`` int32 words
    (1/32 of the authors' coordinate array); per-tile counts ``B*Hq*ceil(N/G)*N/block`` int32;
    and the index itself, 4 bytes per selected key outside whole tiles plus 4 bytes per whole tile.
    The stage-1 partial output is kept normalised in the output buffer (in q's dtype), so bf16
    inputs see one extra bf16 rounding of that partial result. The ``query_aware`` tail adds a
    bool key mask of at most ``tail.MASK_BUDGET`` elements per head chunk.
    """
    B, Hq, Hkv, Lq, N, D = check_qkv(q, k, v)
    if Lq != N:
        raise ValueError(f"anchor_attention is a full prefill (Lq == Lk); got Lq={Lq}, Lk={N}")
    if not use_triton(backend, q):
        return anchor_attention_reference(q, k, v, params, zero_anchor=zero_anchor)
    if D > 256:
        raise ValueError(f"head_dim {D} > 256 is not supported")
    check_triton_inputs(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    P, scale = params.prefix_len(N), params.scale(D)
    out = torch.empty_like(q)
    selected = torch.zeros(B, Hq, 0, dtype=torch.int64, device=q.device)
    complete = False
    if P > 0:                                   # the grouped rows, written into out[:, :, :P]
        qp, kp, vp = q[:, :, :P], k[:, :, :P], v[:, :, :P]
        s1 = run_stage1(qp, kp, vp, params, out=out[:, :, :P])
        if zero_anchor:
            s1.abar.zero_()
        sel = run_selection(qp, kp, s1, params, compact_if_complete=not dense_if_complete)
        selected, complete = sel.index.keys_per_list(), dense_if_complete and sel.complete
        if not complete:
            run_sparse(qp, kp, vp, s1, sel, params)
        elif params.tail != "dense":
            out[:, :, :P] = dense_causal_attention(qp, kp, vp, scale)
    tail_selected = None
    if params.tail == "dense" and complete:      # every row is dense: one call over all rows
        out = dense_causal_attention(q, k, v, scale)
    elif params.tail == "dense" and P < N:
        out[:, :, P:] = dense_causal_attention(q[:, :, P:], k, v, scale)
    elif params.tail == "query_aware" and P < N:
        tail_selected = query_aware_tail_attention(q, k, v, params, out[:, :, P:], resume_sparse,
                                                   zero_anchor=zero_anchor)
    stats = anchor_stats(params, N, selected, tail_selected)
    if complete:
        del stats.pairs["sparse"]
        stats.pairs["dense"] = torch.full((B, Hq), causal_pair_count(P, P), dtype=torch.int64)
        stats.dense_fallback = 1
    return out, stats


__all__ = ["anchor_attention", "run_stage1", "run_selection", "run_sparse", "sparse_attention",
           "selection_key_mask", "Stage1Result", "Selection", "triton_available", "use_triton"]
