"""Issue 12: every bad input is refused by ``build()`` before any model is fetched, built or loaded, and the
message names the key. ``model=tiny`` with ``paths.models_dir=<tmp>/models`` proves it: its prepare step
would create that directory, so it must still be absent afterwards."""

from __future__ import annotations

import subprocess

import pytest
from hydra.utils import instantiate

from sppo_pl.config import check_config
from sppo_pl.data import samples
from sppo_pl.rollout.base import SamplingConfig
from sppo_pl.training import build
from tests.test_config import data_overrides, make_cfg, options


def refused(tmp_path, overrides: list[str], error: type[Exception], match: str, model: str = "tiny") -> None:
    """``build()`` raises ``error`` matching ``match``, and nothing was written under the models dir."""
    models = tmp_path / "models"
    base = [f"model={model}", f"paths.models_dir={models}", "trainer.accelerator=cpu"]
    with pytest.raises(error, match=match):
        build(make_cfg(tmp_path, [*base, *overrides]))
    assert not models.exists()


def checked(tmp_path, overrides: list[str]):
    """The composed config, passed through every pre-load check (nothing is fetched or loaded)."""
    cfg = make_cfg(
        tmp_path, [f"paths.models_dir={tmp_path / 'models'}", "trainer.accelerator=cpu", *overrides]
    )
    check_config(cfg, instantiate(cfg.loss))
    return cfg


# ---- 1. sampling -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("rollout.sampling.temperature=-0.5", r"rollout\.sampling\.temperature must be a finite number >= 0"),
        (
            "rollout.sampling.max_tokens=0",
            r"rollout\.sampling\.max_tokens must be a whole number >= 1, got 0",
        ),
        ("rollout.sampling.top_p=0", r"rollout\.sampling\.top_p must be in \(0, 1\], got 0"),
        ("rollout.sampling.top_p=1.5", r"rollout\.sampling\.top_p must be in \(0, 1\], got 1.5"),
        (
            "rollout.sampling.n=0",
            r"rollout\.sampling\.n \(samples per prompt\) must be a whole number in 1\.\.1024",
        ),
        ("rollout.sampling.n=1025", r"rollout\.sampling\.n \(samples per prompt\) must be .* got 1025"),
        (
            "rollout.sampling.temperature=0",
            r"rollout\.sampling\.temperature=0 is greedy: its 4 samples \(rollout\.sampling\.n\) would be copies",
        ),
        ("rollout.val_max_tokens=0", r"rollout\.val_max_tokens must be a whole number >= 1 .*got 0"),
        ("+rollout.sampling.seed=3", r"rollout\.sampling\.seed is not a sampling setting"),
        ("rollout.max_rounds=0", r"rollout\.max_rounds must be a whole number >= 1, got 0"),
        (
            "rollout.sampling.max_tokens=512",
            r"rollout\.sampling\.max_tokens=512 is above model\.max_response_len=24, the room the engine",
        ),
        ("rollout.val_max_tokens=25", r"rollout\.val_max_tokens=25 is above model\.max_response_len=24"),
        ("rollout.drop_ties=sometimes", r"rollout\.drop_ties must be true, false or auto, got 'sometimes'"),
    ],
)
def test_bad_sampling_is_refused_before_any_model_loads(tmp_path, override, match):
    refused(tmp_path, [override], ValueError, match)


