"""SparseIndex construction and round trip."""
import pytest
import torch

from anchor.sparse_index import SparseIndex, index_from_counts


def test_key_mask_round_trip_and_tiles():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 3, 4, 70, generator=g) < 0.4
    mask[0, 0, 1, 16:32] = True                  # a whole tile
    mask[1, 2, 3, :] = True                      # a whole list (last tile partial: 64..69)
    index = SparseIndex.from_key_mask(mask, tile=16, rows_per_list=32)
    assert torch.equal(index.to_key_mask(70), mask)
    assert index.full_cnt[0, 0, 1] >= 1
    assert index.full_cnt[1, 2, 3] == 4 and index.col_cnt[1, 2, 3] == 6
    assert torch.equal(index.keys_per_list(), mask.sum(-1))
    # offsets are exclusive prefix sums in (b, h, list) order; ids ascend within a list
    flat = index.col_cnt.reshape(-1).long()
    assert torch.equal(index.col_off.reshape(-1), torch.cumsum(flat, 0) - flat)
    start, n = int(index.col_off[1, 1, 2]), int(index.col_cnt[1, 1, 2])
    ids = index.col_ids[start:start + n]
    assert torch.all(ids[1:] > ids[:-1])


def test_index_from_counts_sizes_buffers_exactly():
    full = torch.tensor([[[1, 0], [2, 3]]], dtype=torch.int32)
    cols = torch.tensor([[[5, 0], [0, 7]]], dtype=torch.int32)
    index = index_from_counts(full, cols, tile=16, rows_per_list=64)
    assert index.full_ids.numel() == 6 and index.col_ids.numel() == 12
    assert index.full_off.tolist() == [[[0, 1], [1, 3]]]
    assert index.col_off.tolist() == [[[0, 5], [5, 5]]]


def test_unaligned_tiles_key_mask():
    """``tile_unit = 1``: ``full_ids`` are first keys; aligned ids are the default elsewhere."""
    full = torch.tensor([[[2, 1]]], dtype=torch.int32)
    cols = torch.tensor([[[1, 2]]], dtype=torch.int32)
    index = index_from_counts(full, cols, tile=4, rows_per_list=16, tile_unit=1)
    index.full_ids.copy_(torch.tensor([3, 9, 1]))                 # list 0: keys 3..6, 9..12; list 1: 1..4
    index.col_ids.copy_(torch.tensor([14, 0, 7]))
    mask = index.to_key_mask(15)[0, 0]
    assert mask[0].nonzero().flatten().tolist() == [3, 4, 5, 6, 9, 10, 11, 12, 14]
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 7]
    assert index.keys_per_list().tolist() == [[[9, 6]]]
    assert index_from_counts(full, cols, tile=4, rows_per_list=16).tile_unit == 4
    assert SparseIndex.from_key_mask(mask[None, None], tile=4, rows_per_list=16).tile_unit == 4
    with pytest.raises(ValueError, match="tile_unit"):
        index_from_counts(full, cols, tile=4, rows_per_list=16, tile_unit=2)
