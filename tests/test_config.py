"""Every option of every config group composes and instantiates; bad configs fail before a model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate

import sppo_pl.config  # noqa: F401  (resolvers)
from sppo_pl.config import check_loss
from sppo_pl.data import samples
from sppo_pl.rewards.preference import bradley_terry
from sppo_pl.training import build

CONF = Path(__file__).resolve().parent.parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_cfg(tmp_path, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"paths.output_dir={tmp_path}", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("name", options("loss"))
def test_every_loss_instantiates_and_runs(tmp_path, name):
    loss = instantiate(make_cfg(tmp_path, [f"loss={name}"]).loss)
    logps = torch.zeros(2, 3, requires_grad=True)
    scores = torch.tensor([[1.0, 0.5, 0.0]] * 2)
    extra = {"preferences": bradley_terry(scores)} if getattr(loss, "needs_preferences", False) else {}
    out = loss(logps, torch.zeros(2, 3), torch.tensor([[0.75, 0.5, 0.25]] * 2), scores, **extra)
    out.loss.backward()
    assert out.loss.dim() == 0 and logps.grad is not None


@pytest.mark.parametrize("name", options("rollout"))
def test_every_rollout_option_instantiates(tmp_path, name):
    cb = instantiate(make_cfg(tmp_path, [f"rollout={name}"]).rollout)
    assert cb.sampling.n >= 2 and callable(cb.engine_factory) and cb.engine is None


# options with a mandatory field (???): what a user must give
REQUIRED = {
    "reward=pairwise": ["reward.oracle.model_path=/models/pairwise"],
    "reward=reward_model": ["reward.oracle.model_path=/models/rm"],
    "reward=pairrm": ["reward.oracle.model_path=/models/PairRM"],
    "reward=custom": ["reward.oracle={_target_: sppo_pl.rewards.math.MathVerifier}"],
}


@pytest.mark.parametrize("group", ["reward", "callbacks", "logger"])
def test_every_callback_and_logger_option_instantiates(tmp_path, group):
    for name in options(group):
        node = make_cfg(tmp_path, [f"{group}={name}", *REQUIRED.get(f"{group}={name}", [])])[group]
        objs = [instantiate(node)] if "_target_" in node else [instantiate(v) for v in node.values()]
        assert objs and all(o is not None for o in objs)


@pytest.mark.parametrize("name", options("optim"))
def test_every_optimizer_option_instantiates(tmp_path, name):
    cfg = make_cfg(tmp_path, [f"optim={name}"])
    opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    sched = instantiate(cfg.optim.scheduler)(opt)
    opt.step()
    sched.step()


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_composes(tmp_path, name):
    extra = ["model.path=/some/dir"] if name == "local" else []
    cfg = make_cfg(tmp_path, [f"model={name}", *extra])
    if cfg.model.prepare:
        assert callable(get_method(cfg.model.prepare._target_))
    assert cfg.model.max_prompt_len > 0 and cfg.model.max_response_len > 0


def data_overrides(name: str, root: Path) -> tuple[list[str], int, int]:
    """Overrides that point a data option at a local copy of its source, and the (train, test) sizes."""

    if name == "arithmetic":
        return ["data.dataset.n_train=16", "data.dataset.n_test=4"], 16, 4
    if name == "local":
        rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(10)]
        path = samples.write_jsonl(root / "prompts.jsonl", rows)
        return [f"data.dataset.train={path}", "data.dataset.test_size=3"], 7, 3
    if name == "ultrafeedback":
        return [f"data.dataset.path={samples.write_ultrafeedback(root)}", "data.dataset.test_size=2"], 3, 2
    sizes = {"math": (4, 2), "gsm8k": (3, 1)}[name]
    return [f"data.dataset.path={getattr(samples, f'write_{name}')(root)}"], *sizes


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_instantiates(tmp_path, tiny_tokenizer, name):
    extra, n_train, n_test = data_overrides(name, tmp_path / "source")
    cfg = make_cfg(tmp_path, [f"data={name}", *extra])
    dm = instantiate(cfg.data, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert (len(dm.train_prompts), len(dm.val_prompts)) == (n_train, n_test)


@pytest.mark.parametrize(
    "overrides",
    [[f"experiment={n}"] for n in options("experiment")]
    + [[f"debug={n}"] for n in options("debug")]
    + [["trainer=default"]],
)
def test_experiments_and_trainer_compose(tmp_path, overrides):
    cfg = make_cfg(tmp_path, overrides)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_bad_configs_fail_before_any_model_loads(tmp_path):
    missing = ["model=local", "model.path=/nonexistent/model"]
    with pytest.raises(ValueError, match="rollout.sampling.n must be >= 2"):
        build(make_cfg(tmp_path, [*missing, "rollout.sampling.n=1"]))
    with pytest.raises(InstantiationException, match="loss.eta must be a finite number > 0, got 0"):
        build(make_cfg(tmp_path, [*missing, "loss.eta=0"]))
    with pytest.raises(InstantiationException, match="loss.beta must be a finite number > 0, got -1"):
        build(make_cfg(tmp_path, [*missing, "loss=dpo", "loss.beta=-1"]))
    with pytest.raises(FileNotFoundError, match="model.path does not exist: /nonexistent/model"):
        build(make_cfg(tmp_path, missing))


def test_settings_this_machine_cannot_run_fail_before_any_model_loads(tmp_path, monkeypatch):
    """Sleep mode without CUDA, FlashAttention 2 without its package, a GPU or 16-bit compute: refused by
    build() before the model is fetched (the tiny model's prepare step would create its directory)."""
    models = tmp_path / "models"
    base = ["model=tiny", f"paths.models_dir={models}", "trainer.accelerator=cpu"]
    with pytest.raises(ValueError, match=r"rollout.engine.sleep_level=1 needs a CUDA device"):
        build(make_cfg(tmp_path, [*base, "rollout.engine.sleep_level=1"]))
    with pytest.raises(ValueError, match=r"rollout.engine.sleep_level must be 0 \(off\), 1 .* got 3"):
        build(make_cfg(tmp_path, [*base, "rollout.engine.sleep_level=3"]))
    fa2 = [*base, "model.attn_implementation=flash_attention_2"]
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "flash_attn" else True)
    with pytest.raises(ValueError, match="needs the flash-attn package, which is not installed"):
        build(make_cfg(tmp_path, fa2))
    monkeypatch.undo()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: True)
    with pytest.raises(ValueError, match="flash_attention_2 needs a CUDA device"):
        build(make_cfg(tmp_path, fa2))
    monkeypatch.setattr("sppo_pl.config._on_gpu", lambda accelerator: True)
    with pytest.raises(ValueError, match="computes in bf16 or fp16 only, but trainer.precision=32-true"):
        build(make_cfg(tmp_path, [*fa2, "trainer.precision=32-true", "rollout.engine.dtype=bfloat16"]))
    gpu = ["model=tiny", f"paths.models_dir={models}", "trainer.accelerator=gpu"]
    with pytest.raises(ValueError, match="rollout.engine.dtype=float32 on a GPU"):
        build(make_cfg(tmp_path, [*gpu, "rollout.engine.dtype=float32"]))
    with pytest.raises(ValueError, match="rollout.mode=colocate with trainer.devices=4 GPUs"):
        build(make_cfg(tmp_path, [*gpu, "trainer.devices=4", "rollout.mode=colocate"]))
    assert not models.exists()


