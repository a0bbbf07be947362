"""``vertical_slash``: MInference's token-level Vertical-Slash sparse prefill, GQA native."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from anchor.checks import check_qkv
from anchor.sparse_index import SparseIndex
from anchor.stats import AttentionStats, causal_pair_count
from methods.base import AttendedSet
from methods.index_builders import (
    attend,
    check_backend,
    check_block,
    check_rounding,
    index_attended,
    index_from_diagonals,
)
from methods.registry import register_method

MIN_VERTICAL, MIN_SLASH = 30, 50          # MInference clamps the per-head sizes to at least these


@dataclass
class VSSelection:
    """Per-head vertical columns and slash diagonals.

    Attributes:
        columns: int64 ``[B, Hq, V]`` key positions; only ``columns_valid`` entries are selected.
        columns_valid: bool ``[B, Hq, V]`` (the first ``vertical_size`` of the head's top-k).
        offsets: int64 ``[B, Hq, S]`` diagonal offsets (query position - key position);
            unselected slots repeat the head's first offset.
        offsets_valid: bool ``[B, Hq, S]``.
    """

    columns: torch.Tensor
    columns_valid: torch.Tensor
    offsets: torch.Tensor
    offsets_valid: torch.Tensor


def vs_scores(q: torch.Tensor, k: torch.Tensor, *, sm_scale: float, last_q: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash scores of the last ``min(last_q, Lq)`` queries, fp32 ``[B, Hq, Lk]`` each.

    ``p`` = softmax over keys (fp32, bottom-right causal inside the last queries) of those
    queries' scaled logits; ``vertical[j] = sum_i p[i, j]``; ``slash[d] = sum_i p[i, pos_i - d]``
    (diagonal offset ``d``, 0 = main diagonal). GQA: query heads are grouped by KV head.
    """
    B, Hq, Hkv, Lq, Lk, D = check_qkv(q, k, k)
    lq = min(last_q, Lq)
    qg = q[:, :, Lq - lq:].float().reshape(B, Hkv, Hq // Hkv, lq, D)   # [B, Hkv, g, lq, D]
    logits = torch.einsum("bkgid,bkjd->bkgij", qg, k.float()).reshape(B, Hq, lq, Lk) * sm_scale
    pos = torch.arange(Lk - lq, Lk, device=q.device)                    # absolute query positions
    keys = torch.arange(Lk, device=q.device)
    p = logits.masked_fill_(keys[None, :] > pos[:, None], float("-inf")).softmax(-1)
    vertical = p.sum(-2)
    key_of = pos[:, None] - keys[None, :]                                 # [lq, Lk]: key at offset d
    on_diag = p.gather(-1, key_of.clamp(min=0).expand(B, Hq, lq, Lk))
    slash = (on_diag * (key_of >= 0)).sum(-2)
    return vertical, slash


def vs_selection(q: torch.Tensor, k: torch.Tensor, vertical_size: torch.Tensor, slash_size: torch.Tensor, *,
                 sm_scale: float, last_q: int, sink_columns: int, local_diagonals: int) -> VSSelection:
    """MInference's choice per query head: top ``vertical_size[h]`` columns and top
    ``slash_size[h]`` diagonals of ``vs_scores``; the first ``sink_columns`` keys and the
    ``local_diagonals`` nearest diagonals score ``+inf`` (always kept). Sizes are clamped to
    ``[30, Lk]`` / ``[50, Lk]``. Ties (e.g. sizes below the forced counts) follow ``torch.topk``.
    """
    Lk = k.shape[2]
    vertical, slash = vs_scores(q, k, sm_scale=sm_scale, last_q=last_q)
    vertical[..., :sink_columns] = float("inf")
    slash[..., :local_diagonals] = float("inf")
    v_size = vertical_size.clamp(min=MIN_VERTICAL, max=Lk).to(q.device)
    s_size = slash_size.clamp(min=MIN_SLASH, max=Lk).to(q.device)
    columns = vertical.topk(int(v_size.max()), -1).indices
    offsets = slash.topk(int(s_size.max()), -1).indices
    columns_valid = torch.arange(columns.shape[-1], device=q.device) < v_size[:, None]
    offsets_valid = torch.arange(offsets.shape[-1], device=q.device) < s_size[:, None]
    offsets = torch.where(offsets_valid, offsets, offsets[..., :1])
    return VSSelection(columns, columns_valid.expand_as(columns), offsets, offsets_valid.expand_as(offsets))


def load_pattern(path: str | Path) -> list[dict[int, tuple[int, int]]]:
    """Read a MInference best-pattern JSON: one ``{head: [type, vertical_size, slash_size, score]}``
    dict per layer. Returns per layer ``{head: (vertical_size, slash_size)}``; any type other than
    ``vertical_and_slash`` raises (``stream_llm`` / ``block_sparse`` heads are not implemented)."""
    layers = json.loads(Path(path).read_text())
    if not isinstance(layers, list):
        raise ValueError(f"{path}: expected a JSON list with one dict per layer")
    out = []
    for li, layer in enumerate(layers):
        sizes = {}
        for head, entry in layer.items():
            if entry[0] != "vertical_and_slash":
                raise ValueError(f"{path}: layer {li} head {head} has pattern {entry[0]!r}; "
                                 "only 'vertical_and_slash' is implemented")
            sizes[int(head)] = (int(entry[1]), int(entry[2]))
        out.append(sizes)
    return out


@register_method("vertical_slash")
class VerticalSlash:
    """MInference Vertical-Slash (token level), estimated from the last queries of each call.

    Selection: ``vs_selection`` (last ``last_q`` = 64 queries, softmax in fp32, first 30 columns
    and 100 nearest diagonals forced, per-head top-k). Execution: ``block_size``-row query lists
    (64, MInference's block); each list attends the union of its diagonals' ``block``-wide key
    ranges plus the columns outside them, causally masked (``index_from_diagonals``). As in
    MInference's kernel, slash keys are loaded contiguously whatever their alignment, as whole
    ``block``-key tiles from each merged run's first key. ``run_rounding="upstream"`` merges
    ranges as MInference does: every run is rounded up to a multiple of ``block`` keys from its
    start (ranges crossing key 0 start at 0), so runs are whole tiles and only the columns are
    gathered (and, in the last list or two, the visible keys of a tile that would pass the last
    key). ``run_rounding="exact"`` keeps the exact union of the ranges; a run's last
    ``length % block`` keys are then gathered with the columns. Per-head sizes come from
    ``pattern_file`` (MInference format, indexed by ``layer_idx``) when given, else
    ``vertical_size`` / ``slash_size`` for every head; heads missing from the file use those.

    Differences from MInference (``minference_forward.py``, ``vertical_slash_index.cu``):
    batch > 1 works (upstream passes a one-element ``seqlens``, so batch > 1 read past it); GQA
    reads shared K/V (upstream repeats K/V and loops over heads in Python); chunked prefill
    (``Lq < Lk``) is supported with offsets measured from absolute positions (upstream assumes
    ``Lq == Lk``); estimation logits are fp32 and scaled by ``sm_scale`` (upstream: input dtype,
    ``1/sqrt(head_dim)``, fp32 softmax); with ``run_rounding="exact"`` (not the default),
    merged slash ranges are the exact union of the ``block``-wide ranges (upstream, like
    ``"upstream"``, rounds every merged run up to a multiple of ``block`` keys from its start, so
    a run also takes the ranges starting within its rounded end and the gaps before them, and
    shifts ranges that cross key 0 to ``[0, block)``);
    columns after a block's last row are dropped as invisible (upstream drops those at or after
    the end of the block's last slash range, the same set whenever the main diagonal is kept, as
    the forced nearest diagonals ensure); non-``vertical_and_slash`` heads and
    ``minference_ratio`` are not supported.

    Upstream ratio: MInference's vertical-slash code reports no density, so ``stats.extra`` has
    no ``upstream_ratio``. ``degenerate_dense`` = 1 when every head keeps all columns or all
    diagonals (clamped size ``>= Lk``): the index then holds every visible key (computed sparse).
    """

    def __init__(self, *, vertical_size: int, slash_size: int, pattern_file: str | None, block_size: int,
                 last_q: int, sink_columns: int, local_diagonals: int, run_rounding: str, backend: str):
        check_block("block_size", block_size)
        check_rounding(run_rounding)
        check_backend(backend)
        if min(vertical_size, slash_size, last_q) < 1 or min(sink_columns, local_diagonals) < 0:
            raise ValueError("vertical_size, slash_size, last_q must be >= 1 and sink_columns, "
                             "local_diagonals >= 0")
        self.vertical_size, self.slash_size = int(vertical_size), int(slash_size)
        self.pattern_file = pattern_file
        self.pattern = load_pattern(pattern_file) if pattern_file else None
        self.block_size, self.last_q = block_size, int(last_q)
        self.sink_columns, self.local_diagonals = int(sink_columns), int(local_diagonals)
        self.run_rounding, self.backend = run_rounding, backend

    def head_sizes(self, n_heads: int, layer_idx: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 ``[n_heads]`` vertical and slash sizes for this layer (before clamping)."""
        v = torch.full((n_heads,), self.vertical_size, dtype=torch.int64)
        s = torch.full((n_heads,), self.slash_size, dtype=torch.int64)
        if self.pattern is None:
            return v, s
        if layer_idx is None or not 0 <= layer_idx < len(self.pattern):
            raise ValueError(f"pattern_file {self.pattern_file} has {len(self.pattern)} layers; "
                             f"got layer_idx={layer_idx}")
        for head, (hv, hs) in self.pattern[layer_idx].items():
            if head >= n_heads:
                raise ValueError(f"pattern_file layer {layer_idx} names head {head}, model has {n_heads}")
            v[head], s[head] = hv, hs
        return v, s

    def select(self, q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None,
               layer_idx: int | None = None) -> VSSelection:
        """The columns and diagonals this method keeps for ``q``, ``k`` (see ``vs_selection``)."""
        v_size, s_size = self.head_sizes(q.shape[1], layer_idx)
        scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
        return vs_selection(q, k, v_size, s_size, sm_scale=scale, last_q=self.last_q,
                            sink_columns=self.sink_columns, local_diagonals=self.local_diagonals)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` -> ``(out [B, Hq, Lq, D], stats)``.

        Stats stages: ``estimate`` = ``min(last_q, Lq) * Lk`` logits per head (the full product
        is computed, masked entries included); ``sparse`` = visible pairs of the index.
        """
        B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
        scale = sm_scale if sm_scale is not None else D ** -0.5
        index, pairs = self.index(q, k, sm_scale=scale, layer_idx=layer_idx)
        out = attend(q, k, v, index, sm_scale=scale, backend=self.backend)
        estimate = torch.full((B, Hq), min(self.last_q, Lq) * Lk, dtype=torch.int64)
        stats = AttentionStats(pairs={"estimate": estimate, "sparse": pairs}, causal_pairs=causal_pair_count(Lq, Lk))
        stats.extra["degenerate_dense"] = float(self.degenerate(Hq, Lk, layer_idx))
        return out, stats

    def degenerate(self, n_heads: int, k_len: int, layer_idx: int | None) -> bool:
        """Every head keeps all ``k_len`` columns or all ``k_len`` diagonals (sizes after clamping)."""
        v, s = self.head_sizes(n_heads, layer_idx)
        return bool((torch.maximum(v.clamp(min=MIN_VERTICAL), s.clamp(min=MIN_SLASH)) >= k_len).all())

    def index(self, q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None,
              layer_idx: int | None = None) -> tuple[SparseIndex, torch.Tensor]:
        """``(index, visible pairs [B, Hq])`` of the selected columns and diagonals."""
        sel = self.select(q, k, sm_scale=sm_scale, layer_idx=layer_idx)
        return index_from_diagonals(sel.offsets, sel.columns, sel.columns_valid, block=self.block_size,
                                    q_len=q.shape[2], k_len=k.shape[2], rounding=self.run_rounding)

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None) -> AttendedSet:
        """Keys each row attends (its block's slash ranges and columns, causally clipped)."""
        index, _ = self.index(q, k, sm_scale=sm_scale, layer_idx=layer_idx)
        return index_attended(index, q.shape[2], k.shape[2])

    def __repr__(self) -> str:
        return (f"VerticalSlash(vertical_size={self.vertical_size}, slash_size={self.slash_size}, "
                f"pattern_file={self.pattern_file!r}, block_size={self.block_size}, "
                f"run_rounding={self.run_rounding!r}, backend={self.backend!r})")
