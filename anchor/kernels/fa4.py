"""FlashAttention-4 (``flash-attn-4``, CuTeDSL) on this project's ``[B, H, N, D]`` layout.

FA4 is optional (``pip install -e ".[fa4]"`` on CUDA machines, or the staged wheels of
``../shared/gpu/README.md``) and imported lazily, only inside these functions. What its source
(``flash_attn/cute/interface.py``, ``block_sparsity.py``, ``flash_fwd_sm90.py``, 4.0.0b36) fixes:

* Layout ``[B, N, H, D]``. A ``transpose(1, 2)`` view of a ``[B, H, N, D]`` tensor is taken
  without a copy when its last stride is 1 and the others are multiples of 16 bytes
  (``cute_dsl_utils.maybe_contiguous``); otherwise FA4 copies it. The output comes back
  ``[B, N, H, D]`` contiguous and is returned as its ``[B, H, N, D]`` view (no copy).
* GQA native (query head ``h`` reads KV head ``h // (Hq // Hkv)``), causal mask bottom-right
  aligned when ``Lq < Lk`` (``block_info.py``: key ``<= row + Lk - Lq``).
* LSE: fp32 ``[B, H, Lq]``, natural log; rows that see no key give output 0 and LSE ``-inf``.
* Kernels compile once per (dtype, head_dim, GQA ratio, causal, pack_gqa, block-sparse
  broadcast pattern, ...), not per sequence length (``_flash_attn_fwd``'s ``compile_key``);
  the first call of a configuration takes seconds.
* Block sparsity runs here on sm90 only, with 128x128 blocks and head_dim <= 128: sm90 needs the
  sparse KV block to equal its key tile (128 for head_dim <= 128; 112/80 above) and sm100 tiles
  queries by 256 rows (``q_stage = 2``), which 128-row lists cannot express.
* No row maximum is returned on sm90 (only out and LSE: ``flash_fwd_sm90.py`` hands the epilogue
  ``softmax.row_sum`` turned into the LSE; ``row_max`` outputs exist only for Blackwell sparse
  MLA), so AnchorAttention's anchors cannot come from FA4.
"""
from __future__ import annotations

import functools
import math

import torch

from anchor.checks import check_qkv
from anchor.kernels.fa4_blocks import KV_BLOCK, Q_BLOCK, FA4Blocks, blocks_from_index, index_fa4_problem
from anchor.kernels.lse_merge import lse_log2_to_natural, lse_natural_to_log2
from anchor.sparse_index import SparseIndex

FA4_VERSION = "4.0.0b36"
INSTALL_HINT = ('install it with `pip install -e ".[fa4]"` (CUDA machines; pins flash-attn-4=='
                f'{FA4_VERSION} and its CuTeDSL dependencies) or, on the GPU machine, stage the wheels '
                'as ../shared/gpu/README.md says (../shared/gpu/fa4-wheels.sh, then `source .fa4b/install.sh`)')
DENSE_ARCHS = (9, 10)   # compute capability majors: Hopper (sm90), Blackwell (sm100)
SPARSE_ARCHS = (9,)


@functools.lru_cache(maxsize=1)
def _import_problem() -> str | None:
    """``None`` if FA4 imports, else the import error as text (cached: imports once)."""
    try:
        import flash_attn.cute  # noqa: F401
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch  # noqa: F401
    except Exception as err:     # ImportError, or a CUDA/driver error raised while importing CuTeDSL
        return f"{type(err).__name__}: {err}"
    return None


def fa4_installed() -> bool:
    """True if ``flash_attn.cute`` (FA4) imports."""
    return _import_problem() is None


def _fa4_module():
    """``flash_attn.cute`` or an ``ImportError`` naming the extra."""
    problem = _import_problem()
    if problem is not None:
        raise ImportError(f"FlashAttention-4 (flash_attn.cute) is not importable ({problem}); {INSTALL_HINT}")
    import flash_attn.cute
    return flash_attn.cute


