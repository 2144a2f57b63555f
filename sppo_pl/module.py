"""SPPOModule: the policy being trained, the frozen previous iterate pi_t, and the SPPO step."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import lightning as L
import torch
from torch import nn

from sppo_pl.datamodule import collate_rollouts
from sppo_pl.distributed import fsdp1_root_gathered, full_named_weights, is_sharded, shard_fsdp2
from sppo_pl.logprobs import sequence_logps
from sppo_pl.types import Rollout

log = logging.getLogger(__name__)

# Where log pi_t(y | x) comes from: the sampling engine's own log-probs of the tokens it drew ("engine", no extra
# pass), a no-grad pass of the policy right after sampling ("precompute"), or a held frozen copy ("model").
REFERENCES = ("engine", "precompute", "model")


class SPPOModule(L.LightningModule):
    """Holds the policy (a Hugging Face causal LM) and trains it with a loss from :mod:`sppo_pl.losses`.

    pi_t is the policy at the moment the rollouts were sampled. With ``reference="engine"`` its log-probs
    are the ones the engine returned for the tokens it sampled, after the policy's weights were synced into
    it: no extra pass (the CPU default; engine and trainer compute in float32 there). With
    ``reference="precompute"`` (the GPU default, where the engine samples in bf16) they are taken once, with
    a no-grad pass of the policy right after sampling in the trainer's numerics. ``reference="model"`` keeps
    a frozen copy that is refreshed to the policy at every rollout (:meth:`refresh_reference`). None of them
    holds a second copy of the model but the last.
    """

    def __init__(
        self,
        model_path: str,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        reference: str = "precompute",
        dtype: str = "float32",
        logps_batch_size: int = 16,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        reshard_after_forward: bool = True,
    ):
        super().__init__()
        check_reference(reference)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.loss_fn = loss
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=1e-6)
        self.scheduler_factory = scheduler
        self.policy = load_policy(model_path, dtype, attn_implementation)
        if gradient_checkpointing:  # activation checkpointing, per decoder block
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference = _frozen_copy(self.policy) if reference == "model" else None

    # ---- log-probs -----------------------------------------------------------------------------------
    def policy_logps(self, batch: dict, model: nn.Module | None = None) -> torch.Tensor:
        """log pi(y | x) of every response in a collated batch, reshaped to [B, K]."""
        logps = sequence_logps(
            model or self.policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        return logps.view(batch["p_hat"].shape)

    @torch.no_grad()
    def compute_ref_logps(self, rollouts: list[Rollout], pad_id: int) -> None:
        """Fill ``ref_logps`` (log pi_t) of each rollout: the reference copy if held, else the policy itself."""
        model = self.reference if self.reference is not None else self.policy
        was_training = model.training
        model.eval()
        step = max(1, self.hparams.logps_batch_size // max(1, rollouts[0].k))
        with fsdp1_root_gathered(self.fsdp1_root()), self.precision_context():
            for s in range(0, len(rollouts), step):
                group = rollouts[s : s + step]
                batch = {k: v.to(self.device) for k, v in collate_rollouts(group, pad_id).items()}
                logps = self.policy_logps(batch, model).float().cpu().tolist()
                for r, lp in zip(group, logps):
                    r.ref_logps = lp
        model.train(was_training)

    def precision_context(self) -> AbstractContextManager:
        """The trainer's forward precision (``bf16-mixed``: bf16 autocast), so pi_t log-probs are computed in
        the numerics the training step uses: a log-ratio of 0 at the start of an iteration, and under FSDP1's
        bf16 parameters matching input dtypes. A no-op outside a trainer."""
        return (
            self._trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        )

    @torch.no_grad()
    def refresh_reference(self) -> None:
        """pi_t <- current policy (only when a reference copy is held). Sharded alike, so shard by shard."""
        if self.reference is not None:
            for ref, p in zip(self.reference.parameters(), self.policy.parameters(), strict=True):
                ref.copy_(p)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's full parameters under their Hugging Face names, one tensor at a time (weight sync).

        Sharded parameters are gathered one at a time, so every rank must drain this iterator.
        """
        return full_named_weights(self.policy, self.fsdp1_root())

    def fsdp1_root(self) -> nn.Module | None:
        """The outermost FSDP1 unit when Lightning's FSDPStrategy wrapped this module, else None."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self._trainer.strategy.model if self._trainer is not None else None
        return root if isinstance(root, FullyShardedDataParallel) else None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's clipping (``trainer.gradient_clip_val``), except by norm under FSDP1: Lightning's FSDP
        precision refuses it (a norm over one rank's shards is not the norm), so the root unit clips, its norm
        reduced over every rank's shards."""
        root = self.fsdp1_root()
        if root is None or not gradient_clip_val or gradient_clip_algorithm == "value":
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        root.clip_grad_norm_(gradient_clip_val)

    def configure_model(self) -> None:
        """Shard the policy (and the reference copy, if held) with FSDP2 when the strategy gives a mesh."""
        mesh = self.device_mesh
        if mesh is None or is_sharded(self.policy):
            return
        dp_mesh = mesh["data_parallel"]
        precision = self.trainer.precision if self._trainer is not None else None
        for model in (self.policy, self.reference):
            if model is not None:
                shard_fsdp2(model, dp_mesh, precision, self.hparams.reshard_after_forward)

    # ---- Lightning -----------------------------------------------------------------------------------
    def begin_iteration(self, rollouts: list[Rollout]) -> None:
        """Called by the rollout callback with every rollout this iteration trains on (every rank holds them
        all): a loss with a per-iteration statistic (``begin_iteration``, e.g. verl's SoftMean) sees their
        scores."""
        begin = getattr(self.loss_fn, "begin_iteration", None)
        if begin is not None and rollouts:
            begin(torch.tensor([r.scores for r in rollouts], dtype=torch.float64))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logps = self.policy_logps(batch)
        extra = (
            {"preferences": batch.get("preferences")}
            if getattr(self.loss_fn, "needs_preferences", False)
            else {}
        )
        out = self.loss_fn(logps, batch["ref_logps"], batch["p_hat"], batch["scores"], **extra)
        n = batch["p_hat"].shape[0]
        # averaged over the ranks (each holds 1/N of the global batch): the same curves for any trainer.devices
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/log_ratio", out.log_ratio, batch_size=n, sync_dist=True)
        self.log("train/target", out.target, batch_size=n, sync_dist=True)
        return out.loss

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        """The batch's greedy responses, generated before the step by the rollout callback, for the oracle."""
        if "responses" not in batch:
            raise RuntimeError(
                "validation needs the rollout callback (rollout=...): it generates each batch's responses"
            )
        return {"responses": batch["responses"]}

    def on_train_start(self) -> None:
        """A resumed run trains with the configured optimizer settings, not the checkpoint's (Lightning restores
        those with the optimizer state): a change is applied and warned about (:func:`apply_optimizer_settings`)."""
        from sppo_pl.schedules import apply_optimizer_settings

        configured = self.optimizer_factory([nn.Parameter(torch.zeros(1))]).defaults
        schedulers = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        for opt in self.trainer.optimizers:
            changed = apply_optimizer_settings(opt, schedulers, configured)
            if changed:
                log.warning(
                    "resume: optim.optimizer differs from the checkpoint's; training goes on with the configured "
                    "settings (%s)",
                    ", ".join(changed),
                )

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"},
        }


