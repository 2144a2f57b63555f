"""Preference oracles: pairwise model, reward model, user function, weighted mix; by hand and on tiny
random classifiers built on the fly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from callbacks.reward import RewardCallback
from sppo_pl.rewards.classifier import (
    Classifier,
    RewardModelOracle,
    batched_by_length,
    classifier_logits,
    load_classifier,
    pair_input_ids,
    reward_input_ids,
    unused_id,
)
from sppo_pl.rewards.combined import CombinedOracle
from sppo_pl.rewards.function import FunctionOracle, resolve_function
from sppo_pl.rewards.math import MathVerifier
from sppo_pl.rewards.oracle import check_scores, rollout_fields, score_rollouts
from sppo_pl.rewards.pairwise import PairwiseOracle
from sppo_pl.rewards.preference import (
    joint_scores,
    ordered_pairs,
    pair_logit_matrix,
    pairwise_preference,
    weighted_mean,
)
from sppo_pl.types import Rollout


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def rollout(prompt: str, responses: list[str], answer: str | None = None, **fields) -> Rollout:
    return Rollout(prompt, [], responses, [[] for _ in responses], answer, fields=fields)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from sppo_pl.utils.tiny_model import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("models") / "tiny-classifier")


# ---- pure functions ------------------------------------------------------------------------------------
def test_ordered_pairs():
    assert ordered_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert ordered_pairs(3, both_orders=False) == [(0, 1), (0, 2), (1, 2)]


def test_unused_id_is_the_smallest_id_no_input_holds():
    assert unused_id([[0, 1, 5], [2]], 8) == 3
    assert unused_id([[1]], 2) == 0
    with pytest.raises(ValueError, match="every one of the model's 3 token ids is in the batch"):
        unused_id([[0, 2], [1]], 3)


def test_pair_logit_matrix_averages_both_orders_by_hand():
    pairs = ordered_pairs(3)  # l(0,1)=1, l(0,2)=2, l(1,0)=-3, l(1,2)=0, l(2,0)=4, l(2,1)=1
    m = pair_logit_matrix(torch.tensor([1.0, 2.0, -3.0, 0.0, 4.0, 1.0], dtype=torch.float64), pairs, 3)
    # L[0,1] = (1 - -3)/2 = 2, L[0,2] = (2 - 4)/2 = -1, L[1,2] = (0 - 1)/2 = -0.5, antisymmetric, 0 diagonal
    want = [[0.0, 2.0, -1.0], [-2.0, 0.0, -0.5], [1.0, 0.5, 0.0]]
    torch.testing.assert_close(m, torch.tensor(want, dtype=torch.float64))
    p = pairwise_preference(m)
    assert p[0, 1].item() == pytest.approx(sig(2.0)) and p[2, 0].item() == pytest.approx(sig(1.0))
    torch.testing.assert_close(p + p.T, torch.ones(3, 3, dtype=torch.float64))
    # llm-blender's s_i = (1/K) sum_j (M[i, j] - M[j, i]) over the one-order logits M = [[0, 1, 2], [-3, 0, 0],
    # [4, 1, 0]]: (4 - 2)/3, (-4 - 1)/3, (2 + 1)/3; the same as (2/K) sum_j L[i, j]
    torch.testing.assert_close(joint_scores(m), torch.tensor([2 / 3, -5 / 3, 1.0], dtype=torch.float64))


def test_pair_logit_matrix_one_order_and_batched():
    pairs = ordered_pairs(2, both_orders=False)
    m = pair_logit_matrix(torch.tensor([[3.0], [-1.0]]), pairs, 2)
    assert m.tolist() == [[[0.0, 3.0], [-3.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]]]


def test_weighted_mean_by_hand_and_bad_weights():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert weighted_mean(v, [3.0, 1.0]).tolist() == [0.75, 0.25]
    with pytest.raises(ValueError, match="got 1 weights for 2 oracles"):
        weighted_mean(v, [1.0])
    for bad in ([1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]):  # NaN made every P_hat NaN
        with pytest.raises(ValueError, match="weights must be finite, >= 0 and with a positive sum"):
            weighted_mean(v, bad)


def test_check_scores_names_the_source_and_row():
    assert check_scores((1, 2.5), 2, "f") == [1.0, 2.5]
    with pytest.raises(ValueError, match="f returned 1 scores for 2 responses"):
        check_scores([1.0], 2, "f")
    with pytest.raises(ValueError, match="f returned a non-finite score nan for row 1"):
        check_scores([1.0, float("nan")], 2, "f")
    with pytest.raises(ValueError, match="f must return one number per response"):
        check_scores(["a", "b"], 2, "f")


def test_resolve_function():
    assert resolve_function("sppo_pl.rewards.function.brevity")([], ["a b", "c"]) == [-2.0, -1.0]
    with pytest.raises(ValueError, match="reward.oracle.fn='nope.nothing' is not an importable function"):
        resolve_function("nope.nothing")


# ---- classifier oracles --------------------------------------------------------------------------------
def test_batched_logits_equal_one_at_a_time(classifier_dir):
    model, tok = load_classifier(str(classifier_dir))
    inputs = [
        tok(t)["input_ids"] for t in ["What is 1 + 2?", "3", "The answer is \\boxed{12}.", "7 * 8 = 56"]
    ]
    batched = classifier_logits(model, inputs, tok.pad_token_id, batch_size=3)
    single = torch.cat([classifier_logits(model, [x], tok.pad_token_id, batch_size=1) for x in inputs])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert batched.unique().numel() == 4  # a real function of the input


def test_batched_by_length_runs_sorted_batches_in_the_original_order():
    items, seen = ["ccc", "a", "bb", "dddd", "e"], []

    def run(batch):
        seen.append(batch)
        return torch.tensor([len(x) for x in batch], dtype=torch.float64)

    out = batched_by_length(items, len, 2, run)
    assert seen == [["a", "e"], ["bb", "ccc"], ["dddd"]]
    assert out.dtype == torch.float32 and out.tolist() == [3, 1, 2, 4, 1]
    assert batched_by_length([], len, 2, run).shape == (0,)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batched_by_length(items, len, 0, run)


def test_classifier_loads_lazily_and_follows_a_late_device(classifier_dir):
    clf = Classifier(str(classifier_dir))
    assert clf._model is None and clf.device is None
    assert clf.tokenizer.pad_token_id is not None
    assert next(clf.model.parameters()).device.type == "cpu"
    clf.device = "meta"  # set after loading (e.g. by the oracle's place): the loaded model moves
    assert next(clf.model.parameters()).device.type == "meta"


def test_reward_model_scores_and_bradley_terry(classifier_dir):
    rm = RewardModelOracle(str(classifier_dir), batch_size=2, scale=2.0)
    model, tok = load_classifier(str(classifier_dir))
    r = rollout("What is 2 + 2?", ["4", "\\boxed{4}", "five"])
    score_rollouts(rm, [r])
    want = [
        classifier_logits(model, [reward_input_ids(tok, r.prompt, y, 2048)], tok.pad_token_id)[0].item()
        for y in r.responses
    ]
    assert r.scores == pytest.approx(want, abs=1e-5)
    s = r.scores  # P_hat_0 = (1/2 + sig(2 (s0 - s1)) + sig(2 (s0 - s2))) / 3
    assert r.p_hat[0] == pytest.approx((0.5 + sig(2 * (s[0] - s[1])) + sig(2 * (s[0] - s[2]))) / 3)
    assert rm.compare([r.prompt], ["4"], ["five"]) == pytest.approx([sig(2 * (s[0] - s[2]))], abs=1e-5)


def test_a_reward_model_without_a_pad_token_is_pooled_at_each_inputs_last_token(classifier_dir, tmp_path):
    """A tokenizer without a pad token, a template that ends in EOS: padding with EOS made the model's
    pooling (the last token that is not the pad token) read every input one token early, the EOS dropped.
    Each score must be the model's logit of its input alone, unpadded (pooled at its last token)."""
    import json
    import shutil

    from transformers import AutoModelForSequenceClassification

    path = shutil.copytree(classifier_dir, tmp_path / "no-pad")
    for name, key in (("tokenizer_config.json", "pad_token"), ("config.json", "pad_token_id")):
        data = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**data, key: None}))
    template = path / "chat_template.jinja"  # the last turn ends in EOS, nothing after it
    template.write_text(template.read_text().replace("'<|im_end|>' + '\\n'", "'<|im_end|>'"))
    rm = RewardModelOracle(str(path), batch_size=3)
    _, tok = load_classifier(str(path))
    r = rollout("What is 2 + 2?", ["4", "\\boxed{4}", "it is five"])
    inputs = [reward_input_ids(tok, r.prompt, y, 2048) for y in r.responses]
    assert all(ids[-1] == tok.eos_token_id for ids in inputs) and len({len(x) for x in inputs}) > 1
    alone = AutoModelForSequenceClassification.from_pretrained(path).eval()  # batch of 1, no pad: token -1
    want = [alone(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in inputs]
    score_rollouts(rm, [r])
    assert r.scores == pytest.approx(want, abs=1e-5)
    # no pad id invented for the tokenizer; each batch's own was the model's for that batch only
    assert rm.model.tokenizer.pad_token_id is None and rm.model.model.config.pad_token_id is None


def test_pairwise_preferences_average_both_orders_of_the_model(classifier_dir):
    pw = PairwiseOracle(str(classifier_dir), batch_size=4)
    r = rollout("What is 2 + 2?", ["4", "\\boxed{4}", "five"])
    ((scores, pref),) = pw.judge([r])
    x = [r.prompt]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        ij = pw.pair_logits(x, [r.responses[i]], [r.responses[j]])[0].item()
        ji = pw.pair_logits(x, [r.responses[j]], [r.responses[i]])[0].item()
        assert ij != ji  # order matters to the model: averaging is not a no-op
        assert pref[i, j].item() == pytest.approx(sig((ij - ji) / 2), abs=1e-5)
        assert pw.compare(x, [r.responses[i]], [r.responses[j]]) == pytest.approx(
            [pref[i, j].item()], abs=1e-5
        )
    torch.testing.assert_close(pref + pref.T, torch.ones(3, 3, dtype=torch.float64))
    assert torch.diagonal(pref).tolist() == [0.5] * 3
    score_rollouts(pw, [r])
    assert r.p_hat == pytest.approx(pref.mean(dim=1).tolist()) and r.scores == pytest.approx(scores)


def test_pairs_mode_is_independent_of_the_other_candidates_and_joint_mode_is_not(classifier_dir):
    groups = [["4", "\\boxed{4}", "five"], ["4", "\\boxed{4}", "22 + 2 = 24"]]
    for mode, same in (("pairs", True), ("joint", False)):
        pw = PairwiseOracle(str(classifier_dir), mode=mode)
        p01 = [pw.judge([rollout("What is 2 + 2?", g)])[0][1][0, 1].item() for g in groups]
        assert (abs(p01[0] - p01[1]) < 1e-6) is same, (mode, p01)


def test_one_order_judges_half_the_pairs(classifier_dir):
    pw = PairwiseOracle(str(classifier_dir), both_orders=False)
    seen = []
    real = pw.model.logits
    pw.model.logits = lambda inputs: seen.append(len(inputs)) or real(inputs)
    ((_, pref),) = pw.judge([rollout("q", ["a", "b", "c", "d"])])
    assert seen == [6]  # 4 * 3 / 2
    ab = pw.pair_logits(["q"], ["a"], ["b"])[0].item()
    assert pref[0, 1].item() == pytest.approx(sig(ab), abs=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_pair_log_odds_names_the_oracle_and_the_pair(classifier_dir, bad):
    """A NaN would pass through P_hat into the loss, where only the loss check would stop it, unexplained."""
    pw = PairwiseOracle(str(classifier_dir))
    real = pw.model.logits
    pw.model.logits = lambda inputs: real(inputs).index_fill(0, torch.tensor([3]), bad)
    match = rf"PairwiseOracle gave a non-finite log-odds {bad} for pair 3 of 6 \(prompt 'q', responses 'b' and 'c'\)"
    with pytest.raises(ValueError, match=match):
        pw.judge([rollout("q", ["a", "b", "c"])])  # pairs (0, 1) (0, 2) (1, 0) (1, 2) ...: pair 3 is (1, 2)
    with pytest.raises(ValueError, match="non-finite log-odds"):
        pw.compare(["q"] * 4, ["a"] * 4, ["b"] * 4)


def test_classifier_with_several_outputs_is_refused(tmp_path, classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = {0: "worse", 1: "better"}
    model = AutoModelForSequenceClassification.from_pretrained(
        classifier_dir,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        ignore_mismatched_sizes=True,
    )
    model.save_pretrained(tmp_path / "two")
    AutoTokenizer.from_pretrained(classifier_dir).save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="needs one output \\(num_labels=1\\), got num_labels=2"):
        load_classifier(str(tmp_path / "two"))


def test_pairwise_bad_mode():
    with pytest.raises(ValueError, match="reward.oracle.mode must be 'pairs' or 'joint'"):
        PairwiseOracle("/models/x", mode="rank")


# ---- function and combination --------------------------------------------------------------------------
def keyword_echo(prompts, responses, answer, topic):
    """Score 1 when the response names the row's topic and its answer."""
    return [float(t in y and a in y) for y, a, t in zip(responses, answer, topic)]


def test_function_oracle_gets_answers_and_dataset_fields():
    fn = FunctionOracle(f"{__name__}.keyword_echo", preference="hard", verifier=True)
    rs = [
        rollout("q1", ["cats 3", "3"], answer="3", topic="cats"),
        rollout("q2", ["dogs", "dogs 5"], "5", topic="dogs"),
    ]
    assert rollout_fields(rs) == {"answer": ["3", "5"], "topic": ["cats", "dogs"]}
    score_rollouts(fn, rs)
    assert [r.scores for r in rs] == [[1.0, 0.0], [0.0, 1.0]]
    assert [r.p_hat for r in rs] == [[0.75, 0.25], [0.25, 0.75]]
    assert fn.is_verifier


def test_function_oracle_errors_name_the_function():
    fn = FunctionOracle(lambda prompts, responses, **f: [1.0])
    with pytest.raises(ValueError, match="reward.oracle.fn=.*<lambda>.*returned 1 scores for 2 responses"):
        score_rollouts(fn, [rollout("q", ["a", "b"])])
    with pytest.raises(ValueError, match="reward.oracle.preference must be"):
        FunctionOracle("sppo_pl.rewards.function.brevity", preference="soft")


def scores_as_dict(prompts, responses, **fields):
    """A user function that returns {row: score}: once silently read as its keys."""
    return {i: float(len(y)) for i, y in enumerate(responses)}


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        ({0: 5.0, 1: 7.0}, r"it returned a dict of length 2 \(\{0: 5.0, 1: 7.0\}\)"),
        ("57", r"it returned a str of length 2 \('57'\)"),
        ({5.0, 7.0}, r"it returned a set of length 2"),
        ((s for s in [5.0, 7.0]), r"it returned a generator \("),
        (torch.tensor([[5.0], [7.0]]), r"it returned a Tensor of shape \(2, 1\)"),
        (np.array([[5.0], [7.0]]), r"it returned a ndarray of shape \(2, 1\)"),
        (np.array(["5", "7"]), r"whose row 0 is a str_"),
        ([5.0, None], r"it returned a list of length 2 \(\[5.0, None\]\), whose row 1 is a NoneType"),
        (["5", "7"], r"whose row 0 is a str of length 1 \('5'\)"),
        ([5.0, 1j], r"whose row 1 is a complex"),
        (5.0, r"it returned a float \(5.0\)"),
    ],
)
def test_function_oracle_refuses_what_is_not_a_sequence_of_numbers(returned, match):
    fn = FunctionOracle(lambda prompts, responses, **f: returned)
    name = r"reward\.oracle\.fn=tests\.test_oracles\..*<lambda> must return one number per response: "
    expected = r"; expected a list, tuple, 1-D tensor or array of 2 finite numbers, one per response"
    with pytest.raises(ValueError, match=name + ".*" + match + ".*" + expected):
        score_rollouts(fn, [rollout("q", ["hello", "goodbye"])])


