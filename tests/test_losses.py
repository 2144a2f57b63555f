"""Every loss against hand-computed values, and against the formula as the original code wrote it.

Shared case (B = 1, K = 3): log pi_theta = [-1, -2, -3], log pi_t = [-1.5, -2, -2.5], so the log-ratios are
[0.5, 0, -0.5]; win rates P_hat = [0.75, 0.5, 0.25]; scores [1, 0.5, 0]. Best w = 0, worst l = 2.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sppo_pl.losses import (
    DPOLoss,
    SPPOHardLoss,
    SPPOLoss,
    SPPOPairLoss,
    SPPOSingleLoss,
    SPPOSoftMeanLoss,
    softmean,
)

POLICY = [[-1.0, -2.0, -3.0]]
REF = [[-1.5, -2.0, -2.5]]
WIN = [[0.75, 0.5, 0.25]]
SCORES = [[1.0, 0.5, 0.0]]


def run(loss_fn, policy=POLICY, ref=REF, win=WIN, scores=SCORES):
    logps = torch.tensor(policy, requires_grad=True)
    out = loss_fn(logps, torch.tensor(ref), torch.tensor(win), torch.tensor(scores))
    out.loss.backward()
    assert logps.grad is not None and torch.isfinite(logps.grad).all()
    return out


@pytest.mark.parametrize(
    ("loss_fn", "expected"),
    [
        # eta = 4: targets 4 (P - 1/2) = [1, 0, -1]; residuals [-0.5, 0, 0.5]; mean of squares 0.5 / 3
        (SPPOLoss(eta=4), 0.5 / 3),
        # w: (0.5 - 1)^2 = 0.25, l: (-0.5 + 1)^2 = 0.25; halved sum 0.25
        (SPPOPairLoss(eta=4), 0.25),
        # hard P_wl = 1: t = 4 * 0.5 = 2; ((0.5 - 2)^2 + (-0.5 + 2)^2) / 2 = 2.25
        (SPPOSingleLoss(eta=4, hard=True), 2.25),
        # soft P_wl = sigmoid(1 - 0) = 0.7310586; t = 4 * 0.2310586 = 0.9242343; (0.4242343)^2 = 0.1799748
        (SPPOSingleLoss(eta=4, hard=False), 0.1799748),
        # (0.5 - 2)^2 + (-0.5 + 2)^2 = 4.5
        (SPPOHardLoss(eta=4), 4.5),
        # SoftMean_1([1, .5, 0]) = log((e + e^.5 + 1) / 3) = 0.5816574; targets r - 0.5816574;
        # every residual is +-0.0816574 -> 0.0066679
        (SPPOSoftMeanLoss(eta=1, group="prompt"), 0.0066679),
        # -log sigmoid(0.1 * (0.5 - (-0.5))) = log(1 + e^-0.1) = 0.6443967
        (DPOLoss(beta=0.1), 0.6443967),
    ],
)
def test_loss_values_by_hand(loss_fn, expected):
    assert run(loss_fn).loss.item() == pytest.approx(expected, abs=1e-6)


def test_sppo_statistics_by_hand():
    out = run(SPPOLoss(eta=4))
    assert out.losses.tolist() == [[0.25, 0.0, 0.25]]
    assert out.log_ratio.item() == pytest.approx(0.0) and out.target.item() == pytest.approx(0.0)


def test_softmean_batch_group_as_verl():
    # verl: one response per prompt (K = 1), SoftMean over the batch. r = [1, 0], eta = 2:
    # SoftMean_2 = log((e^2 + 1) / 2) / 2 = 0.7168904; targets 2 (r - 0.7168904) = [0.5662192, -1.4337808]
    # log-ratios [0.5, -0.5]: ((0.5 - 0.5662192)^2 + (-0.5 + 1.4337808)^2) / 2 = 0.4381658
    out = run(
        SPPOSoftMeanLoss(eta=2, group="batch"),
        [[-1.0], [-2.5]],
        [[-1.5], [-2.0]],
        [[0.5], [0.5]],
        [[1.0], [0.0]],
    )
    assert out.loss.item() == pytest.approx(0.4381658, abs=1e-6)


def test_sppo_pair_matches_uclaml_code():
    """uclaml/SPPO trainer, loss_type 'sppo' with beta = 1 / eta, written as they wrote it."""
    torch.manual_seed(0)
    pol, ref = torch.randn(5, 4), torch.randn(5, 4)
    win = torch.rand(5, 4)
    eta = 1000.0
    beta = 1 / eta
    w, l = win.argmax(-1), win.argmin(-1)
    rows = torch.arange(5)
    policy_chosen_logps, policy_rejected_logps = pol[rows, w], pol[rows, l]
    reference_chosen_logps, reference_rejected_logps = ref[rows, w], ref[rows, l]
    chosen_probs, rejected_probs = win[rows, w], win[rows, l]
    loss_w = (policy_chosen_logps - reference_chosen_logps - (chosen_probs - 0.5) / beta) ** 2
    loss_l = (policy_rejected_logps - reference_rejected_logps - (rejected_probs - 0.5) / beta) ** 2
    losses = (loss_w + loss_l) / 2
    out = SPPOPairLoss(eta=eta)(pol, ref, win, torch.zeros_like(win))
    torch.testing.assert_close(out.losses, losses)
    torch.testing.assert_close(out.loss, losses.mean())


def test_sppo_hard_matches_trl_code():
    """TRL DPOTrainer loss_type 'sppo_hard', written as TRL writes it (beta = 1 / eta)."""
    torch.manual_seed(1)
    pol, ref = torch.randn(6, 2), torch.randn(6, 2)
    win = torch.tensor([[0.75, 0.25]] * 6)
    beta = 0.1
    a = pol[:, 0] - ref[:, 0]
    b = pol[:, 1] - ref[:, 1]
    losses = (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
    out = SPPOHardLoss(eta=1 / beta)(pol, ref, win, torch.zeros_like(win))
    torch.testing.assert_close(out.losses, losses)
    torch.testing.assert_close(out.loss, losses.mean())


def test_softmean_matches_verl_code():
    """verl recipe/sppo: seq reward r - softmean(r, eta) over the batch; loss (log_ratio - eta * reward)^2."""
    torch.manual_seed(2)
    pol, ref = torch.randn(8, 1), torch.randn(8, 1)
    r = torch.randint(0, 2, (8, 1)).float()
    eta = 1.0
    rewards = r.squeeze(-1)
    lse = torch.logsumexp(rewards * eta, dim=-1, keepdim=True)
    s_mean = (lse - math.log(rewards.size(-1))) / eta
    seq_reward = rewards - s_mean
    want = ((pol.squeeze(-1) - ref.squeeze(-1)) - eta * seq_reward) ** 2
    out = SPPOSoftMeanLoss(eta=eta, group="batch")(pol, ref, torch.full_like(r, 0.5), r)
    torch.testing.assert_close(out.losses.squeeze(-1), want)


def test_ties_carry_no_preference_for_dpo_and_sppo_hard():
    tie = [[0.5, 0.5, 0.5]]
    for loss_fn in (DPOLoss(beta=0.1), SPPOHardLoss(eta=4)):
        out = run(loss_fn, win=tie)
        assert out.loss.item() == 0.0 and not torch.isnan(out.loss)


@pytest.mark.parametrize("cls", [SPPOLoss, SPPOPairLoss, SPPOSingleLoss, SPPOHardLoss, SPPOSoftMeanLoss])
@pytest.mark.parametrize("eta", [0, -1.0, float("inf")])
def test_bad_eta_is_rejected(cls, eta):
    with pytest.raises(ValueError, match="loss.eta"):
        cls(eta=eta)


def test_softmean_limits():
    x = torch.tensor([1.0, 2.0, 6.0])
    assert softmean(x, 0).item() == pytest.approx(3.0)
    assert softmean(x, 200.0).item() == pytest.approx(6.0 - math.log(3) / 200, abs=1e-5)
    assert softmean(x, 1.0).item() == pytest.approx(math.log((math.e + math.e**2 + math.e**6) / 3))


def test_dpo_matches_logsigmoid_definition():
    pol, ref = torch.randn(4, 3), torch.randn(4, 3)
    win = torch.tensor([[0.9, 0.5, 0.1]] * 4)
    out = DPOLoss(beta=0.5)(pol, ref, win, win)
    lr = pol - ref
    torch.testing.assert_close(out.losses, -F.logsigmoid(0.5 * (lr[:, 0] - lr[:, 2])))
