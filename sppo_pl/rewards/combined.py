"""``reward=combined``: a weighted combination of several oracles, itself one oracle."""

from __future__ import annotations

import math

import torch

from sppo_pl.rewards.oracle import Oracle
from sppo_pl.rewards.preference import weighted_mean
from sppo_pl.types import Rollout


class CombinedOracle(Oracle):
    """P(y_i > y_j) = sum_m w_m P_m(y_i > y_j) / sum_m w_m over the oracles m, so P_hat is the same weighted
    mean of the oracles' P_hat; scores are the weighted mean of their scores.

    ``oracles`` maps names to oracles (Hydra ``_target_`` nodes); ``weights`` maps the same names to weights
    >= 0 (default 1). It has pointwise scores when every oracle has them; it is never a verifier (a mix's
    mean score is no accuracy: read the verifier's own accuracy from its rollouts).
    """

    def __init__(self, oracles: dict[str, Oracle], weights: dict[str, float] | None = None):
        if not oracles:
            raise ValueError("reward.oracle.oracles must name at least one oracle")
        weights = dict(weights or {})
        unknown = set(weights) - set(oracles)
        if unknown:
            raise ValueError(
                f"reward.oracle.weights names {sorted(unknown)}, not in reward.oracle.oracles {sorted(oracles)}"
            )
        self.names = list(oracles)
        self.oracles = [oracles[n] for n in self.names]
        self.weights = [weights.get(n, 1.0) for n in self.names]
        numbers = all(isinstance(w, int | float) and not isinstance(w, bool) for w in self.weights)
        if not numbers or not all(0 <= w < math.inf for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                "reward.oracle.weights must be finite numbers >= 0 with a positive sum, got "
                f"{dict(zip(self.names, self.weights))}"
            )
        self.weights = [float(w) for w in self.weights]
        self.has_scores = all(o.has_scores for o in self.oracles)

    def place(self, device):
        for o in self.oracles:
            o.place(device)

    def score(self, prompts, responses, **fields):
        per = [o.checked_score(prompts, responses, **fields) for o in self.oracles]
        return weighted_mean(torch.tensor(per, dtype=torch.float64), self.weights).tolist()

    def judge(self, rollouts: list[Rollout]) -> list[tuple[list[float], torch.Tensor]]:
        per = [o.judge(rollouts) for o in self.oracles]  # [M][R] of (scores, pref)
        out = []
        for r in range(len(rollouts)):
            scores = weighted_mean(torch.tensor([p[r][0] for p in per], dtype=torch.float64), self.weights)
            pref = weighted_mean(torch.stack([p[r][1].double() for p in per]), self.weights)
            out.append((scores.tolist(), pref))
        return out

    def compare(self, prompts, a, b, **fields):
        per = [o.compare(prompts, a, b, **fields) for o in self.oracles]
        return weighted_mean(torch.tensor(per, dtype=torch.float64), self.weights).tolist()
