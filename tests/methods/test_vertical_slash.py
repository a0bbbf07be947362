"""MInference Vertical-Slash (methods/vertical_slash.py): kernel vs reference, dense limit,
brute-force selection and index (both run roundings), attended keys, stats, pattern files."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from anchor.reference import dense_attention_reference
from anchor.stats import causal_pair_count
from methods import index_builders
from methods.index_builders import RUN_ROUNDINGS, index_from_diagonals, index_pair_counts
from methods.registry import get_method
from methods.vertical_slash import VerticalSlash, load_pattern, vs_scores
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv
from tests.methods.test_index_builders import covered, expected_entries, list_entries


def make(backend="torch", **kw):
    args = dict(vertical_size=35, slash_size=55, pattern_file=None, block_size=16, last_q=64,
                sink_columns=4, local_diagonals=8, run_rounding="upstream", backend=backend)
    args.update(kw)
    return VerticalSlash(**args)


def brute_scores(q, k, scale, last_q):
    """float64 vertical [B, Hq, Lk] and slash-by-offset [B, Hq, Lk], one head and row at a time."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    lq = min(last_q, Lq)
    vertical = torch.zeros(B, Hq, Lk, dtype=torch.float64)
    slash = torch.zeros(B, Hq, Lk, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kk = k[b, h // (Hq // Hkv)].double()
            for i in range(lq):
                pos = Lk - lq + i
                p = ((kk[: pos + 1] @ q[b, h, Lq - lq + i].double()) * scale).softmax(0)
                vertical[b, h, : pos + 1] += p
                for j in range(pos + 1):
                    slash[b, h, pos - j] += p[j]
    return vertical, slash


def top_set(scores, n, forced):
    """Indices of the ``n`` best scores with the first ``forced`` always first (no ties elsewhere)."""
    rank = sorted(range(len(scores)), key=lambda j: (j >= forced, -scores[j]))
    return set(rank[:n])


def brute_keys(rounding, cols, offs, P0, P1, block, k_len):
    """Keys of one list at or before ``P1``: ``exact``, the union of the diagonals' ranges and the
    columns; ``upstream``, MInference's rounded runs (``expected_entries``)."""
    if rounding == "upstream":
        tiles, columns, _ = expected_entries(rounding, offs, cols, [True] * len(cols), P0, P1, block, k_len)
        return {j for j in covered(tiles, columns, block) if j <= P1}
    keys = set()
    for d in offs:
        keys |= {j for j in range(P0 - d, P0 - d + block) if 0 <= j <= P1}
    return keys | {j for j in cols if j <= P1}


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,dtype,block,rounding", [
    (2, 4, 1, 97, 97, torch.float32, 16, "upstream"),     # GQA 4, batch 2, odd length
    (1, 4, 4, 60, 101, torch.float16, 32, "upstream"),    # GQA 1, chunked prefill, fp16
    (2, 4, 1, 97, 97, torch.float32, 16, "exact"),
])
def test_triton_matches_reference(B, Hq, Hkv, Lq, Lk, dtype, block, rounding):
    q, k, v = qkv(B, Hq, Hkv, Lq, Lk, dtype=dtype, seed=Lk)
    out, stats = make("triton", block_size=block, run_rounding=rounding)(q, k, v)
    ref32, ref_stats = make("torch", block_size=block, run_rounding=rounding)(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "vertical_slash triton vs reference")
    assert torch.equal(stats.pairs["sparse"], ref_stats.pairs["sparse"])


