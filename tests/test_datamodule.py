"""SPPODataModule: prompt encoding, per-iteration prompt order, collate layout, clear errors."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from sppo_pl.datamodule import SPPODataModule, collate_rollouts
from sppo_pl.types import Rollout


def _dm(tokenizer, train_prompts, **kw):
    ds = DatasetDict(
        train=Dataset.from_dict({"prompt": train_prompts, "answer": ["1"] * len(train_prompts)}),
        test=Dataset.from_dict({"prompt": ["What is 1 + 0?"], "answer": ["1"]}),
    )
    dm = SPPODataModule(ds, tokenizer=tokenizer, **kw)
    dm.setup("fit")
    return dm


def test_collate_layout_by_hand():
    rows = [
        Rollout(
            "p",
            [1, 2, 3],
            ["", ""],
            [[4], [5, 6]],
            scores=[0.0, 1.0],
            p_hat=[0.25, 0.75],
            ref_logps=[-1, -2],
        ),
        Rollout(
            "q", [7], ["", ""], [[8, 9, 10], []], scores=[1.0, 0.0], p_hat=[0.75, 0.25], ref_logps=[-3, 0]
        ),
    ]
    b = collate_rollouts(rows, pad_id=0)
    assert b["input_ids"].tolist() == [
        [1, 2, 3, 4, 0, 0],
        [1, 2, 3, 5, 6, 0],
        [0, 0, 7, 8, 9, 10],
        [0, 0, 7, 0, 0, 0],
    ]
    assert b["attention_mask"].tolist() == [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 0, 0, 0],
    ]
    assert b["response_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert b["p_hat"].tolist() == [[0.25, 0.75], [0.75, 0.25]]
    assert b["ref_logps"].tolist() == [[-1.0, -2.0], [-3.0, 0.0]]
    assert "preferences" not in b  # these rollouts carry no oracle matrix
    rows[0].preferences, rows[1].preferences = [[0.5, 0.0], [1.0, 0.5]], [[0.5, 0.9], [0.1, 0.5]]
    got = collate_rollouts(rows, pad_id=0)["preferences"]
    assert got.shape == (2, 2, 2) and got[1, 0, 1].item() == pytest.approx(0.9)


def test_next_prompts_take_blocks_of_each_pass_and_never_repeat_within_one(tiny_tokenizer):
    prompts = [f"What is {i} + 1?" for i in range(10)]
    dm = _dm(tiny_tokenizer, prompts, prompts_per_iteration=4, seed=3)
    ask = lambda e: [p["prompt"] for p in dm.next_prompts(e)]  # noqa: E731
    first_pass = ask(0) + ask(1)
    assert len(set(first_pass)) == 8  # two blocks of the first pass; its last 2 prompts are dropped
    assert ask(2) != ask(0)  # iteration 2 starts the next (reshuffled) pass
    assert all(len(set(ask(e))) == 4 for e in range(40))  # no block crosses a pass: no prompt twice
    assert ask(1) == ask(1)  # deterministic
    e0 = dm.next_prompts(0)
    assert (
        e0[0]["prompt_ids"][-3:]
        == tiny_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-3:]
    )


def test_bad_rows_name_split_row_and_field(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"split 'train' row 1, field 'prompt': empty prompt"):
        _dm(tiny_tokenizer, ["What is 1 + 1?", "  "])
    with pytest.raises(ValueError, match=r"row 0: prompt is \d+ tokens, above model.max_prompt_len=4"):
        _dm(tiny_tokenizer, ["What is 1 + 1?"], max_prompt_len=4)
    with pytest.raises(ValueError, match="'test' split"):
        SPPODataModule(
            DatasetDict(train=Dataset.from_dict({"prompt": ["x"]})), tokenizer=tiny_tokenizer
        ).setup()


def test_train_dataloader_needs_rollouts(tiny_tokenizer):
    dm = _dm(tiny_tokenizer, ["What is 1 + 1?"])
    loader = dm.train_dataloader()  # built before the rollout callback fills it at the epoch's start
    assert len(loader.dataset) == dm.prompts_per_iteration
    with pytest.raises(
        RuntimeError, match="no rollouts for iteration 0 .* makes them at the start of each iteration"
    ):
        next(iter(loader))
    with pytest.raises(ValueError, match="same number of samples"):
        dm.set_rollouts([Rollout("a", [1], ["", ""], [[2], [3]]), Rollout("b", [1], [""], [[2]])], 0, 0)


def test_rollouts_without_a_training_target_are_refused_by_name(tiny_tokenizer):
    """A reward callback whose score_rollouts forgets p_hat would have trained on P_hat = 0 (the collate's
    zero fill, there for log-prob passes); the datamodule names the prompt and the field instead."""
    dm = _dm(tiny_tokenizer, ["What is 1 + 1?"])
    good = Rollout("a", [1], ["x", "y"], [[2], [3]], "2", [1.0, 0.0], [0.75, 0.25], [-1.0, -2.0])
    no_p_hat = Rollout("What is 2 + 2?", [1], ["x", "y"], [[2], [3]], "4", [1.0, 0.0], [], [-1.0, -2.0])
    with pytest.raises(ValueError, match=r"prompt 1 \('What is 2 \+ 2\?'\) has 0 p_hat values for its 2"):
        dm.set_rollouts([good, no_p_hat], 0, 0)
    short_ref = Rollout("b", [1], ["x", "y"], [[2], [3]], "4", [1.0, 0.0], [0.5, 0.5], [-1.0])
    with pytest.raises(ValueError, match="has 1 ref_logps values .* pi_t pass"):
        dm.set_rollouts([short_ref], 0, 0)
    assert dm.rollouts == []  # nothing was taken
    dm.set_rollouts([good], 0, 0)
    assert dm.rollouts == [good]


def test_rollouts_survive_a_checkpoint_round_trip(tiny_tokenizer):
    dm = _dm(tiny_tokenizer, ["What is 1 + 1?"])
    rollouts = [Rollout("a", [1], ["x", "y"], [[2], [3]], "2", [1.0, 0.0], [0.75, 0.25], [-1.0, -2.0])]
    dm.set_rollouts(rollouts, iteration=3, step=24)
    other = _dm(tiny_tokenizer, ["What is 1 + 1?"])
    other.load_state_dict(dm.state_dict())
    assert other.rollouts == rollouts and (other.rollout_iteration, other.rollout_step) == (3, 24)


def test_named_fields_travel_with_every_prompt(tiny_tokenizer):
    ds = DatasetDict(
        train=Dataset.from_dict({"prompt": ["a?", "b?"], "answer": ["1", "2"], "level": [3, 5]}),
        test=Dataset.from_dict({"prompt": ["c?"], "answer": ["3"], "level": [1]}),
    )
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer, fields=["level"], prompts_per_iteration=2)
    dm.setup("fit")
    assert sorted(p["level"] for p in dm.next_prompts(0)) == [3, 5]
    batch = next(iter(dm.val_dataloader()))
    assert batch["level"] == [1] and batch["answer"] == ["3"]
    with pytest.raises(
        ValueError,
        match="split 'train' has no column 'topic' \\(columns: \\['prompt', 'answer', 'level'\\]\\)",
    ):
        SPPODataModule(ds, tokenizer=tiny_tokenizer, fields=["topic"]).setup("fit")
    with pytest.raises(ValueError, match="data.fields may not name \\['answer'\\]"):
        SPPODataModule(ds, tokenizer=tiny_tokenizer, fields=["answer"])
    # the oracle takes the fields as keywords beside its own arguments: "responses" was given twice at the
    # first scoring, and validation's padding weight replaced a "val_weight" column
    for name in ("prompts", "responses", "a", "b", "val_weight"):
        with pytest.raises(
            ValueError, match=f"data.fields may not name \\['{name}'\\]: .* rename the column"
        ):
            SPPODataModule(ds, tokenizer=tiny_tokenizer, fields=["level", name])


def test_validate_stage_reads_only_the_test_split(tiny_tokenizer):
    ds = DatasetDict(
        train=Dataset.from_dict(
            {"prompt": [""], "answer": ["1"]}
        ),  # a bad train row: not read for validation
        test=Dataset.from_dict({"prompt": ["What is 1 + 0?"], "answer": ["1"]}),
    )
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer)
    dm.setup("validate")
    assert dm.train_prompts == [] and [p["prompt"] for p in dm.val_prompts] == ["What is 1 + 0?"]
    with pytest.raises(ValueError, match="row 0"):  # fitting reads (and checks) the train split
        dm.setup("fit")


def test_a_split_smaller_than_an_iteration_is_repeated_with_a_warning(tiny_tokenizer, caplog):
    prompts = [f"What is {i} + 1?" for i in range(3)]
    with caplog.at_level("WARNING", logger="sppo_pl.datamodule"):
        dm = _dm(tiny_tokenizer, prompts, prompts_per_iteration=4, seed=3)
    assert "the train split has 3 prompts, fewer than data.prompts_per_iteration=4" in caplog.text
    assert sorted({p["prompt"] for p in dm.next_prompts(0)}) == sorted(prompts)


def test_validation_on_two_ranks_counts_each_prompt_once(tiny_tokenizer):
    """5 test prompts on 2 ranks: 3 batches' worth per rank (rank 1's last one a repeat, as every rank must
    run as many batches), and the repeat weighs 0, so a prompt's score counts once in val/*."""
    from types import SimpleNamespace

    import torch

    from callbacks.reward import RewardCallback
    from sppo_pl.rewards.function import FunctionOracle

    test = [f"What is {i} + 0?" for i in range(5)]
    ds = DatasetDict(
        train=Dataset.from_dict({"prompt": ["x?"] * 4, "answer": ["1"] * 4}),
        test=Dataset.from_dict({"prompt": test, "answer": ["1"] * 5}),
    )
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer, prompts_per_iteration=2, batch_size=1, val_batch_size=2)
    dm.setup("fit")
    reward = RewardCallback(
        FunctionOracle(fn=lambda prompts, responses, **kw: [float(p == test[0]) for p in prompts])
    )
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(current_epoch=0, state=SimpleNamespace(fn="validate"))
    reward.on_validation_epoch_start(trainer, module)
    counts, weight_of = [], {}
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        batches = list(dm.val_dataloader())
        counts.append(sum(len(b["prompt"]) for b in batches))
        for b in batches:
            for p, w in zip(b["prompt"], b["val_weight"]):
                weight_of[p] = weight_of.get(p, 0.0) + w
            reward.on_validation_batch_end(trainer, module, {"responses": ["r"] * len(b["prompt"])}, b, 0)
    assert counts == [3, 3] and weight_of == dict.fromkeys(test, 1.0)
    assert float(reward.val_reward.compute()) == pytest.approx(1 / 5)  # prompt 0, the repeat, counted once


