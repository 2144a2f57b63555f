"""``reward=pairwise``: a PairRM-style pairwise preference model as the oracle."""

from __future__ import annotations

import torch

from sppo_pl.datamodule import samples_per_prompt
from sppo_pl.rewards.classifier import (
    PAIR_MARKERS,
    Classifier,
    ClassifierOracle,
    check_tokens,
    encode,
    pair_input_ids,
    position_limit,
    special_tokens,
)
from sppo_pl.rewards.preference import (
    bradley_terry,
    joint_scores,
    ordered_pairs,
    pair_logit_matrix,
    pairwise_preference,
)
from sppo_pl.types import Rollout


def check_mode(mode: str) -> str:
    """``reward.oracle.mode``: ``pairs`` or ``joint``."""
    if mode not in ("pairs", "joint"):
        raise ValueError(f"reward.oracle.mode must be 'pairs' or 'joint', got {mode!r}")
    return mode


class PairwiseOracle(ClassifierOracle):
    """A model that reads ``(prompt, response_a, response_b)`` and returns the log-odds l(a, b) that a wins.

    For each prompt's K samples it judges every ordered pair (``both_orders``, K (K - 1) inputs; else the
    K (K - 1) / 2 pairs i < j), all prompts' pairs in one batched pass, and averages both presentation
    orders: L[i, j] = (l(i, j) - l(j, i)) / 2. Then, by ``mode``:
    - ``pairs`` (default): P(y_i > y_j) = sigmoid(L[i, j]), each pair judged on its own;
    - ``joint``: PairRM's ranking as the original uclaml/SPPO used it, s_i = (2/K) sum_j L[i, j] (llm-blender's
      (1/K) sum_j (l(i, j) - l(j, i))) and P = sigmoid(s_i - s_j), which makes a pair's preference depend on
      the other candidates.
    The rollouts' ``scores`` are s_i (twice the mean log-odds of beating the others). There is no pointwise score, so
    validation logs ``val/win_rate`` against the starting policy (P(new > start) = sigmoid(L)) and no
    ``val/reward_mean``.
    """

    has_scores = False

    def __init__(
        self,
        model_path: str,
        mode: str = "pairs",
        both_orders: bool = True,
        batch_size: int = 32,
        max_prompt_tokens: int = 512,
        max_response_tokens: int = 512,
        markers: tuple[str, str, str] | list[str] = PAIR_MARKERS,
        dtype: str = "float32",
        device: str | None = None,
    ):
        check_mode(mode)
        if len(markers) != 3:
            raise ValueError(
                f"reward.oracle.markers must be 3 strings (source, candidate 1, candidate 2), got {markers}"
            )
        check_tokens("max_prompt_tokens", max_prompt_tokens)
        check_tokens("max_response_tokens", max_response_tokens)
        self.model = Classifier(model_path, dtype, device, batch_size)
        self.mode, self.both_orders, self.markers = mode, both_orders, list(markers)
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens

    def pair_logits(self, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        """l(a_n, b_n) for each n: [N] log-odds that a_n beats b_n, each text tokenized once."""
        tok = self.model.tokenizer
        texts = list(dict.fromkeys([*prompts, *a, *b]))
        ids = dict(zip(texts, encode(tok, texts)))
        marker_ids, special = encode(tok, self.markers), special_tokens(tok)
        limit = position_limit(self.model.model)
        inputs = [
            pair_input_ids(
                ids[x],
                ids[ya],
                ids[yb],
                marker_ids,
                special,
                self.max_prompt_tokens,
                self.max_response_tokens,
                limit,
            )
            for x, ya, yb in zip(prompts, a, b)
        ]
        return self.model.logits(inputs)

    def checked_pair_logits(self, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        """:meth:`pair_logits`, checked: a NaN or infinite log-odds (a broken checkpoint, an overflow in
        float16) is an error naming the oracle and the pair, before it turns P_hat and the loss into NaN."""
        logits = self.pair_logits(prompts, a, b)
        bad = (~torch.isfinite(logits)).nonzero()
        if len(bad):
            n = int(bad[0])
            raise ValueError(
                f"{self.source} gave a non-finite log-odds {logits[n].item()} for pair {n} of {len(logits)} "
                f"(prompt {prompts[n]!r:.80}, responses {a[n]!r:.60} and {b[n]!r:.60}); check the model's "
                "weights and reward.oracle.dtype (float16 can overflow)"
            )
        return logits

    def judge(self, rollouts: list[Rollout]) -> list[tuple[list[float], torch.Tensor]]:
        k = samples_per_prompt(rollouts)
        pairs = ordered_pairs(k, self.both_orders)
        logits = self.checked_pair_logits(
            [r.prompt for r in rollouts for _ in pairs],
            [r.responses[i] for r in rollouts for i, _ in pairs],
            [r.responses[j] for r in rollouts for _, j in pairs],
        )
        matrix = pair_logit_matrix(logits.double().view(len(rollouts), len(pairs)), pairs, k)
        scores = joint_scores(matrix)
        prefs = pairwise_preference(matrix) if self.mode == "pairs" else bradley_terry(scores)
        return [(s.tolist(), p) for s, p in zip(scores, prefs)]

    def compare(self, prompts, a, b, **fields):
        """P(a_n > b_n), both orders judged, on the scale training uses for two samples: sigmoid(L) with
        L = (l(a, b) - l(b, a)) / 2 in ``pairs`` mode; sigmoid(s_a - s_b) = sigmoid(2 L) = sigmoid(l(a, b) -
        l(b, a)) in ``joint`` mode (its K = 2 preference, and llm-blender's ``compare``)."""
        ab, ba = self.checked_pair_logits(prompts, a, b), self.checked_pair_logits(prompts, b, a)
        factor = 1.0 if self.mode == "joint" else 0.5
        return torch.sigmoid(factor * (ab.double() - ba.double())).tolist()
