"""module.reference=engine: log pi_t from the sampling engine's own log-probs, checked against a pass of the
policy (the precompute path) on CPU, for vLLM and Hugging Face generate."""

from __future__ import annotations

import pytest
import torch

from sppo_pl.datamodule import encode_prompt
from sppo_pl.logprobs import summed_token_logps
from sppo_pl.losses import SPPOLoss
from sppo_pl.module import SPPOModule
from sppo_pl.rollout.base import SamplingConfig
from sppo_pl.rollout.hf_engine import HFEngine
from sppo_pl.types import Rollout

# T != 1 and top-p < 1: the engine's log-probs must still be the model's raw ones, log pi_t(y_t | ...)
SAMPLING = SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_tokens=16)
PER_TOKEN_TOL = 1e-4  # float32 engine vs float32 trainer, per token


def test_summed_token_logps_by_hand():
    assert summed_token_logps([[-1.0, -0.5], [-2.0]], [[7, 8], [9]]) == [-1.5, -2.0]
    with pytest.raises(ValueError, match="response 1 has 1 tokens but 2 engine log-probs"):
        summed_token_logps([[-1.0], [-2.0, -1.0]], [[7], [9]])


def _gap(module: SPPOModule, prompt_ids, gens, pad_id: int) -> tuple[float, int]:
    """(largest |engine - precompute| per-token-averaged log pi_t over all responses, the responses' tokens)."""
    rollouts = [
        Rollout("", p, g.texts, g.token_ids, p_hat=[0.5] * len(g.texts)) for p, g in zip(prompt_ids, gens)
    ]
    module.compute_ref_logps(rollouts, pad_id)
    worst, tokens = 0.0, 0
    for r, g in zip(rollouts, gens):
        engine = summed_token_logps(g.logprobs, r.response_ids)
        for a, b, ids in zip(engine, r.ref_logps, r.response_ids):
            worst = max(worst, abs(a - b) / max(1, len(ids)))
            tokens += len(ids)
    return worst, tokens


def _prompts(tokenizer) -> list[list[int]]:
    return [encode_prompt(tokenizer, f"What is {a} * {b}?") for a, b in [(12, 34), (56, 7), (9, 19)]]


def test_hf_generate_logprobs_are_the_policys(tiny_model_dir, tiny_tokenizer):
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0), reference="engine")
    engine = HFEngine(module.policy, tiny_tokenizer, batch_size=2)
    prompt_ids = _prompts(tiny_tokenizer)
    gens = engine.generate(prompt_ids, SAMPLING, seeds=[1, 2, 3], logprobs=True)
    assert all(len(lp) == len(ids) for g in gens for lp, ids in zip(g.logprobs, g.token_ids))
    worst, tokens = _gap(module, prompt_ids, gens, tiny_tokenizer.pad_token_id)
    assert tokens > 9 * 3 and worst < PER_TOKEN_TOL
    assert engine.generate(prompt_ids, SAMPLING, seeds=[1, 2, 3])[0].logprobs is None  # only when asked


def test_hf_generate_pads_a_batch_when_the_tokenizer_has_no_pad_token(tiny_model_dir, tmp_path):
    """rollout=hf loads its own tokenizer (``${model.path}``): one without a pad token (Mistral's, Llama's)
    failed on the first batch of prompts of unequal lengths ("Could not infer dtype of NoneType")."""
    import json
    import shutil

    from transformers import AutoTokenizer

    path = shutil.copytree(tiny_model_dir, tmp_path / "no-pad")
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": None}))
    assert AutoTokenizer.from_pretrained(path).pad_token_id is None
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=8)
    tok = AutoTokenizer.from_pretrained(path)
    prompt_ids = [
        encode_prompt(tok, q) for q in ("Hi?", "What is 12 * 34?", "What is 1 + 2 + 3 + 4 + 5 + 6?")
    ]
    assert len({len(p) for p in prompt_ids}) == 3  # the batch is padded
    batched = HFEngine(module.policy, str(path), batch_size=3).generate(prompt_ids, greedy)
    alone = HFEngine(module.policy, str(path), batch_size=1).generate(prompt_ids, greedy)
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


