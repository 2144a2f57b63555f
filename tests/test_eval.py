"""Evaluation: pass@k and mean@n by hand, what ``policy=`` accepts, and ``python -m sppo_pl.eval`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sppo_pl.eval import check_pass_at, check_same_architecture, format_eval_table, resolve_policy
from sppo_pl.metrics import greedy_metrics, pass_at_k, sample_metrics
from tests.test_train_cli import only_run_dir, run_train


@pytest.mark.parametrize(
    ("n", "c", "k", "want"),
    [
        (4, 0, 1, 0.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 3, 2, 1.0),  # fewer wrong samples than k: a draw of 2 always holds a correct one
        (4, 4, 4, 1.0),
    ],
)
def test_pass_at_k_by_hand(n, c, k, want):
    assert math.isclose(pass_at_k(n, c, k), want)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="correct <= n"):
        pass_at_k(4, 5, 1)


def test_sample_metrics_of_a_verifier_and_of_a_scorer():
    grid = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    got = sample_metrics(grid, verifier=True, pass_at=[1, 2, 4])
    assert got["mean@4"] == pytest.approx(5 / 12)
    assert got["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)  # pass@1 is the mean accuracy
    assert got["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert got["pass@4"] == pytest.approx(2 / 3)
    assert sample_metrics(torch.tensor([[-1.0, 3.0]]), verifier=False, pass_at=[2]) == {"reward_mean@2": 1.0}
    with pytest.raises(ValueError, match="0 or 1"):
        sample_metrics(torch.tensor([[0.5, 1.0]]), verifier=True, pass_at=[1])
    assert greedy_metrics([1.0, 0.0, 1.0, 1.0], verifier=True) == {"acc": 0.75}
    assert greedy_metrics([2.0, -1.0], verifier=False) == {"reward_mean": 0.5}


def test_pass_at_must_fit_the_samples():
    assert (
        check_pass_at(None, 4) == [4] and check_pass_at([1, 2], 4) == [1, 2] and check_pass_at(None, 0) == []
    )
    with pytest.raises(ValueError, match=r"eval.pass_at \[8\]"):
        check_pass_at([1, 8], 4)
    assert check_pass_at(4, 4) == [4]  # eval.pass_at=4 on the command line
    for bad in ("4", [1.5], True):
        with pytest.raises(ValueError, match=r"eval.pass_at must be null, a whole number or a list of them"):
            check_pass_at(bad, 4)


def test_the_start_model_is_given_the_policys_own_or_model_path(tmp_path, caplog):
    from omegaconf import OmegaConf

    from sppo_pl.eval import Policy, start_model

    def cfg(start=None, compare=True):
        return OmegaConf.create(
            {"start_model": start, "eval": {"compare_to_start": compare}, "model": {"path": "/m"}}
        )

    bare, from_run = Policy(tmp_path, False, None), Policy(tmp_path, False, "/run/start")
    assert start_model(cfg(), None) == ("/m", True)  # no policy: model.path alone
    assert start_model(cfg("/given"), from_run) == ("/given", False)
    assert start_model(cfg(), from_run) == ("/run/start", False)
    assert start_model(cfg(compare=False), bare) == (None, False)
    with caplog.at_level("WARNING", logger="sppo_pl.eval"):
        assert start_model(cfg(), bare) == ("/m", True)  # a bare HF directory: compared with model.path
    assert "records no start model; comparing it with model.path" in caplog.text


def _hf_dir(path: Path, **config) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, **config})
    )
    return path


def test_policy_may_be_a_hf_dir_a_run_dir_or_a_checkpoint(tmp_path):
    hf = _hf_dir(tmp_path / "plain")
    assert resolve_policy(str(hf)) == type(resolve_policy(str(hf)))(hf, False, None)
    run = tmp_path / "run"
    _hf_dir(run / "hf_model")
    (run / "config_resolved.yaml").write_text("model:\n  path: /models/base\n")
    got = resolve_policy(str(run))
    assert (got.path, got.is_checkpoint, got.start_model) == (run / "hf_model", False, "/models/base")
    ckpt = tmp_path / "bare_run" / "checkpoints" / "last.ckpt"  # a run without hf_model: its checkpoint
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {"global_step": 2, "hyper_parameters": {"model_path": "/models/start"}, "state_dict": {}}, ckpt
    )
    for given in (tmp_path / "bare_run", ckpt):
        got = resolve_policy(str(given))
        assert (got.path, got.is_checkpoint, got.start_model) == (ckpt, True, "/models/start")
        assert got.run_dir is None  # no config_resolved.yaml
    (tmp_path / "bare_run" / "config_resolved.yaml").write_text("model:\n  path: /models/base\n")
    assert resolve_policy(str(ckpt)).run_dir == tmp_path / "bare_run"
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face model directory"):
        resolve_policy(str(tmp_path / "bare_run" / "checkpoints"))
    ckpt.rename(
        ckpt.with_name("epoch_01.ckpt")
    )  # last.ckpt gone: the run's newest checkpoint, as a resume takes
    got = resolve_policy(str(tmp_path / "bare_run"))
    assert (got.path, got.is_checkpoint) == (ckpt.with_name("epoch_01.ckpt"), True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_policy(str(tmp_path / "nowhere"))


def test_a_run_evaluated_on_another_held_out_split_is_refused(tmp_path):
    """A run's config_resolved.yaml says how its test split was held out; an evaluation whose data.dataset
    (same loader) differs, e.g. another split seed or size, would score prompts the policy trained on."""
    from omegaconf import OmegaConf

    from sppo_pl.eval import check_run_data

    run = tmp_path / "run"
    _hf_dir(run / "hf_model")
    dataset = {"_target_": "sppo_pl.data.local.local_splits", "train": "p.jsonl", "test_size": 64, "seed": 3}
    OmegaConf.save({"model": {"path": "/m"}, "data": {"dataset": dataset}}, run / "config_resolved.yaml")
    policy = resolve_policy(str(run / "hf_model"))
    assert policy.run_dir == run == resolve_policy(str(run)).run_dir

    def data(**changes):
        return OmegaConf.create({"dataset": dataset | changes})

    check_run_data(data(), policy.run_dir)  # the same split
    check_run_data(data(_target_="sppo_pl.data.gsm8k.gsm8k_splits"), policy.run_dir)  # another dataset
    check_run_data(data(seed=0), None)  # a bare model directory: nothing to compare
    with pytest.raises(
        ValueError,
        match=r"data.dataset \{'seed': 3, 'test_size': 64\}.*has \{'seed': 0, "
        r"'test_size': 20\}.*evaluate with data.dataset.seed=3 data.dataset.test_size=64",
    ):
        check_run_data(data(seed=0, test_size=20), policy.run_dir)


def test_a_policy_of_another_architecture_is_refused_for_the_win_rate(tmp_path):
    start, same, other = (_hf_dir(tmp_path / n, hidden_size=h) for n, h in (("a", 64), ("b", 64), ("c", 128)))
    check_same_architecture(str(start), str(same))
    with pytest.raises(ValueError, match=r"differ in \['hidden_size'\]"):
        check_same_architecture(str(start), str(other))


def test_eval_table_has_a_row_per_model():
    table = format_eval_table(
        {"start": {"acc": 0.5}, "policy": {"acc": 0.75, "win_rate": 0.6}}, {"start": "a"}
    )
    assert table.splitlines()[0] == "| model | acc | win_rate |"
    assert "| start (a) | 0.5000 |  |" in table and "| policy (None) | 0.7500 | 0.6000 |" in table


def _eval(tmp_path: Path, task: str, *overrides: str) -> tuple[dict, list[dict]]:
    run_train(tmp_path, "experiment=smoke", f"task_name={task}", *overrides, entry=("-m", "sppo_pl.eval"))
    out = only_run_dir(tmp_path, task)
    assert (out / "eval.md").read_text().startswith("| model |")
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    return json.loads((out / "eval.json").read_text()), rows


@pytest.mark.slow
def test_eval_of_a_trained_run_through_every_policy_form(tmp_path):
    run_train(tmp_path, "experiment=smoke", "optim.optimizer.lr=3e-3")
    run = only_run_dir(tmp_path, "smoke")
    brevity = ("reward=function", "eval.samples=2")  # scores that differ between responses: -(words)
    res, rows = _eval(tmp_path, "from_run", f"policy={run}", *brevity)
    assert res["n_prompts"] == len(rows) == 16 and res["policy"] == str(run / "hf_model")
    start, policy = res["metrics"]["start"], res["metrics"]["policy"]
    words = [[-len(r[role]["greedy"].split()) for r in rows] for role in ("start", "policy")]
    assert start["reward_mean"] == pytest.approx(sum(words[0]) / 16)
    assert policy["reward_mean"] == pytest.approx(sum(words[1]) / 16)
    samples = [-len(y.split()) for r in rows for y in r["policy"]["samples"]]
    assert policy["reward_mean@2"] == pytest.approx(sum(samples) / 32)
    bt = [1 / (1 + math.exp(s - p)) for s, p in zip(*words)]  # Bradley-Terry of policy vs start
    assert policy["win_rate"] == pytest.approx(sum(bt) / 16)
    assert any(r["start"]["greedy"] != r["policy"]["greedy"] for r in rows), "training changed nothing"
    # the same weights however they arrive: streamed from the checkpoint, or loaded from hf_model directly
    _, from_ckpt = _eval(tmp_path, "from_ckpt", f"policy={run}/checkpoints/last.ckpt", "eval.samples=0")
    _, direct = _eval(
        tmp_path, "direct", f"policy={run}/hf_model", "eval.compare_to_start=false", "eval.samples=0"
    )
    assert "start" not in direct[0]
    for other in (from_ckpt, direct):
        assert [r["policy"]["greedy"] for r in other] == [r["policy"]["greedy"] for r in rows]
    assert [r["start"]["greedy"] for r in from_ckpt] == [r["start"]["greedy"] for r in rows]


def test_start_model_given_for_a_checkpoint_replaces_the_path_it_recorded(tmp_path, tiny_model_dir):
    """A checkpoint trained on another machine records a model path that is gone here: start_model= names
    the copy here, and the weights load into its architecture (the recorded path was used and not found)."""
    from sppo_pl.module import load_policy

    state = {f"policy.{k}": v for k, v in load_policy(str(tiny_model_dir)).state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {"global_step": 2, "hyper_parameters": {"model_path": "/old/cluster/tiny"}, "state_dict": state}, ckpt
    )
    assert resolve_policy(str(ckpt)).start_model == "/old/cluster/tiny"
    policy = resolve_policy(str(ckpt), str(tiny_model_dir))
    assert policy.start_model == str(tiny_model_dir)
    weights = policy.weights("float32").state_dict()
    assert all(torch.equal(weights[k[len("policy.") :]], v) for k, v in state.items())


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"samples": 2.5}, r"eval\.samples must be a whole number >= 0 \(0: greedy only\), got 2\.5"),
        ({"temperature": -1.0}, r"eval\.temperature must be a finite number >= 0"),
        (
            {"temperature": 0.0, "samples": 4},
            r"eval\.temperature=0 is greedy: its 4 samples \(eval\.samples\)",
        ),
        ({"top_p": 0.0}, r"eval\.top_p must be in \(0, 1\]"),
        ({"max_tokens": 0}, r"eval\.max_tokens must be a whole number >= 1"),
    ],
)
def test_eval_sampling_settings_are_named_before_anything_loads(setting, match):
    from omegaconf import OmegaConf

    from sppo_pl.eval import check_eval_sampling

    ev = OmegaConf.create({"samples": 4, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16} | setting)
    with pytest.raises(ValueError, match=match):
        check_eval_sampling(ev)
    check_eval_sampling(OmegaConf.create({"samples": 0, "temperature": 0.0, "top_p": 1.0, "max_tokens": 16}))


@pytest.mark.parametrize("verifier", [False, True])
def test_pass_at_asked_of_an_oracle_that_is_no_verifier_is_refused_before_generating(
    tmp_path, tiny_model_dir, monkeypatch, verifier
):
    """pass@k counts correct samples: an explicit ``eval.pass_at`` with a scorer (its samples get
    reward_mean@n) is an error naming the field, said before any prompt is read or response generated."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from sppo_pl.eval import evaluate
    from tests.test_config import CONF

    def eval_prompts(*a, **kw):
        raise AssertionError("eval.pass_at was checked after the prompts were read")

    monkeypatch.setattr("sppo_pl.eval.eval_prompts", eval_prompts)
    overrides = [
        f"paths.output_dir={tmp_path}",
        "experiment=smoke",
        "model=local",
        f"model.path={tiny_model_dir}",
        "reward=function",
        f"reward.oracle.verifier={verifier}",
        "eval.pass_at=[1,2]",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if verifier:  # a function declared a verifier scores 0/1: pass@k is its own, evaluation goes on
        with pytest.raises(AssertionError, match="after the prompts were read"):
            evaluate(cfg)
        return
    with pytest.raises(ValueError, match=r"eval.pass_at=\[1, 2\] needs a verifier .*FunctionOracle .*leave"):
        evaluate(cfg)
