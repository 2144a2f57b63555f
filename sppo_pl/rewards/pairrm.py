"""llm-blender's PairRM (``llm-blender/PairRM``) as a pairwise judge, without llm-blender.

PairRM (Jiang et al. 2023, arXiv 2306.02561) is ``microsoft/deberta-v3-large`` with a two-layer head. It reads
one sequence holding the prompt and two candidates, each part wrapped by the tokenizer and led by a marker::

    [CLS] <|source|> prompt [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]

takes the encoder's last hidden states h at the three markers, scores each candidate with the same head,
f(x) = W2 tanh(W1 x + b1) + b2 on x = [h_source; h_candidate], and returns

    l(a, b) = mean over tasks of f([h_source; h_cand1]) - f([h_source; h_cand2])

which PairRM was trained to make the log-odds that a beats b (loss -log sigmoid(+-l), llm-blender's
``instructgpt`` loss). l is not antisymmetric: l(b, a) != -l(a, b) and l(a, a) != 0 in general, since the
two candidates sit at different places behind different markers.

It does not load as an ``AutoModelForSequenceClassification``; this module rebuilds it (:class:`PairRM`, with
the checkpoint's parameter names so the weights load with ``strict=True``), reads its hub layout
(:func:`load_pairrm`), lays out inputs as llm-blender does (:func:`pair_inputs`) and scores batches
(:func:`pairrm_logits`, :class:`PairRMJudge`). :func:`build_tiny_pairrm` writes a tiny random model in the
same layout for tests. transformers is imported lazily.

Two hub layouts hold the same weights (``model.safetensors``: ``pretrained_model.*`` = a ``DebertaV2Model``,
``head_layer.1.*`` = Linear(2H, H), ``head_layer.4.*`` = Linear(H, n_tasks); H = 1024, n_tasks = 1, 436M
parameters in float32) and the same tokenizer (DeBERTa-v3's, plus added tokens ``[MASK]`` 128000,
``<|source|>`` 128001, ``<|candidate1|>`` 128002, ``<|candidate2|>`` 128003, ``<|candidate|>`` 128004):

- ``llm-blender/PairRM``: ``config.json`` (and ``ranker_config.json``) is llm-blender's ``RankerConfig``
  (``ranker_type: pairranker``, ``model_name: microsoft/deberta-v3-large``, ``source_maxlength: 1224``,
  ``candidate_maxlength: 412``, ``n_tasks: 1``, ``drop_out: 0.05``); the backbone's architecture is that of
  deberta-v3-large, whose sizes are read here from the weights;
- ``llm-blender/PairRM-hf``: ``config.json`` is a ``deberta-v2`` config with PairRM's fields
  (``n_tasks``, ``drop_out``, ``source_prefix_id: 128001``, ``cand1_prefix_id: 128002``,
  ``cand2_prefix_id: 128003``, ``cand_prefix_id: 128004``, ``vocab_size: 128005``).

Step by step against llm-blender's scoring code (the PyPI release 0.0.2, the same as GitHub
yuchenlin/LLM-Blender's main for these files; ``file:line``):

1. Loading. ``Blender.loadranker`` (blender/blender.py:75) reads config.json as a ``RankerConfig``;
   ``load_ranker`` (blender/blender_utils.py:59) builds the tokenizer from ``model_name``, the collator, and
   ``CrossCompareReranker(AutoModel(deberta-v3-large))`` (pair_ranker/model_util.py:99 ``build_ranker``, the
   embeddings resized to ``len(tokenizer)`` = 128005 at :109), then loads ``pytorch_model.bin`` (:83) or
   ``model.safetensors`` (:90) with ``strict=False``, only logging missing keys. Here: :func:`load_pairrm`
   builds :class:`PairRM` (``DebertaV2PairRM`` of pair_ranker/pairrm.py:11, the PairRM-hf class: same
   attribute names as ``CrossCompareReranker``) and loads with ``strict=True``, raising on any missing or
   unexpected key. Deliberate differences: strict loading; ``model.safetensors`` is preferred when both files
   exist; llm-blender casts to fp16 on CUDA (blender.py:158, ``fp16: true``), here the dtype is an argument
   (float32 by default).
2. Tokenizer and markers. llm-blender loads the tokenizer of ``model_name`` (model_util.py:77
   ``build_tokenizer``) and ``CrossCompareCollator.__init__`` (pair_ranker/collator.py:173-193) adds
   ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``, ``<|candidate|>`` as (non-special) tokens; the
   hub repo saved that tokenizer (tokenizer.json, added_tokens.json). Here the saved ``tokenizer.json`` is
   used verbatim (:func:`read_tokenizer`), the markers must already be single tokens of it, and must agree
   with the config's ``*_prefix_id`` when present.
3. Text. ``RankerDataset`` (blender_utils.py:144): source = instruction + input (instruction "" by default).
   The collator prefixes the marker and replaces the tokenizer's ``sep_token`` text ("[SEP]") by a space
   (collator.py:197-201). Same here (:func:`encode_segment`), with the prompt as the source. Deliberate
   difference from uclaml/SPPO: its scripts/rank.py passes the policy's chat-templated prompt (e.g.
   "<s>[INST] x [/INST]"); here the prompt's own text, the plain instruction PairRM was trained on.
4. Tokens and truncation. DeBERTa's tokenizer encodes "[SEP]" as 3 ids, so ``mannually_add_sep_token`` is
   False (collator.py:179-181) and the ``else`` branch runs (:222-233): ``encode_texts`` (:3) tokenizes
   marker + text with the tokenizer's own specials, ``truncation=True, max_length=source_maxlength`` (1224,
   right side, [CLS]/[SEP] kept); then each candidate with ``max_length = candidate_maxlength +
   remaining // 2`` where remaining = 1224 - (longest source in the batch). Here: the same calls, with the
   remaining length of each pair's own source (:func:`candidate_budget`), which is llm-blender with
   ``batch_size=1`` (as uclaml/SPPO's scripts/rank.py calls ``rank``) and exactly ``tokenize_pair``
   (blender_utils.py:214-227, the PairRM-hf path: ``(1224 + 2 * 412 - len(source)) // 2``). Deliberate
   difference: with larger batches llm-blender's candidate budget depends on the other prompts in the batch.
5. Candidate markers. The collator writes ``<|candidate|>`` and ``CrossCompareReranker._forward`` replaces it
   by ``<|candidate1|>`` / ``<|candidate2|>`` (pair_ranker/ranker.py:415-418); here a is encoded behind
   ``<|candidate1|>`` and b behind ``<|candidate2|>`` directly, as ``tokenize_pair`` does. Added tokens are
   split off before the text is tokenized, so the ids are the same.
6. Concatenation. ``cat_ids`` (ranker.py:563-630) joins source[: last SEP], cand1[: last SEP],
   cand2[: last SEP] and moves the padding to the end; batch padding columns are then dropped (:447-449).
   Here the three segments are concatenated and right-padded to the longest input of a sorted batch.
7. Encoder. ``pretrained_model(input_ids, attention_mask, output_hidden_states=True)``, ``hidden_states[-1]``
   (ranker.py:450-455; pairrm.py:76), no token_type_ids. Here ``last_hidden_state``, the same tensor.
8. Positions. ``torch.where(input_ids == source_prefix_id / cand1_prefix_id / cand2_prefix_id)``
   (ranker.py:456-461; pairrm.py:77-82). Here the positions are recorded while building the input (the
   marker each segment starts with). Deliberate difference: a text that itself contains a marker string
   makes llm-blender gather extra rows (misaligned or a shape error); here the recorded position is used.
9. Head and logit. ``reduce`` (ranker.py:360-376): ``head_layer(cat[source, cand])`` for each candidate with
   ``head_layer = Sequential(Dropout, Linear(2H, H), Tanh, Dropout, Linear(H, n_tasks))`` (:306-311);
   ``logits = (left - right).mean(-1)`` (:470; pairrm.py:95). Same in :meth:`PairRM.forward` (dropout is
   inactive in eval mode).
10. Aggregation: :class:`PairRMOracle` (see :class:`sppo_pl.rewards.pairwise.PairwiseOracle` and
    :func:`sppo_pl.rewards.preference.joint_scores`).
    ``_full_predict`` (ranker.py:718-775) fills M[i, j] = l(c_i, c_j) for i != j (0 on the diagonal);
    ``get_scores_from_cmps`` (gpt_eval/utils.py:26-43) gives s_i = mean over all K j of (M[i, j] - M[j, i]),
    which is ``rank(..., return_scores=True)`` (blender.py:225-227). ``compare`` in its default mode
    "[A,B]+[B,A]" ranks the pair [a, b] and returns s_a - s_b = l(a, b) - l(b, a) (blender.py:603-605), i.e.
    twice the both-orders average (l(a, b) - l(b, a)) / 2; modes "[A,B]" / "[B,A]" return l of one order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sppo_pl.rewards.classifier import LazyModel, batched_by_length, float_dtype, right_pad
from sppo_pl.rewards.pairwise import PairwiseOracle, check_mode

SOURCE_MARKER = "<|source|>"
CAND1_MARKER = "<|candidate1|>"
CAND2_MARKER = "<|candidate2|>"
# llm-blender's shared candidate marker, swapped for CAND1_MARKER / CAND2_MARKER before the model
CAND_MARKER = "<|candidate|>"
MARKERS = (SOURCE_MARKER, CAND1_MARKER, CAND2_MARKER)
MARKER_CONFIG_KEYS = ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")

SOURCE_MAX_LENGTH = 1224  # PairRM's config.json: source_maxlength
CANDIDATE_MAX_LENGTH = 412  # PairRM's config.json: candidate_maxlength

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILES = ("config.json", "ranker_config.json")
# a buffer older transformers versions saved with the weights; not a parameter
IGNORED_KEYS = ("pretrained_model.embeddings.position_ids",)

# microsoft/deberta-v3-large's architecture, as in llm-blender/PairRM-hf's config.json; sizes are overridden
# from the weights when the config is llm-blender's RankerConfig
DEBERTA_V3 = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-7,
    "max_position_embeddings": 512,
    "max_relative_positions": -1,
    "position_buckets": 256,
    "relative_attention": True,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "type_vocab_size": 0,
    "pad_token_id": 0,
    "pooler_dropout": 0,
    "pooler_hidden_act": "gelu",
    "pooler_hidden_size": 1024,
    "initializer_range": 0.02,
}
HEAD_DIM = 64  # every deberta-v3 size has 64-dimensional attention heads


class PairRM(nn.Module):
    """PairRM's network: ``pretrained_model`` (a ``DebertaV2Model``) and ``head_layer``, named as in the checkpoint.

    ``config`` is a ``DebertaV2Config`` with PairRM's ``n_tasks`` and ``drop_out``.
    """

    def __init__(self, config):
        super().__init__()
        from transformers import DebertaV2Model

        self.config = config
        self.pretrained_model = DebertaV2Model(config)
        hidden, p = config.hidden_size, float(config.drop_out)
        self.head_layer = nn.Sequential(
            nn.Dropout(p),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(p),
            nn.Linear(hidden, config.n_tasks),
        )

    def head(self, source: Tensor, candidate: Tensor) -> Tensor:
        """Per-task score of a candidate, head_layer([h_source; h_candidate]): [B, H], [B, H] -> [B, n_tasks]."""
        return self.head_layer(torch.cat([source, candidate], dim=-1))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        """Log-odds that candidate 1 beats candidate 2: [B, T] ids and mask, [B, 3] marker positions -> [B].

        ``positions[n]`` = the indexes of ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>`` in row n.
        """
        enc = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(enc.size(0), device=enc.device)
        source, cand1, cand2 = (enc[rows, positions[:, k]] for k in range(3))
        return (self.head(source, cand1) - self.head(source, cand2)).mean(dim=-1)


# ----------------------------------------------------------------------------------------------- loading


def _layout_error(path: Path, why: str) -> ValueError:
    """The error for a directory that does not hold PairRM as published, naming it and what is wrong."""
    return ValueError(
        f"{path}: not a PairRM checkpoint in llm-blender's hub layout (config.json, model.safetensors or "
        f"pytorch_model.bin with pretrained_model.* and head_layer.*, tokenizer files): {why}"
    )


def _few(keys: list[str], n: int = 8) -> str:
    """At most ``n`` keys, and how many more."""
    shown = ", ".join(keys[:n]) or "none"
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path/model.safetensors``, else ``path/pytorch_model.bin`` (tensors on the CPU)."""
    path = Path(path)
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file, device="cpu")
        return torch.load(file, map_location="cpu", weights_only=True)
    raise _layout_error(path, f"no weight file ({' or '.join(WEIGHT_FILES)})")


