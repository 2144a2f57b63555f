"""P_hat(y > pi_t | x) from scores and preference matrices, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sppo_pl.rewards.preference import bradley_terry, hard_preference, symmetrize, win_rate


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_by_hand():
    p = bradley_terry(torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64))
    want = [[0.5, sig(-1), sig(-3)], [sig(1), 0.5, sig(-2)], [sig(3), sig(2), 0.5]]
    torch.testing.assert_close(p, torch.tensor(want, dtype=torch.float64))


def test_hard_preference_and_win_rate_by_hand():
    p = hard_preference(torch.tensor([1.0, 0.0, 1.0]))
    assert p.tolist() == [[0.5, 1.0, 0.5], [0.0, 0.5, 0.0], [0.5, 1.0, 0.5]]
    # include self: row means (0.5 + 1 + 0.5) / 3, (0 + 0.5 + 0) / 3, ...
    torch.testing.assert_close(win_rate(p), torch.tensor([2 / 3, 1 / 6, 2 / 3]))
    # exclude self: (1 + 0.5) / 2, (0 + 0) / 2, (0.5 + 1) / 2
    torch.testing.assert_close(win_rate(p, include_self=False), torch.tensor([0.75, 0.0, 0.75]))


def test_win_rate_is_batched():
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert win_rate(hard_preference(scores)).tolist() == [[0.75, 0.25], [0.5, 0.5]]


def test_symmetrize_averages_both_orders():
    p = torch.tensor([[0.9, 0.8], [0.4, 0.1]])
    # off-diagonal: (0.8 + 1 - 0.4) / 2 = 0.7 and (0.4 + 1 - 0.8) / 2 = 0.3; diagonal forced to 1/2
    torch.testing.assert_close(symmetrize(p), torch.tensor([[0.5, 0.7], [0.3, 0.5]]))


def test_bad_shapes():
    with pytest.raises(ValueError, match="K >= 2"):
        win_rate(torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match=r"\[\.\.\., K, K\]"):
        win_rate(torch.zeros(2, 3))
