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


def _optimizer_step(module: SPPOModule, engine, prompt_ids, pad_id: int) -> None:
    """One real SPPO step on samples from the engine, with a large learning rate so greedy outputs move."""
    gens = engine.generate(prompt_ids, SamplingConfig(n=2, temperature=1.0, max_tokens=8))
    rollouts = [
        Rollout("", p, g.texts, g.token_ids, scores=[1.0, 0.0], win_rate=[0.75, 0.25])
        for p, g in zip(prompt_ids, gens)
    ]
    module.compute_ref_logps(rollouts, pad_id)
    opt = torch.optim.SGD(module.policy.parameters(), lr=0.5)
    batch = collate_rollouts(rollouts, pad_id)
    out = module.loss_fn(module.policy_logps(batch), batch["ref_logps"], batch["win_rate"], batch["scores"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(module.policy.parameters(), 5.0)
    opt.step()
    opt.zero_grad()


def test_weight_sync_matches_hf_greedy_twice(tiny_model_dir, tiny_tokenizer):
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    engine = VLLMEngine.from_module(module, max_model_len=256, use_tqdm=False)
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
    assert len(engine.sync_seconds) == 2


def test_seeded_sampling_survives_a_full_token_budget_and_ignores_the_batch(tiny_model_dir):
    """Per-prompt seeds with more prompt tokens than one engine step takes (a vLLM CPU failure mode) give
    each prompt the same samples whatever else is in the batch."""
    from sppo_pl.rollout.base import request_seeds
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), max_model_len=256, use_tqdm=False)
    prompts = [[1] + [100 + (i * 7 + j) % 400 for j in range(100)] for i in range(128)]  # 12.9k tokens
    sampling, seeds = SamplingConfig(n=2, temperature=1.0, max_tokens=8), request_seeds(0, 3, 128)
    together = engine.generate(prompts, sampling, seeds)
    alone = engine.generate(prompts[100:], sampling, seeds[100:])
    assert [g.token_ids for g in together[100:]] == [g.token_ids for g in alone]
    assert together[0].token_ids[0] != together[0].token_ids[1]  # two different samples per prompt
