"""MInference Vertical-Slash (methods/vertical_slash.py): kernel vs reference, dense limit,
brute-force selection and index, stats, pattern files."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from anchor.reference import dense_attention_reference
from anchor.stats import causal_pair_count
from methods import index_builders
from methods.index_builders import index_from_diagonals
from methods.registry import get_method
from methods.vertical_slash import VerticalSlash, load_pattern, vs_scores
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def make(backend="torch", **kw):
    args = dict(vertical_size=35, slash_size=55, pattern_file=None, block_size=16, last_q=64,
                sink_columns=4, local_diagonals=8, backend=backend)
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


def brute_keys(cols, offs, P0, P1, block):
    keys = set()
    for d in offs:
        keys |= {j for j in range(P0 - d, P0 - d + block) if 0 <= j <= P1}
    return keys | {j for j in cols if j <= P1}


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,dtype,block", [
    (2, 4, 1, 97, 97, torch.float32, 16),     # GQA 4, batch 2, odd length
    (1, 4, 4, 60, 101, torch.float16, 32),    # GQA 1, chunked prefill, fp16
])
def test_triton_matches_reference(B, Hq, Hkv, Lq, Lk, dtype, block):
    q, k, v = qkv(B, Hq, Hkv, Lq, Lk, dtype=dtype, seed=Lk)
    out, stats = make("triton", block_size=block)(q, k, v)
    ref32, ref_stats = make("torch", block_size=block)(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "vertical_slash triton vs reference")
    assert torch.equal(stats.pairs["sparse"], ref_stats.pairs["sparse"])


@pytest.mark.parametrize("Hq,Hkv,Lq,Lk", [(4, 4, 70, 70), (4, 1, 45, 90), (2, 2, 1, 33)])
def test_sizes_covering_everything_equal_dense(Hq, Hkv, Lq, Lk):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=5)
    out, stats = make(vertical_size=Lk, slash_size=Lk)(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.pairs["sparse"].eq(causal_pair_count(Lq, Lk)).all()


@pytest.mark.parametrize("Hq,Hkv,Lq,Lk,block,last_q", [(4, 1, 163, 163, 16, 64), (2, 2, 50, 231, 32, 20),
                                                       (4, 2, 180, 180, 16, 100)])
def test_selection_and_index_match_brute_force(tmp_path, Hq, Hkv, Lq, Lk, block, last_q):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=Lq)
    sizes = [(35 + 3 * h, 55 + 7 * h) for h in range(Hq)]               # per-head sizes from a pattern file
    pattern = tmp_path / "pattern.json"
    pattern.write_text(json.dumps([{}, {str(h): ["vertical_and_slash", vs, ss, 0.9] for h, (vs, ss) in
                                        enumerate(sizes)}]))
    method = make(pattern_file=str(pattern), block_size=block, last_q=last_q)
    scale = 16 ** -0.5
    vertical, slash = vs_scores(q, k, sm_scale=scale, last_q=last_q)
    want_v, want_s = brute_scores(q, k, scale, last_q)
    torch.testing.assert_close(vertical.double(), want_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slash.double(), want_s, rtol=1e-5, atol=1e-6)

    sel = method.select(q, k, layer_idx=1)
    index, pairs = index_from_diagonals(sel.offsets, sel.columns, sel.columns_valid, block=block,
                                        q_len=Lq, k_len=Lk)
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
                keys = brute_keys(cols, offs, P0, P1, block)
                assert set(got_keys[b, h, lst].nonzero().flatten().tolist()) == keys, (b, h, lst)
                expect_pairs += sum(P1 - max(j, P0) + 1 for j in keys)
            assert pairs[b, h] == expect_pairs

    out, stats = method(q, k, v, layer_idx=1)
    assert torch.equal(stats.pairs["sparse"], pairs)
    assert stats.pairs["estimate"].eq(min(last_q, Lq) * Lk).all()
    assert 0 < stats.stage_density()["sparse"] <= 1
    assert stats.causal_pairs == causal_pair_count(Lq, Lk) and stats.dense_fallback == 0
    assert out.shape == q.shape and not out.isnan().any()


def test_diagonal_runs_merge_and_clip():
    """Offsets 0, 1 (adjacent ranges merge), 40 (separate), 500 (before key 0: clipped away)."""
    offsets = torch.tensor([[[0, 1, 40, 500]]])
    cols = torch.tensor([[[3, 60, 70]]])
    index, _ = index_from_diagonals(offsets, cols, torch.ones_like(cols, dtype=torch.bool), block=16,
                                    q_len=80, k_len=80)
    mask = index.to_key_mask(80)[0, 0]
    # list 4 = rows 64..79: runs [63, 80) (offsets 0, 1) and [24, 40); column 60 outside them
    assert set(mask[4].nonzero().flatten().tolist()) == set(range(24, 40)) | set(range(63, 80)) | {3, 60}
    assert set(mask[0].nonzero().flatten().tolist()) == set(range(0, 16))   # 60, 70 after the list
    assert index.full_cnt[0, 0].tolist() == [1, 1, 1, 1, 1]              # the diagonal tile is whole
    for lst in range(5):                                                  # columns ascending per list
        lo, n = int(index.col_off[0, 0, lst]), int(index.col_cnt[0, 0, lst])
        ids = index.col_ids[lo:lo + n].tolist()
        assert ids == sorted(ids) and len(set(ids)) == n


def test_head_chunks_build_the_same_index(monkeypatch):
    q, k, _ = qkv(2, 4, 2, 150, 150, seed=6)
    sel = make().select(q, k)
    args = (sel.offsets, sel.columns, sel.columns_valid)
    whole, pairs = index_from_diagonals(*args, block=16, q_len=150, k_len=150)
    monkeypatch.setattr(index_builders, "ID_BUDGET", 1)                 # one head per chunk
    chunked, chunked_pairs = index_from_diagonals(*args, block=16, q_len=150, k_len=150)
    for field in ("full_off", "full_cnt", "full_ids", "col_off", "col_cnt", "col_ids"):
        assert torch.equal(getattr(whole, field), getattr(chunked, field)), field
    assert torch.equal(pairs, chunked_pairs)


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
        assert (built.sink_columns, built.local_diagonals) == (30, 100)