def test_function_oracle_names_its_dotted_path_and_what_it_returned():
    fn = FunctionOracle(f"{__name__}.scores_as_dict")
    match = (
        r"reward\.oracle\.fn=tests\.test_oracles\.scores_as_dict must return one number per response: it returned a "
        r"dict of length 2 \(\{0: 5.0, 1: 7.0\}\); expected a list, tuple, 1-D tensor or array of 2 finite"
    )
    with pytest.raises(ValueError, match=match):
        score_rollouts(fn, [rollout("q", ["hello", "goodbye"])])
    with pytest.raises(ValueError, match=r"returned 3 scores for 2 responses \(a list of length 3"):
        FunctionOracle(lambda p, r, **f: [1.0, 2.0, 3.0]).checked_score(["q", "q"], ["a", "b"])


@pytest.mark.parametrize(
    "returned",
    [
        [5.0, 7],
        (5.0, 7.0),
        [True, False],
        torch.tensor([5.0, 7.0]),
        torch.tensor([1, 0]),
        np.array([5.0, 7.0], dtype=np.float32),
        np.array([True, False]),
        [np.float32(5.0), np.int64(7)],
        [torch.tensor(5.0), np.array(7.0)],
    ],
)
def test_function_oracle_reads_sequences_of_real_numbers(returned):
    fn = FunctionOracle(lambda prompts, responses, **f: returned)
    scores = fn.checked_score(["q", "q"], ["hello", "goodbye"])
    assert scores == [float(s) for s in returned] and all(type(s) is float for s in scores)