def test_dropping_ties_with_one_sample_per_prompt_is_refused(tmp_path):
    overrides = ["rollout.drop_ties=true", "rollout.sampling.n=1", "loss=sppo_softmean"]
    refused(tmp_path, overrides, ValueError, r"rollout\.drop_ties=true with rollout\.sampling\.n=1")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["rollout.mode=bogus"], r"rollout\.mode must be one of \('colocate', 'rank0'\), got 'bogus'"),
        (["module.reference=bogus"], r"module\.reference must be one of \('engine', 'precompute', 'model'\)"),
        (
            ["callbacks.finite_check.on_nonfinite=bogus"],
            r"on_nonfinite must be 'stop' or 'skip', got 'bogus'",
        ),
        (
            ["module.reference=model", "trainer/strategy=fsdp1", "trainer.devices=2"],
            r"module\.reference=model with trainer/strategy=fsdp1 is not supported",
        ),
        (
            ["trainer.check_val_every_n_epoch=7", "trainer.max_epochs=20"],
            r"trainer\.check_val_every_n_epoch=7 does not divide trainer\.max_epochs=20: .* after iteration 14",
        ),
        (
            ["data.prompts_per_iteration=12", "data.batch_size=4", "trainer.accumulate_grad_batches=2"],
            r"trainer\.accumulate_grad_batches=2 does not divide the 3 batches each rank trains on",
        ),
        # 3 batches of 4, 4 and 2 prompts, one optimizer step: the last 2 prompts weighed 2x the others
        (
            ["data.prompts_per_iteration=10", "data.batch_size=4", "trainer.accumulate_grad_batches=3"],
            r"data\.batch_size=4 does not divide the 10 rollouts .* last batch's 2 prompts would each weigh 2x",
        ),
        # Lightning divides the loss by it: -2 trained away from the target (2 % -2 == 0 passed), 0 crashed
        # at the first batch, after the model had loaded
        (
            ["trainer.accumulate_grad_batches=-2"],
            r"trainer\.accumulate_grad_batches must be a whole number >= 1",
        ),
        (
            ["trainer.accumulate_grad_batches=0"],
            r"trainer\.accumulate_grad_batches must be a whole number >= 1",
        ),
        # the Trainer, which checks these too, is built after the model has loaded
        (
            ["trainer.strategy.name=fsdp3"],
            r"trainer\.strategy\.name must be auto, fsdp, fsdp1 or ddp, got 'fsdp3'",
        ),
        (["trainer.precision=bf17-mixed"], r"trainer\.precision: Precision 'bf17-mixed' is invalid"),
    ],
)
def test_bad_choices_are_refused_before_the_model_is_built(tmp_path, overrides, match):
    """Refused before model.prepare writes the tiny model (``refused`` checks the models dir stays empty)."""
    refused(tmp_path, overrides, Exception, match)


def test_leaving_the_response_out_of_p_hat_with_one_sample_is_refused(tmp_path):
    overrides = [
        "reward.include_self=false",
        "rollout.sampling.n=1",
        "loss=sppo_softmean",
        "loss.group=iteration",
    ]
    refused(
        tmp_path,
        overrides,
        ValueError,
        r"reward\.include_self=false .* rollout\.sampling\.n=1 there are none",
    )


@pytest.mark.parametrize("reward", ["pairrm", "pairwise"])
def test_a_pairwise_oracle_with_one_sample_per_prompt_is_refused(tmp_path, reward):
    """verl's one-sample recipe with PairRM: nothing to judge the sample against, every P_hat 1/2."""
    overrides = [f"reward={reward}", "reward.oracle.model_path=/nowhere", "rollout.sampling.n=1"]
    overrides += ["loss=sppo_softmean", "loss.group=iteration"]
    match = rf"reward sppo_pl\.rewards\.{reward}\.\w+ judges pairs .* rollout\.sampling\.n=1 every P_hat"
    refused(tmp_path, overrides, ValueError, match)


def test_auto_drop_ties_with_one_sample_per_prompt_is_accepted(tmp_path):
    """auto (the default) turns dynamic sampling off for K = 1, so verl's one-sample recipe composes."""
    cfg = checked(tmp_path, ["rollout.sampling.n=1", "loss=sppo_softmean", "loss.group=iteration"])
    assert cfg.rollout.drop_ties == "auto"


def test_sampling_config_names_the_full_key():
    with pytest.raises(ValueError, match=r"rollout\.sampling\.temperature must be a finite number >= 0"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(ValueError, match=r"rollout\.sampling\.temperature must be a finite number >= 0"):
        SamplingConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match=r"rollout\.sampling\.top_p must be in \(0, 1\]"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match=r"rollout\.sampling\.max_tokens must be a whole number >= 1"):
        SamplingConfig(max_tokens=0)
    with pytest.raises(
        ValueError, match=r"rollout\.sampling\.n \(samples per prompt\) must be a whole number"
    ):
        SamplingConfig(n=2.5)
    assert SamplingConfig(n=1, temperature=0, top_p=1, max_tokens=1).temperature == 0.0