def test_max_val_prompts_spreads_over_a_sorted_test_split_and_names_original_rows(tiny_tokenizer):
    """A test split sorted by subject: its first 4 of 10 rows would all be algebra. The 4 taken are
    rows 0, 2, 5 and 7, whatever the seed; a bad one is named by its row in the whole split."""
    from sppo_pl.datamodule import spread_rows

    assert spread_rows(10, 4) == [0, 2, 5, 7]
    assert spread_rows(3, 5) == spread_rows(3, None) == [0, 1, 2]
    types = ["algebra"] * 5 + ["geometry"] * 5
    test = {"prompt": [f"Problem {i}?" for i in range(10)], "answer": ["1"] * 10, "type": types}
    for seed in (0, 1):
        dm = SPPODataModule(
            DatasetDict(train=Dataset.from_dict(test), test=Dataset.from_dict(test)),
            tokenizer=tiny_tokenizer,
            max_val_prompts=4,
            fields=["type"],
            seed=seed,
        )
        dm.setup("validate")
        assert [p["prompt"] for p in dm.val_prompts] == [f"Problem {i}?" for i in (0, 2, 5, 7)]
        assert {p["type"] for p in dm.val_prompts} == {"algebra", "geometry"}
        assert dm.where["test"] == [("split 'test'", i) for i in (0, 2, 5, 7)]
    test["prompt"][7] = " "
    dm = SPPODataModule(
        DatasetDict(train=Dataset.from_dict(test), test=Dataset.from_dict(test)),
        tokenizer=tiny_tokenizer,
        max_val_prompts=4,
    )
    with pytest.raises(ValueError, match=r"split 'test' row 7, field 'prompt': empty prompt"):
        dm.setup("validate")