def test_combined_oracle_mixes_preferences_by_weight():
    mix = CombinedOracle(
        {
            "correct": MathVerifier(),
            "brief": FunctionOracle("sppo_pl.rewards.function.brevity", scale=1.0),
        },
        weights={"correct": 3.0, "brief": 1.0},
    )
    r = rollout("What is 2 + 2?", ["\\boxed{4}", "it is \\boxed{5}"], answer="4")
    score_rollouts(mix, [r])
    # correct: scores [1, 0], P[0,1] = 1; brief: scores [-1, -3], P[0,1] = sig(2)
    p01 = (3 * 1.0 + 1 * sig(2.0)) / 4
    assert r.p_hat == pytest.approx([(0.5 + p01) / 2, (0.5 + 1 - p01) / 2])
    assert r.scores == pytest.approx([(3 * 1 - 1) / 4, (3 * 0 - 3) / 4])
    assert mix.compare([r.prompt], r.responses[:1], r.responses[1:], answer=["4"]) == pytest.approx([p01])


def test_combined_oracle_checks_names_and_weights():
    with pytest.raises(
        ValueError, match="reward.oracle.weights names \\['x'\\], not in reward.oracle.oracles"
    ):
        CombinedOracle({"a": MathVerifier()}, weights={"x": 1.0})
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "2"):  # NaN, inf: every P_hat was NaN
        with pytest.raises(
            ValueError, match="reward.oracle.weights must be finite numbers >= 0 with a positive"
        ):
            CombinedOracle({"a": MathVerifier(), "b": MathVerifier()}, weights={"a": bad, "b": 0.0})


