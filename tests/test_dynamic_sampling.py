"""DAPO's dynamic sampling (``rollout.drop_ties``): prompts whose K samples all tie are set aside and fresh
prompts refill the iteration, by hand and through ``train.py``."""

from __future__ import annotations

import json
import zlib

import pytest

from callbacks.rollout import is_tied
from sppo_pl.rollout.base import request_seeds
from sppo_pl.types import Rollout
from tests.test_train_cli import only_run_dir, read_metrics, run_train


def test_a_group_ties_when_every_p_hat_is_one_half():
    assert is_tied(Rollout("q", [], ["a", "b"], [[], []], p_hat=[0.5, 0.5]))
    assert not is_tied(Rollout("q", [], ["a", "b"], [[], []], p_hat=[0.75, 0.25]))


def test_refill_rounds_read_their_own_prompts_and_seeds(tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    from sppo_pl.datamodule import SPPODataModule

    rows = {"prompt": [f"What is {i} + 1?" for i in range(40)], "answer": [str(i + 1) for i in range(40)]}
    ds = DatasetDict(
        train=Dataset.from_dict(rows), test=Dataset.from_dict({"prompt": ["x?"], "answer": ["1"]})
    )
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer, prompts_per_iteration=4, seed=3)
    dm.setup("fit")
    ask = lambda *a: [p["prompt"] for p in dm.next_prompts(*a)]  # noqa: E731
    assert ask(1) == ask(1, 0, 1)  # without refills, as before
    blocks = [ask(1, r, 3) for r in range(3)]
    assert len({p for b in blocks for p in b}) == 12  # three disjoint blocks of fresh prompts
    assert blocks[0] == ask(3)  # iteration 1 with 3 rounds owns blocks 3, 4, 5 of the stream
    assert request_seeds(0, 2, 4, start=4) == request_seeds(0, 2, 8)[4:]  # round 1's seeds follow round 0's


def half_tied(prompts, responses, **fields):
    """Scores that tie for about half the prompts (all 0), and differ between responses for the others."""
    return [
        float(zlib.crc32(y.encode()) % 997) if zlib.crc32(x.encode()) % 2 else 0.0
        for x, y in zip(prompts, responses)
    ]


@pytest.mark.slow
def test_tied_groups_are_replaced_by_fresh_prompts_up_to_the_budget(tmp_path):
    run_train(
        tmp_path,
        "experiment=smoke",
        "trainer.max_epochs=1",
        "reward=function",
        f"reward.oracle.fn={__name__}.half_tied",
        "rollout.drop_ties=true",
        "rollout.max_rounds=3",
        "task_name=dyn",
    )
    run = only_run_dir(tmp_path, "dyn")
    kept = [json.loads(x) for x in (run / "rollouts/epoch_0.jsonl").read_text().splitlines()]
    rounds = [
        [json.loads(x) for x in p.read_text().splitlines()]
        for p in sorted((run / "rollouts").glob("epoch_0*.generated.jsonl"))
    ]
    sampled = [r["prompt"] for rows in rounds for r in rows]
    tied = [p for p in sampled if zlib.crc32(p.encode()) % 2 == 0]
    assert len(rounds) >= 2 and tied  # the first round had tied prompts, so a refill round ran
    assert len(kept) == len(rounds[0])  # the iteration's budget, data.prompts_per_iteration
    assert all(not is_tied_row(r) for r in kept) and all(r["prompt"] in sampled for r in kept)
    row = next(r for r in read_metrics(run) if r.get("rollout/rounds"))
    assert float(row["rollout/rounds"]) == len(rounds)
    assert float(row["rollout/tied_fraction"]) == pytest.approx(len(tied) / len(sampled))


def indifferent(prompts, responses, **fields):
    """The same score for every response."""
    return [0.0] * len(responses)


def is_tied_row(row: dict) -> bool:
    return max(row["p_hat"]) - min(row["p_hat"]) < 1e-9


@pytest.mark.slow
def test_when_the_rounds_run_out_tied_groups_fill_the_budget(tmp_path):
    """An oracle that scores every response alike: every group ties, in every round."""
    run_train(
        tmp_path,
        "experiment=smoke",
        "trainer.max_epochs=1",
        "reward=function",
        f"reward.oracle.fn={__name__}.indifferent",
        "rollout.drop_ties=true",
        "rollout.max_rounds=2",
        "task_name=dyn_out",
    )
    run = only_run_dir(tmp_path, "dyn_out")
    kept = [json.loads(x) for x in (run / "rollouts/epoch_0.jsonl").read_text().splitlines()]
    first = [json.loads(x) for x in (run / "rollouts/epoch_0.generated.jsonl").read_text().splitlines()]
    assert (run / "rollouts/epoch_0.round_1.generated.jsonl").exists()
    assert [r["prompt"] for r in kept] == [r["prompt"] for r in first]  # the first round's, in order
    row = next(r for r in read_metrics(run) if r.get("rollout/rounds"))
    assert (float(row["rollout/rounds"]), float(row["rollout/tied_fraction"])) == (2.0, 1.0)