def test_a_resumed_iteration_draws_its_untrained_batches_first():
    from sppo_pl.datamodule import ResumableOrder, untrained_order

    assert untrained_order([3, 0, 2, 1, 5, 4], 1, 2) == [2, 1, 5, 4]
    assert untrained_order([3, 0, 2, 1, 5, 4], 0, 2) == [3, 0, 2, 1, 5, 4]  # a fresh iteration
    assert untrained_order([3, 0, 2, 1], 2, 2) == []  # all trained
    done = [0]
    sampler = ResumableOrder([3, 0, 2, 1, 5, 4], 2, lambda: done[0])
    assert list(sampler) == [3, 0, 2, 1, 5, 4] and len(sampler) == 6
    done[0] = 2  # read when iterated: Lightning restores its progress after building the loader
    assert list(sampler) == [5, 4]


def test_a_run_resumed_inside_an_iteration_with_a_short_last_batch_trains_each_sample_once(tmp_path):
    """10 samples in batches of 4 (the last one short), checkpointed after the first batch: the resumed run
    trains the two batches an uninterrupted run trains next, no sample twice."""
    import lightning as L
    import torch

    from sppo_pl.datamodule import ResumableOrder

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer, self.seen = torch.nn.Linear(1, 1), []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[:, 0].long().tolist())
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def train_dataloader(self):
            done = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.ready  # noqa: E731
            data = torch.arange(10.0).unsqueeze(-1)
            return torch.utils.data.DataLoader(data, batch_size=4, sampler=ResumableOrder(ORDER, 4, done))

    ORDER = [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]
    quiet = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    whole = Recorder()
    every_step = L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=1, save_top_k=-1)
    L.Trainer(accelerator="cpu", callbacks=[every_step], **quiet).fit(whole)
    assert whole.seen == [[4, 1, 7, 5], [3, 9, 0, 8], [6, 2]]
    resumed = Recorder()
    L.Trainer(accelerator="cpu", enable_checkpointing=False, **quiet).fit(
        resumed, ckpt_path=tmp_path / "step=1.ckpt"
    )
    assert resumed.seen == whole.seen[1:]
