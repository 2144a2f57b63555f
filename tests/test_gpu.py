"""The GPU path: the whole self-play loop on CUDA in bf16 mixed precision, on one device and sharded with
FSDP2 and FSDP1 (forced on one GPU: on one device ``trainer/strategy=`` otherwise falls back to "auto"), and
with the engine asleep during training (sleep levels 1 and 2).
Skipped without a GPU (CI has none); ``bench/gpu_check.sh`` runs them on a GPU machine."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from tests.test_train_cli import only_run_dir, read_metrics, run_train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# several of these run at once on one GPU (bench/gpu_check.sh): a fixed KV cache skips vLLM's memory profiling,
# which would count the other processes' memory as its own
ENGINE = ["rollout.engine.gpu_memory_utilization=0.08", "+rollout.engine.kv_cache_memory_bytes=1073741824"]
STRATEGIES = {
    "auto": [],
    "auto-sleep1": ["rollout.engine.sleep_level=1"],
    "auto-sleep2": ["rollout.engine.sleep_level=2"],
    "fsdp2": [
        "~trainer.strategy",
        "+trainer.strategy={_target_: lightning.pytorch.strategies.ModelParallelStrategy,"
        " data_parallel_size: 1, tensor_parallel_size: 1}",
    ],
    "fsdp1": [
        "~trainer.strategy",
        "+trainer.strategy={_target_: lightning.pytorch.strategies.FSDPStrategy, use_orig_params: true,"
        " auto_wrap_policy: {_target_: sppo_pl.strategy.DecoderBlockPolicy}}",
    ],
}


def _has_vllm() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_self_play_loop_trains_on_a_gpu_in_bf16_mixed(tmp_path, strategy):
    # without vLLM (not in the GPU image this ran on) the policy generates itself (rollout=hf), which
    # FSDP1 refuses: its parameters are flattened shards outside a forward
    has_vllm = _has_vllm()
    if not has_vllm and (strategy == "fsdp1" or "-" in strategy):
        pytest.skip("needs vLLM (rollout=hf cannot generate under FSDP1, and has no engine settings)")
    rollout = ENGINE if has_vllm else ["rollout=hf"]
    run_train(tmp_path, "experiment=smoke", "trainer.accelerator=gpu", *rollout, *STRATEGIES[strategy])
    run = only_run_dir(tmp_path, "smoke")
    resolved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert resolved["trainer"]["precision"] == "bf16-mixed"
    if has_vllm:  # the engine follows the training precision unless told otherwise
        assert resolved["rollout"]["engine"]["dtype"] == "bfloat16"
    rows = read_metrics(run)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert sum(1 for r in rows if r.get("val/acc")) == 3  # before training and after each of 2 iterations
    assert (run / "checkpoints" / "last.ckpt").exists()
