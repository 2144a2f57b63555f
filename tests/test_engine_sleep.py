"""The rollout callback's wake/sync/sleep order, through ``train.py`` with a recording engine: vLLM's CPU build
has no sleep mode, so CI checks the logic here and ``tests/test_gpu.py`` runs the real one on CUDA."""

from __future__ import annotations

import json

import pytest

from tests.test_train_cli import run_train

pytestmark = pytest.mark.slow


def replay(events: list[dict], level: int) -> dict:
    """Walk the events with the engine's state, checking each against what it needs; counts per event."""
    counts = {"generate": 0, "sync": 0, "train": 0, "sleep": 0, "wake": 0}
    asleep, needs_sync = set(), False
    for i, e in enumerate(events):
        counts[e["event"]] += 1
        where = f"event {i}: {e}"
        assert not e.get("autocast"), f"the engine ran under torch.autocast ({where})"
        if e["event"] == "sync":
            assert "weights" not in asleep, f"a sync into sleeping weights ({where})"
            needs_sync = False
        elif e["event"] == "generate":
            assert not asleep and not needs_sync, f"generation from a sleeping or stale engine ({where})"
        elif e["event"] == "train":
            assert asleep == {"weights", "kv_cache"}, f"a training step beside an awake engine ({where})"
        elif e["event"] == "sleep":
            asleep, needs_sync = {"weights", "kv_cache"}, level == 2
        elif e["event"] == "wake":
            if e["tags"] == ["kv_cache"]:  # the cache last: the sync ran with only the weights on the GPU
                assert asleep == {"kv_cache"} and events[i - 1]["event"] in ("sync", "wake"), where
            asleep -= set(e["tags"])
    return counts


@pytest.mark.parametrize("level", [1, 2])
def test_engine_sleeps_through_training_and_is_synced_before_every_generation(tmp_path, level):
    record = tmp_path / "events.jsonl"
    run_train(
        tmp_path,
        "experiment=smoke",
        "trainer.precision=bf16-mixed",  # Lightning's steps run under torch.autocast: the engine must not
        "rollout.engine._target_=tests.stub_engine.RecordingEngine",
        "~rollout.engine.max_model_len",
        "~rollout.engine.seed",
        "~rollout.engine.dtype",
        "~rollout.engine.gpu_memory_utilization",
        "~rollout.engine.cpu_kv_cache_gb",
        "~rollout.engine.sleep_level",
        f"+rollout.engine.record={record}",
        f"+rollout.engine.level={level}",
        "+callbacks.steps._target_=tests.stub_engine.StepRecorder",
        f"+callbacks.steps.record={record}",
    )
    events = [json.loads(line) for line in record.read_text().splitlines()]
    counts = replay(events, level)
    # validations before training and after each of 2 iterations, rollouts for 2 iterations
    generations = counts["generate"]
    assert generations >= 5 and counts["train"] == 4 and counts["sleep"] == 5
    wakes_of_weights = sum(1 for e in events if e["event"] == "wake" and e["tags"] == ["weights"])
    assert wakes_of_weights == 4  # the engine is awake when created: validation 0 needs no wake
    # level 1 keeps the weights while asleep: a sync only when the policy changed (start, then 2 steps ...);
    # level 2 drops them: a sync after every wake, even with the policy unchanged
    syncs_wanted = 5 if level == 2 else 3
    assert counts["sync"] == syncs_wanted, counts
