"""Sequence-classification models as oracles: a scalar reward model, or a PairRM-style pairwise model.

Both are Hugging Face ``AutoModelForSequenceClassification`` checkpoints with one output (``num_labels=1``):
- a reward model reads ``(prompt, response)`` and returns a score s; preferences are Bradley-Terry,
  P(y_i > y_j | x) = sigmoid(s_i - s_j);
- a pairwise model reads ``(prompt, response_a, response_b)`` laid out as PairRM does
  (``<|source|> x <|candidate1|> a <|candidate2|> b``) and returns the log-odds that a beats b.

Inputs are token ids built here, each text tokenized once and cut to its own budget (PairRM truncates the
prompt and each candidate separately), then run in batches sorted by length so padding stays small.
transformers is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sppo_pl.rewards.oracle import Oracle
from sppo_pl.rewards.preference import bradley_terry

PAIR_MARKERS = ("<|source|>", "<|candidate1|>", "<|candidate2|>")


def load_classifier(path: str, dtype: str = "float32", device: str | torch.device = "cpu"):
    """(model, tokenizer) of a one-output sequence classifier at ``path`` (directory or hub name), in eval mode.

    A missing pad token becomes the EOS token, so batches can be padded; the model's pooling (last
    non-pad token) reads the same id.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path}: an oracle model needs one output (num_labels=1), got num_labels={model.config.num_labels}"
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (e.g. [CLS] ... [SEP], or BOS ...)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for s in range(len(full) - len(bare) + 1):
        if full[s : s + len(bare)] == bare:
            return full[:s], full[s + len(bare) :]
    return [], []


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def reward_input_ids(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """One (prompt, response) input of a reward model: the chat template of a user turn and an assistant
    turn if the tokenizer has one, else ``prompt`` + newline + ``response``; the last ``max_length`` tokens
    (the end of the response is what the model is trained to pool)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(f"{prompt}\n{response}")["input_ids"]
    return ids[-max_length:]


def pair_input_ids(
    prompt_ids: list[int],
    a_ids: list[int],
    b_ids: list[int],
    marker_ids: Sequence[list[int]],
    special: tuple[list[int], list[int]],
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> list[int]:
    """One pairwise input, PairRM's layout: ``[pre] <source> x <candidate1> a <candidate2> b [post]``.

    The prompt keeps its last ``max_prompt_tokens`` tokens (the question is usually at the end); each
    candidate keeps its first ``max_response_tokens``.
    """
    src, c1, c2 = marker_ids
    pre, post = special
    return [
        *pre,
        *src,
        *prompt_ids[-max_prompt_tokens:],
        *c1,
        *a_ids[:max_response_tokens],
        *c2,
        *b_ids[:max_response_tokens],
        *post,
    ]


@torch.no_grad()
def classifier_logits(model, inputs: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """The model's single logit for each input: N lists of ids -> [N] float32 on the CPU.

    Inputs are sorted by length and right-padded within each batch of ``batch_size``; the result is in
    the original order. Padding does not change a logit (the model pools its last non-pad token).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    order = sorted(range(len(inputs)), key=lambda n: len(inputs[n]))
    out = torch.empty(len(inputs), dtype=torch.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(inputs[n]) for n in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, n in enumerate(idx):
            ids[row, : len(inputs[n])] = torch.tensor(inputs[n])
            mask[row, : len(inputs[n])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out[idx] = logits[:, 0].float().cpu()
    return out


class Classifier:
    """A one-output sequence classifier loaded on first use, on ``device`` (set by the oracle's ``setup``
    to the policy's device when not given)."""

    def __init__(self, path: str, dtype: str = "float32", device: str | None = None, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"reward.oracle.batch_size must be >= 1, got {batch_size}")
        self.path, self.dtype, self.device, self.batch_size = path, dtype, device, batch_size
        self._loaded = None

    @property
    def tokenizer(self):
        return self._load()[1]

    def _load(self):
        if self._loaded is None:
            self._loaded = load_classifier(self.path, self.dtype, self.device or "cpu")
        return self._loaded

    def logits(self, inputs: list[list[int]]) -> torch.Tensor:
        model, tokenizer = self._load()
        return classifier_logits(model, inputs, tokenizer.pad_token_id, self.batch_size)


class ClassifierOracle(Oracle):
    """An oracle that runs a model (``self.model``, e.g. a :class:`Classifier`) with a settable ``device``."""

    model: Classifier

    def place(self, device):
        """The model runs on ``device`` unless it was given one (``reward.oracle.device``)."""
        self.model.device = self.model.device or str(device)


class RewardModelOracle(ClassifierOracle):
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
    ):
        self.model = Classifier(model_path, dtype, device, batch_size)
        self.max_length, self.scale = max_length, scale

    def score(self, prompts, responses, **fields):
        tok = self.model.tokenizer
        ids = [reward_input_ids(tok, x, y, self.max_length) for x, y in zip(prompts, responses)]
        return self.model.logits(ids).tolist()

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        return bradley_terry(scores, self.scale)
