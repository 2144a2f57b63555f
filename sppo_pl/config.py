"""Config helpers: OmegaConf resolvers the YAML uses, and checks that fail before any model loads."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_precision(accelerator: str = "auto") -> str:
    """``trainer.precision`` unless set: bf16 mixed precision on a GPU, float32 on CPU."""
    return "bf16-mixed" if _on_gpu(accelerator) else "32-true"


def default_reference(accelerator: str = "auto") -> str:
    """``module.reference`` unless set: on CPU the engine's own log-probs of the tokens it sampled (it computes
    in float32 like the trainer); on a GPU a pass of the policy, whose bf16 numerics the engine's differ from."""
    return "precompute" if _on_gpu(accelerator) else "engine"


def engine_dtype(precision: str | int, model_dtype: str, accelerator: str = "auto") -> str:
    """The rollout engine's dtype: on a GPU, the training precision's compute dtype (bf16 under ``bf16-mixed``,
    as verl and TRL roll out), so samples come from the numerics the policy trains in; the model's own
    dtype otherwise (CPU, or ``32-true``)."""
    compute = {"bf16": "bfloat16", "16": "float16"}.get(str(precision).split("-")[0])
    return compute if _on_gpu(accelerator) and compute else model_dtype


def best_attention(accelerator: str = "auto") -> str:
    """``model.attn_implementation`` for the GPU recipes: FlashAttention 2 where the flash-attn package is
    installed and a GPU is used, else PyTorch's SDPA (which runs its own flash or cuDNN kernels on GPUs)."""
    import importlib.util

    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if has_fa2 and _on_gpu(accelerator) else "sdpa"


def register_resolvers() -> None:
    """``${project_root:}``, ``${sum:a,b}``, ``${mul:a,b}``, ``${not_env:NAME}`` (True when NAME is unset or empty),
    ``${default_precision:accelerator}``, ``${default_reference:accelerator}``, ``${engine_dtype:precision,model_dtype,accelerator}``,
    ``${best_attention:accelerator}``, ``${rollout_mode:devices,accelerator}``,
    ``${steps_per_iteration:prompts,batch,accumulate,devices,nodes}``, ``${run_name:}`` (a unique run folder
    name, :func:`sppo_pl.rundir.run_name`)."""
    from sppo_pl.schedules import steps_per_iteration

    for name, fn in {
        "project_root": lambda: str(PROJECT_ROOT),
        "sum": lambda *xs: sum(xs),
        "mul": lambda *xs: math.prod(xs),
        "not_env": lambda name: not os.environ.get(name),
        "default_precision": default_precision,
        "default_reference": default_reference,
        "engine_dtype": engine_dtype,
        "best_attention": best_attention,
        "rollout_mode": rollout_mode,
        "steps_per_iteration": steps_per_iteration,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("run_name"):  # drawn once per run, kept by Hydra's sweeps like ${now:}
        from sppo_pl.rundir import run_name

        OmegaConf.register_new_resolver("run_name", run_name, use_cache=True)


def check_config(cfg: DictConfig, loss) -> None:
    """Every check of the composed config that needs no model, run before anything is fetched or loaded."""
    check_required(cfg)
    check_sampling(cfg)
    check_loss(cfg, loss)
    check_choices(cfg)
    check_batches(cfg)
    check_data_source(cfg)
    check_runtime(cfg)
    check_model_targets(cfg)
    check_sweep(cfg)
    check_validation_schedule(cfg.trainer)
    check_trainer_choices(cfg.trainer)


def check_required(cfg: DictConfig) -> None:
    """No mandatory value (``???``) left unset, e.g. ``data.dataset.train`` under ``data=local``."""
    run = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # hydra's own keys fill in at run time
    missing = sorted(OmegaConf.missing_keys(run))
    if missing:
        raise ValueError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: give {missing[0]}=..."
        )


