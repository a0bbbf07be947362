"""Offline attention metrics: each against a direct computation."""
import math

import pytest
import torch

from benchmarks.analysis.metrics import mass_recall, output_recall, relative_error
from methods.base import AttendedSet, causal_attended


def _probs(q, k, sm_scale):
    """Dense causal softmax ``[B, Hq, Lq, Lk]`` (GQA by index), queries the last Lq positions."""
    group = q.shape[1] // k.shape[1]
    kk = k[:, torch.arange(q.shape[1]) // group].float()
    s = q.float() @ kk.transpose(-1, -2) * sm_scale
    lq, lk = q.shape[2], k.shape[2]
    mask = torch.arange(lk)[None, :] > (torch.arange(lq) + lk - lq)[:, None]
    return s.masked_fill(mask, float("-inf")).softmax(-1)


def test_mass_recall_matches_direct_sum_and_is_one_for_dense():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 37, 8), torch.randn(2, 2, 45, 8)
    dense = mass_recall(q, k, causal_attended(37, 45), 0.3, chunk=16)
    assert torch.allclose(dense, torch.ones(2, 4, dtype=torch.float64))
    even = AttendedSet(n_keys=45, row_mask=lambda b, h, rows: (torch.arange(45) % 2 == 0).expand(len(rows), 45))
    expected = _probs(q, k, 0.3)[..., ::2].sum(-1).mean(-1).double()       # [B, Hq]
    assert torch.allclose(mass_recall(q, k, even, 0.3, chunk=16), expected, atol=1e-6)


def test_output_recall_counts_elements_within_tolerance():
    ref = torch.zeros(1, 1, 2, 2)
    out = torch.tensor([[[[0.0, 0.02], [0.004, -0.009]]]])
    assert output_recall(out, ref, 0.01) == 0.75 and output_recall(out, ref, 0.005) == 0.5


def test_relative_error_is_the_frobenius_ratio_and_rejects_other_ranks():
    torch.manual_seed(1)
    ref, out = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    assert relative_error(out, ref) == pytest.approx(float((out - ref).norm() / ref.norm()), rel=1e-5)
    assert relative_error(ref, ref) == 0.0
    head = relative_error(out[:, 1:2], ref[:, 1:2])
    assert head == pytest.approx(float((out[:, 1] - ref[:, 1]).norm() / ref[:, 1].norm()), rel=1e-5)
    with pytest.raises(ValueError, match=r"\[B, H, N, D\]"):
        relative_error(out[:, 1], ref[:, 1])                              # a [B, N, D] slice
    assert not math.isnan(relative_error(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)))