@pytest.mark.parametrize("scale", [-1.0, 0, float("nan"), float("inf"), "2", True])
def test_a_function_oracles_scale_is_checked(scale):
    """scale=-1 inverted every Bradley-Terry preference silently; "2" failed inside torch, naming nothing."""
    from sppo_pl.rewards.function import FunctionOracle

    with pytest.raises(
        ValueError, match=r"reward.oracle.scale must be a finite number > 0 \(a negative scale"
    ):
        FunctionOracle("sppo_pl.rewards.function.brevity", scale=scale)
    assert FunctionOracle("sppo_pl.rewards.function.brevity", scale=2).scale == 2.0


def test_base_compare_is_the_preference_of_the_two_scores():
    class Length(RewardCallback):
        def score(self, prompts, responses, **fields):
            return [float(len(y)) for y in responses]

    class Short(RewardCallback):
        def score(self, prompts, responses, **fields):
            return [1.0]

    assert Length().compare(["q", "q"], ["aaa", "a"], ["a", "a"]) == pytest.approx([sig(2.0), 0.5])
    with pytest.raises(ValueError, match="Short returned 1 scores for 2 responses"):
        score_rollouts(Short(), [rollout("q", ["a", "b"])])


def test_a_callback_without_an_oracle_is_refused_when_built():
    with pytest.raises(ValueError, match=r"RewardCallback has no oracle: give reward.oracle"):
        RewardCallback()


