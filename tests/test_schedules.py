"""The per-iteration linear schedule (uclaml/SPPO's restarted HF linear schedule) and steps per iteration."""

from __future__ import annotations

import pytest
import torch

from sppo_pl.schedules import (
    apply_optimizer_settings,
    iteration_linear_factor,
    iteration_linear_schedule,
    steps_per_iteration,
)


@pytest.mark.parametrize(
    ("step", "n", "ratio", "want"),
    [
        (0, 10, 0.1, 0.0),  # W = ceil(0.1 * 10) = 1: the first step of each iteration warms up from 0
        (1, 10, 0.1, 1.0),  # (10 - 1) / (10 - 1)
        (5, 10, 0.1, 5 / 9),
        (9, 10, 0.1, 1 / 9),
        (10, 10, 0.1, 0.0),  # the next iteration restarts
        (11, 10, 0.1, 1.0),
        (1, 10, 0.3, 1 / 3),  # W = 3
        (2, 10, 0.3, 2 / 3),
        (3, 10, 0.3, 1.0),
        (6, 10, 0.3, 4 / 7),
        (4, 4, 0.0, 1.0),  # no warmup: 1, 3/4, 1/2, 1/4, then 1 again
        (2, 4, 0.0, 0.5),
        (0, 1, 0.1, 1.0),  # one step per iteration: no warmup (HF's W = 1 would train at lr 0 for ever)
        (3, 1, 0.5, 1.0),
        (0, 2, 0.1, 0.0),  # two steps: W = 1, as HF
        (1, 2, 0.9, 1.0),  # W = min(2, 1)
    ],
)
def test_iteration_linear_factor_by_hand(step, n, ratio, want):
    assert iteration_linear_factor(step, n, ratio) == pytest.approx(want)


def test_schedule_drives_the_optimizer_and_checks_its_arguments():
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = iteration_linear_schedule(opt, steps_per_iteration=2, warmup_ratio=0.1)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="steps_per_iteration must be >= 1"):
        iteration_linear_schedule(opt, 0)
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        iteration_linear_schedule(opt, 4, warmup_ratio=1.0)


def test_steps_per_iteration():
    assert steps_per_iteration(20000, 8, 1, 8) == 313  # uclaml: 20k prompts, 8 per GPU x 8 GPUs
    assert steps_per_iteration(1024, 8, 8, 4) == 4  # verl: 1,024 prompts, mini-batches of 256
    assert steps_per_iteration(10, 4) == 3  # the last batch is short
    assert steps_per_iteration(5, 2, 2, [0, 1]) == 1  # 3 prompts per rank: 2 batches, one step
    assert steps_per_iteration(8, 2, 1, 2, num_nodes=2) == 1
    # "auto" and -1 count the ranks as Lightning does (every GPU, or 1 process on CPU); -1 gave -8 steps
    assert steps_per_iteration(64, 8, 1, -1, accelerator="cpu") == 8
    assert steps_per_iteration(64, 8, 1, "auto", accelerator="cpu") == 8
    with pytest.raises(ValueError, match="trainer.devices=True is not a count"):
        steps_per_iteration(8, 2, 1, True)


def test_steps_per_iteration_counts_every_gpu_for_minus_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert steps_per_iteration(64, 8, 1, -1, accelerator="gpu") == 2
    assert steps_per_iteration(64, 8, 1, "auto") == 2
    assert steps_per_iteration(64, 8, 1, -1, accelerator="cpu") == 8


def test_a_restored_optimizer_takes_the_configured_settings_and_keeps_its_place_in_the_schedule():
    """A checkpoint restored lr 1e-2 at half its warmup (lr 5e-3) and weight decay 0; the run asks for 1e-3
    and 0.01: lr becomes 5e-4 now, 1e-3 x the schedule's factor from the next step on."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, 0.5 * (step + 1)))
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    configured = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, weight_decay=0.01).defaults
    changed = apply_optimizer_settings(opt, [sched], configured)
    assert changed == ["lr: 0.01 -> 0.001", "weight_decay: 0.0 -> 0.01"]
    group = opt.param_groups[0]
    assert (
        group["lr"] == pytest.approx(5e-4) and group["initial_lr"] == 1e-3 and group["weight_decay"] == 0.01
    )
    assert sched.base_lrs == [1e-3] and sched.get_last_lr() == [pytest.approx(5e-4)]
    opt.step()
    sched.step()
    assert group["lr"] == pytest.approx(1e-3)  # the warmup's end: factor 1
    assert apply_optimizer_settings(opt, [sched], configured) == []  # nothing left to change
    plain = torch.optim.SGD([p], lr=0.1)  # no scheduler: the lr itself
    assert apply_optimizer_settings(plain, [], {"lr": 0.05, "momentum": 0}) == ["lr: 0.1 -> 0.05"]
    assert plain.param_groups[0]["lr"] == 0.05