def test_engine_dtype_and_attention_follow_the_machine(monkeypatch):
    from sppo_pl.config import best_attention, engine_dtype, rollout_mode

    monkeypatch.setattr("sppo_pl.config._on_gpu", lambda accelerator: accelerator != "cpu")
    assert engine_dtype("bf16-mixed", "float32", "gpu") == "bfloat16"
    assert engine_dtype("16-mixed", "float32", "gpu") == "float16"
    assert engine_dtype("bf16-true", "float32", "gpu") == "bfloat16"
    assert engine_dtype("32-true", "float32", "gpu") == "float32"
    assert engine_dtype("bf16-mixed", "float32", "cpu") == "float32"
    assert (rollout_mode(4, "gpu"), rollout_mode(1, "gpu"), rollout_mode(2, "cpu")) == (
        "rank0",
        "colocate",
        "colocate",
    )
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert best_attention("gpu") == "sdpa"
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: True)
    assert (best_attention("gpu"), best_attention("cpu")) == ("flash_attention_2", "sdpa")


def test_lengths_beyond_context_fail(tmp_path, tiny_model_dir):
    cfg = make_cfg(tmp_path, ["model=local", f"model.path={tiny_model_dir}", "model.max_response_len=4000"])
    with pytest.raises(ValueError, match="exceeds the model's context of 1024"):
        build(cfg)


