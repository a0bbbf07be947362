"""``index_from_diagonals`` (methods/index_builders.py) against a brute-force construction: same
tiles, columns, key sets and pair counts for both run roundings (``upstream`` ported line by line
from MInference's ``convert_vertical_slash_indexes``), and the sparse kernel on its indices."""
from __future__ import annotations

import math

import pytest
import torch

import methods.index_builders as builders
from anchor.reference import sparse_attention_reference
from methods.index_builders import (
    RUN_ROUNDINGS,
    attend,
    index_from_diagonals,
    index_from_tile_mask,
    index_pair_counts,
    resolve_attend_backend,
)
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def brute_keys(offsets, columns, valid, P0, P1, block):
    """Keys of one list under exact rounding: every diagonal's ``[P0 - d, P0 - d + block)`` plus the
    valid columns, within ``[0, P1]``."""
    keys = {j for d in offsets for j in range(P0 - d, P0 - d + block) if 0 <= j <= P1}
    return keys | {c for c, ok in zip(columns, valid) if ok and c <= P1}


def upstream_runs(offsets, P0, block):
    """The slash loop of MInference's ``convert_vertical_slash_indexes`` for the block whose first
    row is ``P0`` (``end_m = P0 + block``, offsets sorted descending, ``s_idx`` = range end):
    runs ``[start, end)``."""
    end_m = P0 + block
    runs = []
    for d in sorted(set(offsets), reverse=True):
        if d >= end_m:                                  # while (s_idx >= end_m) skip
            continue
        s_idx = max(end_m - d, block)
        if not runs:
            runs.append([s_idx - block, s_idx])
        elif s_idx > runs[-1][1] + block:               # save_blocks, open a new range
            runs.append([s_idx - block, s_idx])
        elif s_idx > runs[-1][1]:
            runs[-1][1] += block
    return runs


def expected_entries(rounding, offsets, columns, valid, P0, P1, block, k_len):
    """``(tile starts, columns)`` of one list, built key by key: runs become tiles from their first
    key; ``exact``: a run's last ``length % block`` keys are columns; ``upstream``: rounded runs,
    tiles starting after ``P1`` dropped, a tile passing ``k_len`` stored as its keys up to ``P1``."""
    tiles, tails = [], []
    if rounding == "exact":
        slash = sorted({j for d in offsets for j in range(P0 - d, P0 - d + block) if 0 <= j <= P1})
        runs = []
        for j in slash:                                 # maximal intervals of the union
            if runs and runs[-1][1] == j:
                runs[-1][1] += 1
            else:
                runs.append([j, j + 1])
        for a, b in runs:
            n = (b - a) // block
            tiles += [a + i * block for i in range(n)]
            tails += list(range(a + n * block, b))
    else:
        runs = upstream_runs(offsets, P0, block)
        for a, e in runs:
            for t in range(a, min(e, P1 + 1), block):
                if t + block <= k_len:
                    tiles.append(t)
                else:
                    tails += list(range(t, P1 + 1))
    kept = {c for c, ok in zip(columns, valid) if ok and c <= P1 and not any(a <= c < e for a, e in runs)}
    return tiles, sorted(kept | set(tails)), len(kept)


def list_bounds(lst, block, q_len, k_len):
    """Absolute positions of the first and last row of list ``lst``."""
    return k_len - q_len + lst * block, k_len - q_len + min((lst + 1) * block, q_len) - 1


def list_args(offsets, columns, valid, b, h, lst, block, q_len, k_len):
    """``(offsets, columns, valid, P0, P1, block)`` of list ``lst`` of head ``(b, h)`` as Python values."""
    return (offsets[b, h].tolist(), columns[b, h].tolist(), valid[b, h].tolist(),
            *list_bounds(lst, block, q_len, k_len), block)


def covered(tiles, cols, block):
    """Keys of whole tiles (``block`` keys from each start) and columns."""
    return {j for t in tiles for j in range(t, t + block)} | set(cols)