def test_the_callback_wraps_its_oracle_and_keeps_the_preference_matrix():
    """Scores, then K x K preferences, then P_hat: the rollout keeps all three."""
    cb = RewardCallback(MathVerifier(numeric=True), include_self=False)
    r = rollout("What is 2 + 2?", ["\\boxed{4}", "5", "4"], answer="4")
    cb.score_rollouts([r])
    assert cb.oracle.is_verifier and not cb.is_verifier  # the flags are read from the oracle
    assert r.scores == [1.0, 0.0, 1.0]
    assert r.preferences == [[0.5, 1.0, 0.5], [0.0, 0.5, 0.0], [0.5, 1.0, 0.5]]
    assert r.p_hat == [0.75, 0.0, 0.75]  # the K - 1 others: (1 + 1/2) / 2, 0, (1/2 + 1) / 2
    own = rollout("What is 2 + 2?", ["\\boxed{4}", "5", "4"], answer="4")
    score_rollouts(MathVerifier(numeric=True), [own])
    assert own.p_hat == pytest.approx([2 / 3, 1 / 6, 2 / 3])  # include_self: (1/2 + 1 + 1/2) / 3, ...


def test_every_reward_config_wraps_an_oracle_the_eval_can_build_alone(tmp_path):
    """sppo_pl.eval builds the oracle without the Lightning callback; a user's callback class is its own."""
    from omegaconf import OmegaConf

    from sppo_pl.rewards.oracle import Oracle, oracle_from_config

    cfg = OmegaConf.create(
        {
            "_target_": "callbacks.reward.RewardCallback",
            "oracle": {"_target_": "sppo_pl.rewards.math.MathVerifier"},
        }
    )
    oracle = oracle_from_config(cfg)
    assert type(oracle) is MathVerifier and not isinstance(oracle, RewardCallback)
    own = OmegaConf.create({"_target_": f"{__name__}.LengthCallback", "oracle": None})
    made = oracle_from_config(own)
    assert type(made) is LengthCallback and isinstance(made, Oracle) and made.oracle is made


