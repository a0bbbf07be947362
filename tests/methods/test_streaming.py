"""StreamingLLM / A-shape (methods/streaming.py): kernel vs reference, dense limit, kept keys, stats."""
from __future__ import annotations

import pytest
import torch
import yaml

from anchor.reference import dense_attention_reference
from anchor.stats import causal_pair_count
from methods.index_builders import index_from_tile_mask
from methods.registry import get_method
from methods.streaming import Streaming, streaming_tile_mask
from tests.anchor.helpers import assert_close_to_baseline
from tests.methods.helpers import needs_triton, qkv


def brute_keys(Lq, Lk, block, global_window, local_window):
    """bool [n_lists, Lk]: the documented key set of every query block, restated key by key."""
    n_lists = -(-Lq // block)
    keep = torch.zeros(n_lists, Lk, dtype=torch.bool)
    for lst in range(n_lists):
        last = Lk - Lq + min((lst + 1) * block, Lq) - 1                 # position of the block's last row
        lo = max(0, last - local_window + 1)
        for j in range(last + 1):
            in_sink = (j // block) * block < global_window              # tile overlaps the sink
            in_window = j // block >= lo // block                       # tile overlaps [lo, last]
            keep[lst, j] = in_sink or in_window
    return keep


def visible_pairs(keys, Lq, Lk, block):
    """Causally visible (row, key) pairs of a per-list key mask [..., n_lists, Lk]."""
    rows = torch.arange(Lq)
    allowed = keys[..., rows // block, :] & (torch.arange(Lk)[None, :] <= (rows + Lk - Lq)[:, None])
    return allowed.sum((-1, -2))


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,dtype,block,G,W", [
    (2, 4, 1, 97, 97, torch.float32, 16, 20, 32),      # GQA 4, batch 2, odd length, sink not tile-aligned
    (1, 4, 4, 40, 101, torch.float16, 32, 32, 40),     # GQA 1, chunked prefill, fp16, partial last tile
])
def test_triton_matches_reference(B, Hq, Hkv, Lq, Lk, dtype, block, G, W):
    q, k, v = qkv(B, Hq, Hkv, Lq, Lk, dtype=dtype, seed=Lq)
    kw = dict(global_window=G, local_window=W, block_size=block)
    out, stats = Streaming(**kw, backend="triton")(q, k, v)
    ref32, ref_stats = Streaming(**kw, backend="torch")(q.float(), k.float(), v.float())
    assert_close_to_baseline(out, ref32, "streaming triton vs reference")
    assert torch.equal(stats.pairs["sparse"], ref_stats.pairs["sparse"])


@pytest.mark.parametrize("Hq,Hkv,Lq,Lk", [(4, 4, 53, 53), (4, 1, 30, 77), (8, 2, 1, 40)])
def test_windows_covering_everything_equal_dense(Hq, Hkv, Lq, Lk):
    q, k, v = qkv(2, Hq, Hkv, Lq, Lk, seed=3)
    out, stats = Streaming(global_window=0, local_window=Lk, block_size=16, backend="torch")(q, k, v)
    torch.testing.assert_close(out, dense_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.density == 1.0 and stats.dense_fallback == 0


@pytest.mark.parametrize("Lq,Lk,block,G,W", [(97, 97, 16, 20, 32), (40, 101, 32, 32, 40), (70, 70, 16, 0, 16),
                                             (33, 200, 16, 100, 50)])
def test_kept_keys_match_brute_force(Lq, Lk, block, G, W):
    q, k, v = qkv(2, 4, 2, Lq, Lk, seed=1)
    method = Streaming(global_window=G, local_window=W, block_size=block, backend="torch")
    n_lists = -(-Lq // block)
    tiles = streaming_tile_mask(n_lists, block=block, global_window=G, local_window=W, q_len=Lq, k_len=Lk,
                                device=q.device)
    index, pairs = index_from_tile_mask(tiles.expand(2, 4, *tiles.shape), tile=block, rows_per_list=block,
                                        q_len=Lq, k_len=Lk)
    want = brute_keys(Lq, Lk, block, G, W)
    last = Lk - Lq + torch.clamp(torch.arange(1, n_lists + 1) * block, max=Lq) - 1
    got = index.to_key_mask(Lk) & (torch.arange(Lk)[None, :] <= last[:, None])   # diagonal tiles run past
    assert torch.equal(got, want.expand(2, 4, *want.shape))
    assert torch.equal(pairs, visible_pairs(want, Lq, Lk, block).expand(2, 4))

    # the method's output is attention restricted to exactly those keys, and its stats count them
    out, stats = method(q, k, v)
    rows = torch.arange(Lq)
    allowed = want[rows // block] & (torch.arange(Lk)[None, :] <= (rows + Lk - Lq)[:, None])
    kf = k.repeat_interleave(2, 1)
    vf = v.repeat_interleave(2, 1)
    probs = (q @ kf.transpose(-1, -2) * 16 ** -0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, probs @ vf, rtol=1e-5, atol=1e-5)
    assert set(stats.pairs) == {"sparse"} and stats.dense_fallback == 0
    assert stats.causal_pairs == causal_pair_count(Lq, Lk)
    assert 0 < stats.density <= 1


def test_configs_build(repo_root):
    for name, window in [("streaming", 8192), ("streaming_longbench", 1024)]:
        cfg = yaml.safe_load((repo_root / "conf" / "method" / f"{name}.yaml").read_text())
        method = get_method(cfg)
        assert isinstance(method, Streaming)
        assert (method.global_window, method.local_window, method.block_size) == (1024, window, 128)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="block_size"):
        Streaming(global_window=4, local_window=8, block_size=24, backend="auto")
    with pytest.raises(ValueError, match="backend"):
        Streaming(global_window=4, local_window=8, block_size=16, backend="cuda")
    with pytest.raises(ValueError, match="local_window"):
        Streaming(global_window=4, local_window=0, block_size=16, backend="auto")


def test_stats_extras():
    """FlexPrefill's streaming op reports no ratio; windows covering every visible tile are degenerate."""
    method = Streaming(global_window=16, local_window=32, block_size=16, backend="torch")
    q, k, v = qkv(1, 2, 1, 63, 63, seed=1)                               # last row 62: window from key 31, tile 1
    assert method(q, k, v)[1].extra == {"degenerate_dense": 1.0}
    q, k, v = qkv(1, 2, 1, 64, 64, seed=1)                               # last row 63: window from tile 2
    assert method(q, k, v)[1].extra == {"degenerate_dense": 0.0}
