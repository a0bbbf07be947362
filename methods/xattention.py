"""``xattention``: XAttention (Xu et al., ICML 2025) antidiagonal block-sparse prefill, GQA native.

Re-implemented from reading mit-han-lab/x-attention@e3798877 (no licence: nothing is copied),
cross-checked with MInference's MIT port ``minference/modules/xattention.py``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from anchor.checks import check_qkv
from anchor.stats import AttentionStats, causal_pair_count, dense_stats
from methods.base import AttendedSet, causal_attended
from methods.dense import dense_attention
from methods.index_builders import attend, check_backend, check_block, index_attended, index_from_tile_mask
from methods.registry import register_method

CHUNK_ELEMENTS = 2 ** 28   # fp32 antidiagonal probabilities held at once (B * Hq * rows * keys)
MIN_CHUNKS = 16            # query-row chunks at least: bounds the masked scores computed above the diagonal


def stride_groups(x: torch.Tensor, stride: int, n_groups: int, *, reverse: bool) -> torch.Tensor:
    """``[B, H, N, D] -> [B, H, n_groups, stride * D]``: consecutive ``stride`` rows concatenated
    (zero rows pad to ``n_groups * stride``); ``reverse`` orders each group's rows last to first."""
    N = x.shape[2]
    if n_groups * stride != N:
        x = F.pad(x, (0, 0, 0, n_groups * stride - N))
    x = x.unflatten(2, (n_groups, stride))                              # [B, H, G, S, D]
    return (x.flip(3) if reverse else x).flatten(3)


