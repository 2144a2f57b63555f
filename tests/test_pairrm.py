"""The PairRM adapter against a tiny random PairRM saved in llm-blender's hub layout (no download)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from sppo_pl.rewards import pairrm as P

PROMPTS = [
    "What is 2 + 3?",
    "Hello, how are you?",
    "Please explain why the sum of one and two is three, step by step, then write the result.",
    "yes",
]
A = ["It is 5.", "I am fine, thanks!", "First one, then two, so the result is three.", "no"]
B = ["hello there", "Bad.", "Maybe four.", "yes, because it is good and helpful and honest"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return P.build_tiny_pairrm(tmp_path_factory.mktemp("pairrm") / "tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return P.load_pairrm(tiny_dir)


@pytest.fixture(scope="module")
def weights(tiny_dir):
    from safetensors.torch import load_file

    return load_file(tiny_dir / "model.safetensors")


def copy_of(tiny_dir, tmp_path):
    """A writable copy of the tiny checkpoint."""
    return shutil.copytree(tiny_dir, tmp_path / "copy")


def reference_logit(tiny_dir, weights, ids: list[int]) -> float:
    """llm-blender's computation by hand: a separately built DebertaV2Model, its last hidden states at the
    positions torch.where finds the marker ids, and head_layer applied by hand to [source; candidate]."""
    from transformers import DebertaV2Config, DebertaV2Model

    config = DebertaV2Config.from_pretrained(tiny_dir)
    backbone = DebertaV2Model(config).eval()
    prefix = "pretrained_model."
    backbone.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    x = torch.tensor([ids])
    with torch.no_grad():
        enc = backbone(
            input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True
        ).hidden_states[-1][0]

    def at(marker_id: int) -> torch.Tensor:
        (where,) = torch.where(x[0] == marker_id)
        assert where.numel() == 1
        return enc[where[0]]

    def head(v: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(v @ weights["head_layer.1.weight"].T + weights["head_layer.1.bias"])
        return h @ weights["head_layer.4.weight"].T + weights["head_layer.4.bias"]

    src, c1, c2 = at(config.source_prefix_id), at(config.cand1_prefix_id), at(config.cand2_prefix_id)
    return (head(torch.cat([src, c1])) - head(torch.cat([src, c2]))).mean().item()


def test_saved_layout_is_pairrms(tiny_dir, weights, loaded):
    _, tok = loaded
    heads = {k: tuple(v.shape) for k, v in weights.items() if not k.startswith("pretrained_model.")}
    assert heads == {
        "head_layer.1.weight": (128, 256),
        "head_layer.1.bias": (128,),
        "head_layer.4.weight": (1, 128),
        "head_layer.4.bias": (1,),
    }
    assert "pretrained_model.encoder.rel_embeddings.weight" in weights
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "deberta-v2" and config["n_tasks"] == 1 and config["drop_out"] == 0.05
    assert [config[k] for k in P.MARKER_CONFIG_KEYS] == list(P.marker_ids(tok))
    assert config["cand_prefix_id"] == tok.convert_tokens_to_ids(P.CAND_MARKER)
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    model = loaded[0]
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])  # built on meta, all restored
    assert not model.training and not any(t.requires_grad for t in model.parameters())


def test_logits_equal_a_hand_written_forward(tiny_dir, weights, loaded):
    model, tok = loaded
    got = P.pairrm_logits(model, tok, PROMPTS, A, B)
    for n, (x, a, b) in enumerate(zip(PROMPTS, A, B)):
        # tokenize_pair's layout (nothing is cut at these lengths)
        ids = tok(P.SOURCE_MARKER + x)["input_ids"] + tok(P.CAND1_MARKER + a)["input_ids"]
        ids += tok(P.CAND2_MARKER + b)["input_ids"]
        assert P.pair_input(tok, x, a, b).input_ids == ids
        assert got[n].item() == pytest.approx(reference_logit(tiny_dir, weights, ids), abs=1e-5)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (len(PROMPTS),)


def test_layout_matches_llm_blender_collator(loaded):
    """The collator writes <|candidate|> and _forward swaps its id for <|candidate1|> / <|candidate2|>."""
    _, tok = loaded
    cand_id = tok.convert_tokens_to_ids(P.CAND_MARKER)
    src_id, c1_id, c2_id = P.marker_ids(tok)
    x, a, b = PROMPTS[2], A[2], B[2]
    src = tok(P.SOURCE_MARKER + x, truncation=True, max_length=P.SOURCE_MAX_LENGTH)["input_ids"]
    budget = P.CANDIDATE_MAX_LENGTH + (P.SOURCE_MAX_LENGTH - len(src)) // 2
    cands = [tok(P.CAND_MARKER + c, truncation=True, max_length=budget)["input_ids"] for c in (a, b)]
    c1 = [c1_id if t == cand_id else t for t in cands[0]]
    c2 = [c2_id if t == cand_id else t for t in cands[1]]
    pi = P.pair_input(tok, x, a, b)
    assert pi.input_ids == src + c1 + c2
    assert pi.input_ids[0] == tok.cls_token_id and pi.input_ids[-1] == tok.sep_token_id
    assert pi.positions == (1, len(src) + 1, len(src) + len(c1) + 1)
    assert [pi.input_ids[p] for p in pi.positions] == [src_id, c1_id, c2_id]


def test_truncation_by_hand(loaded):
    _, tok = loaded
    cls, sep = tok.cls_token_id, tok.sep_token_id
    src_id, c1_id, c2_id = P.marker_ids(tok)

    def words(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    long_prompt, a, b = (
        "one two three four five six seven eight",
        "nine ten yes no maybe",
        "first second then finally",
    )
    assert words(P.SOURCE_MARKER + long_prompt) == [src_id, *words(long_prompt)]
    assert len(words(long_prompt)) > 5 and len(words(a)) > 3 and len(words(b)) > 3
    # source budget 8 = [CLS] marker + 5 tokens [SEP]; the source fills it, so each candidate gets 6
    pi = P.pair_input(tok, long_prompt, a, b, max_prompt_tokens=8, max_response_tokens=6)
    source = [cls, src_id, *words(long_prompt)[:5], sep]
    cand1, cand2 = [cls, c1_id, *words(a)[:3], sep], [cls, c2_id, *words(b)[:3], sep]
    assert pi.input_ids == source + cand1 + cand2
    assert pi.positions == (1, 9, 15)
    # the tokenizer's own truncation (llm-blender's call) gives the same source segment
    assert tok(P.SOURCE_MARKER + long_prompt, truncation=True, max_length=8)["input_ids"] == source
    # a 4-token source leaves 4 unused: each candidate gets 6 + 4 // 2 = 8 tokens, 5 of them text
    assert len(words("yes")) == 1 and P.candidate_budget(4, 8, 6) == 8
    pi = P.pair_input(tok, "yes", a, b, max_prompt_tokens=8, max_response_tokens=6)
    assert pi.input_ids == [
        cls,
        src_id,
        *words("yes"),
        sep,
        cls,
        c1_id,
        *words(a)[:5],
        sep,
        cls,
        c2_id,
        *words(b)[:5],
        sep,
    ]
    assert pi.positions == (1, 5, 13)


def test_sep_text_becomes_a_space(loaded):
    _, tok = loaded
    pi = P.pair_input(tok, "yes [SEP] no", "a [SEP]", "b")
    assert pi.input_ids.count(tok.sep_token_id) == 3  # only the three segment ends
    assert pi.input_ids[: pi.positions[1] - 1] == tok(P.SOURCE_MARKER + "yes   no")["input_ids"]


def test_batched_equals_one_at_a_time_in_the_original_order(loaded):
    model, tok = loaded
    prompts, a, b = PROMPTS + PROMPTS[:3], A + B[:3], B + A[:3]
    lengths = [len(p.input_ids) for p in P.pair_inputs(tok, prompts, a, b)]
    ordered = sorted(lengths)
    assert all(ordered[s] != ordered[min(s + 2, len(ordered) - 1)] for s in (0, 3))  # batches of 3 get padded
    batched = P.pairrm_logits(model, tok, prompts, a, b, batch_size=3)
    single = torch.cat(
        [P.pairrm_logits(model, tok, [x], [ya], [yb], batch_size=1) for x, ya, yb in zip(prompts, a, b)]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    perm = [4, 0, 6, 2, 1, 5, 3]
    shuffled = P.pairrm_logits(
        model, tok, [prompts[i] for i in perm], [a[i] for i in perm], [b[i] for i in perm], batch_size=4
    )
    torch.testing.assert_close(shuffled, single[perm], atol=1e-5, rtol=0)


def test_padding_does_not_change_the_logit(loaded):
    model, tok = loaded
    ids, mask, pos = P.collate([P.pair_input(tok, PROMPTS[0], A[0], B[0])], tok.pad_token_id)
    extra = 9
    # padded with an ordinary token id under a zero mask: the mask, not the pad id, hides the padding
    padded_ids = torch.cat([ids, torch.full((1, extra), 57)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros((1, extra), dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain, padded = model(ids, mask, pos), model(padded_ids, padded_mask, pos)
        unmasked = model(padded_ids, torch.ones_like(padded_mask), pos)
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)
    assert (unmasked - plain).abs().item() > 1e-4  # the padded tokens would matter if attended to


def test_not_symmetric_in_the_candidates(loaded):
    model, tok = loaded
    x, a, b = PROMPTS[0], A[0], B[0]
    l_ab, l_ba, l_aa = P.pairrm_logits(model, tok, [x, x, x], [a, b, a], [b, a, a])
    assert abs(l_ab - l_ba) > 1e-3  # swapping a and b changes the logit
    assert abs(l_ab + l_ba) > 1e-4  # but not to its negative: no antisymmetry by construction
    assert abs(l_aa) > 1e-4  # and a against itself is not 0 (two markers, two positions)


def test_joint_scores_are_llm_blenders_rank_scores():
    """llm-blender's rank(return_scores=True): s_i = (1/K) sum_j (M[i, j] - M[j, i]) over the one-order
    logits M (diagonal ignored); the oracle's joint_scores on L = (M - M^T) / 2 give the same numbers."""
    from sppo_pl.rewards.preference import joint_scores

    cmp = torch.tensor([[9.0, 1.0, 2.0], [3.0, 9.0, 4.0], [5.0, 6.0, 9.0]])  # diagonal ignored
    m = cmp.masked_fill(torch.eye(3, dtype=torch.bool), 0)
    # s_0 = ((1 - 3) + (2 - 5)) / 3, s_1 = ((3 - 1) + (4 - 6)) / 3, s_2 = ((5 - 2) + (6 - 4)) / 3
    torch.testing.assert_close(joint_scores((m - m.T) / 2), torch.tensor([-5 / 3, 0.0, 5 / 3]))


