"""Response-only sequence log-probs: masking, padding invariance, equality with a plain log-softmax."""

from __future__ import annotations

import torch

from sppo_pl.datamodule import collate_rollouts
from sppo_pl.logprobs import masked_sum, position_ids_from_mask, sequence_logps, token_logps
from sppo_pl.module import load_policy
from sppo_pl.types import Rollout


def test_token_logps_matches_log_softmax_in_chunks():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    want = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, labels, chunk=3), want)


def test_masked_sum_and_positions_by_hand():
    vals = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -0.25, -8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(vals, mask).tolist() == [-3.0, -0.5]
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 3],
    ]


def _reference_logp(model, prompt: list[int], response: list[int]) -> float:
    """log pi(y|x) from one unpadded sequence and a full log-softmax: the definition."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).sum())


def test_sequence_logps_ignores_prompt_and_padding(tiny_model_dir):
    model = load_policy(str(tiny_model_dir)).eval()
    rollouts = [
        Rollout("a", [5, 6, 7, 8, 9], ["", ""], [[10, 11, 12], [13]]),
        Rollout("b", [20, 21], ["", ""], [[22, 23, 24, 25, 26], [27, 28]]),
    ]
    batch = collate_rollouts(rollouts, pad_id=0)
    assert batch["input_ids"].shape == (4, 5 + 5) and batch["response_mask"].shape == (4, 5)
    with torch.no_grad():
        got = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    want = [_reference_logp(model, r.prompt_ids, y) for r in rollouts for y in r.response_ids]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-4, rtol=1e-5)
    # changing a padding token or a prompt token's *padding* position changes nothing
    ids = batch["input_ids"].clone()
    ids[1, -1] = 99  # right padding of the 1-token response
    with torch.no_grad():
        again = sequence_logps(model, ids, batch["attention_mask"], batch["response_mask"])
    torch.testing.assert_close(again, got)


def model_with_attention_dropout(tiny_model_dir, out):
    """The tiny Llama with ``attention_dropout=0.1`` in its config (a rate HF applies in train mode)."""
    import json
    import shutil

    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    return out


def test_config_dropout_rates_are_off_while_training(tiny_model_dir, tmp_path):
    """log(pi_theta / pi_t) is 0 at theta = pi_t: the train-mode pass (the policy's) equals the eval-mode pass
    (how pi_t is taken), with a dropout rate that lives in the model's config rather than an nn.Dropout."""
    model = load_policy(str(model_with_attention_dropout(tiny_model_dir, tmp_path / "m")))
    assert model.zeroed_dropout == {"attention_dropout": 0.1} and model.config.attention_dropout == 0.0
    rollouts = [Rollout("a", [5, 6, 7, 8], ["", ""], [[20, 21, 22, 23], [30, 31]])]
    batch = collate_rollouts(rollouts, pad_id=0)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        ref = sequence_logps(model.eval(), *args)
        twice = [sequence_logps(model.train(), *args) for _ in range(2)]
    for got in twice:
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