def check_sampling(cfg: DictConfig) -> None:
    """``rollout.sampling`` holds only sampling settings, each one a generation can use
    (:func:`sppo_pl.rollout.base.check_sampling`), ``rollout.drop_ties`` is true, false or auto, and when true has K >= 2 samples to compare,
    ``rollout.max_rounds`` >= 1, and ``rollout.val_max_tokens`` is unset or >= 1."""
    from dataclasses import fields

    from sppo_pl.rollout.base import SamplingConfig, check_drop_ties, check_max_rounds, check_val_max_tokens

    sampling = cfg.rollout.get("sampling")
    if sampling is not None:
        known = [f.name for f in fields(SamplingConfig)]
        unknown = [k for k in sampling if k not in known]
        if unknown:
            raise ValueError(
                f"rollout.sampling.{unknown[0]} is not a sampling setting (rollout.sampling takes {', '.join(known)})"
            )
        SamplingConfig(**OmegaConf.to_container(sampling, resolve=True))
    if cfg.rollout.get("max_rounds") is not None:
        check_max_rounds(cfg.rollout.max_rounds)
    drop_ties = cfg.rollout.get("drop_ties")
    if drop_ties is not None:
        check_drop_ties(drop_ties)
    if drop_ties is True and sampling is not None and sampling.get("n") == 1:
        raise ValueError(
            "rollout.drop_ties=true with rollout.sampling.n=1: one sample per prompt always ties with itself "
            "(P_hat = 1/2), so every prompt would be dropped; sample K >= 2 or leave drop_ties off"
        )
    check_val_max_tokens(cfg.rollout.get("val_max_tokens"))
    check_response_room(cfg)


def check_response_room(cfg: DictConfig) -> None:
    """``rollout.sampling.max_tokens`` and ``rollout.val_max_tokens`` fit ``model.max_response_len``: the vLLM
    engine's context is ``model.max_prompt_len + model.max_response_len`` and it would stop a longer response
    there (``rollout=hf`` would not), so a longer setting would be only partly honoured."""
    room = cfg.model.get("max_response_len")
    if room is None:
        return
    for key, value in (
        ("rollout.sampling.max_tokens", (cfg.rollout.get("sampling") or {}).get("max_tokens")),
        ("rollout.val_max_tokens", cfg.rollout.get("val_max_tokens")),
    ):
        if value is not None and value > room:
            raise ValueError(
                f"{key}={value} is above model.max_response_len={room}, the room the engine's context leaves "
                f"for a response; raise model.max_response_len to {value} (or lower {key})"
            )


def check_choices(cfg: DictConfig) -> None:
    """``module.reference`` and ``rollout.mode`` name one of their choices, and the frozen copy of pi_t
    (``module.reference=model``) is not asked of FSDP1, whose root unit would flatten the policy's and the
    copy's top-level weights together (their shards could not be copied one onto the other)."""
    from sppo_pl.module import check_reference
    from sppo_pl.rollout.base import check_rollout_mode

    reference, mode = cfg.module.get("reference"), cfg.rollout.get("mode")
    check_reference(reference)
    if mode is not None:
        check_rollout_mode(mode)
    precision = unified_precision(cfg.trainer.get("precision"))
    if reference == "engine" and precision.endswith("-mixed"):
        log.warning(
            "module.reference=engine with trainer.precision=%s: pi_t's log-probs come from the engine's numerics, "
            "the policy's from %s autocast, so log(pi_theta / pi_t) does not start at 0 (1.45 nats apart on a "
            "128-token response of SmolLM2-135M, float32 against bf16 autocast); module.reference=precompute "
            "takes pi_t in the trainer's numerics",
            precision,
            precision.split("-")[0],
        )
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("name") if isinstance(strategy, DictConfig) else None
    if reference == "model" and name == "fsdp1" and world_size(cfg.trainer)[0] > 1:
        raise ValueError(
            "module.reference=model with trainer/strategy=fsdp1 is not supported: FSDP1 flattens the policy's "
            "and its frozen copy's top-level weights into one unit; use module.reference=precompute, or "
            "trainer/strategy=fsdp (FSDP2)"
        )


def unified_precision(precision) -> str:
    """Lightning's own name of ``trainer.precision`` ("bf16" is "bf16-mixed", 16 "16-mixed"; None stays
    "None"); a value that names none is an error naming the key. The Trainer, which would say so too, is
    built only after the model has loaded."""
    import warnings

    from lightning.fabric.connector import _convert_precision_to_unified_args  # Lightning's own list

    try:
        with warnings.catch_warnings():  # its advice on the "bf16" alias: the Trainer gives it
            warnings.simplefilter("ignore")
            return str(_convert_precision_to_unified_args(precision))
    except ValueError as e:
        raise ValueError(f"trainer.precision: {e}") from None