class _PassCounter:
    """A module stand-in that records which rollouts get the pi_t pass."""

    def __init__(self, reference: str):
        from types import SimpleNamespace

        self.hparams = SimpleNamespace(reference=reference)
        self.passed: list[str] = []

    def refresh_reference(self):
        pass

    def compute_ref_logps(self, rollouts, pad_id):
        for r in rollouts:
            self.passed.append(r.prompt)
            r.ref_logps = [-1.0] * r.k


def _callback_over_fakes(monkeypatch, reference: str, logprobs: bool, rounds=None):
    """A RolloutCallback over a stub datamodule (3 rounds of 2 prompts, budget 2) and stub generations in
    which the prompts named ``tie*`` tie and the ``win*`` ones do not."""
    from types import SimpleNamespace

    from callbacks.rollout import RolloutCallback
    from sppo_pl.rollout.base import Generation

    rounds = rounds or [["tie0", "win0"], ["tie1", "tie2"], ["win1", "tie3"]]
    dm = SimpleNamespace(
        prompts_per_iteration=2,
        tokenizer=SimpleNamespace(pad_token_id=0),
        next_prompts=lambda it, r, n: [{"prompt": p, "prompt_ids": [1], "answer": None} for p in rounds[r]],
        set_rollouts=lambda rollouts, it, step: None,
    )
    logged: dict = {}
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.update(metrics))
    trainer = SimpleNamespace(
        datamodule=dm, global_step=0, is_global_zero=True, loggers=[logger], logged=logged
    )
    gen = Generation([[5], [6]], ["a", "b"], ["stop", "stop"], [[-0.5], [-0.25]] if logprobs else None)
    oracle = SimpleNamespace(
        score_rollouts=lambda rs: [
            (
                setattr(r, "p_hat", [0.5, 0.5] if r.prompt.startswith("tie") else [0.75, 0.25]),
                setattr(r, "scores", [0.0, 0.0] if r.prompt.startswith("tie") else [1.0, 0.0]),
            )
            for r in rs
        ]
    )
    cb = RolloutCallback(engine=None, sampling={"n": 2}, oracle=oracle, drop_ties=True, max_rounds=3)
    monkeypatch.setattr(
        cb, "generations", lambda tr, pm, it, prompts, rnd=0: ([gen] * len(prompts), 1.0, 0.0)
    )
    return cb, trainer


@pytest.mark.parametrize("reference", ["precompute", "model"])
def test_the_policy_pass_runs_only_on_the_groups_kept(monkeypatch, reference):
    """Under drop_ties the pi_t pass comes after the selection: set-aside groups cost no forward pass."""
    module = _PassCounter(reference)
    cb, trainer = _callback_over_fakes(monkeypatch, reference, logprobs=False)
    rollouts = cb.rollout(trainer, module, iteration=0)
    assert [r.prompt for r in rollouts] == ["win0", "win1"]
    assert module.passed == ["win0", "win1"]
    assert all(r.ref_logps == [-1.0, -1.0] for r in rollouts)


def test_a_prompt_drawn_again_by_a_refill_round_is_not_trained_twice(monkeypatch):
    """A refill round whose block crosses into the split's next pass can draw a prompt an earlier round had;
    it is taken only when the rounds run out of others (here round 2's win1 fills the budget instead)."""
    rounds = [["tie0", "win0"], ["win0", "tie1"], ["win1", "tie2"]]
    cb, trainer = _callback_over_fakes(monkeypatch, "model", logprobs=False, rounds=rounds)
    rollouts = cb.rollout(trainer, _PassCounter("model"), iteration=0)
    assert [r.prompt for r in rollouts] == ["win0", "win1"]
    only_repeats = [["win0", "tie0"], ["win0", "tie0"]]
    cb, trainer = _callback_over_fakes(monkeypatch, "model", logprobs=False, rounds=only_repeats)
    cb.max_rounds = 2
    rollouts = cb.rollout(trainer, _PassCounter("model"), iteration=0)
    assert [r.prompt for r in rollouts] == ["win0", "tie0"]  # the budget is kept, the repeats come last


