"""Fault injection through ``python train.py`` (smoke: 2 iterations of 2 optimizer steps): a run killed
(kill -9) or stopped by a NaN in iteration 1, then resumed in place, ends where an uninterrupted run ends,
with its history continued; SIGTERM leaves a resumable checkpoint and exits 143."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sppo_pl.export import load_policy_from_checkpoint
from tests.test_train_cli import read_metrics, run_train

pytestmark = pytest.mark.slow
# keep every iteration's checkpoint: an in-place resume then meets epoch_00.ckpt beside last.ckpt, where
# Lightning's version counter used to write last-v1.ckpt and leave last.ckpt on the old iteration
SMOKE = ("experiment=smoke", "callbacks.model_checkpoint.save_top_k=-1")
STEP = 3  # the second optimizer step of iteration 1: one step of it is done when the fault strikes


def fault(name: str, **kw) -> list[str]:
    return [
        f"+callbacks.fault._target_=tests.faults.{name}",
        *(f"+callbacks.fault.{k}={v}" for k, v in kw.items()),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    run = tmp / "run"
    run_train(tmp, *SMOKE, f"hydra.run.dir={run}")
    return run


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_policy_from_checkpoint(ckpt).state_dict()


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def resume_in_place(tmp: Path, run: Path):
    return run_train(tmp, *SMOKE, f"ckpt_path={run}", f"hydra.run.dir={run}")


def assert_same_end_and_history(run: Path, reference: Path) -> None:
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_00.ckpt", "epoch_01.ckpt", "last.ckpt"]
    assert (ckpts / "last.ckpt").resolve().name == "epoch_01.ckpt"  # the newest, not the iteration before
    final = weights(ckpts / "last.ckpt")
    assert max_diff(final, weights(reference / "checkpoints" / "last.ckpt")) < 1e-6
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "hf_model").state_dict()
    assert max_diff(exported, final) == 0.0  # the export is the final policy
    # the history goes on: the earlier iterations' rows kept, the unfinished iteration's rows replaced
    rows, want = read_metrics(run), read_metrics(reference)
    for key in ("val/iteration", "train/loss", "rollout/iteration"):
        got = [float(r[key]) for r in rows if r.get(key)]
        assert got == pytest.approx([float(r[key]) for r in want if r.get(key)], abs=1e-5), key
    for epoch in (0, 1):
        assert (run / "rollouts" / f"epoch_{epoch}.jsonl").read_text() == (
            reference / "rollouts" / f"epoch_{epoch}.jsonl"
        ).read_text()


def test_killed_mid_iteration_then_resumed_in_place_ends_as_an_uninterrupted_run(tmp_path, reference):
    run = tmp_path / "run"
    proc = run_train(tmp_path, *SMOKE, f"hydra.run.dir={run}", *fault("KillAt", step=STEP), returncode=-9)
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "epoch_00.ckpt" and (run / ".lock").exists()
    assert not (run / "hf_model").exists(), proc.stderr[-2000:]
    resume_in_place(tmp_path, run)
    assert_same_end_and_history(run, reference)


def test_a_nan_loss_stops_the_run_keeps_the_last_finite_checkpoint_and_resumes(tmp_path, reference):
    run = tmp_path / "run"
    proc = run_train(tmp_path, *SMOKE, f"hydra.run.dir={run}", *fault("NaNAt", step=STEP), returncode=1)
    assert f"non-finite loss at step {STEP} of self-play iteration 1" in proc.stderr
    assert "epoch_00.ckpt, is kept" in proc.stderr
    kept = run / "checkpoints" / "last.ckpt"
    assert kept.resolve().name == "epoch_00.ckpt" and not (run / "hf_model").exists()
    assert max_diff(weights(kept), weights(reference / "checkpoints" / "epoch_00.ckpt")) < 1e-6
    resume_in_place(tmp_path, run)
    assert_same_end_and_history(run, reference)


def test_nan_steps_can_be_skipped_instead(tmp_path):
    run = tmp_path / "run"
    skip = "callbacks.finite_check.on_nonfinite=skip"
    run_train(tmp_path, *SMOKE, f"hydra.run.dir={run}", skip, "trainer.max_epochs=1", *fault("NaNAt", step=1))
    skipped = [float(r["train/skipped_steps"]) for r in read_metrics(run) if r.get("train/skipped_steps")]
    assert skipped == [1.0]
    state = weights(run / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in state.values())


def test_sigterm_exits_143_with_a_resumable_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = run_train(
        tmp_path, *SMOKE, f"hydra.run.dir={run}", *fault("KillAt", step=2, sig="SIGTERM"), returncode=143
    )
    # Lightning stops after the step in progress (a signal during an iteration's last step lets it finish)
    said = proc.stdout + proc.stderr
    assert "stopped by SIGTERM at step 3, with 1 of 2 self-play iterations finished" in said
    assert "epoch_00.ckpt. Resume in place with: python train.py" in said
    assert f"ckpt_path={run} hydra.run.dir={run}" in said
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "epoch_00.ckpt"
    assert not (run / "hf_model").exists() and not (run / ".lock").exists()


def test_a_failed_rollout_keeps_the_finished_iteration_and_a_resume_redoes_only_that_rollout(
    tmp_path, reference
):
    run = tmp_path / "run"
    proc = run_train(tmp_path, *SMOKE, f"hydra.run.dir={run}", *fault("FailScoringAt", epoch=1), returncode=1)
    assert "oracle failed (injected) in iteration 1" in proc.stderr
    # iteration 0 was checkpointed before iteration 1's rollouts began, and its generations were saved
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "epoch_00.ckpt"
    assert (run / "rollouts" / "epoch_1.generated.jsonl").exists()
    assert not (run / "rollouts" / "epoch_1.jsonl").exists()
    proc = resume_in_place(tmp_path, run)
    assert "iteration 1 reuses the 8 generations saved at step 2" in proc.stdout + proc.stderr
    assert_same_end_and_history(run, reference)


def test_a_resume_from_an_older_checkpoint_reuses_only_the_generations_of_its_own_policy(tmp_path):
    """A 3-iteration run resumed in place from epoch_00.ckpt with another setting: iteration 1's generations
    were sampled by epoch_00's policy and are reused; iteration 2's were sampled by a policy the resumed run
    trains anew to the same step, with other weights, so they are sampled again (their log pi_t reused
    would give train/log_ratio far from 0 at the iteration's first step). The lr asked for at the resume is
    the one trained with, not the checkpoint's (Lightning restores the optimizer's settings)."""
    run = tmp_path / "run"
    run_train(tmp_path, *SMOKE, "trainer.max_epochs=3", f"hydra.run.dir={run}")
    old = (run / "rollouts" / "epoch_2.generated.jsonl").read_text()
    proc = run_train(
        tmp_path,
        *SMOKE,
        "trainer.max_epochs=3",
        "trainer.gradient_clip_val=0.01",
        "optim.optimizer.lr=2e-3",
        f"ckpt_path={run / 'checkpoints' / 'epoch_00.ckpt'}",
        f"hydra.run.dir={run}",
    )
    said = proc.stdout + proc.stderr
    assert "training goes on with the configured settings (lr: 0.001 -> 0.002)" in said
    lrs = {int(r["step"]): float(r["lr-AdamW"]) for r in read_metrics(run) if r.get("lr-AdamW")}
    assert [lrs[s] for s in sorted(lrs)] == [1e-3, 1e-3, 2e-3, 2e-3, 2e-3, 2e-3]  # resumed at step 2
    assert "iteration 1 reuses the 8 generations saved at step 2" in said
    assert "iteration 2 reuses" not in said
    assert (run / "rollouts" / "epoch_2.generated.jsonl").read_text() != old


def test_a_mid_iteration_checkpoint_resumes_with_the_batches_not_yet_trained(tmp_path, reference):
    """SLURM's requeue checkpoint is written inside an iteration: resumed from it, the run trains the
    iteration's remaining batches (not its first ones again) and ends as an uninterrupted run."""
    run, mid = tmp_path / "run", tmp_path / "run" / "checkpoints" / "mid.ckpt"
    run_train(
        tmp_path, *SMOKE, f"hydra.run.dir={run}", *fault("SaveAndKillAt", step=STEP, path=mid), returncode=-9
    )
    assert mid.is_file()
    run_train(tmp_path, *SMOKE, f"ckpt_path={mid}", f"hydra.run.dir={run}")
    final = weights(run / "checkpoints" / "last.ckpt")
    assert max_diff(final, weights(reference / "checkpoints" / "last.ckpt")) < 1e-6


def test_a_slurm_requeue_resumes_from_its_hpc_checkpoint_without_validating_it_as_the_start(
    tmp_path, reference
):
    """Lightning's requeue saves hpc_ckpt_<N>.ckpt and runs the job's command again, without ckpt_path: the run
    resumes from it (before, the validation of the starting model ran on its trained weights and was logged
    as iteration 0 a second time) and ends as an uninterrupted run."""
    import shutil

    from tests.test_resume import SLURM

    run = tmp_path / "run"
    run_train(tmp_path, *SMOKE, f"hydra.run.dir={run}", *fault("KillAt", step=STEP), returncode=-9)
    shutil.copy(run / "checkpoints" / "epoch_00.ckpt", run / "hpc_ckpt_1.ckpt")  # what the requeue saved
    proc = run_train(tmp_path, *SMOKE, f"hydra.run.dir={run}", extra_env=SLURM)
    assert f"SLURM requeue: resuming from {run / 'hpc_ckpt_1.ckpt'}" in proc.stdout + proc.stderr
    assert_same_end_and_history(run, reference)