FSDP2_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")  # Lightning's ModelParallelStrategy


def check_trainer_choices(trainer: DictConfig) -> None:
    """``trainer.strategy.name`` (:func:`sppo_pl.strategy.select_strategy`'s) and ``trainer.precision``
    (:func:`unified_precision`) name choices that exist, and the strategy takes the accelerator and the
    precision: the Trainer, which would say so too, is built only after the model has loaded."""
    from sppo_pl.strategy import check_strategy_name

    strategy = trainer.get("strategy")
    if isinstance(strategy, DictConfig) and "name" in strategy:
        check_strategy_name(strategy.name)
    several = world_size(trainer)[0] > 1
    name = strategy.get("name") if isinstance(strategy, DictConfig) else None
    if several and name == "fsdp1" and not _on_gpu(trainer.get("accelerator", "auto")):
        raise ValueError(
            "trainer/strategy=fsdp1 needs GPUs (Lightning's FSDPStrategy refuses a CPU accelerator): "
            "use trainer/strategy=fsdp (FSDP2), which runs on CPU processes too"
        )
    precision = unified_precision(trainer.get("precision"))
    fsdp2 = ("auto", "fsdp")  # Lightning's ModelParallelStrategy on several devices
    if several and name in fsdp2 and precision != "None" and precision not in FSDP2_PRECISIONS:
        raise ValueError(
            f"trainer.precision={trainer.get('precision')} is not one FSDP2 (trainer/strategy=fsdp, the default on "
            f"several devices) takes: use one of {', '.join(FSDP2_PRECISIONS)}, or trainer/strategy=ddp"
        )


def check_loss(cfg: DictConfig, loss) -> None:
    """K >= 2 when the loss compares samples of one prompt, when P_hat leaves the response itself out, or
    when the oracle only judges pairs (a pairwise model: one sample has nothing to be judged against)."""
    from sppo_pl.datamodule import reward_target

    k = cfg.rollout.sampling.n
    if getattr(loss, "requires_pairs", False) and k < 2:
        raise ValueError(
            f"loss {cfg.loss._target_} compares the samples of a prompt: rollout.sampling.n must be >= 2, got {k}"
        )
    if cfg.get("reward") is None or k >= 2:
        return
    if cfg.reward.get("include_self") is False:
        raise ValueError(
            f"reward.include_self=false averages P_hat over the other samples of a prompt: with "
            f"rollout.sampling.n={k} there are none; sample K >= 2 or set reward.include_self=true"
        )
    pairwise = reward_target(cfg.reward, lambda cls: getattr(cls, "has_scores", True) is False)
    if pairwise is not None:
        raise ValueError(
            f"reward {pairwise} judges pairs of a prompt's samples and gives no score of its own: with "
            f"rollout.sampling.n={k} every P_hat would be 1/2; sample K >= 2"
        )


