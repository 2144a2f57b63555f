"""The real vLLM engine takes the policy's new weights in place: engine greedy == HF greedy, over two syncs."""

from __future__ import annotations

import pytest
import torch

from sppo_pl.datamodule import collate_rollouts, encode_prompt
from sppo_pl.losses import SPPOLoss
from sppo_pl.module import SPPOModule
from sppo_pl.rollout.base import SamplingConfig
from sppo_pl.rollout.hf_engine import HFEngine
from sppo_pl.types import Rollout

pytestmark = pytest.mark.slow
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
# on a GPU: small fixed KV caches, so the engines of this file fit together (and beside other tests)
ENGINE = (
    {"gpu_memory_utilization": 0.08, "kv_cache_memory_bytes": 1 << 30} if torch.cuda.is_available() else {}
)
# engine (fp32) vs the policy on CPU, per token: vLLM's CUDA attention kernels round through TF32 (7.7e-3 seen
# on an H100); on CPU both sides are plain fp32
LOGP_TOL = 3e-2 if torch.cuda.is_available() else 1e-3


def _optimizer_step(module: SPPOModule, engine, prompt_ids, pad_id: int) -> None:
    """One real SPPO step on samples from the engine, with a large learning rate so greedy outputs move."""
    gens = engine.generate(prompt_ids, SamplingConfig(n=2, temperature=1.0, max_tokens=8))
    rollouts = [
        Rollout("", p, g.texts, g.token_ids, scores=[1.0, 0.0], p_hat=[0.75, 0.25])
        for p, g in zip(prompt_ids, gens)
    ]
    module.compute_ref_logps(rollouts, pad_id)
    opt = torch.optim.SGD(module.policy.parameters(), lr=0.5)
    batch = collate_rollouts(rollouts, pad_id)
    out = module.loss_fn(module.policy_logps(batch), batch["ref_logps"], batch["p_hat"], batch["scores"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(module.policy.parameters(), 5.0)
    opt.step()
    opt.zero_grad()


def test_weight_sync_matches_hf_greedy_twice(tiny_model_dir, tiny_tokenizer):
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    engine = VLLMEngine(
        module.hparams.model_path, dtype=module.hparams.dtype, max_model_len=256, use_tqdm=False, **ENGINE
    )
    hf = HFEngine(module.policy, tiny_tokenizer)
    prompt_ids = [
        encode_prompt(tiny_tokenizer, f"What is {a} + {b}?") for a, b in [(12, 34), (56, 7), (81, 19)]
    ]
    before = [g.token_ids for g in engine.generate(prompt_ids, GREEDY)]
    assert before == [g.token_ids for g in hf.generate(prompt_ids, GREEDY)]  # same weights from disk

    for _ in range(2):
        _optimizer_step(module, engine, prompt_ids, tiny_tokenizer.pad_token_id)
        want = [g.token_ids for g in hf.generate(prompt_ids, GREEDY)]
        stale = [g.token_ids for g in engine.generate(prompt_ids, GREEDY)]
        assert stale != want, "the step should change greedy outputs, or this test proves nothing"
        engine.sync_weights(module.named_weights())
        assert [g.token_ids for g in engine.generate(prompt_ids, GREEDY)] == want


def test_seeded_sampling_survives_a_full_token_budget_and_ignores_the_batch(tiny_model_dir):
    """Per-prompt seeds with more prompt tokens than one engine step takes (a vLLM CPU failure mode) give
    each prompt the same samples whatever else is in the batch."""
    from sppo_pl.rollout.base import request_seeds
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), max_model_len=256, use_tqdm=False, **ENGINE)
    prompts = [[1] + [100 + (i * 7 + j) % 400 for j in range(100)] for i in range(128)]  # 12.9k tokens
    sampling, seeds = SamplingConfig(n=2, temperature=1.0, max_tokens=8), request_seeds(0, 3, 128)
    together = engine.generate(prompts, sampling, seeds)
    alone = engine.generate(prompts[100:], sampling, seeds[100:])
    assert [g.token_ids for g in together[100:]] == [g.token_ids for g in alone]
    assert together[0].token_ids[0] != together[0].token_ids[1]  # two different samples per prompt


def _token_logps(policy: torch.nn.Module, prompt: list[int], response: list[int]) -> list[float]:
    """log pi(y_t | x, y_<t) of each response token, from one unpadded forward of the policy."""
    from sppo_pl.logprobs import token_logps

    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[:, len(prompt) - 1 : -1]
    return token_logps(logits, ids[:, len(prompt) :])[0].tolist()


def _max_logp_gap(engine, policy, prompt_ids: list[list[int]]) -> float:
    """Largest |engine - policy| log-prob over the tokens the engine samples (T = 1, raw log-probs)."""
    gens = engine.generate(prompt_ids, SamplingConfig(n=2, temperature=1.0, max_tokens=8), logprobs=True)
    return max(
        abs(a - b)
        for p, g in zip(prompt_ids, gens)
        for ids, lps in zip(g.token_ids, g.logprobs, strict=True)
        for a, b in zip(lps, _token_logps(policy, p, ids), strict=True)
    )


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory):
    from sppo_pl.utils.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("untied") / "tiny-untied"
    return build_tiny_model(out, initializer_range=0.2, tie_word_embeddings=False)


