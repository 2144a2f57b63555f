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

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from sppo_pl.rewards.oracle import Oracle
from sppo_pl.rewards.preference import bradley_terry
from sppo_pl.rollout.base import positive_number

T = TypeVar("T")
log = logging.getLogger(__name__)

PAIR_MARKERS = ("<|source|>", "<|candidate1|>", "<|candidate2|>")


def float_dtype(dtype: str, field: str = "reward.oracle.dtype") -> torch.dtype:
    """The floating torch dtype named ``dtype`` ("float32", "bfloat16", "float16"), else an error naming ``field``."""
    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(
            f"{field} must name a floating torch dtype (float32, bfloat16, float16), got {dtype!r}"
        )
    return torch_dtype


def check_tokens(field: str, value, least: int = 1) -> None:
    """A token budget ``reward.oracle.<field>``: a whole number >= ``least``."""
    from sppo_pl.rollout.base import is_whole

    if not is_whole(value) or value < least:
        raise ValueError(f"reward.oracle.{field} must be a whole number >= {least}, got {value!r}")


def position_limit(model) -> int | None:
    """The longest input the model's learned absolute positions take (``max_position_embeddings``), or None
    when it has none: DeBERTa's relative positions (``position_biased_input=false``, PairRM) take any length.

    The RoBERTa family (RoBERTa, XLM-R, Longformer, ...) numbers positions from ``pad_token_id + 1``, its
    position table's ``padding_idx``: it takes ``max_position_embeddings - pad_token_id - 1`` tokens (512 of
    roberta-base's 514)."""
    config = model.config
    if getattr(config, "position_biased_input", True) is False:
        return None
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if isinstance(table, torch.nn.Embedding) and table.padding_idx is not None:
        return table.num_embeddings - table.padding_idx - 1
    return getattr(config, "max_position_embeddings", None)


def load_classifier(path: str, dtype: str = "float32", device: str | torch.device = "cpu"):
    """(model, tokenizer) of a one-output sequence classifier at ``path`` (directory or hub name), in eval mode.

    The model's config takes the tokenizer's pad token, which its pooling (the last token that is not the
    pad token) reads. A tokenizer without one keeps none: :func:`classifier_logits` then pads each batch
    with an id none of its inputs holds (padding with EOS would pool an input that ends in EOS one token early).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=float_dtype(dtype))
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path}: an oracle model needs one output (num_labels=1), got num_labels={model.config.num_labels}"
        )
    if tokenizer.pad_token_id is not None:
        set_pad_id(model, tokenizer.pad_token_id)
    return model.to(device).eval(), tokenizer


def set_pad_id(model, pad_id: int | None) -> None:
    """The pad id the model's pooling reads (its config's, and its text config's in a composite model)."""
    model.config.pad_token_id = pad_id
    model.config.get_text_config().pad_token_id = pad_id


def unused_id(seqs: Sequence[Sequence[int]], vocab_size: int) -> int:
    """The smallest token id below ``vocab_size`` that no sequence holds: a pad id the pooling cannot mistake
    for an input's own token."""
    used = set().union(*seqs)
    free = next((i for i in range(vocab_size) if i not in used), None)
    if free is None:
        raise ValueError(
            f"every one of the model's {vocab_size} token ids is in the batch: none is left to pad with"
        )
    return free


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


def separates_pairs(tokenizer) -> bool:
    """Whether the tokenizer joins a text pair with a separator token, as encoders do (BERT, DeBERTa,
    RoBERTa: ``[CLS] x [SEP] y [SEP]``); a decoder's pair is at most another BOS (Llama-2: ``<s> x <s> y``)."""
    extra = tokenizer.num_special_tokens_to_add(pair=True) - tokenizer.num_special_tokens_to_add(pair=False)
    return tokenizer.sep_token_id is not None and extra > 0


def segment_ids(ids: torch.Tensor, mask: torch.Tensor, sep_id: int) -> torch.Tensor:
    """BERT's ``token_type_ids`` [B, T] of right-padded inputs ``ids`` [B, T]: 0 up to and including the
    first ``sep_id``, 1 after it (a text pair's second member), 0 on padding. An input whose only separator
    closes it (one text, a chat template) is all 0s."""
    first = (ids == sep_id).long().cumsum(-1)
    after_first = (first - (ids == sep_id).long()) > 0
    return after_first.long() * mask