def read_config_json(path: str | Path) -> dict:
    """The first of ``config.json``, ``ranker_config.json`` in ``path``, as a dict."""
    path = Path(path)
    for name in CONFIG_FILES:
        if (path / name).is_file():
            return json.loads((path / name).read_text())
    raise _layout_error(path, f"no {' or '.join(CONFIG_FILES)}")


def _layer_count(state_dict: dict[str, Tensor]) -> int:
    """Number of encoder layers in the checkpoint (``pretrained_model.encoder.layer.N.*``)."""
    prefix = "pretrained_model.encoder.layer."
    found = {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def deberta_v3_config(state_dict: dict[str, Tensor], path: Path, n_tasks: int = 1, drop_out: float = 0.05):
    """A ``DebertaV2Config`` with deberta-v3's architecture and the sizes of the weights in ``state_dict``.

    For llm-blender's ``RankerConfig`` layout, whose config.json names the backbone instead of describing it.
    """
    from transformers import DebertaV2Config

    needed = (
        "pretrained_model.embeddings.word_embeddings.weight",
        "pretrained_model.encoder.layer.0.intermediate.dense.weight",
        "pretrained_model.encoder.rel_embeddings.weight",
    )
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise _layout_error(path, f"missing keys: {_few(missing)}")
    vocab, hidden = state_dict[needed[0]].shape
    sizes = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "pooler_hidden_size": hidden,
        "num_hidden_layers": _layer_count(state_dict),
        "num_attention_heads": max(hidden // HEAD_DIM, 1),
        "intermediate_size": state_dict[needed[1]].shape[0],
        "position_buckets": state_dict[needed[2]].shape[0] // 2,
    }
    return DebertaV2Config(**{**DEBERTA_V3, **sizes}, n_tasks=n_tasks, drop_out=drop_out)


def pairrm_config(raw: dict, state_dict: dict[str, Tensor], path: Path):
    """The ``DebertaV2Config`` of a PairRM checkpoint from its config.json (either hub layout)."""
    from transformers import DebertaV2Config

    if raw.get("model_type") == "deberta-v2":  # llm-blender/PairRM-hf
        missing = [k for k in ("n_tasks", "drop_out") if k not in raw]
        if missing:
            raise _layout_error(path, f"config.json is a deberta-v2 config without PairRM's {missing}")
        return DebertaV2Config.from_dict(raw)
    if raw.get("ranker_type") == "pairranker":  # llm-blender/PairRM
        name = str(raw.get("model_name") or "")
        if "deberta-v3" not in name:
            raise _layout_error(path, f"config.json's model_name {name!r} is not a deberta-v3 backbone")
        return deberta_v3_config(
            state_dict, path, int(raw.get("n_tasks") or 1), float(raw.get("drop_out", 0.05))
        )
    raise _layout_error(path, "config.json is neither llm-blender's RankerConfig nor a deberta-v2 config")


def check_keys(model: nn.Module, state_dict: dict[str, Tensor], path: Path) -> None:
    """A ValueError naming ``path`` and the missing / unexpected keys unless the keys are exactly the model's."""
    expected, got = set(model.state_dict()), set(state_dict)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise _layout_error(path, f"missing keys: {_few(missing)}; unexpected keys: {_few(unexpected)}")


def _restore_buffers(model: nn.Module) -> None:
    """Rebuild the non-persistent buffers left on the meta device by a meta-device build (position ids)."""
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise RuntimeError(f"buffer {name} is not in the checkpoint and cannot be rebuilt")
        owner, _, leaf = name.rpartition(".")
        value = torch.arange(buf.shape[-1], dtype=torch.long).expand(buf.shape)
        model.get_submodule(owner).register_buffer(leaf, value, persistent=False)


def build_model(config, state_dict: dict[str, Tensor], path: Path) -> PairRM:
    """:class:`PairRM` of ``config`` holding ``state_dict`` (strict): built on the meta device, so the
    436M random initial weights are never made, then given the checkpoint's tensors."""
    state_dict = {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}
    with torch.device("meta"):
        model = PairRM(config)
    check_keys(model, state_dict, path)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:  # shapes that do not fit the config
        raise _layout_error(path, str(err)) from err
    _restore_buffers(model)
    return model


def marker_ids(tokenizer) -> tuple[int, int, int]:
    """Ids of ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``; a ValueError unless each is one token."""
    out = []
    for marker in MARKERS:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer does not have PairRM's marker {marker!r} as one token (got {ids})"
            )
        out.append(ids[0])
    return out[0], out[1], out[2]


