"""Strategy choice, sharding helpers, sampling seeds, checkpoint paths and export (single process)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from omegaconf import OmegaConf

from sppo_pl.checkpoint import resolve_ckpt
from sppo_pl.distributed import (
    all_gather_list,
    broadcast_from_zero,
    clean_param_name,
    decoder_block_classes,
    full_named_weights,
    mixed_precision_policy,
    shard_bounds,
)
from sppo_pl.rollout.base import PeerEngine, request_seeds
from sppo_pl.strategy import DecoderBlockPolicy, device_count, select_strategy
from tests.test_config import make_cfg, options


@pytest.mark.parametrize("name", ["auto", "fsdp", "fsdp1", "ddp"])
def test_one_device_is_always_lightning_auto(name):
    assert select_strategy(name, devices=1) == "auto"
    assert select_strategy(name, devices=[3]) == "auto"


def test_several_devices_pick_the_named_strategy():
    fsdp2 = select_strategy("auto", devices=2)
    assert isinstance(fsdp2, ModelParallelStrategy) and fsdp2._data_parallel_size == 2
    assert fsdp2._tensor_parallel_size == 1
    assert isinstance(select_strategy("fsdp", devices=2, num_nodes=2), ModelParallelStrategy)
    assert select_strategy("fsdp", devices=2, num_nodes=2)._data_parallel_size == 4
    assert isinstance(select_strategy("fsdp1", devices="0,1"), FSDPStrategy)
    assert isinstance(select_strategy("ddp", devices=4), DDPStrategy)
    with pytest.raises(ValueError, match="trainer.strategy.name"):
        select_strategy("deepspeed", devices=2)


@pytest.mark.parametrize("name", ["fsdp", "fsdp1", "ddp"])
def test_the_collective_timeout_is_set_in_minutes(tmp_path, name):
    from hydra.utils import instantiate

    cfg = make_cfg(
        tmp_path, [f"trainer/strategy={name}", "trainer.devices=2", "trainer.strategy.timeout_minutes=90"]
    )
    assert instantiate(cfg.trainer.strategy)._timeout == timedelta(minutes=90)
    default = make_cfg(tmp_path, [f"trainer/strategy={name}", "trainer.devices=2"])
    assert instantiate(default.trainer.strategy)._timeout == timedelta(minutes=30)  # Lightning's
    with pytest.raises(ValueError, match="trainer.strategy.timeout_minutes"):
        select_strategy(name, devices=2, timeout_minutes=0)


def test_device_count_reads_every_form_of_trainer_devices():
    assert device_count(4) == 4 and device_count("2") == 2 and device_count([0, 1, 2]) == 3
    assert device_count(OmegaConf.create([0, 1])) == 2  # trainer.devices=[0,1] from the command line
    assert device_count("0,1") == 2
    assert device_count("auto", accelerator="cpu") == 1


@pytest.mark.parametrize("name", options("trainer/strategy"))
def test_every_strategy_option_composes_for_one_and_two_devices(tmp_path, name):
    from hydra.utils import instantiate

    one = make_cfg(tmp_path, [f"trainer/strategy={name}"])
    assert instantiate(one.trainer.strategy) == "auto"
    two = make_cfg(tmp_path, [f"trainer/strategy={name}", "trainer.devices=2"])
    want = {"auto": ModelParallelStrategy, "fsdp": ModelParallelStrategy, "fsdp1": FSDPStrategy}
    assert isinstance(instantiate(two.trainer.strategy), want.get(name, DDPStrategy))


def test_decoder_blocks_come_from_the_model(tiny_model_dir):
    from sppo_pl.module import load_policy

    model = load_policy(str(tiny_model_dir))
    assert {c.__name__ for c in decoder_block_classes(model)} == {"LlamaDecoderLayer"}
    with pytest.raises(ValueError, match="decoder block"):
        decoder_block_classes(torch.nn.Linear(2, 2))
    policy = DecoderBlockPolicy()
    assert policy(model, recurse=True, nonwrapped_numel=0)  # the root names the block class
    assert policy(model.model.layers[0], recurse=False, nonwrapped_numel=0)
    assert not policy(model.model.norm, recurse=False, nonwrapped_numel=0)


def test_full_named_weights_of_an_unsharded_model_use_hf_names_and_send_a_tied_head(tiny_model_dir):
    from sppo_pl.module import load_policy

    model = load_policy(str(tiny_model_dir))
    names = [n for n, _ in full_named_weights(model)]
    assert model.config.tie_word_embeddings and names.count("lm_head.weight") == 1
    # the tied head follows the embedding it is (sharded, the one gathered tensor is sent twice)
    assert names[names.index("lm_head.weight") - 1] == "model.embed_tokens.weight"
    assert set(names) - {"lm_head.weight"} == {n for n, _ in model.named_parameters()}
    assert len(names) == len(set(names))


def test_wrapper_prefixes_are_removed_from_names():
    name = "model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up_proj.weight"
    assert clean_param_name(name) == "model.layers.0.mlp.up_proj.weight"
    assert clean_param_name("_orig_mod.lm_head.weight") == "lm_head.weight"


def test_shard_bounds_cover_every_item_once_in_order():
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert shard_bounds(5, 0, 1) == (0, 5)


def test_collectives_are_identity_in_one_process():
    assert all_gather_list([1, 2]) == [1, 2] and broadcast_from_zero({"a": 1}) == {"a": 1}


def test_default_precision_is_float32_without_a_gpu(tmp_path):
    from sppo_pl.config import default_precision

    assert default_precision("cpu") == "32-true"
    if not torch.cuda.is_available():
        assert make_cfg(tmp_path).trainer.precision == "32-true"


def test_mixed_precision_follows_trainer_precision():
    assert mixed_precision_policy("32-true") is None and mixed_precision_policy("bf16-true") is None
    bf16 = mixed_precision_policy("bf16-mixed")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32


def test_request_seeds_depend_on_seed_epoch_and_position_only():
    assert request_seeds(0, 1, 4)[2:] == request_seeds(0, 1, 8)[2:4]
    assert len(set(request_seeds(0, 1, 64))) == 64
    assert request_seeds(0, 1, 4) != request_seeds(0, 2, 4) != request_seeds(1, 1, 4)
    assert all(0 <= s < 2**31 for s in request_seeds(123456, 99, 8))


def test_no_two_samples_of_an_iteration_share_a_seed_under_vllm():
    """vLLM seeds sample k of a request seeded s with s + k: 64 prompts x K = 4 over 2 rounds are 512
    samples, so 512 distinct seeds (consecutive prompt seeds gave 131: sample k of prompt i + 1 drew the
    same noise as sample k + 1 of prompt i, and a repeated prompt repeated its samples)."""
    k, n = 4, 64
    seeds = request_seeds(0, 3, n) + request_seeds(0, 3, n, start=n)
    assert len({s + j for s in seeds for j in range(k)}) == 2 * n * k
    top = request_seeds(7, 0, 8)
    assert len({s + j for s in top for j in range(1024)}) == 8 * 1024  # any n up to the bound


def test_peer_engine_drains_the_weight_stream_and_refuses_to_generate():
    seen = []
    PeerEngine().sync_weights(seen.append(i) or ("w", torch.zeros(1)) for i in range(3))
    assert seen == [0, 1, 2]
    with pytest.raises(RuntimeError, match="rank0"):
        PeerEngine().generate([[1]], None)


def test_ckpt_path_accepts_a_run_directory(tmp_path):
    assert resolve_ckpt(None) is None
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 2}, last)  # an empty file is refused as corrupt (tests/test_resume.py)
    assert resolve_ckpt(str(tmp_path / "run")) == str(last)
    assert resolve_ckpt(str(last)) == str(last)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_ckpt(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="neither checkpoints/ .* nor meta.pt"):
        resolve_ckpt(str(tmp_path))


def test_export_keeps_the_source_models_dropout_rates(tiny_model_dir, tmp_path):
    """Training zeroes the config's dropout rates (tests/test_logprobs.py); the exported config has them back."""
    import json

    from sppo_pl.export import export_hf
    from sppo_pl.module import load_policy
    from tests.test_logprobs import model_with_attention_dropout

    source = model_with_attention_dropout(tiny_model_dir, tmp_path / "m")
    state = {f"policy.{k}": v for k, v in load_policy(str(source)).state_dict().items()}
    ckpt = tmp_path / "x.ckpt"
    torch.save({"global_step": 1, "state_dict": state, "hyper_parameters": {"model_path": str(source)}}, ckpt)
    out = export_hf(ckpt, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["attention_dropout"] == 0.1


def test_export_keeps_the_dtype_the_policy_trained_in(tiny_model_dir, tmp_path):
    """module.dtype=bfloat16 trains bf16 weights: the export writes them as bf16, not widened to float32."""
    from safetensors import safe_open

    from sppo_pl.export import export_hf
    from sppo_pl.module import load_policy

    state = {f"policy.{k}": v for k, v in load_policy(str(tiny_model_dir), "bfloat16").state_dict().items()}
    ckpt = tmp_path / "x.ckpt"
    meta = {"model_path": str(tiny_model_dir), "dtype": "bfloat16"}
    torch.save({"global_step": 1, "state_dict": state, "hyper_parameters": meta}, ckpt)
    out = export_hf(ckpt, tmp_path / "hf")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}