class LengthCallback(RewardCallback):
    def score(self, prompts, responses, **fields):
        return [float(len(y)) for y in responses]


def test_the_docs_plain_oracle_example_runs_as_written(tmp_path, monkeypatch):
    """docs/oracles.md: the Oracle subclass and its command, composed and scored."""
    import re
    import shlex
    import sys

    from sppo_pl.rewards.oracle import oracle_from_config
    from tests.test_config import make_cfg
    from tests.test_train_cli import ROOT

    text = (ROOT / "docs" / "oracles.md").read_text().split("## Your own oracle")[1]
    (tmp_path / "my_oracle.py").write_text(re.search(r"```python\n(.*?)```", text, re.S).group(1))
    command = shlex.split(re.search(r"```bash\n(.*?)```", text, re.S).group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_oracle", None)
    cfg = make_cfg(tmp_path, command[2:])
    oracle = oracle_from_config(cfg.reward)
    assert type(oracle).__name__ == "MentionsAnswer"
    r = rollout("What is 2 + 2?", ["it is 4", "5", "4!"], answer="4")
    RewardCallback(oracle, include_self=True).score_rollouts([r])
    assert r.scores == [1.0, 0.0, 1.0] and r.p_hat == pytest.approx([2 / 3, 1 / 6, 2 / 3])


def test_a_long_reward_input_keeps_the_prompt_and_closing_tokens_and_cuts_the_response(classifier_dir):
    """Cutting from the left would drop the question (and a leading [CLS]/BOS): the response's end goes."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(classifier_dir)
    prompt, response = "What is 2 + 2?", " ".join(["four"] * 200)
    full = reward_input_ids(tok, prompt, response, 10_000)
    ids = reward_input_ids(tok, prompt, response, 40)
    assert len(full) > 40 >= len(ids) > 30
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\nfour four")
    assert text.endswith(" four f<|im_end|>\n") and ids[-2:] == full[-2:]  # the template's closing tokens
    with pytest.raises(ValueError, match=r"reward.oracle.max_length=8: the prompt with the template takes"):
        reward_input_ids(tok, prompt, response, 8)


def test_an_encoder_reward_model_without_a_chat_template_reads_a_text_pair(tmp_path):
    """[CLS] prompt [SEP] response [SEP], as OpenAssistant's DeBERTa reward models are called
    (``tokenizer(question, answer)``), also when the response is cut; a tokenizer that does not separate a
    pair's members (GPT-2, Llama without a template) reads prompt + newline + response."""
    from transformers import BertTokenizerFast

    from sppo_pl.utils.tiny_model import build_tokenizer

    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "what", "is", "2", "+", "?", "four"])
    )
    tok = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    prompt, sep = "What is 2 + 2?", tok.sep_token_id
    assert reward_input_ids(tok, prompt, "four four", 64) == tok(prompt, "four four")["input_ids"]
    ids = reward_input_ids(tok, prompt, " ".join(["four"] * 20), 12)
    assert len(ids) == 12 and ids.count(sep) == 2 and ids[-1] == sep
    assert tok.decode(ids) == "[CLS] what is 2 + 2? [SEP] four four four [SEP]"
    plain = build_tokenizer()
    plain.chat_template = None
    assert plain.decode(reward_input_ids(plain, "What is 2?", "4", 64)) == "What is 2?\n4"