def test_unknown_loss_name_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="loss/nope"):
        make_cfg(tmp_path, ["loss=nope"])


def _recipe_parts(tmp_path, tokenizer, overrides: list[str]) -> dict:
    """Every part of a recipe instantiated as train.py would, short of loading its 7B model: the data source
    pointed at a local copy in the hub layout, the model's fetch step only checked to be callable."""
    cfg = make_cfg(tmp_path, overrides)
    assert callable(get_method(cfg.model.prepare._target_))
    loss = instantiate(cfg.loss)
    check_loss(cfg, loss)
    opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    dm.setup("fit")
    return {
        "cfg": cfg,
        "loss": loss,
        "opt": opt,
        "sched": instantiate(cfg.optim.scheduler)(opt),
        "dm": dm,
        "reward": instantiate(cfg.reward),
        "rollout": instantiate(cfg.rollout),
        "trainer": instantiate(cfg.trainer, logger=False, enable_checkpointing=False),
    }


def test_verl_math_recipe_instantiates_with_its_settings(tmp_path, tiny_tokenizer):
    source = samples.write_math(tmp_path / "math")
    got = _recipe_parts(
        tmp_path, tiny_tokenizer, ["experiment=verl_math_qwen2.5_7b", f"data.dataset.path={source}"]
    )
    cfg, trainer = got["cfg"], got["trainer"]
    assert (
        cfg.model.path.endswith("Qwen2.5-7B-Instruct")
        and cfg.model.prepare.repo_id == "Qwen/Qwen2.5-7B-Instruct"
    )
    assert (cfg.model.max_prompt_len, cfg.model.max_response_len) == (1024, 512)
    loss = got["loss"]
    assert type(loss).__name__ == "SPPOSoftMeanLoss" and (loss.eta, loss.group) == (1.0, "iteration")
    assert type(got["reward"].oracle).__name__ == "MathVerifier"
    s = got["rollout"].sampling
    assert (s.n, s.temperature, s.top_p, s.max_tokens) == (1, 1.0, 1.0, 512)
    group = got["opt"].param_groups[0]
    assert type(got["opt"]).__name__ == "AdamW" and group["weight_decay"] == 0.01
    lrs = []
    for _ in range(62):
        lrs.append(got["opt"].param_groups[0]["lr"])
        got["opt"].step()
        got["sched"].step()
    # verl's 15 warmup steps are training steps, one per iteration here: 15 x 4 optimizer steps (1,024 / 256)
    assert lrs[0] == 0 and lrs[59] < 1e-6 and lrs[60] == lrs[61] == pytest.approx(1e-6)
    assert (trainer.num_devices, trainer.accumulate_grad_batches, trainer.max_epochs) == (4, 8, 140)
    assert type(trainer.strategy).__name__ == "ModelParallelStrategy" and trainer.gradient_clip_val == 1.0
    assert cfg.data.batch_size * 4 * 8 == 256 and cfg.data.prompts_per_iteration == 1024
    assert len(got["dm"].val_prompts) == 2 and got["dm"].fields == ["level", "type"]  # the whole test split