def check_batches(cfg: DictConfig) -> None:
    """``data.prompts_per_iteration`` splits evenly over the ranks (``trainer.devices`` x ``trainer.num_nodes``),
    each rank's share of an iteration's rollouts fills at least one ``data.batch_size`` batch (a larger
    batch would silently train on one short batch per iteration), and its batches make whole groups of
    ``trainer.accumulate_grad_batches`` (Lightning divides a short last group by the full count) of full
    batches (a short batch's mean would weigh as a full one's)."""
    from sppo_pl.rollout.base import is_whole

    data = cfg.data
    for key in ("prompts_per_iteration", "batch_size", "val_batch_size"):
        value = data.get(key, 1)
        if not is_whole(value) or value < 1:
            raise ValueError(f"data.{key} must be a whole number >= 1, got {value!r}")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if not is_whole(accumulate) or accumulate < 1:  # Lightning divides the loss by it: -2 ascends, 0 crashes
        raise ValueError(f"trainer.accumulate_grad_batches must be a whole number >= 1, got {accumulate!r}")
    per_iteration, batch = data.get("prompts_per_iteration"), data.get("batch_size")
    if per_iteration is None or batch is None:
        return
    world, ranks = world_size(cfg.trainer)
    if per_iteration % world:
        raise ValueError(
            f"data.prompts_per_iteration={per_iteration} must be a multiple of the number of ranks, {world} ({ranks}): "
            "every rank trains on the same share of an iteration's prompts"
        )
    share = per_iteration // world
    if batch > share:
        raise ValueError(
            f"data.batch_size={batch} is larger than the {share} rollouts each rank trains on per iteration "
            f"(data.prompts_per_iteration={per_iteration} over {world} rank{'s' if world > 1 else ''}): every "
            f"iteration would be one short batch; use data.batch_size <= {share} or more data.prompts_per_iteration"
        )
    batches = math.ceil(share / batch)
    if batches % accumulate:
        raise ValueError(
            f"trainer.accumulate_grad_batches={accumulate} does not divide the {batches} batches each rank trains on "
            f"per iteration ({share} rollouts in data.batch_size={batch} batches): the iteration's last optimizer "
            f"step would sum {batches % accumulate} batches' gradients but divide them by {accumulate}"
        )
    if accumulate > 1 and share % batch:
        raise ValueError(
            f"data.batch_size={batch} does not divide the {share} rollouts each rank trains on per iteration, and "
            f"trainer.accumulate_grad_batches={accumulate} averages batch means: the last batch's {share % batch} "
            f"prompts would each weigh {batch / (share % batch):g}x the others of their optimizer step; use a "
            f"data.batch_size that divides {share}"
        )


def world_size(trainer: DictConfig) -> tuple[int, str]:
    """The number of ranks the trainer settings ask for, and the keys that make it (for messages)."""
    from sppo_pl.strategy import device_count

    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    accelerator = trainer.get("accelerator", "auto")
    check_devices(devices, accelerator)
    world = device_count(devices, accelerator) * nodes
    keys = f"trainer.devices={devices}" + (f" x trainer.num_nodes={nodes}" if nodes != 1 else "")
    return world, keys


def check_devices(devices, accelerator: str = "auto") -> None:
    """``trainer.devices``: a count >= 1, ``auto``, or (GPUs) -1 or a list of device ids. On CPU Lightning
    takes only a count of processes (or ``auto``): -1 and lists are refused here, not once the model has
    loaded."""
    from sppo_pl.strategy import is_device_list

    if devices == "auto":
        return
    if is_device_list(devices) or str(devices).strip() == "-1":
        if not _on_gpu(accelerator):
            raise ValueError(
                f"trainer.devices={devices}: on CPU trainer.devices is a number of processes >= 1 (or auto)"
            )
        return
    if not str(devices).strip().isdigit() or int(devices) < 1:  # True / False are not digits either
        raise ValueError(
            f"trainer.devices={devices!r} must be a number >= 1, auto, or on GPUs -1 or a list of device ids"
        )


def check_data_source(cfg: DictConfig) -> None:
    """Every ``data.dataset`` key is an argument of its source. An experiment written for one source may set
    keys another lacks (``experiment=smoke``'s arithmetic sizes under ``data=local``): refused here, naming
    the keys, instead of a TypeError once the model has loaded."""
    import inspect

    from hydra.utils import get_method

    node = cfg.data.get("dataset")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    try:
        params = inspect.signature(get_method(node._target_)).parameters
    except Exception as e:
        raise ValueError(f"data.dataset._target_={node._target_} is not an importable function: {e}") from e
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in node if not str(k).startswith("_") and k not in params]
    if unknown:
        data, experiment = _choice("data"), _choice("experiment")
        raise ValueError(
            f"{', '.join(f'data.dataset.{k}' for k in unknown)}: not arguments of "
            f"{f'data={data}' if data else 'data'}'s source {node._target_}, which takes {', '.join(params)}"
            + (f" (experiment={experiment} may set keys for another data source)" if experiment else "")
        )


def check_validation_schedule(trainer: DictConfig) -> None:
    """``trainer.check_val_every_n_epoch`` divides ``trainer.max_epochs``: the last self-play iteration is
    validated, so the final table and the metric a sweep optimizes (``optimized_metric``) are the final policy's,
    not an earlier iteration's."""
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if isinstance(every, int) and isinstance(epochs, int) and every > 0 and epochs > 0 and epochs % every:
        last = epochs - epochs % every
        raise ValueError(
            f"trainer.check_val_every_n_epoch={every} does not divide trainer.max_epochs={epochs}: the last "
            f"validation would be after iteration {last}, not the final one, and the run's reported val/* with "
            f"it; make max_epochs a multiple of {every}"
        )