def test_a_decoder_tokenizer_that_repeats_bos_in_a_pair_reads_prompt_newline_response():
    """Llama-2's pair is ``<s> x <s> y``: more specials than one text, but no separator."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "h": 3, "i": 4, "t": 5, "e": 6, "r": 7, "\u2581": 8, "\n": 9}
    tok = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    assert tok.num_special_tokens_to_add(pair=True) > tok.num_special_tokens_to_add(pair=False)
    assert reward_input_ids(tok, "hi", "there", 64) == tok("hi\nthere")["input_ids"]


def test_a_reward_model_with_segment_embeddings_gets_the_pairs_token_type_ids(tmp_path):
    """BERT / ELECTRA reward models are called as ``model(**tokenizer(question, answer))``: the answer in
    segment 1. The oracle's score is that call's logit, batched and padded beside a shorter input."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "what", "is", "2", "+", "?", "four", "five", "the", "answer"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    tok = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=1, type_vocab_size=2, initializer_range=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    prompts, responses = ["What is 2 + 2?", "What is 2 + 2?"], ["the answer is four", "five"]
    with torch.no_grad():
        want = [
            model(**tok(x, y, return_tensors="pt")).logits[0, 0].item() for x, y in zip(prompts, responses)
        ]
    got = RewardModelOracle(str(tmp_path / "rm"), max_length=64).score(prompts, responses)
    assert got == pytest.approx(want, abs=1e-5)
    with torch.no_grad():  # what the oracle gave without the segment ids
        alone = tok(prompts[0], responses[0], return_tensors="pt")
        del alone["token_type_ids"]
        assert abs(model(**alone).logits[0, 0].item() - want[0]) > 1e-4


@pytest.fixture(scope="module", params=["bert", "roberta"])
def short_position_classifier(request, tmp_path_factory):
    """A tiny classifier with learned absolute positions, only 48 of them, and the longest input it takes:
    BERT 48; RoBERTa 47 with pad id 0, as its positions start after the pad id (1 .. 47)."""
    import transformers

    from sppo_pl.utils.tiny_model import build_tokenizer

    out = tmp_path_factory.mktemp("models") / f"tiny-{request.param}"
    tok = build_tokenizer()
    name = {"bert": "Bert", "roberta": "Roberta"}[request.param]
    config = getattr(transformers, f"{name}Config")(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=48,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    getattr(transformers, f"{name}ForSequenceClassification")(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out, 48 if request.param == "bert" else 47


def test_inputs_are_cut_to_the_models_learned_positions(short_position_classifier, caplog):
    """A reward model with max_length 2048 and a pairwise model with 512-token budgets over a 48-position
    model: each input is cut to fit (the reward model's with a warning) instead of failing in the model."""
    path, limit = short_position_classifier
    long = " ".join(["four"] * 100)
    r = rollout("What is 2 + 2?", [long, "4", long + " five"])
    with caplog.at_level("WARNING"):
        score_rollouts(RewardModelOracle(str(path)), [r])
    assert "reward.oracle.max_length=2048, but" in caplog.text and f"takes {limit} positions" in caplog.text
    r = rollout("What is 2 + 2?", [long, "4", long + " five"])
    score_rollouts(PairwiseOracle(str(path)), [r])
    assert all(0.0 < p < 1.0 for p in r.p_hat)


def test_pair_input_fits_the_position_limit_with_one_budget_for_both_candidates():
    special, markers = ([1], [2]), [[7], [8], [9]]
    a, b = list(range(10, 20)), [30, 31]
    # room for the candidates: 12 - 1 - 1 - 2 - 1 - 1 - 1 = 5; b keeps its 2, a gets 3
    ids = pair_input_ids([3, 3], a, b, markers, special, 512, 512, max_total=12)
    assert ids == [1, 7, 3, 3, 8, 10, 11, 12, 9, 30, 31, 2]
    ids = pair_input_ids([3, 3], a, a, markers, special, 512, 512, max_total=12)  # both long: 2 each
    assert ids == [1, 7, 3, 3, 8, 10, 11, 9, 10, 11, 2]
    assert pair_input_ids([3, 3], a, b, markers, special, 512, 4) == [
        1,
        7,
        3,
        3,
        8,
        10,
        11,
        12,
        13,
        9,
        30,
        31,
        2,
    ]
    with pytest.raises(ValueError, match="max_prompt_tokens=512 the prompt leaves no room"):
        pair_input_ids([3] * 20, a, b, markers, special, 512, 512, max_total=12)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: RewardModelOracle("m", scale=-1.0),
            "reward.oracle.scale must be a finite number > 0 \\(a negative",
        ),
        (
            lambda: RewardModelOracle("m", max_length=0),
            "reward.oracle.max_length must be a whole number >= 1",
        ),
        (
            lambda: RewardModelOracle("m", dtype="fp16"),
            "reward.oracle.dtype must name a floating torch dtype",
        ),
        (lambda: PairwiseOracle("m", max_prompt_tokens=0), "reward.oracle.max_prompt_tokens must be a whole"),
        (lambda: PairwiseOracle("m", max_response_tokens=1.5), "reward.oracle.max_response_tokens must be"),
        (lambda: PairwiseOracle("m", batch_size=0), "reward.oracle.batch_size must be a whole number >= 1"),
    ],
)
def test_bad_oracle_settings_are_refused_when_built(build, match):
    """Before any model loads (the path "m" is never read): not at the first scoring, after generation."""
    with pytest.raises(ValueError, match=match):
        build()