def test_the_oracle_judges_with_pairrms_logits(tiny_dir):
    """reward=pairrm: PairwiseOracle's pairs and modes over PairRM's own log-odds."""
    from sppo_pl.rewards.oracle import score_rollouts
    from sppo_pl.types import Rollout

    oracle = P.PairRMOracle(str(tiny_dir), mode="joint", max_prompt_tokens=64, max_response_tokens=32)
    r = Rollout(PROMPTS[0], [], [A[0], B[0], A[1]], [[], [], []])
    score_rollouts(oracle, [r])
    judge = P.PairRMJudge(str(tiny_dir), max_prompt_tokens=64, max_response_tokens=32)
    x = [r.prompt]
    l01 = judge.pair_logits(x, [A[0]], [B[0]])[0].item()
    l10 = judge.pair_logits(x, [B[0]], [A[0]])[0].item()
    # validation's P(a > b) is on training's scale: in joint mode sigmoid(l(a, b) - l(b, a)), the K = 2
    # preference of that pair (llm-blender's compare); in pairs mode sigmoid((l(a, b) - l(b, a)) / 2)
    pair = Rollout(PROMPTS[0], [], [A[0], B[0]], [[], []])
    score_rollouts(oracle, [pair])
    assert oracle.compare(x, [A[0]], [B[0]]) == pytest.approx([1 / (1 + math.exp(-(l01 - l10)))], abs=1e-5)
    assert pair.preferences[0][1] == pytest.approx(oracle.compare(x, [A[0]], [B[0]])[0], abs=1e-5)
    pairs = P.PairRMOracle(str(tiny_dir), mode="pairs", max_prompt_tokens=64, max_response_tokens=32)
    assert pairs.compare(x, [A[0]], [B[0]]) == pytest.approx([1 / (1 + math.exp(-(l01 - l10) / 2))], abs=1e-5)
    s = r.scores  # llm-blender's ranking scores; P = sigmoid(s_i - s_j)
    assert r.preferences[0][1] == pytest.approx(1 / (1 + math.exp(-(s[0] - s[1]))), abs=1e-6)
    assert sum(s) == pytest.approx(0.0, abs=1e-5) and len(set(round(v, 6) for v in s)) == 3