def _device_problem(device: torch.device, archs: tuple[int, ...]) -> str | None:
    """Why FA4 cannot run on ``device`` (CUDA with a compute capability major in ``archs``)."""
    if device.type != "cuda":
        return f"FA4 needs CUDA tensors, got {device.type}"
    major = torch.cuda.get_device_capability(device)[0]
    if major not in archs:
        return f"FA4 here needs compute capability major in {archs} (sm90 = 9), got {major}"
    return None


def _input_problem(q: torch.Tensor, max_head_dim: int) -> str | None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"FA4 needs fp16/bf16 inputs, got {q.dtype}"
    D = q.shape[-1]
    if D % 8 or not 8 <= D <= max_head_dim:
        return f"FA4 needs head_dim a multiple of 8 in [8, {max_head_dim}], got {D}"
    return None


def _dense_max_head_dim(device: torch.device) -> int:
    """sm90: head_dim up to 256; sm100: up to 128 (and 256, not offered here)."""
    return 256 if torch.cuda.get_device_capability(device)[0] == 9 else 128


def fa4_available(device: torch.device | str) -> bool:
    """True if FA4 is installed and ``device`` is a CUDA device it supports (sm90 / sm100)."""
    return _device_problem(torch.device(device), DENSE_ARCHS) is None and fa4_installed()


def fa4_dense_problem(q: torch.Tensor) -> str | None:
    """Why ``fa4_dense`` cannot run queries like ``q`` (device, dtype, head_dim, installed), or ``None``."""
    problem = _device_problem(q.device, DENSE_ARCHS)
    if problem is None and not fa4_installed():
        problem = f"FlashAttention-4 is not installed ({_import_problem()})"
    return problem or _input_problem(q, _dense_max_head_dim(q.device))


def fa4_sparse_problem(q: torch.Tensor, index: SparseIndex, k_len: int) -> str | None:
    """Why ``fa4_sparse_attention`` cannot run ``index`` on queries like ``q``, or ``None``
    (device sm90, fp16/bf16, head_dim <= 128, installed, index structure: ``index_fa4_problem``)."""
    problem = _device_problem(q.device, SPARSE_ARCHS)
    if problem is None and not fa4_installed():
        problem = f"FlashAttention-4 is not installed ({_import_problem()})"
    return problem or _input_problem(q, 128) or index_fa4_problem(index, k_len)


def _require(problem: str | None) -> None:
    if problem is None:
        return
    if problem.startswith("FlashAttention-4 is not installed"):
        raise ImportError(f"{problem}; {INSTALL_HINT}")
    raise ValueError(problem)


def fa4_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sm_scale: float | None = None,
              causal: bool = True, return_lse: bool = False):
    """FA4 attention (``flash_attn.cute.flash_attn_func``) on ``[B, H, N, D]`` tensors.

    Args:
        q: ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Lk, D]`` (GQA native, ``Lq <= Lk``), fp16/bf16, CUDA
            sm90/sm100. sm_scale: softmax scale (``None``: ``1 / sqrt(D)``).
        causal: bottom-right aligned causal mask (queries are the last ``Lq`` positions).

    Returns:
        ``out [B, Hq, Lq, D]`` (a view of FA4's ``[B, Lq, Hq, D]`` output), and with
        ``return_lse`` also ``lse [B, Hq, Lq]`` fp32 in natural-log units.
    Raises ``ValueError`` (device, dtype, head_dim) or ``ImportError`` (FA4 missing).
    """
    _, _, _, _, _, D = check_qkv(q, k, v)
    _require(fa4_dense_problem(q))
    scale = sm_scale if sm_scale is not None else D ** -0.5
    out, lse = _fa4_module().flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             softmax_scale=scale, causal=causal, return_lse=return_lse)
    out = out.transpose(1, 2)                                            # [B, Hq, Lq, D] view
    return (out, lse) if return_lse else out