def list_entries(index, b, h, lst):
    """``(tile starts, columns)`` of one list as Python lists."""
    lo, n = int(index.full_off[b, h, lst]), int(index.full_cnt[b, h, lst])
    tiles = (index.full_ids[lo:lo + n].long() * index.tile_unit).tolist()
    lo, n = int(index.col_off[b, h, lst]), int(index.col_cnt[b, h, lst])
    return tiles, index.col_ids[lo:lo + n].tolist()


def make_case(B, H, q_len, k_len, S, V, max_step, seed):
    """Random diagonals (``max_step > 0``: arithmetic progressions of offsets with steps in
    ``[1, max_step]``) and columns (some invalid); offset 0 (the main diagonal) in every head but
    the last."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, k_len, (B, H, S), generator=g)
    if max_step:       # S // 5 progressions: steps < block merge; larger ones leave gaps below a block
        n = max(1, S // 5)
        steps = torch.randint(1, max_step + 1, (B, H, n), generator=g)
        i = torch.arange(S)
        offsets = (offsets[..., i % n] + (i // n) * steps[..., i % n]).clamp(max=k_len - 1)
    offsets[..., :-1, 0] = 0
    columns = torch.stack([torch.randperm(k_len, generator=g)[:V] for _ in range(B * H)]).reshape(B, H, V)
    valid = torch.rand(B, H, V, generator=g) < 0.8
    return offsets, columns, valid


CASES = {                                          # B, H, Lq, Lk, block, S, V, max_step
    "isolated-unaligned": (1, 1, 200, 200, 16, 5, 6, 0),
    "long-runs": (1, 2, 300, 300, 16, 25, 10, 8),
    "gappy-runs": (1, 3, 250, 250, 16, 30, 10, 24),
    "gqa-batch2-odd-len": (2, 3, 137, 137, 32, 12, 9, 8),
    "chunked-prefill": (2, 2, 45, 203, 16, 9, 12, 0),
    "chunked-long-runs": (1, 2, 70, 250, 16, 30, 8, 8),
    "chunked-gappy-end": (1, 3, 100, 171, 32, 20, 8, 44),
    "single-row": (1, 2, 1, 33, 16, 4, 5, 0),
}


@pytest.mark.parametrize("rounding", RUN_ROUNDINGS)
@pytest.mark.parametrize("case", CASES)
def test_index_matches_brute_force(case, rounding):
    B, H, Lq, Lk, block, S, V, max_step = CASES[case]
    offsets, columns, valid = make_case(B, H, Lq, Lk, S, V, max_step, seed=len(case))
    index, pairs = index_from_diagonals(offsets, columns, valid, block=block, q_len=Lq, k_len=Lk,
                                        rounding=rounding)
    assert (index.tile, index.tile_unit, index.rows_per_list) == (block, 1, block)
    assert torch.equal(pairs, index_pair_counts(index, Lq, Lk))
    mask = index.to_key_mask(Lk)
    assert torch.equal(index.keys_per_list(), mask.sum(-1))           # no key twice
    for b in range(B):
        for h in range(H):
            expect_pairs = 0
            for lst in range(math.ceil(Lq / block)):
                args = list_args(offsets, columns, valid, b, h, lst, block, Lq, Lk)
                P0, P1 = args[3:5]
                want_tiles, want_cols, n_kept = expected_entries(rounding, *args, Lk)
                tiles, cols = list_entries(index, b, h, lst)
                assert (tiles, cols) == (want_tiles, want_cols), (b, h, lst)
                keys = {j for j in covered(tiles, cols, block) if j <= P1}
                assert set(mask[b, h, lst, :P1 + 1].nonzero().flatten().tolist()) == keys
                if rounding == "exact":
                    assert keys == brute_keys(*args)
                elif P1 <= Lk - block:                                   # whole runs, no tail columns
                    assert index.col_cnt[b, h, lst] == n_kept
                expect_pairs += sum(P1 - max(j, P0) + 1 for j in keys)
                assert all(0 <= t <= P1 and t + block <= Lk for t in tiles)
            assert pairs[b, h] == expect_pairs


def test_upstream_rounding_changes_the_index():
    """The cases above exercise what distinguishes the roundings: more keys, fewer columns."""
    for case in ("long-runs", "gappy-runs", "chunked-gappy-end"):
        B, H, Lq, Lk, block, S, V, max_step = CASES[case]
        args = make_case(B, H, Lq, Lk, S, V, max_step, seed=len(case))
        up, up_pairs = index_from_diagonals(*args, block=block, q_len=Lq, k_len=Lk, rounding="upstream")
        ex, ex_pairs = index_from_diagonals(*args, block=block, q_len=Lq, k_len=Lk, rounding="exact")
        assert (up_pairs >= ex_pairs).all() and (up_pairs > ex_pairs).any(), case
        assert up.col_ids.numel() < ex.col_ids.numel(), case


@pytest.mark.parametrize("rounding,want_tiles,n_cols", [
    # 3 in lists 1..8 (list 0: [-3, 13) -> [0, 16)), 40 in lists 2..9, 77 in lists 4..9 (both from
    # [0, 16) in their first list); list 9 (rows 144..149): offset 3's tile [141, 157) passes key
    # 150 and is stored as columns 141..149.
    ("upstream", 9 + 8 + 6, 9),
    # tiles: 3 in lists 1..8, 40 in lists 3..9, 77 in lists 5..9; columns: 3 in lists 0 ([0, 13))
    # and 9 ([141, 150)), 40 in list 2 ([0, 8)), 77 in list 4 ([0, 3))
    ("exact", 8 + 7 + 5, 13 + 9 + 8 + 3),
])
def test_isolated_unaligned_slashes_are_whole_tiles(rounding, want_tiles, n_cols):
    """Offsets 3, 40, 77 (isolated, unaligned for 16-row lists): one unaligned tile per slash, no
    columns, except where a range crosses key 0 or the last key."""
    offsets = torch.tensor([[[77, 3, 40]]])
    cols = torch.tensor([[[0]]])
    index, _ = index_from_diagonals(offsets, cols, torch.zeros_like(cols, dtype=torch.bool), block=16,
                                    q_len=150, k_len=150, rounding=rounding)
    for lst in range(5, 9):                        # P0 = 16 * lst >= 77: nothing clipped
        P0 = 16 * lst
        assert list_entries(index, 0, 0, lst) == ([P0 - 77, P0 - 40, P0 - 3], []), lst
    assert list_entries(index, 0, 0, 9) == ([67, 104], list(range(141, 150)))
    first = ([0], []) if rounding == "upstream" else ([], list(range(13)))
    assert list_entries(index, 0, 0, 0) == first
    assert int(index.full_cnt.sum()) == want_tiles and index.col_ids.numel() == n_cols


def masked_dense(q, k, v, keys, block, scale):
    """fp64 attention of every row over the brute-force key set of its list (``keys[b][h][lst]``);
    rows with no key give zeros, as in the kernel."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    allowed = torch.zeros(B, Hq, Lq, Lk, dtype=torch.bool)
    for b in range(B):
        for h in range(Hq):
            for i in range(Lq):
                allowed[b, h, i, sorted(j for j in keys[b][h][i // block] if j <= Lk - Lq + i)] = True
    kk = k.double().repeat_interleave(Hq // Hkv, 1)                     # [B, Hq, Lk, D]
    vv = v.double().repeat_interleave(Hq // Hkv, 1)
    scores = (q.double() @ kk.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1).nan_to_num(0.0) @ vv


@needs_triton
@pytest.mark.parametrize("case,Hq,dtype,rounding", [("chunked-long-runs", 4, torch.float32, "exact"),
                                                    ("gqa-batch2-odd-len", 6, torch.float16, "exact"),
                                                    ("gappy-runs", 6, torch.float32, "upstream"),
                                                    ("chunked-gappy-end", 6, torch.float16, "upstream")])
def test_kernel_on_diagonal_index_matches_reference(case, Hq, dtype, rounding):
    """The Triton kernel on the unaligned-tile index equals the reference and masked dense attention
    over the brute-force key sets (GQA: 2 or 3 query heads per KV head, so the index is built for
    query heads)."""
    B, H, Lq, Lk, block, S, V, max_step = CASES[case]
    offsets, columns, valid = make_case(B, Hq, Lq, Lk, S, V, max_step, seed=len(case))
    offsets[..., 0] = 0                            # every row attends a key
    index, _ = index_from_diagonals(offsets, columns, valid, block=block, q_len=Lq, k_len=Lk, rounding=rounding)
    assert index.full_cnt.sum() > 0 and index.col_cnt.sum() > 0
    q, k, v = qkv(B, Hq, H, Lq, Lk, D=32, dtype=dtype, seed=1)
    out = attend(q, k, v, index, sm_scale=0.2, backend="triton")
    ref32 = attend(q.float(), k.float(), v.float(), index, sm_scale=0.2, backend="torch")
    assert_close_to_baseline(out, ref32, "sparse kernel on a diagonal index vs reference")
    keys = [[[covered(*expected_entries(rounding, *list_args(offsets, columns, valid, b, h, lst, block, Lq, Lk),
                                        Lk)[:2], block)
              for lst in range(math.ceil(Lq / block))] for h in range(Hq)] for b in range(B)]
    dense = masked_dense(q, k, v, keys, block, 0.2)
    assert_close_to_baseline(out, dense.float(), "sparse kernel on a diagonal index vs masked dense")


def test_attend_routes_whole_tile_indexes_to_fa4(monkeypatch):
    """Backend selection (no GPU here): ``fa4`` forced on CPU fails with the reason; ``auto`` runs
    FA4 exactly where it reports no problem; ``torch`` / ``triton`` stay forced."""
    q, k, v = qkv(1, 4, 2, 200, 330, D=16)
    tiles = torch.rand(1, 4, 2, 3, generator=torch.Generator().manual_seed(0)) < 0.6
    index, _ = index_from_tile_mask(tiles, tile=128, rows_per_list=128, q_len=200, k_len=330)
    ref = sparse_attention_reference(q, k, v, index, sm_scale=0.2)
    with pytest.raises(ValueError, match="FA4 needs CUDA"):
        attend(q, k, v, index, sm_scale=0.2, backend="fa4")
    torch.testing.assert_close(attend(q, k, v, index, sm_scale=0.2, backend="auto"), ref)
    assert resolve_attend_backend("auto", q, k, index) == "torch"
    assert resolve_attend_backend("triton", q, k, index) == "triton"
    calls = []

    def fake_fa4(q, k, v, index, *, sm_scale):
        calls.append(sm_scale)
        return sparse_attention_reference(q, k, v, index, sm_scale=sm_scale), None
    monkeypatch.setattr(builders, "fa4_sparse_problem", lambda q, index, k_len: None)
    monkeypatch.setattr(builders, "fa4_sparse_attention", fake_fa4)
    torch.testing.assert_close(attend(q, k, v, index, sm_scale=0.2, backend="auto"), ref)
    assert resolve_attend_backend("auto", q, k, index) == "fa4"
    attend(q, k, v, index, sm_scale=0.2, backend="torch")
    assert calls == [0.2]
    monkeypatch.setattr(builders, "fa4_sparse_problem", lambda q, index, k_len: "tile 64")
    attend(q, k, v, index, sm_scale=0.2, backend="auto")
    assert calls == [0.2]