def check_reference(reference) -> None:
    """``module.reference``: one of :data:`REFERENCES`."""
    if reference not in REFERENCES:
        raise ValueError(f"module.reference must be one of {REFERENCES}, got {reference!r}")


def load_policy(model_path: str, dtype: str = "float32", attn_implementation: str | None = None) -> nn.Module:
    """A causal LM from a local directory (or hub name), dropout disabled: log-ratios must be deterministic.

    pi_t's log-probs come from eval-mode passes (or the engine), the policy's from train-mode ones, so any live
    dropout makes log(pi_theta / pi_t) noisy even at theta = pi_t. Besides ``nn.Dropout`` modules, HF models
    apply rates read from their config (Llama's ``attention_dropout``, OPT's ``dropout``): those are zeroed in
    the config the model is built from, and kept as ``model.zeroed_dropout`` for :func:`restore_dropout`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    zeroed = zero_dropout(config)
    kwargs = {"dtype": getattr(torch, dtype), "config": config}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.zeroed_dropout = zeroed
    return model.train()


_DROPOUT_FIELD = re.compile(r"dropout|pdrop|layerdrop")


def zero_dropout(config) -> dict[str, float]:
    """Set every dropout rate of a transformers config, sub-configs included, to 0.0.

    A rate is a number > 0 in a field whose name holds ``dropout``, ``pdrop`` or ``layerdrop``. Returns the
    original values by dotted field name, e.g. ``{"attention_dropout": 0.1, "text_config.dropout": 0.1}``.
    """
    from transformers import PretrainedConfig

    zeroed = {}
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            zeroed |= {f"{key}.{k}": v for k, v in zero_dropout(value).items()}
        elif (
            _DROPOUT_FIELD.search(key)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
        ):
            setattr(config, key, 0.0)
            zeroed[key] = value
    return zeroed


def restore_dropout(config, zeroed: dict[str, float]) -> None:
    """Put back the rates :func:`zero_dropout` took out (``zeroed``), e.g. before the policy is exported."""
    for dotted, value in zeroed.items():
        *parents, key = dotted.split(".")
        target = config
        for name in parents:
            target = getattr(target, name)
        setattr(target, key, value)


def _frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()
    return ref
