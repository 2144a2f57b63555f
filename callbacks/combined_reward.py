"""``reward=combined``: a weighted combination of several oracles, itself one oracle."""

from __future__ import annotations

import torch

from callbacks.reward import RewardCallback
from sppo_pl.rewards.preference import weighted_mean
from sppo_pl.types import Rollout


class CombinedReward(RewardCallback):
    """P(y_i > y_j) = sum_m w_m P_m(y_i > y_j) / sum_m w_m over the oracles m, so P_hat is the same weighted
    mean of the oracles' win rates; scores are the weighted mean of their scores.

    ``oracles`` maps names to reward callbacks (Hydra ``_target_`` nodes, instantiated with this one and not
    registered with the trainer themselves); ``weights`` maps the same names to weights >= 0 (default 1).
    ``val/reward_mean`` is logged when every oracle has pointwise scores; ``val/acc`` never (a mix is not a
    verifier: read the verifier's own accuracy from its rollouts).
    """

    def __init__(
        self,
        oracles: dict[str, RewardCallback],
        weights: dict[str, float] | None = None,
        include_self: bool = True,
    ):
        super().__init__(include_self)
        if not oracles:
            raise ValueError("reward.oracles must name at least one oracle")
        weights = dict(weights or {})
        unknown = set(weights) - set(oracles)
        if unknown:
            raise ValueError(
                f"reward.weights names {sorted(unknown)}, not in reward.oracles {sorted(oracles)}"
            )
        self.names = list(oracles)
        self.oracles = [oracles[n] for n in self.names]
        self.weights = [float(weights.get(n, 1.0)) for n in self.names]
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                f"reward.weights must be >= 0 with a positive sum, got {dict(zip(self.names, self.weights))}"
            )
        self.has_scores = all(o.has_scores for o in self.oracles)

    def setup(self, trainer, pl_module, stage):
        for o in self.oracles:  # the oracles' own hooks (a user's may do more than place its model)
            o.setup(trainer, pl_module, stage)

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