# ---- 2. devices and 3. batch size -------------------------------------------------------------------------
def test_prompts_that_do_not_split_over_the_ranks_are_refused_before_any_model_loads(tmp_path):
    match = r"data\.prompts_per_iteration=8 must be a multiple of the number of ranks, 3 \(trainer\.devices=3"
    refused(tmp_path, ["data.prompts_per_iteration=8", "trainer.devices=3"], ValueError, match)
    match = r"data\.prompts_per_iteration=8 .* ranks, 6 \(trainer\.devices=2 x trainer\.num_nodes=3\)"
    refused(
        tmp_path,
        ["data.prompts_per_iteration=8", "trainer.devices=2", "trainer.num_nodes=3"],
        ValueError,
        match,
    )


def test_a_batch_larger_than_each_ranks_rollouts_is_refused_before_any_model_loads(tmp_path):
    match = (
        r"data\.batch_size=8 is larger than the 4 rollouts each rank trains on per iteration "
        r"\(data\.prompts_per_iteration=8 over 2 ranks\)"
    )
    refused(
        tmp_path,
        ["data.prompts_per_iteration=8", "data.batch_size=8", "trainer.devices=2"],
        ValueError,
        match,
    )
    match = r"data\.batch_size=64 is larger than the 32 rollouts .* \(data\.prompts_per_iteration=32 over 1 rank\)"
    refused(tmp_path, ["data.batch_size=64"], ValueError, match)
    refused(
        tmp_path, ["data.batch_size=0"], ValueError, r"data\.batch_size must be a whole number >= 1, got 0"
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["trainer.devices=0"], r"trainer\.devices=0 must be a number >= 1, auto, or on GPUs -1"),
        (["trainer.devices=-1"], r"trainer\.devices=-1: on CPU trainer\.devices is a number of processes"),
        (["trainer.devices=[0,1]"], r"trainer\.devices=\[0, 1\]: on CPU"),
        (["trainer.devices=2", "trainer/strategy=fsdp1"], r"trainer/strategy=fsdp1 needs GPUs"),
        (
            ["trainer.devices=2", "trainer.precision=16-mixed"],
            r"trainer\.precision=16-mixed is not one FSDP2",
        ),
    ],
)
def test_devices_strategies_and_precisions_lightning_refuses_are_refused_before_any_model_loads(
    tmp_path, overrides, match
):
    """Each passed the checks and failed once the model had loaded, in the Trainer (devices=0 in the checks
    themselves, with a ZeroDivisionError)."""
    refused(tmp_path, overrides, ValueError, match)