def test_missing_and_unexpected_keys_are_named(tiny_dir, weights, tmp_path):
    from safetensors.torch import save_file

    path = copy_of(tiny_dir, tmp_path)
    save_file({k: v for k, v in weights.items() if k != "head_layer.4.bias"}, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: head_layer\.4\.bias; unexpected keys: none") as err:
        P.load_pairrm(path)
    assert str(path) in str(err.value)
    save_file({**weights, "classifier.weight": torch.zeros(1)}, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: none; unexpected keys: classifier\.weight"):
        P.load_pairrm(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weight file"):
        P.load_pairrm(path)


def test_pytorch_model_bin_and_llm_blender_ranker_config(tiny_dir, weights, loaded, tmp_path):
    model, tok = loaded
    want = P.pairrm_logits(model, tok, PROMPTS, A, B)
    path = copy_of(tiny_dir, tmp_path)
    torch.save(dict(weights), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    # llm-blender/PairRM's config.json: the RankerConfig, naming the backbone instead of describing it
    ranker = {
        "ranker_type": "pairranker",
        "model_type": "deberta",
        "model_name": "microsoft/deberta-v3-large",
        "source_maxlength": 1224,
        "candidate_maxlength": 412,
        "n_tasks": 1,
        "drop_out": 0.05,
        "fp16": True,
    }
    (path / "config.json").write_text(json.dumps(ranker))
    model2, tok2 = P.load_pairrm(path)
    assert (model2.config.num_hidden_layers, model2.config.num_attention_heads) == (2, 2)
    torch.testing.assert_close(P.pairrm_logits(model2, tok2, PROMPTS, A, B), want, atol=1e-6, rtol=0)


def test_tokenizer_json_is_used_verbatim(tiny_dir, loaded, tmp_path):
    """PairRM's tokenizer.json normalizer (a sentencepiece charsmap, NFKC-like) must survive loading."""
    _, tok = loaded
    assert tok("\ufb01ne thanks")["input_ids"] != tok("fine thanks")["input_ids"]  # the tiny one is NFC
    path = copy_of(tiny_dir, tmp_path)
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["normalizer"]["normalizers"].insert(0, {"type": "NFKC"})
    (path / "tokenizer.json").write_text(json.dumps(spec))
    _, nfkc = P.load_pairrm(path)
    assert nfkc("\ufb01ne thanks")["input_ids"] == nfkc("fine thanks")["input_ids"]


def test_marker_ids_must_agree_with_the_config(tiny_dir, tmp_path):
    path = copy_of(tiny_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["source_prefix_id"] += 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="source_prefix_id"):
        P.load_pairrm(path)


def test_judge_loads_lazily_and_follows_its_device(tiny_dir, loaded):
    model, tok = loaded
    judge = P.PairRMJudge(str(tiny_dir), batch_size=2)
    assert judge._model is None and judge.device is None
    assert (judge.max_prompt_tokens, judge.max_response_tokens) == (1224, 412)
    got = judge.pair_logits(PROMPTS, A, B)
    torch.testing.assert_close(got, P.pairrm_logits(model, tok, PROMPTS, A, B), atol=1e-5, rtol=0)
    assert next(judge.model.parameters()).device.type == "cpu"
    judge.device = "cpu"
    torch.testing.assert_close(judge.pair_logits(PROMPTS[:1], A[:1], B[:1]), got[:1], atol=1e-5, rtol=0)
    assert judge.pair_logits([], [], []).shape == (0,)
    with pytest.raises(ValueError, match="differ in length"):
        judge.pair_logits(PROMPTS, A, B[:1])
    judge.device = "meta"  # a loaded judge moves when its device changes
    assert next(judge.model.parameters()).device.type == "meta"
    short = P.PairRMJudge(str(tiny_dir), max_prompt_tokens=8, max_response_tokens=6)
    want = P.pairrm_logits(model, tok, PROMPTS, A, B, max_prompt_tokens=8, max_response_tokens=6)
    torch.testing.assert_close(short.pair_logits(PROMPTS, A, B), want, atol=1e-5, rtol=0)
    assert (short.pair_logits(PROMPTS, A, B) - got).abs().max() > 1e-4  # the budgets were applied


def test_dtype(tiny_dir):
    model, tok = P.load_pairrm(tiny_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert P.pairrm_logits(model, tok, PROMPTS, A, B).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        P.load_pairrm(tiny_dir, dtype="int8")
