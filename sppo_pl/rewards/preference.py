"""From oracle outputs to P_hat(y > pi_t | x), the win rate SPPO regresses on (paper eq. 4.7).

For K samples y_1..y_K ~ pi_t(. | x) the oracle gives a preference matrix P[i, j] = P(y_i > y_j | x), either
directly (a pairwise model) or from scalar scores (Bradley-Terry, or hard 0/1 comparisons for verifiers), and

    P_hat(y_i > pi_t | x) = (1/K) sum_j P(y_i > y_j | x)        (Wu et al. 2024, arXiv 2405.00675, eq. 4.7)

All functions are pure and batched over leading dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_float(scores: Tensor) -> Tensor:
    """Integer / bool scores (0/1 verifiers) as the default float dtype; float scores unchanged."""
    return scores if scores.is_floating_point() else scores.to(torch.get_default_dtype())


def _pairwise_diff(scores: Tensor) -> Tensor:
    """D[..., i, j] = s_i - s_j: [..., K] -> [..., K, K]."""
    scores = _as_float(scores)
    return scores.unsqueeze(-1) - scores.unsqueeze(-2)


def _check_square(pref: Tensor, min_k: int = 1) -> int:
    """K of a [..., K, K] preference matrix with K >= min_k, else a ValueError."""
    if pref.dim() < 2 or pref.size(-1) != pref.size(-2):
        raise ValueError(f"preference matrix must be [..., K, K], got shape {tuple(pref.shape)}")
    if pref.size(-1) < min_k:
        raise ValueError(f"a win rate needs K >= {min_k} samples per prompt, got K = {pref.size(-1)}")
    return pref.size(-1)


def bradley_terry(scores: Tensor, scale: float = 1.0) -> Tensor:
    """Bradley-Terry preferences from scalar scores: [..., K] -> [..., K, K].

    P[..., i, j] = sigmoid(scale * (s_i - s_j)); the diagonal is exactly 1/2. This is how the paper (and
    uclaml/SPPO) turns PairRM / reward-model scores into pairwise preferences.
    """
    return torch.sigmoid(scale * _pairwise_diff(scores))


def hard_preference(scores: Tensor) -> Tensor:
    """Hard preferences for 0/1 verifiers: [..., K] -> [..., K, K].

    P[..., i, j] = 1 if s_i > s_j, 0 if s_i < s_j, 1/2 if s_i = s_j (so the diagonal is 1/2).
    """
    diff = _pairwise_diff(scores)
    return (diff > 0).to(diff.dtype) + 0.5 * (diff == 0).to(diff.dtype)


def win_rate(pref: Tensor, include_self: bool = True) -> Tensor:
    """P_hat(y_i > pi_t | x) = mean_j P(y_i > y_j | x): [..., K, K] -> [..., K]   (paper eq. 4.7).

    The y_j are the K samples drawn from pi_t. ``include_self=True`` averages over all K of them, j = i
    included (its entry is 1/2), as uclaml/SPPO computes it; ``False`` averages over the K - 1 others.
    """
    k = _check_square(pref, min_k=2)
    if include_self:
        return pref.mean(dim=-1)
    diagonal = torch.diagonal(pref, dim1=-2, dim2=-1)
    return (pref.sum(dim=-1) - diagonal) / (k - 1)


def symmetrize(pref: Tensor) -> Tensor:
    """Average of both presentation orders of a pairwise model: [..., K, K] -> [..., K, K].

    S[i, j] = (P[i, j] + 1 - P[j, i]) / 2, so S[i, j] + S[j, i] = 1, with the diagonal set to exactly 1/2.
    """
    _check_square(pref)
    sym = (pref + 1 - pref.transpose(-1, -2)) / 2
    eye = torch.eye(pref.size(-1), dtype=torch.bool, device=pref.device)
    return sym.masked_fill(eye, 0.5)
