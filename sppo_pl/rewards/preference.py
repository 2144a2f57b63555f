"""From oracle outputs to P_hat(y > pi_t | x), the win rate SPPO regresses on (paper eq. 4.7)."""

from __future__ import annotations

import torch
from torch import Tensor


def bradley_terry(scores: Tensor, scale: float = 1.0) -> Tensor:
    """P[..., i, j] = sigmoid(scale (s_i - s_j)) for scalar scores [..., K] -> [..., K, K]."""
    return torch.sigmoid(scale * (scores.unsqueeze(-1) - scores.unsqueeze(-2)))


def hard_preference(scores: Tensor) -> Tensor:
    """P[..., i, j] = 1 if s_i > s_j, 0 if s_i < s_j, 1/2 on ties: [..., K] -> [..., K, K] (0/1 verifiers)."""
    diff = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    return (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)


def win_rate(pref: Tensor, include_self: bool = True) -> Tensor:
    """P_hat(y_i > pi_t | x) = mean_j P(y_i > y_j | x): [..., K, K] -> [..., K].

    The y_j are the K samples from pi_t. ``include_self`` keeps j = i (its entry is 1/2), as uclaml/SPPO
    averages; ``False`` averages over the K - 1 others.
    """
    if pref.dim() < 2 or pref.size(-1) != pref.size(-2):
        raise ValueError(f"preference matrix must be [..., K, K], got shape {tuple(pref.shape)}")
    k = pref.size(-1)
    if k < 2:
        raise ValueError("win rate needs K >= 2 samples per prompt")
    if include_self:
        return pref.mean(-1)
    off = pref - torch.diag_embed(torch.diagonal(pref, dim1=-2, dim2=-1))
    return off.sum(-1) / (k - 1)


def symmetrize(pref: Tensor) -> Tensor:
    """(P + 1 - P^T) / 2 with an exact 1/2 diagonal: the average of both presentation orders."""
    sym = (pref + 1 - pref.transpose(-1, -2)) / 2
    eye = torch.eye(pref.size(-1), dtype=torch.bool, device=pref.device)
    return sym.masked_fill(eye, 0.5)