def test_uclaml_recipe_instantiates_with_its_settings(tmp_path, tiny_tokenizer):
    source = samples.write_ultrafeedback(tmp_path / "uf")
    overrides = [
        "experiment=uclaml_ultrafeedback_mistral7b",
        f"data.dataset.path={source}",
        "data.dataset.test_size=2",
    ]
    got = _recipe_parts(tmp_path, tiny_tokenizer, overrides)
    cfg, trainer, reward = got["cfg"], got["trainer"], got["reward"]
    assert cfg.model.prepare.repo_id == "mistralai/Mistral-7B-Instruct-v0.2"
    assert type(got["loss"]).__name__ == "SPPOPairLoss" and got["loss"].eta == 1000.0
    assert type(reward.oracle).__name__ == "PairRMOracle" and reward.oracle.mode == "joint"
    assert reward.include_self and reward.oracle.model.max_prompt_tokens == 1224
    assert reward.oracle.model.max_response_tokens == 412
    # the original oracle itself, fetched once into paths.models_dir before anything loads
    assert cfg.prepare.oracle.repo_id == "llm-blender/PairRM"
    assert cfg.prepare.oracle.out == cfg.reward.oracle.model_path == f"{cfg.paths.models_dir}/PairRM"
    s = got["rollout"].sampling
    assert (s.n, s.temperature, s.top_p) == (5, 0.7, 0.9)
    assert type(got["opt"]).__name__ == "RMSprop" and got["opt"].param_groups[0]["weight_decay"] == 0.0
    assert cfg.optim.scheduler.steps_per_iteration == 313  # 20,000 prompts / (8 per GPU x 8 GPUs)
    got["opt"].step()
    got["sched"].step()
    assert got["opt"].param_groups[0]["lr"] == pytest.approx(5e-7 / 32)  # warmup: 32 steps (10% of 313)
    assert (trainer.num_devices, trainer.max_epochs, cfg.data.batch_size * 8) == (8, 3, 64)
    assert cfg.optimized_metric == "val/win_rate"


def test_a_device_list_on_the_command_line_counts_its_devices(tmp_path, monkeypatch):
    """``trainer.devices=[0,1]`` reaches the checks and resolvers as OmegaConf's ListConfig, not a list (GPU
    ids: on CPU a list is refused, tests/test_bad_config.py)."""
    from sppo_pl.config import check_batches, world_size

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = make_cfg(tmp_path, ["trainer.devices=[0,1]", "trainer.accelerator=gpu", "optim=rmsprop"])
    assert world_size(cfg.trainer)[0] == 2
    check_batches(cfg)
    assert cfg.optim.scheduler.steps_per_iteration == 4  # 32 prompts over 2 ranks, batches of 4
    assert instantiate(cfg.trainer.strategy).__class__.__name__ == "ModelParallelStrategy"


def test_every_data_source_takes_max_val_prompts(tmp_path):
    """The README's `data.max_val_prompts=null` (evaluate on the whole test split) composes with every source."""
    for name in options("data"):
        extra = ["data.dataset.train=p.jsonl"] if name == "local" else []
        assert (
            "max_val_prompts"
            in make_cfg(tmp_path, [f"data={name}", *extra, "data.max_val_prompts=null"]).data
        )


@pytest.mark.parametrize("name", options("data"))
def test_every_data_source_takes_a_system_prompt_and_fields(tmp_path, name):
    """The README's data.system_prompt and data.fields were keys of data=arithmetic and data=math only;
    elsewhere Hydra refused them ("Key 'system_prompt' is not in struct")."""
    cfg = make_cfg(tmp_path, [f"data={name}", "data.system_prompt=Be brief.", "data.fields=[]"])
    assert cfg.data.system_prompt == "Be brief." and list(cfg.data.fields) == []


@pytest.mark.parametrize("data", options("data"))
def test_the_held_out_split_is_the_same_for_every_seed(tmp_path, data):
    """A seed sweep validates every run on the same test rows, and ``python -m sppo_pl.eval`` (default seed)
    finds a run's held-out split again: ``data.dataset`` does not follow the run's ``seed``."""
    from omegaconf import OmegaConf

    extra = ["data.dataset.train=p.jsonl"] if data == "local" else []
    a, b = (make_cfg(tmp_path, [f"data={data}", f"seed={s}", *extra]).data.dataset for s in (0, 7))
    assert OmegaConf.to_container(a, resolve=True) == OmegaConf.to_container(b, resolve=True)
