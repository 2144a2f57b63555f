"""The vLLM engine's pure parts, without vLLM: sleep-level checks, autocast off, the reload-warning filter."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sppo_pl.rollout.vllm_engine import (
    _ExpectedReloadWarnings,
    check_sleep_level,
    no_autocast,
    quiet_expected_reload_warnings,
)


def test_sleep_levels_are_checked():
    check_sleep_level(0, on_cpu=True)
    check_sleep_level(2, on_cpu=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_sleep_level(1, on_cpu=True)
    with pytest.raises(ValueError, match="got 5"):
        check_sleep_level(5, on_cpu=False)


def test_no_autocast_turns_off_every_enclosing_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        with no_autocast():
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")


def _kept(f: logging.Filter, layer: str) -> bool:
    record = logging.LogRecord("x", logging.WARNING, "", 0, "%s: Failed to load weights", (layer,), None)
    return f.filter(record)


def test_only_layers_without_checkpoint_weights_are_quietened(tmp_path):
    tied, untied = _ExpectedReloadWarnings(tied=True), _ExpectedReloadWarnings(tied=False)
    assert not _kept(tied, "RotaryEmbedding") and not _kept(untied, "Llama3RotaryEmbedding")
    assert not _kept(tied, "ParallelLMHead") and _kept(untied, "ParallelLMHead")
    assert _kept(tied, "QKVParallelLinear")
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    quiet_expected_reload_warnings(tmp_path)
    quiet_expected_reload_warnings(tmp_path)  # installed once, not twice
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    installed = [f for f in logger.filters if isinstance(f, _ExpectedReloadWarnings)]
    assert len(installed) == 1 and not installed[0].tied


def test_waking_hands_pytorchs_cached_memory_back_first(monkeypatch):
    """Measured on an H100 (Qwen2.5-1.5B): after training, PyTorch's allocator still held ~25 GiB of cached
    activations, and the woken engine's memory came on top of it."""
    from types import SimpleNamespace

    from sppo_pl.rollout.vllm_engine import VLLMEngine

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.llm = SimpleNamespace(wake_up=lambda tags: calls.append(("wake_up", tags)))
    engine.asleep = {"weights", "kv_cache"}
    engine.wake_up(["weights"])
    engine.wake_up(["weights"])  # awake already: nothing to do
    engine.wake_up(None)
    assert calls == ["empty_cache", ("wake_up", ["weights"]), "empty_cache", ("wake_up", ["kv_cache"])]
    assert engine.asleep == set()


def test_a_half_asleep_engine_is_put_wholly_to_sleep(monkeypatch):
    """A sync that fails between waking the weights and the KV cache leaves the engine half asleep: the next
    sleep must release the awake weights too, not return because something already sleeps."""
    from types import SimpleNamespace

    from sppo_pl.rollout.vllm_engine import VLLMEngine

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.llm = SimpleNamespace(
        sleep=lambda level: calls.append(("sleep", level)),
        wake_up=lambda tags: calls.append(("wake_up", tags)),
    )
    engine.sleep_level = 1
    for asleep, wanted in [
        ({"kv_cache"}, [("sleep", 1)]),  # vLLM releases the weights and skips the sleeping cache
        ({"weights"}, [("wake_up", ["weights"]), ("sleep", 1)]),  # vLLM sleeps nothing while its weights do
        (set(), [("sleep", 1)]),
        ({"weights", "kv_cache"}, []),
    ]:
        calls.clear()
        engine.asleep = set(asleep)
        engine.sleep()
        assert calls == wanted, asleep
        assert engine.asleep == {"weights", "kv_cache"} and not engine.weights_dropped
    engine.sleep_level, engine.asleep = 0, set()
    engine.sleep()
    assert engine.asleep == set()


def test_the_engine_is_shut_down_when_fitting_ends_and_kept_after_a_validation():
    """A sweep runs its jobs in one process: each fit hands its engine's memory back (vLLM's engine core is
    shut down) instead of keeping it until the process exits."""
    from callbacks.rollout import RolloutCallback
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    calls = []

    class Core:
        def shutdown(self):
            calls.append("shutdown")

    engine = VLLMEngine.__new__(VLLMEngine)  # the class's own close(), over a stand-in for vllm.LLM
    engine.llm = type("LLM", (), {"llm_engine": type("E", (), {"engine_core": Core()})()})()
    cb = RolloutCallback(engine=lambda: engine, sampling={"n": 2}, oracle=object())
    cb.engine = engine
    cb.teardown(None, None, stage="validate")
    assert cb.engine is engine and calls == []
    cb.teardown(None, None, stage="fit")
    assert cb.engine is None and calls == ["shutdown"] and engine.llm is None


def test_a_failed_fit_shuts_the_engine_down_too():
    """Lightning runs no teardown when fit raises (a diverging sweep trial stopped by FiniteCheck): the
    callback's on_exception hands the engine's memory back instead."""
    import lightning as L
    import torch

    from callbacks.rollout import RolloutCallback

    closed = []
    cb = RolloutCallback(engine=None, sampling={"n": 2}, oracle=object())
    cb.engine = type("Engine", (), {"close": lambda self: closed.append(True)})()
    for hook in ("setup", "on_train_start", "on_train_epoch_start"):  # no data module here: no rollouts
        setattr(cb, hook, lambda *a, **k: None)

    class Failing(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            raise FloatingPointError("diverged")

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(2, 1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        callbacks=[cb], max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(FloatingPointError):
        trainer.fit(Failing())
    assert closed == [True] and cb.engine is None