def test_engine_log_probs_need_no_policy_pass(monkeypatch):
    module = _PassCounter("engine")
    cb, trainer = _callback_over_fakes(monkeypatch, "engine", logprobs=True)
    rollouts = cb.rollout(trainer, module, iteration=0)
    assert module.passed == []
    assert [r.ref_logps for r in rollouts] == [[-0.5, -0.25]] * 2


@pytest.mark.parametrize(
    ("drop_ties", "is_verifier", "k", "on"),
    [
        ("auto", True, 4, True),  # a verifier's groups tie often: on
        ("auto", True, 1, False),  # one sample ties with itself: nothing to drop
        ("auto", False, 4, False),  # reward / preference models almost never tie: off
        (True, False, 4, True),
        (False, True, 4, False),
    ],
)
def test_auto_drops_ties_for_verifiers_with_several_samples(drop_ties, is_verifier, k, on):
    from sppo_pl.rollout.base import dynamic_sampling

    assert dynamic_sampling(drop_ties, is_verifier, k) is on


@pytest.mark.parametrize("is_verifier", [True, False])
def test_the_callback_resolves_auto_against_its_oracle_at_setup(is_verifier):
    from types import SimpleNamespace

    from callbacks.rollout import RolloutCallback

    reward = SimpleNamespace(oracle=SimpleNamespace(is_verifier=is_verifier))
    cb = RolloutCallback(engine=None, sampling={"n": 4}, oracle=reward, drop_ties="auto")
    cb.engine = object()  # setup makes no engine
    trainer = SimpleNamespace(world_size=1, datamodule=SimpleNamespace(prompts_per_iteration=8))
    cb.setup(trainer, None, "fit")
    assert cb.drop_ties is is_verifier


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_a_drop_ties_that_is_not_true_false_or_auto_is_refused(value):
    from callbacks.rollout import RolloutCallback

    with pytest.raises(
        ValueError, match=r"rollout\.drop_ties must be true, false or auto, got " + repr(value)
    ):
        RolloutCallback(engine=None, sampling={"n": 4}, drop_ties=value)


def test_validation_length_is_the_sampling_one_unless_set_and_zero_is_refused():
    """Built without train.py (no config check), val_max_tokens=0 was read as unset: 128 tokens, silently."""
    from callbacks.rollout import RolloutCallback

    sampling = {"n": 4, "max_tokens": 128}
    assert RolloutCallback(engine=None, sampling=sampling).val_sampling.max_tokens == 128
    assert RolloutCallback(engine=None, sampling=sampling, val_max_tokens=32).val_sampling.max_tokens == 32
    with pytest.raises(ValueError, match=r"rollout\.val_max_tokens must be a whole number >= 1 .*got 0"):
        RolloutCallback(engine=None, sampling=sampling, val_max_tokens=0)


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_true_false_and_auto_are_accepted(value):
    from sppo_pl.rollout.base import check_drop_ties

    check_drop_ties(value)


def test_tokens_per_s_counts_every_round_and_response_len_the_kept_groups(monkeypatch):
    """3 rounds of 2 prompts x 2 one-token samples in 1 s each: 12 tokens in 3 s, whatever was kept."""
    cb, trainer = _callback_over_fakes(monkeypatch, "engine", logprobs=True)
    cb.rollout(trainer, _PassCounter("engine"), iteration=0)
    assert trainer.logged["rollout/gen_s"] == 3.0
    assert trainer.logged["rollout/tokens_per_s"] == pytest.approx(4.0)
    assert trainer.logged["rollout/response_len"] == 1.0
    assert (trainer.logged["rollout/rounds"], trainer.logged["rollout/tied_fraction"]) == (3.0, 4 / 6)


def test_sync_seconds_count_the_syncs_done_not_each_round(monkeypatch):
    """3 rounds at one optimizer step: one sync (0.05 s), then two skipped; rollout/sync_s is that one sync,
    not three times it."""
    import time
    from types import SimpleNamespace

    from sppo_pl.rollout.base import Generation

    cb, trainer = _callback_over_fakes(monkeypatch, "precompute", logprobs=False)
    monkeypatch.undo()  # the real generations(), over a stub engine
    syncs = []
    cb.engine = SimpleNamespace(
        sync_weights=lambda stream: (syncs.append(1), time.sleep(0.05)),
        generate=lambda ids, sampling, seeds=None: [
            Generation([[5], [6]], ["a", "b"], ["stop", "stop"]) for _ in ids
        ],
    )
    module = _PassCounter("precompute")
    module.hparams.model_path = "/m"
    module.named_weights = lambda: iter([])
    cb.rollout(trainer, module, iteration=0)
    assert trainer.logged["rollout/rounds"] == 3.0 and syncs == [1]
    assert 0.05 <= trainer.logged["rollout/sync_s"] < 0.1