def test_win_rate_is_computed_on_a_rank_without_comparisons_when_another_rank_has_some():
    """val_win.compute() syncs over the ranks: a rank whose prompts had no starting response must still
    take it when any other rank compared (decided by a reduction over the ranks), or the others hang."""
    from types import SimpleNamespace

    reward = RewardCallback(FunctionOracle(fn=lambda prompts, responses, **kw: [0.0] * len(prompts)))
    asked = []
    strategy = SimpleNamespace(
        reduce_boolean_decision=lambda local, all=True: asked.append((local, all)) or True
    )
    trainer = SimpleNamespace(
        current_epoch=1, state=SimpleNamespace(fn="validate"), sanity_checking=False, strategy=strategy
    )
    logged = {}
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda name, v, **kw: logged.update({name: v}))
    reward.on_validation_epoch_start(trainer, module)
    synced = []
    reward.val_win.compute = lambda: synced.append(True) or torch.tensor(0.25)  # stands in for the collective
    reward.on_validation_epoch_end(trainer, module)
    assert asked == [(False, False)] and synced == [True] and logged["val/win_rate"] == 0.25


class _Recorder(FunctionOracle):
    """A scoring oracle that records what each win-rate comparison was given."""

    def __init__(self):
        super().__init__(fn=lambda prompts, responses, **kw: [0.0] * len(prompts))
        self.compared = []

    def compare(self, prompts, a, b, **fields):
        self.compared += list(zip(prompts, a, b))
        return [1.0] * len(prompts)


def _validate(reward, epoch, batch):
    from types import SimpleNamespace

    trainer = SimpleNamespace(
        current_epoch=epoch,
        state=SimpleNamespace(fn="validate"),
        sanity_checking=False,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda local, all=True: local),
    )
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda *a, **kw: None)
    reward.on_validation_epoch_start(trainer, module)
    reward.on_validation_batch_end(trainer, module, {"responses": batch.pop("responses")}, batch, 0)
    reward.on_validation_epoch_end(trainer, module)


def test_win_rate_compares_chat_prompts_that_share_a_last_turn_with_their_own_start():
    """Two chat prompts ending in the same user turn (another system turn or history) have the same
    ``prompt`` text; each is compared with the starting response to its own tokens, not the last one's."""
    reward = RewardCallback(_Recorder())
    batch = {"prompt": ["Hi?", "Hi?"], "prompt_ids": [[1, 2, 9], [3, 9]], "answer": [None, None]}
    _validate(reward, 0, {**batch, "responses": ["start a", "start b"]})
    _validate(reward, 1, {**batch, "responses": ["now a", "now b"]})
    assert reward.oracle.compared == [("Hi?", "now a", "start a"), ("Hi?", "now b", "start b")]
    fresh = RewardCallback(_Recorder())  # a resumed run compares with the same starts
    fresh.load_state_dict(reward.state_dict())
    _validate(fresh, 2, {**batch, "responses": ["later a", "later b"]})
    assert fresh.oracle.compared == [("Hi?", "later a", "start a"), ("Hi?", "later b", "start b")]


def test_a_padding_repeat_does_not_replace_its_prompts_starting_response():
    """On several ranks the last prompts are repeated (weight 0) to even the shards; the merge of the
    ranks' starting responses must keep the owner's, whatever the repeat generated."""
    reward = RewardCallback(_Recorder())
    batch = {
        "prompt": ["Hi?", "Hi?"],
        "prompt_ids": [[1, 9], [1, 9]],
        "answer": [None, None],
        "val_weight": [1.0, 0.0],
    }
    _validate(reward, 0, {**batch, "responses": ["owner's", "repeat's"]})
    assert reward.start_responses == {"1 9": "owner's"}


def test_a_checkpoint_that_kept_starting_responses_by_text_still_gives_the_win_rate():
    reward = RewardCallback(_Recorder())
    reward.load_state_dict({"start_responses": {"What is 1 + 1?": "2"}})
    batch = {"prompt": ["What is 1 + 1?"], "prompt_ids": [[5, 6]], "answer": ["2"]}
    _validate(reward, 1, {**batch, "responses": ["3"]})
    assert reward.oracle.compared == [("What is 1 + 1?", "3", "2")]
