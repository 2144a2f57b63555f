"""``reward=reward_model``: a scalar reward model (sequence-classification head) as the oracle."""

from __future__ import annotations

import torch

from callbacks.reward import RewardCallback
from sppo_pl.rewards.classifier import Classifier, reward_input_ids
from sppo_pl.rewards.preference import bradley_terry


class ClassifierReward(RewardCallback):
    """An oracle that runs a sequence classifier (``self.model``, a :class:`Classifier`): a reward model or a
    pairwise model."""

    def __init__(
        self, model_path: str, dtype: str, device: str | None, batch_size: int, include_self: bool = True
    ):
        super().__init__(include_self)
        self.model = Classifier(model_path, dtype, device, batch_size)

    def place(self, device):
        """The classifier runs on ``device`` unless it was given one (``reward.device``)."""
        self.model.device = self.model.device or str(device)


class RewardModelReward(ClassifierReward):
    """Scores s = RM(prompt, response); preferences by Bradley-Terry, P(y_i > y_j) = sigmoid(scale (s_i - s_j)).

    The input is the reward model's own chat template of the user and assistant turns (plain text without
    one), cut to its last ``max_length`` tokens; batches of ``batch_size``, sorted by length.
    """

    def __init__(
        self,
        model_path: str,
        batch_size: int = 16,
        max_length: int = 2048,
        scale: float = 1.0,
        dtype: str = "float32",
        device: str | None = None,
        include_self: bool = True,
    ):
        super().__init__(model_path, dtype, device, batch_size, include_self)
        self.max_length, self.scale = max_length, scale

    def score(self, prompts, responses, **fields):
        tok = self.model.tokenizer
        ids = [reward_input_ids(tok, x, y, self.max_length) for x, y in zip(prompts, responses)]
        return self.model.logits(ids).tolist()

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        return bradley_terry(scores, self.scale)