@pytest.mark.parametrize("rounding", RUN_ROUNDINGS)
@pytest.mark.parametrize("Hq,Hkv,Lq,Lk", [(4, 4, 70, 70), (4, 1, 45, 90), (2, 2, 1, 33)])
def test_sizes_covering_everything_equal_dense(Hq, Hkv, Lq, Lk, rounding):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=5)
    out, stats = make(vertical_size=Lk, slash_size=Lk, run_rounding=rounding)(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.pairs["sparse"].eq(causal_pair_count(Lq, Lk)).all()


@pytest.mark.parametrize("rounding", RUN_ROUNDINGS)
@pytest.mark.parametrize("Hq,Hkv,Lq,Lk,block,last_q", [(4, 1, 163, 163, 16, 64), (2, 2, 50, 231, 32, 20),
                                                       (4, 2, 180, 180, 16, 100)])
def test_selection_and_index_match_brute_force(tmp_path, Hq, Hkv, Lq, Lk, block, last_q, rounding):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=Lq)
    sizes = [(35 + 3 * h, 55 + 7 * h) for h in range(Hq)]               # per-head sizes from a pattern file
    pattern = tmp_path / "pattern.json"
    pattern.write_text(json.dumps([{}, {str(h): ["vertical_and_slash", vs, ss, 0.9] for h, (vs, ss) in
                                        enumerate(sizes)}]))
    method = make(pattern_file=str(pattern), block_size=block, last_q=last_q, run_rounding=rounding)
    scale = 16 ** -0.5
    vertical, slash = vs_scores(q, k, sm_scale=scale, last_q=last_q)
    want_v, want_s = brute_scores(q, k, scale, last_q)
    torch.testing.assert_close(vertical.double(), want_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slash.double(), want_s, rtol=1e-5, atol=1e-6)

    sel = method.select(q, k, layer_idx=1)
    index, pairs = index_from_diagonals(sel.offsets, sel.columns, sel.columns_valid, block=block,
                                        q_len=Lq, k_len=Lk, rounding=rounding)
    got_keys = index.to_key_mask(Lk)
    n_lists = math.ceil(Lq / block)
    for b in range(2):
        for h in range(Hq):
            cols = top_set(want_v[b, h].tolist(), min(Lk, sizes[h][0]), 4)
            offs = top_set(want_s[b, h].tolist(), min(Lk, sizes[h][1]), 8)
            assert set(sel.columns[b, h][sel.columns_valid[b, h]].tolist()) == cols
            assert set(sel.offsets[b, h][sel.offsets_valid[b, h]].tolist()) == offs
            expect_pairs = 0
            for lst in range(n_lists):
                P0 = Lk - Lq + lst * block
                P1 = Lk - Lq + min((lst + 1) * block, Lq) - 1
                keys = brute_keys(rounding, sorted(cols), sorted(offs), P0, P1, block, Lk)
                assert set(got_keys[b, h, lst, :P1 + 1].nonzero().flatten().tolist()) == keys, (b, h, lst)
                expect_pairs += sum(P1 - max(j, P0) + 1 for j in keys)
            assert pairs[b, h] == expect_pairs

    out, stats = method(q, k, v, layer_idx=1)
    assert torch.equal(stats.pairs["sparse"], pairs)
    assert stats.pairs["estimate"].eq(min(last_q, Lq) * Lk).all()
    assert 0 < stats.stage_density()["sparse"] <= 1
    assert stats.causal_pairs == causal_pair_count(Lq, Lk) and stats.dense_fallback == 0
    assert out.shape == q.shape and not out.isnan().any()


@pytest.mark.parametrize("rounding,want_tiles,want_cols", [
    # upstream: list 1's ranges [15, 31) + [16, 32) round to [15, 47); offset 40 crosses key 0 in list 2
    # ([-8, 8) -> [0, 16), taking column 3); list 4's tile at 79 would pass key 80: column 79
    ("upstream", [[0], [15, 31], [0, 31, 47], [8, 47, 63], [24, 63]], [[], [3], [], [3], [3, 60, 79]]),
    # exact: whole tiles from each run's first key plus its last (length % 16) keys as columns
    ("exact", [[0], [15], [31], [8, 47], [24, 63]],
     [[], [3, 31], [0, 1, 2, 3, 4, 5, 6, 7, 47], [3, 63], [3, 60, 79]]),
])
def test_diagonal_runs_merge_and_clip(rounding, want_tiles, want_cols):
    """Offsets 0, 1 (adjacent ranges merge), 40 (separate), 500 (before key 0: dropped); 16-row lists."""
    offsets = torch.tensor([[[0, 1, 40, 500]]])
    cols = torch.tensor([[[3, 60, 70]]])
    index, pairs = index_from_diagonals(offsets, cols, torch.ones_like(cols, dtype=torch.bool), block=16,
                                        q_len=80, k_len=80, rounding=rounding)
    mask = index.to_key_mask(80)[0, 0]
    # list 4 = rows 64..79: runs [63, 80) (offsets 0, 1) and [24, 40); column 60 outside them
    assert set(mask[4].nonzero().flatten().tolist()) == set(range(24, 40)) | set(range(63, 80)) | {3, 60}
    assert set(mask[0, :16].nonzero().flatten().tolist()) == set(range(0, 16))   # 60, 70 after the list
    assert index.tile_unit == 1 and index.tile == 16
    assert [list_entries(index, 0, 0, lst) for lst in range(5)] == list(zip(want_tiles, want_cols))
    assert torch.equal(pairs, index_pair_counts(index, 80, 80))


@pytest.mark.parametrize("rounding,want", [
    ("upstream", ([18, 34, 50], [])),
    ("exact", ([18, 42], [34, 35, 36, 37, 38, 40, 58, 59, 60, 61, 62, 63])),
])
def test_upstream_run_takes_ranges_up_to_its_rounded_end(rounding, want):
    """Offsets 30, 25, 6, 0 in the list of rows 48..63: exact runs [18, 39) and [42, 64). Upstream
    rounds the first to [18, 50), so [42, 58) joins it across the gap (and column 40 is inside),
    giving [18, 66): three whole tiles, no columns."""
    offsets = torch.tensor([[[0, 6, 25, 30]]])
    cols = torch.tensor([[[40]]])
    index, _ = index_from_diagonals(offsets, cols, torch.ones_like(cols, dtype=torch.bool), block=16,
                                    q_len=80, k_len=80, rounding=rounding)
    assert list_entries(index, 0, 0, 3) == want


