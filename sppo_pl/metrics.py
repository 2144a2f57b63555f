"""Evaluation metrics over n sampled responses per prompt: mean@n and pass@k."""

from __future__ import annotations

import math

import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt from ``n`` samples of which ``c`` are correct (Chen et al. 2021, eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the chance that at least one of k samples drawn without replacement from the n is correct.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= correct <= n, got correct={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sample_metrics(scores: torch.Tensor, verifier: bool, pass_at: list[int]) -> dict[str, float]:
    """Metrics of ``scores`` [P, n], the oracle's scores of n samples for each of P prompts.

    A verifier (scores 1 correct / 0 wrong) gets ``mean@n``, the mean accuracy of a sample, and ``pass@k`` for
    each k in ``pass_at``, averaged over prompts. Other oracles get ``reward_mean@n``, the mean score.
    """
    if scores.dim() != 2 or scores.numel() == 0:
        raise ValueError(f"scores must be [prompts, samples], got shape {tuple(scores.shape)}")
    n = scores.shape[1]
    if not verifier:
        return {f"reward_mean@{n}": float(scores.float().mean())}
    if not torch.all((scores == 0) | (scores == 1)):
        raise ValueError("a verifier's scores must be 0 or 1")
    correct = scores.sum(dim=1).long().tolist()
    out = {f"mean@{n}": float(scores.float().mean())}
    for k in pass_at:
        out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(correct)
    return out


def greedy_metrics(scores: list[float], verifier: bool) -> dict[str, float]:
    """``acc`` (verifier) or ``reward_mean``: the mean score of the greedy responses."""
    if not scores:
        raise ValueError("no greedy scores")
    return {"acc" if verifier else "reward_mean": sum(scores) / len(scores)}
