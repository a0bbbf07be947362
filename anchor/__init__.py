"""AnchorAttention: difference-aware stripe-sparse prefill attention (Triton kernels + references)."""
from anchor.ops import anchor_attention, selection_key_mask, sparse_attention
from anchor.params import AnchorParams
from anchor.reference import anchor_attention_reference, anchor_selection_reference, dense_attention_reference
from anchor.sparse_index import SparseIndex
from anchor.stats import AttentionStats

__all__ = ["anchor_attention", "sparse_attention", "selection_key_mask", "AnchorParams",
           "anchor_attention_reference", "anchor_selection_reference", "dense_attention_reference",
           "SparseIndex", "AttentionStats"]