@pytest.mark.parametrize("rounding", RUN_ROUNDINGS)
def test_head_chunks_build_the_same_index(monkeypatch, rounding):
    q, k, _ = qkv(2, 4, 2, 150, 150, seed=6)
    sel = make().select(q, k)
    args = (sel.offsets, sel.columns, sel.columns_valid)
    whole, pairs = index_from_diagonals(*args, block=16, q_len=150, k_len=150, rounding=rounding)
    monkeypatch.setattr(index_builders, "TABLE_BUDGET", 1)                 # one head per chunk
    chunked, chunked_pairs = index_from_diagonals(*args, block=16, q_len=150, k_len=150, rounding=rounding)
    for field in ("full_off", "full_cnt", "full_ids", "col_off", "col_cnt", "col_ids"):
        assert torch.equal(getattr(whole, field), getattr(chunked, field)), field
    assert chunked.tile_unit == 1 and torch.equal(pairs, chunked_pairs)


@pytest.mark.parametrize("rounding", RUN_ROUNDINGS)
def test_attended_is_what_the_kernel_attends(rounding):
    """``attended`` rows equal the brute-force key sets (visible part), and attention masked to them
    equals the method's output; GQA, chunked prefill, lengths not multiples of the block."""
    q, k, v = qkv(1, 4, 2, 70, 101, seed=3)
    method = make(run_rounding=rounding)
    out, _ = method(q, k, v)
    sel = method.select(q, k)
    att = method.attended(q, k, v)
    rows = torch.arange(70)
    for h in range(4):
        mask = att.row_mask(0, h, rows)                                  # [70, 101]
        cols = sel.columns[0, h][sel.columns_valid[0, h]].tolist()
        offs = sel.offsets[0, h][sel.offsets_valid[0, h]].tolist()
        for lst in range(5):
            P0, P1 = 31 + 16 * lst, min(31 + 16 * lst + 15, 100)
            keys = brute_keys(rounding, cols, offs, P0, P1, 16, 101)
            for row in range(P0, P1 + 1):
                assert set(mask[row - 31].nonzero().flatten().tolist()) == {j for j in keys if j <= row}, (h, row)
        kk, vv = k[0, h // 2], v[0, h // 2]                              # [101, 16]
        scores = (q[0, h] @ kk.T * 16 ** -0.5).masked_fill(~mask, float("-inf"))
        torch.testing.assert_close(out[0, h], scores.softmax(-1) @ vv, rtol=1e-5, atol=1e-5)


def test_pattern_file_rules(tmp_path, repo_root):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"0": ["vertical_and_slash", 100, 800, 0.9]},
                                {"1": ["vertical_and_slash", 30, 50, 1]}]))
    assert load_pattern(path) == [{0: (100, 800)}, {1: (30, 50)}]
    method = make(pattern_file=str(path), vertical_size=7, slash_size=9)
    v, s = method.head_sizes(3, 0)
    assert v.tolist() == [100, 7, 7] and s.tolist() == [800, 9, 9]  # missing heads use the yaml sizes
    with pytest.raises(ValueError, match="layer_idx"):
        method.head_sizes(3, None)
    with pytest.raises(ValueError, match="head 1"):
        method.head_sizes(1, 1)
    path.write_text(json.dumps([{"0": ["stream_llm", 100, 800, 0.9]}]))
    with pytest.raises(ValueError, match="stream_llm"):
        load_pattern(path)
    for name, slash in [("vertical_slash", 8192), ("vertical_slash_longbench", 1024)]:
        cfg = yaml.safe_load((repo_root / "conf" / "method" / f"{name}.yaml").read_text())
        built = get_method(cfg)
        assert (built.vertical_size, built.slash_size, built.block_size, built.last_q) == (1024, slash, 64, 64)
        assert (built.sink_columns, built.local_diagonals, built.run_rounding) == (30, 100, "upstream")
    with pytest.raises(ValueError, match="run rounding"):
        make(run_rounding="round")


def test_stats_extras():
    """MInference reports no ratio; every head keeping all diagonals (slash_size >= Lk) is degenerate."""
    q, k, v = qkv(1, 2, 1, 55, 55, seed=2)
    assert make()(q, k, v)[1].extra == {"degenerate_dense": 1.0}        # slash 55 >= 55
    q, k, v = qkv(1, 2, 1, 56, 56, seed=2)
    assert make()(q, k, v)[1].extra == {"degenerate_dense": 0.0}
