"""P_hat(y > pi_t | x) from scores and preference matrices, checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from sppo_pl.rewards.preference import bradley_terry, hard_preference, p_hat, symmetrize

# sigmoid(1) = 0.7310586, sigmoid(2) = 0.8807971, sigmoid(3) = 0.9525741; sigmoid(-x) = 1 - sigmoid(x)
S1, S2, S3 = 0.7310585786300049, 0.8807970779778823, 0.9525741268224334


def test_bradley_terry_by_hand():
    p = bradley_terry(torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64))
    # P[i, j] = sigmoid(s_i - s_j): differences [[0, -1, -3], [1, 0, -2], [3, 2, 0]]
    want = [[0.5, 1 - S1, 1 - S3], [S1, 0.5, 1 - S2], [S3, S2, 0.5]]
    torch.testing.assert_close(p, torch.tensor(want, dtype=torch.float64))
    # include self: row means; row 0 = (0.5 + 0.2689414 + 0.0474259) / 3 = 0.2721224
    torch.testing.assert_close(
        p_hat(p), torch.tensor([0.2721224, 0.4500872, 0.7777904], dtype=torch.float64), atol=1e-7, rtol=0
    )


def test_bradley_terry_scale():
    # scale 2 on scores [0, 0.5]: sigmoid(2 * -0.5) = sigmoid(-1) = 1 - 0.7310586
    p = bradley_terry(torch.tensor([0.0, 0.5], dtype=torch.float64), scale=2.0)
    torch.testing.assert_close(p, torch.tensor([[0.5, 1 - S1], [S1, 0.5]], dtype=torch.float64))


def test_hard_preference_and_win_rate_by_hand():
    p = hard_preference(torch.tensor([1.0, 0.0, 1.0]))
    assert p.tolist() == [[0.5, 1.0, 0.5], [0.0, 0.5, 0.0], [0.5, 1.0, 0.5]]
    # include self: (0.5 + 1 + 0.5) / 3 = 2/3, (0 + 0.5 + 0) / 3 = 1/6, (0.5 + 1 + 0.5) / 3 = 2/3
    torch.testing.assert_close(p_hat(p), torch.tensor([2 / 3, 1 / 6, 2 / 3]))
    # exclude self: (1 + 0.5) / 2 = 0.75, (0 + 0) / 2 = 0, (0.5 + 1) / 2 = 0.75
    torch.testing.assert_close(p_hat(p, include_self=False), torch.tensor([0.75, 0.0, 0.75]))


def test_hard_preference_accepts_integer_and_bool_scores():
    want = [[0.5, 1.0], [0.0, 0.5]]
    assert hard_preference(torch.tensor([1, 0])).tolist() == want
    assert hard_preference(torch.tensor([True, False])).tolist() == want
    assert hard_preference(torch.tensor([1, 0])).dtype == torch.get_default_dtype()


def test_win_rate_is_batched():
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # [1, 0]: (0.5 + 1) / 2, (0 + 0.5) / 2; all tie: 1/2 each
    assert p_hat(hard_preference(scores)).tolist() == [[0.75, 0.25], [0.5, 0.5]]
    assert p_hat(hard_preference(scores), include_self=False).tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_symmetrize_averages_both_orders():
    p = torch.tensor([[0.9, 0.8], [0.4, 0.1]])
    # off-diagonal: (0.8 + 1 - 0.4) / 2 = 0.7 and (0.4 + 1 - 0.8) / 2 = 0.3; diagonal forced to 1/2
    s = symmetrize(p)
    torch.testing.assert_close(s, torch.tensor([[0.5, 0.7], [0.3, 0.5]]))
    torch.testing.assert_close(s + s.T, torch.ones(2, 2))


def test_symmetrize_keeps_a_consistent_matrix():
    p = bradley_terry(torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(symmetrize(p), p)


def test_one_sample_wins_half_against_itself_and_is_undefined_without_itself():
    assert p_hat(hard_preference(torch.tensor([[1.0]]))).tolist() == [[0.5]]
    with pytest.raises(ValueError, match="K >= 2"):
        p_hat(torch.tensor([[0.5]]), include_self=False)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\[\.\.\., K, K\]"):
        p_hat(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[\.\.\., K, K\]"):
        p_hat(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[\.\.\., K, K\]"):
        symmetrize(torch.zeros(4, 2, 3))