def _reward_text_ids(tokenizer, prompt: str, response: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if separates_pairs(tokenizer):
        return tokenizer(prompt, response)["input_ids"]  # an encoder's text pair: [CLS] x [SEP] y [SEP]
    return tokenizer(f"{prompt}\n{response}")["input_ids"]


def reward_input_ids(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """One (prompt, response) input of a reward model: the chat template of a user turn and an assistant
    turn if the tokenizer has one; else the text pair (prompt, response) if the tokenizer separates the two
    members of a pair (BERT, DeBERTa, RoBERTa: ``[CLS] x [SEP] y [SEP]``, as encoder reward models such as
    OpenAssistant's DeBERTa are trained and called); else ``prompt`` + newline + ``response`` with the
    tokenizer's special tokens.

    Over ``max_length`` tokens, the response's end is cut (as TRL and OpenRLHF truncate reward-model inputs):
    the leading special token, the whole prompt and the template's closing tokens stay, since the model
    pools a fixed position (the first or the last token) and judges the response against the question. A
    prompt that alone does not fit is an error naming ``reward.oracle.max_length``.
    """
    ids = _reward_text_ids(tokenizer, prompt, response)
    if len(ids) <= max_length:
        return ids
    overhead = len(_reward_text_ids(tokenizer, prompt, ""))
    room, kept = max_length - overhead, tokenizer(response, add_special_tokens=False)["input_ids"]
    while room > 0:  # re-tokenizing the cut text may merge differently: shrink until it fits
        ids = _reward_text_ids(tokenizer, prompt, tokenizer.decode(kept[:room]))
        if len(ids) <= max_length:
            return ids
        room -= len(ids) - max_length
    raise ValueError(
        f"reward.oracle.max_length={max_length}: the prompt with the template takes {overhead} tokens of the "
        f"reward model's input, leaving none for the response (prompt {prompt!r:.80}); raise it"
    )


def pair_input_ids(
    prompt_ids: list[int],
    a_ids: list[int],
    b_ids: list[int],
    marker_ids: Sequence[list[int]],
    special: tuple[list[int], list[int]],
    max_prompt_tokens: int,
    max_response_tokens: int,
    max_total: int | None = None,
) -> list[int]:
    """One pairwise input, PairRM's layout: ``[pre] <source> x <candidate1> a <candidate2> b [post]``.

    The prompt keeps its last ``max_prompt_tokens`` tokens (the question is usually at the end); each
    candidate keeps its first ``max_response_tokens``, fewer when the whole would pass ``max_total`` (the
    model's :func:`position_limit`): then both candidates are cut to one budget c, the largest with
    min(|a|, c) + min(|b|, c) fitting, so neither is favoured.
    """
    src, c1, c2 = marker_ids
    pre, post = special
    prompt = prompt_ids[-max_prompt_tokens:]
    cap = max_response_tokens
    if max_total is not None:
        room = max_total - len(pre) - len(src) - len(prompt) - len(c1) - len(c2) - len(post)
        a_len, b_len = min(len(a_ids), cap), min(len(b_ids), cap)
        if a_len + b_len > room:
            cap = max(room // 2, room - min(a_len, b_len))
        if cap < 1:
            raise ValueError(
                f"the pairwise model takes {max_total} positions: with reward.oracle.max_prompt_tokens="
                f"{max_prompt_tokens} the prompt leaves no room for the responses; lower it"
            )
    return [*pre, *src, *prompt, *c1, *a_ids[:cap], *c2, *b_ids[:cap], *post]


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
def classifier_logits(
    model, inputs: list[list[int]], pad_id: int | None, batch_size: int = 16, sep_id: int | None = None
) -> torch.Tensor:
    """The model's single logit for each input: N lists of ids -> [N] float32 on the CPU.

    Inputs are sorted by length and right-padded within each batch of ``batch_size``; the result is in
    the original order. Padding does not change a logit (the model pools its last non-pad token). With
    ``pad_id`` None (the tokenizer has no pad token) each batch pads with :func:`unused_id`, so every input
    is pooled at its own last token, as the model pools an unpadded input. A model with segment embeddings
    (``type_vocab_size`` >= 2: BERT, ELECTRA) also gets the ``token_type_ids`` of text pairs split at
    ``sep_id`` (:func:`segment_ids`), as its tokenizer would make them.
    """
    device = next(model.parameters()).device
    segments = sep_id is not None and getattr(model.config, "type_vocab_size", 0) > 1

    def run(batch: list[list[int]]) -> torch.Tensor:
        pad = pad_id if pad_id is not None else unused_id(batch, model.get_input_embeddings().num_embeddings)
        ids, mask = right_pad(batch, pad)
        extra = {"token_type_ids": segment_ids(ids, mask, sep_id).to(device)} if segments else {}
        set_pad_id(model, pad)
        try:
            return model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits[:, 0]
        finally:
            set_pad_id(model, pad_id)

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
        check_tokens("batch_size", batch_size)
        float_dtype(dtype)
        super().__init__(device)
        self.path, self.dtype, self.batch_size = path, dtype, batch_size

    def _load(self, device: str):
        return load_classifier(self.path, self.dtype, device)

    def logits(self, inputs: list[list[int]]) -> torch.Tensor:
        tok = self.tokenizer
        return classifier_logits(self.model, inputs, tok.pad_token_id, self.batch_size, tok.sep_token_id)


class ClassifierOracle(Oracle):
    """An oracle that runs a model (``self.model``, e.g. a :class:`Classifier`) with a settable ``device``."""

    model: LazyModel

    def place(self, device):
        """The model runs on ``device`` unless it was given one (``reward.oracle.device``)."""
        self.model.device = self.model.device or str(device)


class RewardModelOracle(ClassifierOracle):
    """Scores s = RM(prompt, response); preferences by Bradley-Terry, P(y_i > y_j) = sigmoid(scale (s_i - s_j)).

    The input is the reward model's own chat template of the user and assistant turns (without one, an
    encoder's text pair ``[CLS] x [SEP] y [SEP]``, or plain text), the response cut to fit ``max_length`` tokens (:func:`reward_input_ids`), and no more than the
    model's learned positions (:func:`position_limit`); batches of ``batch_size``, sorted by length.
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
        check_tokens("max_length", max_length)
        scale = positive_number(scale, "reward.oracle.scale", "a negative scale inverts every preference")
        self.model = Classifier(model_path, dtype, device, batch_size)
        self.max_length, self.scale = max_length, scale

    def score(self, prompts, responses, **fields):
        tok, limit = self.model.tokenizer, position_limit(self.model.model)
        max_length = self.max_length if limit is None else min(self.max_length, limit)
        if max_length < self.max_length and not getattr(self, "_warned", False):
            self._warned = True
            log.warning(
                "reward.oracle.max_length=%d, but %s takes %d positions: inputs are cut to %d tokens",
                self.max_length,
                self.model.path,
                limit,
                limit,
            )
        ids = [reward_input_ids(tok, x, y, max_length) for x, y in zip(prompts, responses)]
        return self.model.logits(ids).tolist()

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        return bradley_terry(scores, self.scale)