def check_sweep(cfg: DictConfig) -> None:
    """A Hydra sweep (``-m``, or ``hparams_search=``, which sets ``hydra.mode``) runs on one rank per job.

    Its jobs run one after another in one Python process, and Lightning starts the other ranks' processes
    once per process, with that process's command line: the sweep's second job would wait for ranks that
    never come, and they would run the whole sweep from its first job (against the first process's job).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not str(HydraConfig.get().mode).endswith("MULTIRUN"):
        return
    world, keys = world_size(cfg.trainer)
    if world > 1:
        raise ValueError(
            f"a Hydra sweep (-m or hparams_search=) runs its jobs in one process, on one rank each, but {keys} "
            f"asks for {world} ranks: Lightning starts the other ranks' processes once per process, so later "
            "jobs would wait for them for ever. Run each job as its own `python train.py ...` (a shell loop "
            "over the values), or sweep with trainer.devices=1"
        )


def _choice(group: str) -> str | None:
    """The option Hydra composed for ``group`` (None outside a Hydra run, or for an unset group)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def check_model_targets(cfg: DictConfig) -> None:
    """Models are fetched or built only under ``paths.models_dir``: a step of ``model.prepare`` or
    ``prepare.*`` that writes a model (it takes ``models_dir``) may name a target outside it only when a model
    is already there, so nothing is downloaded and no directory is created (``model.path=/nope/model``)."""
    from sppo_pl.utils.fetch_model import check_writes_under, is_model_dir

    steps = {
        "model.prepare": cfg.model.get("prepare"),
        **{f"prepare.{k}": v for k, v in (cfg.get("prepare") or {}).items()},
    }
    for name, step in steps.items():
        writes_model = isinstance(step, DictConfig) and {"models_dir", "out"} <= set(step)
        if writes_model and not is_model_dir(step.out):
            check_writes_under(step.out, step.models_dir, _source_key(step, "out", name))


def _source_key(step: DictConfig, field: str, name: str) -> str:
    """The key a step's field is copied from (``model.path`` for ``out: ${model.path}``), else its own key."""
    raw = OmegaConf.to_container(step, resolve=False).get(field)
    match = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
    return match.group(1) if match else f"{name}.{field}"


def check_runtime(cfg: DictConfig) -> None:
    """What the machine must offer for the run's settings: sleep mode needs CUDA; a vLLM engine on GPUs must be
    16-bit and not colocated on several GPUs of one machine (:func:`check_gpu_engine`); FlashAttention 2 needs
    the ``flash-attn`` package, a GPU and 16-bit compute. Raised before anything loads, naming the key."""
    from sppo_pl.rollout.vllm_engine import check_sleep_level

    on_gpu = _on_gpu(cfg.trainer.get("accelerator", "auto"))
    engine = cfg.rollout.get("engine") or {}
    check_sleep_level(engine.get("sleep_level", 0), on_cpu=not on_gpu)
    if on_gpu and "vllm_engine" in str(engine.get("_target_", "")):
        check_gpu_engine(str(engine.get("dtype")), cfg.rollout.get("mode"), cfg.trainer.get("devices"))
    if cfg.model.get("attn_implementation") == "flash_attention_2":
        check_flash_attention(on_gpu, str(cfg.trainer.get("precision")), str(cfg.model.dtype))
    if "hf_engine" in str(engine.get("_target_", "")):
        check_hf_engine(cfg)


def check_hf_engine(cfg: DictConfig) -> None:
    """``rollout=hf`` generates with the policy itself, on every rank: not with ``rollout.mode=rank0``, and not
    under FSDP1 on several ranks (``generate`` would call the policy past the FSDP1 root's gathers)."""
    if cfg.rollout.get("mode") == "rank0":
        raise ValueError(
            "rollout=hf generates with the (sharded) policy on every rank: use rollout.mode=colocate"
        )
    strategy = cfg.trainer.get("strategy") or {}
    if strategy.get("name") == "fsdp1" and world_size(cfg.trainer)[0] > 1:
        raise ValueError(
            "rollout=hf cannot generate under trainer/strategy=fsdp1: use trainer/strategy=fsdp or rollout=vllm"
        )


