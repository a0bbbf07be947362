"""Statistics bookkeeping."""
import pytest
import torch

from anchor.stats import AttentionStats, causal_pair_count, dense_stats


@pytest.mark.parametrize("Lq,Lk", [(1, 1), (7, 7), (3, 10), (1, 5)])
def test_causal_pair_count_brute_force(Lq, Lk):
    rows = torch.arange(Lq)[:, None] + Lk - Lq
    assert causal_pair_count(Lq, Lk) == int((torch.arange(Lk)[None, :] <= rows).sum())


def test_density_sums_stages_and_keeps_heads():
    n = causal_pair_count(10, 10)
    stats = AttentionStats(pairs={"a": torch.tensor([[n, 0]]), "b": torch.tensor([[n // 5, n // 5]])},
                           causal_pairs=n)
    assert stats.density_per_head().tolist() == [[pytest.approx(1.2), pytest.approx(0.2)]]
    assert stats.density == pytest.approx(0.7)
    assert sum(stats.stage_density().values()) == pytest.approx(stats.density)
    assert dense_stats(2, 3, 4, 9, fallback=True).summary()["dense_fallback"] == 1
    with pytest.raises(ValueError):
        causal_pair_count(5, 4)