def read_tokenizer(path: Path):
    """The tokenizer in ``path``: ``tokenizer.json`` verbatim when there is one, else ``AutoTokenizer``.

    Verbatim, because transformers 5's ``DebertaV2Tokenizer`` class rebuilds the normalizer and
    pre-tokenizer itself (NFC in place of the sentencepiece charsmap PairRM's tokenizer.json holds), while
    PairRM was trained with the tokenizer.json pipeline (transformers 4's ``DebertaV2TokenizerFast``).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(path: Path, config):
    """PairRM's tokenizer from ``path``, checked against the config: markers, pad token, vocabulary size."""
    tokenizer = read_tokenizer(path)
    try:
        ids = marker_ids(tokenizer)
    except ValueError as err:
        raise _layout_error(path, str(err)) from err
    for key, marker, got in zip(MARKER_CONFIG_KEYS, MARKERS, ids):
        want = getattr(config, key, None)
        if want is not None and want != got:
            raise _layout_error(
                path, f"config.json has {key}={want} but the tokenizer gives {marker!r} id {got}"
            )
    if tokenizer.pad_token_id is None:
        raise _layout_error(path, "the tokenizer has no pad token")
    if len(tokenizer) > config.vocab_size:
        raise _layout_error(path, f"the tokenizer has {len(tokenizer)} tokens, the model {config.vocab_size}")
    tokenizer.truncation_side = "right"  # llm-blender's (the default): keep [CLS] marker ... from the start
    return tokenizer


