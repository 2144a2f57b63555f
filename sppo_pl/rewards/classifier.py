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

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from sppo_pl.rewards.oracle import Oracle
from sppo_pl.rewards.preference import bradley_terry

T = TypeVar("T")

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


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` [B, T] right-padded with ``pad_id`` to the longest sequence, and ``attention_mask`` [B, T]."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, x in enumerate(seqs):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return ids, mask


def batched_by_length(
    items: Sequence[T],
    length: Callable[[T], int],
    batch_size: int,
    run_batch: Callable[[list[T]], torch.Tensor],
) -> torch.Tensor:
    """``run_batch`` over the items sorted by ``length``, ``batch_size`` at a time (so padding stays small):
    its [B] results gathered into [N] float32 on the CPU, in the items' original order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(items)), key=lambda n: length(items[n]))
    out = torch.empty(len(items), dtype=torch.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out[idx] = run_batch([items[n] for n in idx]).float().cpu()
    return out


@torch.no_grad()
def classifier_logits(model, inputs: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """The model's single logit for each input: N lists of ids -> [N] float32 on the CPU.

    Inputs are sorted by length and right-padded within each batch of ``batch_size``; the result is in
    the original order. Padding does not change a logit (the model pools its last non-pad token).
    """
    device = next(model.parameters()).device

    def run(batch: list[list[int]]) -> torch.Tensor:
        ids, mask = right_pad(batch, pad_id)
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]

    return batched_by_length(inputs, len, batch_size, run)


class LazyModel:
    """A (model, tokenizer) pair loaded by :meth:`_load` on first use, on ``device`` (None: the CPU).

    ``device`` may be set at any time: a model already loaded moves there at once.
    """

    def __init__(self, device: str | torch.device | None = None):
        self._model: torch.nn.Module | None = None
        self._tokenizer = None
        self._device = device

    def _load(self, device: str) -> tuple[torch.nn.Module, Any]:
        """(model, tokenizer), the model on ``device``."""
        raise NotImplementedError

    @property
    def device(self) -> str | torch.device | None:
        return self._device

    @device.setter
    def device(self, device: str | torch.device | None) -> None:
        self._device = device
        if self._model is not None:
            self._model.to(str(device or "cpu"))

    def _loaded(self) -> tuple[torch.nn.Module, Any]:
        if self._model is None:
            self._model, self._tokenizer = self._load(str(self._device or "cpu"))
        return self._model, self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The model (loads it)."""
        return self._loaded()[0]

    @property
    def tokenizer(self):
        """The tokenizer (loads the model)."""
        return self._loaded()[1]


class Classifier(LazyModel):
    """A one-output sequence classifier loaded on first use, on ``device`` (set by the oracle's ``setup``
    to the policy's device when not given)."""

    def __init__(self, path: str, dtype: str = "float32", device: str | None = None, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"reward.oracle.batch_size must be >= 1, got {batch_size}")
        super().__init__(device)
        self.path, self.dtype, self.batch_size = path, dtype, batch_size

    def _load(self, device: str):
        return load_classifier(self.path, self.dtype, device)

    def logits(self, inputs: list[list[int]]) -> torch.Tensor:
        return classifier_logits(self.model, inputs, self.tokenizer.pad_token_id, self.batch_size)


class ClassifierOracle(Oracle):
    """An oracle that runs a model (``self.model``, e.g. a :class:`Classifier`) with a settable ``device``."""

    model: LazyModel

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