def test_untied_head_is_synced_greedy_and_sampled_logprobs_equal_the_policy(untied_model_dir, tiny_tokenizer):
    """A model whose output head is its own tensor: after a sync the engine's greedy output and the
    log-probs of the tokens it samples are the policy's. Syncing all but the head is caught (so the
    comparison sees the head), and buffers (rotary tables) survive the in-place reload."""
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    module = SPPOModule(str(untied_model_dir), loss=SPPOLoss(eta=10.0))
    assert not module.policy.config.tie_word_embeddings
    engine = VLLMEngine(
        module.hparams.model_path, dtype=module.hparams.dtype, max_model_len=256, use_tqdm=False, **ENGINE
    )
    hf = HFEngine(module.policy, tiny_tokenizer)
    prompt_ids = [
        encode_prompt(tiny_tokenizer, f"What is {a} * {b}?") for a, b in [(12, 34), (56, 7), (9, 19)]
    ]
    assert _max_logp_gap(engine, module.policy, prompt_ids) < LOGP_TOL  # same weights from disk
    head_before = module.policy.lm_head.weight.detach().clone()
    _optimizer_step(module, engine, prompt_ids, tiny_tokenizer.pad_token_id)
    assert not torch.equal(module.policy.lm_head.weight, head_before), "the step must move the head"
    with torch.no_grad():  # and move it far, so a stale head stands out of any device's rounding
        module.policy.lm_head.weight.add_(0.2 * torch.randn_like(head_before, generator=torch.manual_seed(0)))

    engine.sync_weights((n, t) for n, t in module.named_weights() if n != "lm_head.weight")
    assert _max_logp_gap(engine, module.policy, prompt_ids) > 10 * LOGP_TOL, "a stale head must show"
    engine.sync_weights(module.named_weights())
    assert [g.token_ids for g in engine.generate(prompt_ids, GREEDY)] == [
        g.token_ids for g in hf.generate(prompt_ids, GREEDY)
    ]
    assert _max_logp_gap(engine, module.policy, prompt_ids) < LOGP_TOL


def test_generation_is_not_changed_by_an_enclosing_autocast(tiny_model_dir, tiny_tokenizer):
    """Lightning runs steps under ``torch.autocast`` with ``bf16-mixed``; the engine keeps its own dtype."""
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), max_model_len=256, use_tqdm=False, **ENGINE)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompt_ids = [encode_prompt(tiny_tokenizer, f"What is {a} - {b}?") for a, b in [(12, 34), (56, 7)]]
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
    plain = engine.generate(prompt_ids, sampling, logprobs=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        engine.sync_weights(SPPOModule(str(tiny_model_dir), loss=SPPOLoss()).named_weights())
        autocast = engine.generate(prompt_ids, sampling, logprobs=True)
    assert [g.token_ids for g in autocast] == [g.token_ids for g in plain]
    assert [g.logprobs for g in autocast] == [g.logprobs for g in plain]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM's sleep mode needs CUDA")
def test_after_sleep_wake_and_sync_the_engine_is_the_policy_at_every_level(tiny_model_dir, tiny_tokenizer):
    """Peers' bugs: weights not re-synced after a wake, a sync written into a sleeping engine, garbage after
    a level-2 wake. Each round: a step, sleep (memory handed back), wake the weights, sync, wake the cache;
    then engine greedy == HF greedy."""
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    engine = VLLMEngine(
        module.hparams.model_path,
        dtype=module.hparams.dtype,
        max_model_len=256,
        use_tqdm=False,
        sleep_level=1,
        **ENGINE,
    )
    hf = HFEngine(module.policy, tiny_tokenizer)
    prompt_ids = [
        encode_prompt(tiny_tokenizer, f"What is {a} + {b}?") for a, b in [(12, 34), (56, 7), (81, 19)]
    ]
    for level in (1, 2, 1, 2):
        _optimizer_step(module, engine, prompt_ids, tiny_tokenizer.pad_token_id)
        engine.sleep_level = level
        free_awake = torch.cuda.mem_get_info()[0]
        engine.sleep()
        assert torch.cuda.mem_get_info()[0] - free_awake >= ENGINE["kv_cache_memory_bytes"] // 2, level
        with pytest.raises(RuntimeError, match="asleep"):
            engine.sync_weights(module.named_weights())
        engine.wake_up(["weights"])
        assert engine.weights_dropped == (level == 2)
        engine.sync_weights(module.named_weights())
        engine.wake_up(["kv_cache"])
        want = [g.token_ids for g in hf.generate(prompt_ids, GREEDY)]
        assert [g.token_ids for g in engine.generate(prompt_ids, GREEDY)] == want, level


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU engine's KV cache size")
def test_each_cpu_engine_gets_its_own_kv_cache_size(tiny_model_dir, monkeypatch):
    from sppo_pl.rollout.vllm_engine import VLLMEngine, cpu_kv_cache_bytes

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")  # conftest caps the tests' engines with it
    sizes = []
    for gib in (0.25, 0.5):  # fractions count; the second engine is not held to the first one's size
        engine = VLLMEngine(str(tiny_model_dir), max_model_len=256, use_tqdm=False, cpu_kv_cache_gb=gib)
        sizes.append(engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes)
        engine.close()
    assert sizes == [1 << 28, 1 << 29]
    with pytest.raises(ValueError, match="rollout.engine.cpu_kv_cache_gb"):
        cpu_kv_cache_bytes(0)
