"""From oracle outputs to P_hat(y > pi_t | x), what SPPO regresses on (paper eq. 4.7).

Words: P_hat is the probability of beating the current policy pi_t (the samples of the same iteration);
"win rate" is kept for beating the starting policy (``val/win_rate``, the eval's ``win_rate``).

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
        raise ValueError(f"P_hat needs K >= {min_k} samples per prompt, got K = {pref.size(-1)}")
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


def p_hat(pref: Tensor, include_self: bool = True) -> Tensor:
    """P_hat(y_i > pi_t | x) = mean_j P(y_i > y_j | x): [..., K, K] -> [..., K]   (paper eq. 4.7).

    The y_j are the K samples drawn from pi_t. ``include_self=True`` averages over all K of them, j = i
    included (its entry is 1/2), as uclaml/SPPO computes it; ``False`` averages over the K - 1 others. With
    one sample (verl's recipe samples one response per prompt and trains on scores) P_hat including
    itself is 1/2, and without itself undefined.
    """
    k = _check_square(pref, min_k=1 if include_self else 2)
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


def ordered_pairs(k: int, both_orders: bool = True) -> list[tuple[int, int]]:
    """The (i, j) pairs a pairwise model judges among K candidates: all i != j, or only i < j.

    Row-major order, so [(0, 1), (0, 2), ..., (1, 0), ...] for ``both_orders``.
    """
    return [(i, j) for i in range(k) for j in range(k) if (i != j if both_orders else i < j)]


def pair_logit_matrix(logits: Tensor, pairs: list[tuple[int, int]], k: int) -> Tensor:
    """Log-odds L[i, j] that y_i beats y_j, from a pairwise model's outputs: [..., len(pairs)] -> [..., K, K].

    ``logits[..., n]`` is the model's log-odds for candidate ``pairs[n][0]`` presented first against
    ``pairs[n][1]``. With both orders judged, L[i, j] = (l(i, j) - l(j, i)) / 2 (both orders averaged in
    log-odds, so L[j, i] = -L[i, j]); with one order, L[j, i] = -l(i, j). The diagonal is 0.
    """
    out = logits.new_zeros(*logits.shape[:-1], k, k)
    for n, (i, j) in enumerate(pairs):
        out[..., i, j] += logits[..., n]
        out[..., j, i] -= logits[..., n]
    judged = torch.zeros(k, k, dtype=logits.dtype, device=logits.device)
    for i, j in pairs:
        judged[i, j] += 1
        judged[j, i] += 1
    return out / judged.clamp(min=1)


def pairwise_preference(logit_matrix: Tensor) -> Tensor:
    """P(y_i > y_j | x) judged pair by pair: sigmoid(L[i, j]), [..., K, K] -> [..., K, K].

    Each entry depends only on the two candidates it compares (and the prompt); P[i, j] + P[j, i] = 1.
    """
    return torch.sigmoid(logit_matrix)


def joint_scores(logit_matrix: Tensor) -> Tensor:
    """PairRM's ranking scores from a log-odds matrix: s_i = (2/K) sum_j L[i, j], [..., K, K] -> [..., K].

    With both orders judged, L = (M - M^T) / 2 for the one-order logits M[i, j] = l(y_i, y_j), so s_i =
    (1/K) sum_j (M[i, j] - M[j, i]), the diagonal counted as 0: llm-blender's ``rank(..., return_scores=True)``
    (``get_scores_from_cmps``), which uclaml/SPPO fed into sigmoid(s_i - s_j). Unlike
    :func:`pairwise_preference`, sigmoid(s_i - s_j) then depends on every other candidate in the group.
    """
    k = _check_square(logit_matrix, min_k=2)
    return 2 * logit_matrix.sum(dim=-1) / k


def weighted_mean(values: Tensor, weights: list[float]) -> Tensor:
    """sum_m w_m values[m] / sum_m w_m: [M, ...] -> [...]. Weights are finite, >= 0, with a positive sum.

    A weighted mean of preference matrices is again one (P[i, j] + P[j, i] = 1 is kept), and since
    P_hat is a row mean, the mixed P_hat is the same weighted mean of the oracles' P_hat.
    """
    w = torch.tensor(weights, dtype=values.dtype, device=values.device)
    if w.numel() != values.size(0):
        raise ValueError(f"got {w.numel()} weights for {values.size(0)} oracles")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and with a positive sum, got {weights}")
    return torch.tensordot(w, values, dims=1) / w.sum()