def load_pairrm(path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu"):
    """(model, tokenizer) of the PairRM checkpoint in directory ``path`` (either hub layout), model in eval mode.

    A ValueError names ``path`` and what does not match: no config or weight file, missing or unexpected
    weight keys, shapes, or markers that are not single tokens of the tokenizer.
    """
    path = Path(path)
    if not path.is_dir():
        raise _layout_error(path, "not a directory (download the hub repo first)")
    torch_dtype = float_dtype(dtype)
    state_dict = read_weights(path)
    config = pairrm_config(read_config_json(path), state_dict, path)
    model = build_model(config, state_dict, path)
    tokenizer = load_tokenizer(path, config)
    model = model.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class PairInput:
    """One PairRM input: token ids and the positions of ``<|source|>``, ``<|candidate1|>``, ``<|candidate2|>``."""

    input_ids: list[int]
    positions: tuple[int, int, int]


def encode_segment(tokenizer, marker: str, text: str, max_length: int) -> list[int]:
    """``[CLS] marker text [SEP]`` cut to ``max_length`` tokens, as llm-blender's collator encodes each part:
    the sep token's text in ``text`` becomes a space, then the tokenizer's own truncation (right side; the
    specials are kept)."""
    if tokenizer.sep_token:
        text = text.replace(tokenizer.sep_token, " ")
    return tokenizer(marker + text, truncation=True, max_length=max_length)["input_ids"]


def candidate_budget(source_length: int, max_prompt_tokens: int, max_response_tokens: int) -> int:
    """Token budget of each candidate segment: its own plus half of what the source left unused."""
    return max_response_tokens + (max_prompt_tokens - source_length) // 2


def _marker_position(segment: list[int], marker_id: int, what: str) -> int:
    """Index of the marker a segment starts with (after the tokenizer's leading specials)."""
    if marker_id not in segment:
        raise ValueError(f"the {what} marker was cut off: raise the token budgets ({segment[:8]}...)")
    return segment.index(marker_id)


def join_segments(
    source: list[int], cand1: list[int], cand2: list[int], ids: tuple[int, int, int]
) -> PairInput:
    """The three encoded segments end to end, with the position of each one's marker."""
    pos = (
        _marker_position(source, ids[0], "source"),
        len(source) + _marker_position(cand1, ids[1], "candidate 1"),
        len(source) + len(cand1) + _marker_position(cand2, ids[2], "candidate 2"),
    )
    return PairInput(source + cand1 + cand2, pos)


def pair_inputs(
    tokenizer,
    prompts: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    max_prompt_tokens: int = SOURCE_MAX_LENGTH,
    max_response_tokens: int = CANDIDATE_MAX_LENGTH,
) -> list[PairInput]:
    """PairRM's input for each (prompt_n, a_n, b_n): ``[CLS] <|source|> x [SEP] [CLS] <|candidate1|> a [SEP]
    [CLS] <|candidate2|> b [SEP]``, each distinct segment tokenized once."""
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prompts, a and b differ in length: {len(prompts)}, {len(a)}, {len(b)}")
    ids = marker_ids(tokenizer)
    cache: dict[tuple[str, str, int], list[int]] = {}

    def segment(marker: str, text: str, max_length: int) -> list[int]:
        key = (marker, text, max_length)
        if key not in cache:
            cache[key] = encode_segment(tokenizer, marker, text, max_length)
        return cache[key]

    out = []
    for x, ya, yb in zip(prompts, a, b):
        source = segment(SOURCE_MARKER, x, max_prompt_tokens)
        budget = candidate_budget(len(source), max_prompt_tokens, max_response_tokens)
        out.append(
            join_segments(source, segment(CAND1_MARKER, ya, budget), segment(CAND2_MARKER, yb, budget), ids)
        )
    return out


def pair_input(
    tokenizer,
    prompt: str,
    a: str,
    b: str,
    max_prompt_tokens: int = SOURCE_MAX_LENGTH,
    max_response_tokens: int = CANDIDATE_MAX_LENGTH,
) -> PairInput:
    """PairRM's input for one (prompt, a, b); see :func:`pair_inputs`."""
    return pair_inputs(tokenizer, [prompt], [a], [b], max_prompt_tokens, max_response_tokens)[0]


def collate(inputs: Sequence[PairInput], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``input_ids`` [B, T], ``attention_mask`` [B, T] and marker ``positions`` [B, 3]."""
    ids, mask = right_pad([p.input_ids for p in inputs], pad_id)
    return ids, mask, torch.tensor([p.positions for p in inputs], dtype=torch.long)


# ------------------------------------------------------------------------------------------------ scoring


@torch.no_grad()
def logits_of_inputs(model: PairRM, inputs: Sequence[PairInput], pad_id: int, batch_size: int = 32) -> Tensor:
    """l for each input: [N] float32 on the CPU, in the inputs' order. Inputs are sorted by length and
    right-padded within each batch of ``batch_size``, so padding stays small; padding does not change l."""
    device = next(model.parameters()).device

    def run(batch: list[PairInput]) -> Tensor:
        ids, mask, pos = collate(batch, pad_id)
        return model(ids.to(device), mask.to(device), pos.to(device))

    return batched_by_length(inputs, lambda p: len(p.input_ids), batch_size, run)


def pairrm_logits(
    model: PairRM,
    tokenizer,
    prompts: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    batch_size: int = 32,
    max_prompt_tokens: int = SOURCE_MAX_LENGTH,
    max_response_tokens: int = CANDIDATE_MAX_LENGTH,
) -> Tensor:
    """l(a_n, b_n | prompt_n) for each n: [N] float32 log-odds (CPU) that a_n beats b_n, one order only."""
    inputs = pair_inputs(tokenizer, prompts, a, b, max_prompt_tokens, max_response_tokens)
    if not inputs:
        return torch.empty(0, dtype=torch.float32)
    return logits_of_inputs(model, inputs, tokenizer.pad_token_id, batch_size)


class PairRMJudge(LazyModel):
    """PairRM as a pairwise judge, loaded on first use (:class:`LazyModel`).

    ``device`` may be set at any time (None: the CPU); a loaded model moves there at once.
    :meth:`pair_logits` gives l(a, b) of one presentation order; a caller averaging both orders takes
    (l(a, b) - l(b, a)) / 2.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int = 32,
        max_prompt_tokens: int = SOURCE_MAX_LENGTH,
        max_response_tokens: int = CANDIDATE_MAX_LENGTH,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if min(max_prompt_tokens, max_response_tokens) < 3:
            raise ValueError(
                "max_prompt_tokens and max_response_tokens must be >= 3 ([CLS] marker [SEP]), got "
                f"{max_prompt_tokens} and {max_response_tokens}"
            )
        float_dtype(dtype)
        super().__init__(device)
        self.model_path, self.dtype, self.batch_size = model_path, dtype, batch_size
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens

    def _load(self, device: str):
        return load_pairrm(self.model_path, self.dtype, device)

    def pair_logits(self, prompts: list[str], a: list[str], b: list[str]) -> Tensor:
        """[N] float32 log-odds (CPU) that a_n beats b_n as a response to prompts_n."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"prompts, a and b differ in length: {len(prompts)}, {len(a)}, {len(b)}")
        if not prompts:
            return torch.empty(0, dtype=torch.float32)
        model, tokenizer = self._loaded()
        return pairrm_logits(
            model, tokenizer, prompts, a, b, self.batch_size, self.max_prompt_tokens, self.max_response_tokens
        )


class PairRMOracle(PairwiseOracle):
    """``reward=pairrm``: llm-blender/PairRM itself as the pairwise oracle (the original uclaml/SPPO oracle).

    The pairs, both presentation orders and the two modes are :class:`PairwiseOracle`'s; the log-odds
    l(a, b) are PairRM's (:class:`PairRMJudge`). ``mode=joint`` (default here, as uclaml) gives
    llm-blender's ranking scores s_i = (1/K) sum_j (l(y_i, y_j) - l(y_j, y_i)) and P = sigmoid(s_i - s_j), as
    uclaml's ``compute_prob.py`` turns ``rank(..., return_scores=True)`` into preferences.
    """

    def __init__(
        self,
        model_path: str,
        mode: str = "joint",
        both_orders: bool = True,
        batch_size: int = 32,
        max_prompt_tokens: int = SOURCE_MAX_LENGTH,
        max_response_tokens: int = CANDIDATE_MAX_LENGTH,
        dtype: str = "float32",
        device: str | None = None,
    ):
        self.mode, self.both_orders = check_mode(mode), both_orders
        self.model = PairRMJudge(
            model_path, dtype, device, batch_size, max_prompt_tokens, max_response_tokens
        )

    def pair_logits(self, prompts: list[str], a: list[str], b: list[str]) -> Tensor:
        return self.model.pair_logits(prompts, a, b)


# ------------------------------------------------------------------------------------------- tiny model

_TINY_WORDS = (
    "the a an is are was be to of and in that it for on with as at by this from or which what how why when "
    "who answer question response model good bad better worse helpful honest harmless fine thanks hello "
    "please explain number sum product equals one two three four five six seven eight nine ten yes no maybe "
    "because first second then finally so result step think write code python list function value"
).split()


def _tiny_corpus(n: int = 400) -> list[str]:
    """Deterministic sentences over a small word list, with digits and punctuation."""
    k = len(_TINY_WORDS)
    return [
        ", ".join(
            " ".join(_TINY_WORDS[(i * 7 + j * (i % 5 + 1) + c) % k] for j in range(2 + i % 5))
            for c in range(2)
        ).capitalize()
        + ("?" if i % 3 else ".")
        + f" {i % 97} + {i % 13} = {i % 97 + i % 13}!"
        for i in range(n)
    ]


def build_tiny_tokenizer(vocab_size: int = 400):
    """A ``DebertaV2Tokenizer`` (Unigram, Metaspace; [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK] after the
    vocabulary, as deberta-v3) trained here, with PairRM's four markers added as llm-blender adds them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import DebertaV2Tokenizer

    sp = Tokenizer(models.Unigram())
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]"], unk_token="[UNK]"
    )
    sp.train_from_iterator(_tiny_corpus(), trainer)
    vocab = [(piece, score) for piece, score in json.loads(sp.to_str())["model"]["vocab"]]
    tokenizer = DebertaV2Tokenizer(vocab=vocab, unk_id=3)
    tokenizer.add_tokens([SOURCE_MARKER, CAND1_MARKER, CAND2_MARKER, CAND_MARKER])
    return tokenizer


def build_tiny_pairrm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random PairRM in llm-blender/PairRM-hf's layout to ``out_dir`` and return it.

    config.json (deberta-v2 with ``n_tasks``, ``drop_out``, ``*_prefix_id``), model.safetensors
    (``pretrained_model.*``, ``head_layer.*``) and the tokenizer files. DeBERTa-v3's architecture at hidden
    size 128 (2 heads of 64), 2 layers; no download.
    """
    from safetensors.torch import save_file
    from transformers import DebertaV2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    src, c1, c2 = marker_ids(tokenizer)
    sizes = {
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "pooler_hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "initializer_range": 0.2,  # large enough that attention and the head are far from uniform
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = DebertaV2Config(
        **{**DEBERTA_V3, **sizes},
        architectures=["DebertaV2PairRM"],
        n_tasks=1,
        drop_out=0.05,
        source_prefix_id=src,
        cand1_prefix_id=c1,
        cand2_prefix_id=c2,
        cand_prefix_id=tokenizer.convert_tokens_to_ids(CAND_MARKER),
    )
    torch.manual_seed(seed)
    model = PairRM(config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