def check_gpu_engine(dtype: str, mode: str | None, devices) -> None:
    """What vLLM (0.26, seen on an H100) cannot do on GPUs in sppo-pl's loop, refused before anything loads.

    - A float32 engine: vLLM serves it with its Triton attention backend (its FlashAttention kernels take
      16-bit only), and the first generation after a weight sync hit "CUDA error: an illegal memory access"
      in 2 of 2 runs of the loop (2026-11-26 and 2026-11-27). The engine follows the training precision
      unless told otherwise (``rollout.engine.dtype``), so this is only ever asked for explicitly.
    - ``rollout.mode=colocate`` on several GPUs of one machine: vLLM's in-process executor builds its worker
      on ``cuda:0`` whatever the rank's own device, so every rank's engine would land on GPU 0.
      ``rollout.mode=rank0`` (the default there) runs one engine, on rank 0's own GPU.
    """
    from sppo_pl.strategy import device_count

    if dtype in ("float32", "float", "fp32"):
        raise ValueError(
            "rollout.engine.dtype=float32 on a GPU: vLLM runs fp32 through its Triton attention backend, which "
            "crashed (illegal memory access) in sppo-pl's loop on an H100; use rollout.engine.dtype=bfloat16 "
            "(the default under trainer.precision=bf16-mixed)"
        )
    if mode == "colocate" and device_count(devices, "gpu") > 1:
        raise ValueError(
            f"rollout.mode=colocate with trainer.devices={devices} GPUs: vLLM's in-process engine always takes "
            "GPU 0, so every rank's engine would share it; use rollout.mode=rank0 (one engine on rank 0's GPU "
            "generates for all ranks)"
        )


def rollout_mode(devices, accelerator: str = "auto") -> str:
    """``rollout.mode`` unless set: an engine on every rank (``colocate``), except on several GPUs of one
    machine, where only rank 0's engine can have its own GPU (``rank0``; see :func:`check_gpu_engine`)."""
    from sppo_pl.strategy import device_count

    return "rank0" if _on_gpu(accelerator) and device_count(devices, accelerator) > 1 else "colocate"


def check_flash_attention(on_gpu: bool, precision: str, dtype: str) -> None:
    """``model.attn_implementation=flash_attention_2`` can run: flash-attn installed, a CUDA device, and
    bf16/fp16 compute (a ``*-mixed``/``*-true`` 16-bit precision, or 16-bit weights)."""
    import importlib.util

    key = "model.attn_implementation=flash_attention_2"
    if importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            f"{key} needs the flash-attn package, which is not installed (pip install -e '.[flash-attn]', "
            "a long source build), or use model.attn_implementation=sdpa (PyTorch's own flash kernels)"
        )
    if not on_gpu:
        raise ValueError(f"{key} needs a CUDA device; on CPU use model.attn_implementation=sdpa")
    sixteen = precision.split("-")[0] in ("bf16", "16") or dtype in ("bfloat16", "float16")
    if not sixteen:
        raise ValueError(
            f"{key} computes in bf16 or fp16 only, but trainer.precision={precision} with model.dtype={dtype} "
            "computes in float32: use trainer.precision=bf16-mixed"
        )


def _on_gpu(accelerator: str) -> bool:
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def check_model_dir(cfg: DictConfig) -> None:
    """model.path exists and its context fits model.max_prompt_len + model.max_response_len."""
    path = Path(str(cfg.model.path))
    if not path.exists():
        raise FileNotFoundError(f"model.path does not exist: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"model.path has no config.json: {path}")
    hf = json.loads(cfg_file.read_text())
    ctx = (
        hf.get("max_position_embeddings")
        or hf.get("n_positions")
        or hf.get("text_config", {}).get("max_position_embeddings")
    )
    need = cfg.model.max_prompt_len + cfg.model.max_response_len
    if ctx and need > ctx:
        raise ValueError(
            f"model.max_prompt_len + model.max_response_len = {need} exceeds the model's context of {ctx} tokens ({cfg_file})"
        )


register_resolvers()