@pytest.mark.slow
def test_vllm_logprobs_are_the_policys_after_a_sync(tiny_model_dir, tiny_tokenizer):
    """After the policy moves and is synced, the engine's log-probs are the moved policy's (the bound that
    makes ``module.reference=engine`` the CPU default)."""
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0), reference="engine")
    engine = VLLMEngine(str(tiny_model_dir), max_model_len=256, use_tqdm=False, seed=0)
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.02 * torch.randn_like(p, generator=torch.manual_seed(0)))
    prompt_ids = _prompts(tiny_tokenizer)
    stale = engine.generate(prompt_ids, SAMPLING, seeds=[1, 2, 3], logprobs=True)
    assert _gap(module, prompt_ids, stale, tiny_tokenizer.pad_token_id)[0] > 10 * PER_TOKEN_TOL  # it can fail
    engine.sync_weights(module.named_weights())
    gens = engine.generate(prompt_ids, SAMPLING, seeds=[1, 2, 3], logprobs=True)
    worst, tokens = _gap(module, prompt_ids, gens, tiny_tokenizer.pad_token_id)
    assert tokens > 9 * 3 and worst < PER_TOKEN_TOL


def test_hf_generate_ignores_the_checkpoints_sampling_penalties(tiny_model_dir, tiny_tokenizer):
    """A generation_config.json's repetition_penalty (Qwen2.5-7B-Instruct ships 1.05) or
    no_repeat_ngram_size would reshape HF's samples, unlike vLLM's and the raw log-probs the trainer uses."""
    from sppo_pl.rollout.base import SamplingConfig

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    engine = HFEngine(module.policy, tiny_tokenizer, batch_size=2)
    prompt_ids, greedy = _prompts(tiny_tokenizer), SamplingConfig(n=1, temperature=0.0, max_tokens=24)
    plain = engine.generate(prompt_ids, greedy)
    config = module.policy.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size = 5.0, 2
    assert [g.token_ids for g in engine.generate(prompt_ids, greedy)] == [g.token_ids for g in plain]
    assert module.policy.generation_config.repetition_penalty == 5.0  # the model's own config is kept


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
        ),
    ],
)
def test_seeded_hf_generation_leaves_the_trainers_random_streams_as_they_were(
    tiny_model_dir, tiny_tokenizer, device
):
    """On CUDA the seeds reseeded the GPU's generator, and only the CPU's was put back."""
    from sppo_pl.rollout.hf_engine import rng_devices

    assert rng_devices(torch.device("cpu")) == [] and rng_devices(torch.device("cuda", 1)) == [1]
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0)).to(device)
    engine = HFEngine(module.policy, tiny_tokenizer, batch_size=2)
    torch.manual_seed(123)
    expected = torch.rand(4, device=device)
    torch.manual_seed(123)
    engine.generate(_prompts(tiny_tokenizer), SAMPLING, seeds=[1, 2, 3])
    assert torch.equal(torch.rand(4, device=device), expected)


def test_unseeded_hf_batches_draw_fresh_samples(tiny_model_dir, tiny_tokenizer):
    """Without seeds every batch and every call sampled from one restored random state: the same draws."""
    from sppo_pl.rollout.base import SamplingConfig

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    engine = HFEngine(module.policy, tiny_tokenizer, batch_size=1)
    prompt = _prompts(tiny_tokenizer)[0]
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=12)
    torch.manual_seed(0)
    first, second = engine.generate([prompt, prompt], sampling)  # two batches of one prompt
    again = engine.generate([prompt], sampling)[0]
    assert first.token_ids != second.token_ids and first.token_ids != again.token_ids


def test_hf_generation_stops_where_vllm_does(tiny_model_dir, tiny_tokenizer):
    """vLLM stops at the tokenizer's eos and at every eos id of the generation config; so must HF."""
    from sppo_pl.rollout.hf_engine import _eos_ids

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=10.0))
    eos, other = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    module.policy.generation_config.eos_token_id = [other]
    assert _eos_ids(module.policy, tiny_tokenizer) == sorted({eos, other})
    module.policy.generation_config.eos_token_id = None
    assert _eos_ids(module.policy, tiny_tokenizer) == [eos]
