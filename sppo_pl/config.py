"""Config helpers: OmegaConf resolvers the YAML uses, and checks that fail before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_precision(accelerator: str = "auto") -> str:
    """``trainer.precision`` unless set: bf16 mixed precision on a GPU, float32 on CPU."""
    import torch

    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu else "32-true"


def register_resolvers() -> None:
    """``${project_root:}``, ``${sum:a,b}``, ``${not_env:NAME}`` (True when NAME is unset or empty),
    ``${default_precision:accelerator}``, ``${steps_per_iteration:prompts,batch,accumulate,devices,nodes}``."""
    from sppo_pl.schedules import steps_per_iteration

    for name, fn in {
        "project_root": lambda: str(PROJECT_ROOT),
        "sum": lambda *xs: sum(xs),
        "not_env": lambda name: not os.environ.get(name),
        "default_precision": default_precision,
        "steps_per_iteration": steps_per_iteration,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def check_loss(cfg: DictConfig, loss) -> None:
    """K >= 2 when the loss compares samples of one prompt."""
    k = cfg.rollout.sampling.n
    if getattr(loss, "requires_pairs", False) and k < 2:
        raise ValueError(
            f"loss {cfg.loss._target_} compares the samples of a prompt: rollout.sampling.n must be >= 2, got {k}"
        )


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