@pytest.mark.parametrize("name", ["smoke", "verl_math_tiny", "uclaml_ultrafeedback_tiny"])
def test_the_cpu_experiments_pass_the_checks_on_a_gpu_machine(tmp_path, monkeypatch, name):
    """The recipes' CPU twins set a float32 engine: refused on a GPU, where the engine follows the training
    precision (bf16 under bf16-mixed, ``sppo_pl.config.check_gpu_engine``)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = make_cfg(tmp_path, [f"paths.models_dir={tmp_path / 'models'}", f"experiment={name}"])
    check_config(cfg, instantiate(cfg.loss))
    assert cfg.rollout.engine.dtype == "bfloat16" and cfg.trainer.precision == "bf16-mixed"


def test_prompts_and_batches_that_fit_pass(tmp_path):
    checked(tmp_path, ["data.prompts_per_iteration=8", "data.batch_size=4", "trainer.devices=2"])
    checked(tmp_path, ["experiment=smoke"])


# ---- 5. model.path outside paths.models_dir --------------------------------------------------------------
def forbid_subprocess(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError(f"subprocess called: {args}")

    monkeypatch.setattr(subprocess, "run", boom)


@pytest.mark.parametrize("model", ["smollm2_135m", "tiny", "qwen2.5_7b_instruct"])
def test_a_missing_model_path_outside_models_dir_is_refused_before_anything_is_fetched(
    tmp_path, monkeypatch, model
):
    forbid_subprocess(monkeypatch)
    nope = tmp_path / "nope"
    match = rf"model\.path={nope / 'model'} lies outside paths\.models_dir={tmp_path / 'models'}"
    refused(tmp_path, [f"model.path={nope / 'model'}"], ValueError, match, model=model)
    assert not nope.exists()


def test_a_model_path_outside_models_dir_that_holds_a_model_is_used(tmp_path, tiny_model_dir):
    checked(tmp_path, ["model=tiny", f"model.path={tiny_model_dir}"])
    checked(tmp_path, [f"model.path={tmp_path / 'models' / 'elsewhere'}"])  # under models_dir: fetched there


def test_a_recipe_oracle_outside_models_dir_is_refused_before_anything_is_built(tmp_path):
    nope = tmp_path / "nope" / "pairwise"
    overrides = ["experiment=uclaml_ultrafeedback_tiny", f"reward.oracle.model_path={nope}"]
    refused(
        tmp_path, overrides, ValueError, rf"reward\.oracle\.model_path={nope} lies outside paths\.models_dir"
    )
    assert not nope.parent.exists()


# ---- 6. experiments and data sources ---------------------------------------------------------------------
def test_smoke_keeps_its_arithmetic_sizes(tmp_path, tiny_tokenizer):
    cfg = checked(tmp_path, ["experiment=smoke"])
    dm = instantiate(cfg.data, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert (len(dm.train_prompts), len(dm.val_prompts)) == (64, 16)


@pytest.mark.parametrize("name", options("data"))
def test_smoke_composes_and_instantiates_with_every_data_source(tmp_path, tiny_tokenizer, name):
    extra, _, _ = data_overrides(name, tmp_path / "source")
    extra = [o for o in extra if not o.startswith("data.dataset.n_")]  # the smoke sizes apply to arithmetic
    cfg = checked(tmp_path, ["experiment=smoke", f"data={name}", *extra])
    dm = instantiate(cfg.data, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert dm.train_prompts and 0 < len(dm.val_prompts) <= 16


def test_keys_a_data_source_does_not_take_are_refused_before_any_model_loads(tmp_path):
    match = r"data\.dataset\.n_train: not arguments of data=local's source"
    extra, _, _ = data_overrides("local", tmp_path / "source")
    refused(tmp_path, ["data=local", "+data.dataset.n_train=64", *extra], ValueError, match)


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_passes_the_source_check(tmp_path, name):
    extra, _, _ = data_overrides(name, tmp_path / "source")
    checked(tmp_path, [f"data={name}", *extra])


def test_a_required_key_left_unset_is_refused_before_any_model_loads(tmp_path):
    refused(tmp_path, ["data=local"], ValueError, r"data\.dataset\.train is required")
    path = samples.write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1 + 1?", "answer": "2"}] * 8)
    checked(tmp_path, ["data=local", f"data.dataset.train={path}"])


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_passes_the_checks(tmp_path, name):
    checked(tmp_path, [f"experiment={name}"])


def test_hf_rollouts_that_cannot_run_are_refused_before_any_model_loads(tmp_path):
    refused(tmp_path, ["rollout=hf", "rollout.mode=rank0"], ValueError, "use rollout.mode=colocate")
    fsdp1 = ["rollout=hf", "trainer/strategy=fsdp1", "trainer.devices=2"]
    refused(tmp_path, fsdp1, ValueError, "cannot generate under trainer/strategy=fsdp1")


def test_engine_log_probs_under_mixed_precision_are_warned_about(tmp_path, caplog):
    """pi_t from the engine's float32 (or bf16) numerics, pi_theta from bf16 autocast: the log-ratio is off
    from the start, so the combination is named with the setting that avoids it."""
    with caplog.at_level("WARNING"):
        checked(tmp_path, ["module.reference=engine", "trainer.precision=bf16-mixed"])
    assert "module.reference=engine with trainer.precision=bf16-mixed" in caplog.text
    assert "module.reference=precompute" in caplog.text
    for alias in ("bf16", "16"):  # Lightning's aliases of bf16-mixed and 16-mixed
        caplog.clear()
        with caplog.at_level("WARNING"):
            checked(tmp_path, ["module.reference=engine", f"trainer.precision={alias}"])
        assert f"module.reference=engine with trainer.precision={alias}-mixed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        checked(tmp_path, ["module.reference=engine"])  # the CPU default: float32 on both sides
    assert "module.reference=engine with" not in caplog.text