def _check_blocks(blocks: FA4Blocks, B: int, Hq: int, Lq: int, Lk: int, device: torch.device) -> None:
    if (blocks.q_block, blocks.kv_block) != (Q_BLOCK, KV_BLOCK):
        raise ValueError(f"FA4 blocks must be {Q_BLOCK}x{KV_BLOCK}, got {blocks.q_block}x{blocks.kv_block}")
    b, h, M = blocks.mask_cnt.shape
    if M != math.ceil(Lq / Q_BLOCK) or b not in (1, B) or h not in (1, Hq):
        raise ValueError(f"block counts {tuple(blocks.mask_cnt.shape)} do not fit B={B}, Hq={Hq}, Lq={Lq}")
    for t in (blocks.mask_cnt, blocks.mask_idx, blocks.full_cnt, blocks.full_idx):
        if t.device != device or t.dtype != torch.int32:
            raise ValueError(f"block tensors must be int32 on {device}, got {t.dtype} on {t.device}")
    if blocks.full_cnt.shape != blocks.mask_cnt.shape or blocks.full_idx.shape != blocks.mask_idx.shape:
        raise ValueError("mask and full block tensors must have the same shapes")
    if blocks.mask_idx.shape[-1] > math.ceil(Lk / KV_BLOCK):
        raise ValueError(f"{blocks.mask_idx.shape[-1]} block slots > ceil({Lk} / {KV_BLOCK}) key blocks")


def fa4_block_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: FA4Blocks, *,
                     sm_scale: float | None = None, pack_gqa: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal FA4 attention of each 128-row query block over its listed 128-key blocks.

    Args:
        q: ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Lk, D]``; fp16/bf16, head_dim <= 128, CUDA sm90.
        blocks: ``FA4Blocks`` (``anchor.kernels.fa4_blocks``: ``blocks_from_index``,
            ``causal_blocks``, ``stage1_blocks``), shared (size-1 dims) or per batch / head.
        pack_gqa: FA4's GQA packing; ``None`` lets FA4 decide (it packs only when the lists are
            shared by all heads).

    Returns:
        ``(out [B, Hq, Lq, D], lse [B, Hq, Lq] fp32 natural log)``: attention over each row's
        listed keys at or before its position; rows with none give zeros and ``-inf``.
    """
    B, Hq, _, Lq, Lk, D = check_qkv(q, k, v)
    _require(_device_problem(q.device, SPARSE_ARCHS) or _input_problem(q, 128))
    _check_blocks(blocks, B, Hq, Lq, Lk, q.device)
    fa4 = _fa4_module()
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    tensors = BlockSparseTensorsTorch(mask_block_cnt=blocks.mask_cnt, mask_block_idx=blocks.mask_idx,
                                      full_block_cnt=blocks.full_cnt, full_block_idx=blocks.full_idx,
                                      block_size=(blocks.q_block, blocks.kv_block))
    scale = sm_scale if sm_scale is not None else D ** -0.5
    out, lse = fa4.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                                   causal=True, pack_gqa=pack_gqa, block_sparse_tensors=tensors, return_lse=True)
    return out.transpose(1, 2), lse


def fa4_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex, *,
                         sm_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``anchor.ops.sparse_attention`` (causal) on FA4: the same key sets, for an index of whole
    aligned 128-key tiles in lists of a multiple of 128 rows (``fa4_sparse_problem``).

    Returns ``(out [B, Hq, Lq, D], lse [B, Hq, Lq] fp32 natural log)`` (``anchor.ops`` returns
    log2 units: ``lse_natural_to_log2``). Raises ``ValueError`` / ``ImportError`` with the reason
    if FA4 cannot run it.
    """
    _, _, _, Lq, Lk, _ = check_qkv(q, k, v)
    _require(fa4_sparse_problem(q, index, Lk))
    return fa4_block_sparse(q, k, v, blocks_from_index(index, q_len=Lq, k_len=Lk), sm_scale=sm_scale)


__all__ = ["fa4_available", "fa4_installed", "fa4_dense", "fa4_dense_problem", "fa4_block_sparse",
           "fa4_sparse_attention", "fa4_sparse_problem", "lse_natural_to_log2", "lse_log2_to_natural"]