def antidiagonal_block_scores(q: torch.Tensor, k: torch.Tensor, *, stride: int, block: int, sm_scale: float,
                              norm: float) -> tuple[torch.Tensor, int]:
    """XAttention's estimate: fp32 ``[B, Hq, nb, nb]`` block sums and the scores computed per head.

    Antidiagonal score of query group ``i`` and key group ``j`` (``stride`` tokens each, from
    position 0): ``sum_t q[i*S + S-1-t] . k[j*S + t]``, one matmul of the groups flattened to
    ``S * D`` (keys reversed within each group: the same pairs as upstream's reversed queries).
    Each row ``i`` holding a real query takes a softmax of ``score * sm_scale / S / norm`` over the
    key groups ``j <= i``; probabilities are summed over (``block / S`` rows) x (``block / S``
    key groups) tiles. Rows are processed in chunks of whole blocks against the keys up to the
    chunk's end (``CHUNK_ELEMENTS``, ``MIN_CHUNKS``); the count returned is every score of those
    products (masked ones included). bf16 inputs: scores and block sums are rounded to bf16, as
    upstream stores them; other dtypes stay fp32.
    """
    B, Hq, Hkv, N, _, D = check_qkv(q, k, k)
    g, rb, nb = Hq // Hkv, block // stride, math.ceil(N / block)
    M, real = nb * rb, math.ceil(N / stride)                            # groups (padded), groups with a query
    dtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
    qg = stride_groups(q.to(dtype), stride, M, reverse=False).view(B, Hkv, g, M, stride * D)
    kg = stride_groups(k.to(dtype), stride, M, reverse=True)            # [B, Hkv, M, S * D]
    scale = sm_scale / stride / norm
    step = max(1, min(CHUNK_ELEMENTS // (B * Hq * rb * M), math.ceil(nb / MIN_CHUNKS)))   # blocks per chunk
    scores = torch.zeros(B, Hq, nb, nb, dtype=torch.float32, device=q.device)
    computed = 0
    for b0 in range(0, nb, step):
        b1 = min(b0 + step, nb)
        r0, r1 = b0 * rb, b1 * rb
        rows = qg[:, :, :, r0:r1].reshape(B, Hkv, g * (r1 - r0), stride * D)
        x = (rows @ kg[:, :, :r1].transpose(-1, -2)).float().mul_(scale)   # [B, Hkv, g * R, r1]
        x = x.view(B, Hq, r1 - r0, r1)
        future = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool, device=q.device).triu_(1)
        x[..., r0:].masked_fill_(future, float("-inf"))                  # key group j > row i
        x = x.softmax(-1)
        x[:, :, max(real - r0, 0):] = 0                                  # rows of padding only
        sums = x.view(B, Hq, b1 - b0, rb, b1, rb).sum((3, 5))            # [B, Hq, b1 - b0, b1]
        scores[:, :, b0:b1, :b1] = sums
        computed += (r1 - r0) * r1
    if q.dtype == torch.bfloat16:
        scores = scores.to(torch.bfloat16).float()
    return scores, computed


def find_blocks(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """bool ``[B, H, nb, nb]``: XAttention's ``find_blocks_chunked`` (prefill, causal), block-causal.

    Per query-block row ``r`` (sums in float64): key block 0 and the diagonal block ``r`` are
    kept; the other blocks, by decreasing score, are kept while the mass ranked before them
    (the forced blocks' included) is ``< threshold[h] * row total`` (strict: threshold 0 keeps
    only the forced blocks). Ties: lower key block first. ``threshold``: fp ``[H]``.
    """
    x = scores.double()
    nb = x.shape[-1]
    r = torch.arange(nb, device=x.device)
    forced = (r[None, :] == 0) | (r[None, :] == r[:, None])             # [nb, nb]
    required = x.sum(-1, keepdim=True) * threshold.to(x)[:, None, None]  # [B, H, nb, 1]
    others = x.masked_fill(forced, 0.0)
    ranked, order = others.sort(dim=-1, descending=True, stable=True)
    before = (x * forced).sum(-1, keepdim=True) + ranked.cumsum(-1) - ranked
    keep = torch.zeros_like(forced.expand_as(x)).scatter(-1, order, before < required)
    return (keep | forced) & (r[:, None] >= r[None, :])


def load_thresholds(path: str | Path) -> list[list[float]]:
    """Per-(layer, query head) thresholds: a JSON or YAML list with one list of floats in [0, 1]
    per layer, one float per query head (the layout of x-attention's ``llama_threshold.py``)."""
    table = yaml.safe_load(Path(path).read_text())
    if not isinstance(table, list) or not all(isinstance(row, list) for row in table):
        raise ValueError(f"{path}: expected a list (layers) of lists (query heads) of thresholds")
    for li, row in enumerate(table):
        if not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in row):
            raise ValueError(f"{path}: layer {li} has a threshold outside [0, 1] or not a number")
    return [[float(t) for t in row] for row in table]


@register_method("xattention")
class XAttention:
    """XAttention: per query block, the key blocks holding ``threshold`` of the antidiagonal
    estimate's mass (``antidiagonal_block_scores`` + ``find_blocks``), executed as whole
    ``block_size`` x ``block_size`` tiles (causal on the diagonal) by the shared sparse kernel.

    Upstream (mit-han-lab/x-attention@e3798877; ``Xattention.py`` = ``xattn/src/Xattention.py``):

    * pairing: ``select_mode="inverse"`` (``Xattention_prefill`` L339), Triton
      ``flat_group_gemm_fuse_reshape_kernel`` (``xattn/src/kernels.py`` L198-235: query rows read
      from ``S - 1`` down, key rows up, L222-229); groups start at position 0;
    * softmax: ``softmax_fuse_block_sum_kernel_causal`` (kernels.py L6-94) with scale
      ``log2(e) / sqrt(d) / S / norm`` in base 2 (Xattention.py L170), i.e. natural softmax of
      ``score / sqrt(d) / S / norm``; causal in group units (row ``i`` sees groups ``j <= i``, L56),
      rows past ``ceil(N / S)`` zeroed (L70-75); sums per (block row, block column) (L76-78);
    * selection: ``find_blocks_chunked`` (``xattn/src/utils.py`` L98-146) then the block-causal
      ``tril`` (Xattention.py L275-285); the forced blocks' mass opens the cumulative sum and the
      comparison is strict (``cumulative_sum_without_self < required_sum``, L141);
    * chunking and padding (L33-51, chunk size L322-331) do not change the result of a full
      prefill (softmax and selection are row-local, padded rows are excluded, padded key groups
      lie past every real row); we chunk by a memory budget and pad to whole blocks only;
    * ``keep_sink`` / ``keep_recent`` (default False, L286-297) are not offered: in a causal
      prefill both are no-ops (``keep_sink`` sets query block 0's row, whose only causal block is
      forced; ``keep_recent`` the forced diagonal); ``kdb`` (default 1) is not offered either.
    * thresholds: a scalar (``threshold``; MInference's port defaults to 0.9 with stride 8,
      ``minference/modules/xattention.py`` L583-585; ``Xattention_prefill`` defaults to 0.8, L308),
      or per (layer, query head) from ``threshold_file`` (``load_thresholds``), indexed by
      ``layer_idx``. x-attention's RULER runs (``scripts/run_ruler.sh``) pass no threshold, so
      ``FastPrefillConfig`` uses its Llama-3.1-8B tables (``xattn/src/load_llama.py`` L253-262).
      Converter, run in an x-attention checkout (the tables cannot be copied here)::

          python -c "import json, runpy; t = runpy.run_path('xattn/threshold/llama_threshold.py'); \\
                     json.dump(t['llama_fuse_8'], open('llama31_8b_stride8.json', 'w'))"

    Differences: GQA scores each query head against its KV head (upstream ``repeat_kv``,
    load_llama.py L159-160, and asserts ``num_q_head == num_kv_head``, Xattention.py L31); batch
    > 1 and any ``block_size`` of the kernel divisible by ``stride`` (upstream asserts batch 1 and
    block 128, L356-357); estimation scaled by ``sm_scale`` (upstream ``1 / sqrt(d)``); fp16/fp32
    inputs are estimated in fp32 (upstream stores scores and sums in the input dtype; we round
    to bf16 only for bf16 inputs, as upstream on its bf16 runs); ties at the cut-off go to the
    lower key block (upstream's CUDA sort leaves them unspecified). We follow upstream's Triton
    path (taken on GPUs whose name holds "100", L57-63); its PyTorch path (e.g. on an H200)
    masks every key group before the current chunk when the padding is shorter than ``S``
    tokens (``causal_mask[..., -0:]``, L201) with more than one chunk. Chunked prefill
    (``Lq < Lk``) runs dense with ``dense_fallback = 1``; with ``nb <= 2`` query blocks the
    forced blocks are every causal block, so dense attention runs (``degenerate_dense = 1``,
    no estimate).

    Upstream ratio: ``Xattention_prefill`` computes ``(nb + 1) * nb / 2 * heads`` and a
    commented-out print of ``mask.sum() / that`` (L398-400): ``stats.extra["upstream_ratio"]`` =
    kept blocks over ``B * Hq * nb (nb + 1) / 2`` (causal blocks), on the real block grid (the
    print would also count the forced blocks of chunk-padding rows).
    """

    def __init__(self, *, stride: int, threshold: float, threshold_file: str | None, norm: float,
                 block_size: int, backend: str):
        check_block("block_size", block_size)
        check_backend(backend)
        if stride < 1 or block_size % stride:
            raise ValueError(f"stride must be >= 1 and divide block_size {block_size}, got {stride}")
        if not 0 <= threshold <= 1 or norm <= 0:
            raise ValueError(f"need threshold in [0, 1] and norm > 0, got {threshold}, {norm}")
        self.stride, self.threshold, self.norm = int(stride), float(threshold), float(norm)
        self.threshold_file = threshold_file
        self.table = load_thresholds(threshold_file) if threshold_file else None
        self.block_size, self.backend = block_size, backend

    def thresholds(self, n_heads: int, layer_idx: int | None) -> torch.Tensor:
        """fp64 ``[n_heads]``: this layer's per-query-head thresholds."""
        if self.table is None:
            return torch.full((n_heads,), self.threshold, dtype=torch.float64)
        if layer_idx is None or not 0 <= layer_idx < len(self.table):
            raise ValueError(f"threshold_file {self.threshold_file} has {len(self.table)} layers; "
                             f"got layer_idx={layer_idx}")
        row = self.table[layer_idx]
        if len(row) != n_heads:
            raise ValueError(f"threshold_file layer {layer_idx} has {len(row)} heads, the call {n_heads}")
        return torch.tensor(row, dtype=torch.float64)

    def select(self, q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None,
               layer_idx: int | None = None) -> tuple[torch.Tensor, int]:
        """``(blocks [B, Hq, nb, nb] bool, antidiagonal scores computed per head)`` of a full prefill."""
        scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
        scores, computed = antidiagonal_block_scores(q, k, stride=self.stride, block=self.block_size,
                                                     sm_scale=scale, norm=self.norm)
        tau = self.thresholds(q.shape[1], layer_idx).to(q.device)
        return find_blocks(scores, tau), computed

    def dense_here(self, q_len: int, k_len: int) -> bool:
        """Dense attention instead of the selection: chunked prefill or ``nb <= 2``."""
        return q_len != k_len or q_len <= 2 * self.block_size

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None
                 ) -> tuple[torch.Tensor, AttentionStats]:
        """``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` -> ``(out [B, Hq, Lq, D], stats)``.

        Stats stages: ``estimate`` = ``stride`` pairs per antidiagonal score computed (each is a
        ``stride * D`` dot product, ``stride`` query-key products) and ``sparse`` (visible pairs of
        the kept tiles); or ``dense``. ``layer_idx`` selects the threshold row of ``threshold_file``.
        """
        B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
        if self.dense_here(Lq, Lk):
            out = dense_attention(q, k, v, sm_scale=sm_scale)
            stats = dense_stats(B, Hq, Lq, Lk, fallback=Lq != Lk)
            stats.extra["degenerate_dense"] = float(Lq == Lk)
            if Lq == Lk:
                stats.extra["upstream_ratio"] = 1.0
            return out, stats
        bs = self.block_size
        scale = sm_scale if sm_scale is not None else D ** -0.5
        blocks, computed = self.select(q, k, sm_scale=scale, layer_idx=layer_idx)
        index, pairs = index_from_tile_mask(blocks, tile=bs, rows_per_list=bs, q_len=Lq, k_len=Lk)
        out = attend(q, k, v, index, sm_scale=scale, backend=self.backend)
        estimate = torch.full((B, Hq), computed * self.stride, dtype=torch.int64)
        stats = AttentionStats(pairs={"estimate": estimate, "sparse": pairs}, causal_pairs=causal_pair_count(Lq, Lk))
        nb = blocks.shape[-1]
        stats.extra["upstream_ratio"] = float(blocks.sum()) / (B * Hq * nb * (nb + 1) / 2)
        stats.extra["degenerate_dense"] = 0.0
        return out, stats

    def attended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 sm_scale: float | None = None, layer_idx: int | None = None) -> AttendedSet:
        """Keys each row attends (kept tiles, causally clipped; every causal key when dense)."""
        Lq, Lk = q.shape[2], k.shape[2]
        if self.dense_here(Lq, Lk):
            return causal_attended(Lq, Lk)
        bs = self.block_size
        blocks, _ = self.select(q, k, sm_scale=sm_scale, layer_idx=layer_idx)
        index, _ = index_from_tile_mask(blocks, tile=bs, rows_per_list=bs, q_len=Lq, k_len=Lk)
        return index_attended(index, Lq, Lk)

    def __repr__(self) -> str:
        return (f"XAttention(stride={self.stride}, threshold={self.threshold}, "
                f"threshold_file={self.threshold_file!r}, norm={self.norm}, block_size={self.block_size}, "
                f"backend={self.backend!r})")