def test_export_writes_a_directory_transformers_loads(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from sppo_pl.export import export_hf
    from sppo_pl.module import load_policy

    policy = load_policy(str(tiny_model_dir))
    with torch.no_grad():
        policy.model.norm.weight.add_(1.0)  # a "trained" change that the export must carry
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    ckpt = tmp_path / "x.ckpt"
    torch.save(
        {"global_step": 1, "state_dict": state, "hyper_parameters": {"model_path": str(tiny_model_dir)}}, ckpt
    )
    out = export_hf(ckpt, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.model.norm.weight, policy.model.norm.weight)
    assert (out / "tokenizer.json").exists()
    bad = tmp_path / "bad.ckpt"
    torch.save({"global_step": 1, "state_dict": {"policy.nope": torch.zeros(1)}, "hyper_parameters": {}}, bad)
    with pytest.raises(ValueError, match="model_path"):
        export_hf(bad, tmp_path / "hf2")
    with pytest.raises(ValueError, match="unexpected"):
        export_hf(bad, tmp_path / "hf3", model_path=str(tiny_model_dir))
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(ValueError, match=r"checkpoint .*empty.ckpt is empty \(0 bytes\)"):
        export_hf(empty, tmp_path / "hf4")
    with pytest.raises(ValueError, match=r"checkpoint .*empty.ckpt is empty"):
        export_hf(empty, tmp_path / "hf5", model_path=str(tiny_model_dir))


@pytest.mark.parametrize("top", ["state_dict", "model"])
def test_export_reads_sharded_checkpoints_of_fsdp2_and_fsdp1(tiny_model_dir, tmp_path, top):
    """Lightning writes a sharded folder's weights under "state_dict" (ModelParallelStrategy, FSDP2) but under
    "model" (FSDPStrategy, conf/trainer/strategy/fsdp1.yaml's state_dict_type: sharded): both export."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    from sppo_pl.export import export_hf
    from sppo_pl.module import load_policy

    policy = load_policy(str(tiny_model_dir))
    with torch.no_grad():
        policy.model.norm.weight.add_(1.0)
    ckpt = tmp_path / "epoch_00.ckpt"
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    dcp.save({top: state, "optimizer_0": {"step": torch.tensor(1.0)}}, checkpoint_id=str(ckpt), no_dist=True)
    torch.save({"global_step": 1, "hyper_parameters": {"model_path": str(tiny_model_dir)}}, ckpt / "meta.pt")
    loaded = AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "hf"))
    assert torch.equal(loaded.model.norm.weight, policy.model.norm.weight)
    other = tmp_path / "other.ckpt"
    dcp.save({"weights": state}, checkpoint_id=str(other), no_dist=True)
    torch.save({"global_step": 1, "hyper_parameters": {"model_path": str(tiny_model_dir)}}, other / "meta.pt")
    with pytest.raises(ValueError, match=r"other.ckpt: a sharded checkpoint without policy weights"):
        export_hf(other, tmp_path / "hf2")
