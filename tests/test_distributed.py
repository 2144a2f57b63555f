"""The sharded path on 2 CPU processes (gloo): FSDP2 step, sharded weight sync, devices=2 runs and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train_cli import ROOT, only_run_dir, run_train

pytestmark = pytest.mark.slow


def run_check(check: str, model_dir: Path, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tests.dist_checks", check, str(model_dir), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_fsdp2_step_on_two_ranks_matches_one_process(tiny_model_dir, tmp_path):
    for rank in run_check("step", tiny_model_dir, tmp_path):
        assert rank["all_dtensor"] and rank["local_fraction"] == pytest.approx(0.5, abs=0.01)
        assert rank["moved"] > 1e-2  # the step really changed the weights
        assert rank["max_param_diff"] < 1e-5
        assert rank["sharded_loss_after"] == pytest.approx(rank["single_loss_after"], rel=1e-5)


def test_fsdp2_weight_stream_equals_the_unsharded_weights_with_and_without_mixed_precision(
    tiny_model_dir, tmp_path
):
    for rank in run_check("gather", tiny_model_dir, tmp_path):
        assert rank["tied_head"]  # the tiny model ties its head: lm_head.weight must be streamed too
        for precision in ("32-true", "bf16-mixed"):
            r = rank[precision]
            assert r["names_equal"] and r["dtypes_equal"] and r["max_diff"] == 0.0, (precision, r)
            assert r["sharded_after"], precision  # streaming leaves every parameter sharded


def test_fsdp1_weight_stream_gathers_one_block_at_a_time_under_hf_names(tiny_model_dir, tmp_path):
    for rank in run_check("fsdp1", tiny_model_dir, tmp_path):
        assert rank["blocks_wrapped"] == "FullyShardedDataParallel"
        assert rank["local_block_numel"] * 2 == rank["full_block_numel"]  # the block really is sharded
        assert rank["names_equal"] and rank["max_diff"] == 0.0
        assert rank["logps_max_diff"] < 1e-3  # pi_t log-probs of the sharded policy (sums over tokens)


def test_fsdp1_clips_gradients_by_the_norm_over_every_ranks_shards(tiny_model_dir, tmp_path):
    """Lightning's FSDP precision raises on gradient_clip_algorithm=norm, so trainer/strategy=fsdp1 with the
    default trainer.gradient_clip_val=1.0 died at its first optimizer step: the module clips instead."""
    for rank in run_check("fsdp1_clip", tiny_model_dir, tmp_path):
        assert rank["norm_before"] > 1e-2 and rank["names_equal"]  # the clipping had work to do
        assert rank["max_grad_diff"] < 1e-7
        assert rank["norm_after"] == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("mode", ["colocate", "rank0"])
def test_sharded_weight_sync_matches_hf_greedy_of_the_gathered_policy(tiny_model_dir, tmp_path, mode):
    ranks = run_check(f"sync:{mode}", tiny_model_dir, tmp_path)
    generating = ranks if mode == "colocate" else ranks[:1]
    assert [r["engine"] for r in ranks] == (
        ["VLLMEngine"] * 2 if mode == "colocate" else ["VLLMEngine", "PeerEngine"]
    )
    for rank in generating:
        assert len(rank["syncs"]) == 2
        assert all(s["stale_differs"] for s in rank["syncs"]), "each step must change greedy output"
        assert all(s["equal"] for s in rank["syncs"])


def _policy(ckpt: Path) -> dict[str, torch.Tensor]:
    from sppo_pl.export import load_policy_from_checkpoint

    return load_policy_from_checkpoint(ckpt).state_dict()


def test_two_devices_run_shards_checkpoints_and_resumes_to_the_same_parameters(tmp_path):
    """An uninterrupted 3-iteration run vs one stopped after the first iteration (generating on rank 0 only)
    and resumed from its run directory: the same rollouts, the same final parameters. Sampling depends
    on neither the number of ranks nor the rollout mode."""
    common = ["experiment=smoke", "trainer.devices=2", "trainer.strategy.name=fsdp"]
    run_train(tmp_path, *common, "trainer.max_epochs=3", "task_name=full")
    run_train(tmp_path, *common, "trainer.max_epochs=1", "rollout.mode=rank0", "task_name=cut")
    cut = only_run_dir(tmp_path, "cut")
    run_train(tmp_path, *common, "trainer.max_epochs=3", f"ckpt_path={cut}", "task_name=resumed")
    run_train(tmp_path, "experiment=smoke", "trainer.max_epochs=1", "export_hf=false", "task_name=one")
    full, resumed = only_run_dir(tmp_path, "full"), only_run_dir(tmp_path, "resumed")

    def rollouts(run: Path, epoch: int) -> str:
        return (run / f"rollouts/epoch_{epoch}.jsonl").read_text()

    # epoch 0 sampled alike by 2 colocated engines, by rank 0's engine alone and by 1 device
    assert rollouts(cut, 0) == rollouts(full, 0) == rollouts(only_run_dir(tmp_path, "one"), 0)

    last = full / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard per rank
    for epoch in (1, 2):  # sampled after the resume by a fresh engine: the same samples
        assert rollouts(resumed, epoch) == rollouts(full, epoch)
    want, got = _policy(last), _policy(resumed / "checkpoints" / "last.ckpt")
    start = _policy(cut / "checkpoints" / "last.ckpt")
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-4  # later iterations trained
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5
    # the final policy, exported as a Hugging Face directory, loads in transformers
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(full / "hf_model").state_dict()
    assert max(float((exported[k] - want[k]).abs().max()) for k in want) == 0.0
