"""Every loss against hand-computed values, and against the formula as the original code wrote it.

Shared case, B = 2 prompts, K = 3 samples:
    log pi_theta = [[-1, -2, -3], [-2, -2, -2]]
    log pi_t     = [[-1.5, -2, -2.5], [-2, -1, -3]]
    log-ratios   = [[0.5, 0, -0.5], [0, -1, 1]]
    P_hat        = [[0.75, 0.5, 0.25], [0.25, 0.75, 0.5]]  -> best w = [0, 1], worst l = [2, 0]
    scores       = [[1, 0.5, 0], [0, 2, 1]]                 -> s_w - s_l = [1, 2]
so lw = [0.5, -1] and ll = [-0.5, 0].
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
from sppo_pl.rewards.preference import bradley_terry, hard_preference

POLICY = [[-1.0, -2.0, -3.0], [-2.0, -2.0, -2.0]]
REF = [[-1.5, -2.0, -2.5], [-2.0, -1.0, -3.0]]
WIN = [[0.75, 0.5, 0.25], [0.25, 0.75, 0.5]]
SCORES = [[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]]
# the oracle's preference matrices [B, K, K] of SCORES: a 0/1 verifier's and Bradley-Terry at scale 1
HARD = hard_preference(torch.tensor(SCORES, dtype=torch.float64))
BT = bradley_terry(torch.tensor(SCORES, dtype=torch.float64))


def run(loss_fn, policy=POLICY, ref=REF, win=WIN, scores=SCORES, preferences=None):
    """Call the loss on float64 tensors, back-propagate, and return (output, d loss / d policy_logps)."""
    logps = torch.tensor(policy, dtype=torch.float64, requires_grad=True)
    f64 = dict(dtype=torch.float64)
    extra = {"preferences": preferences} if preferences is not None else {}
    args = (torch.tensor(ref, **f64), torch.tensor(win, **f64), torch.tensor(scores, **f64))
    out = loss_fn(logps, *args, **extra)
    out.loss.backward()
    return out, logps.grad


HAND_VALUES = [
    # eta = 4: targets 4 (P - 1/2) = [[1, 0, -1], [-1, 1, 0]]; residuals log-ratio - target =
    # [[-0.5, 0, 0.5], [1, -2, 1]]; squares sum 0.25 + 0.25 + 1 + 4 + 1 = 6.5; mean 6.5 / 6
    ("sppo", SPPOLoss(eta=4), 1.0833333333),
    # row 0: ((0.5 - 1)^2 + (-0.5 - (-1))^2) / 2 = 0.25; row 1 (w=1, l=0): ((-1 - 1)^2 + (0 - (-1))^2) / 2 = 2.5
    # mean (0.25 + 2.5) / 2
    ("sppo_pair", SPPOPairLoss(eta=4), 1.375),
    # P_wl = 1 (s_w > s_l in both rows): t = 4 (1 - 1/2) = 2
    # row 0: ((0.5 - 2)^2 + (-0.5 + 2)^2) / 2 = 2.25; row 1: ((-1 - 2)^2 + (0 + 2)^2) / 2 = 6.5; mean 4.375
    ("sppo_single_hard", SPPOSingleLoss(eta=4), 4.375),
    # P_wl = sigmoid(s_w - s_l): t0 = 4 (sigmoid(1) - 1/2) = 0.9242343, t1 = 4 (sigmoid(2) - 1/2) = 1.5231883
    # row 0: ((0.5 - 0.9242343)^2 + (-0.5 + 0.9242343)^2) / 2 = 0.1799748
    # row 1: ((-1 - 1.5231883)^2 + (0 + 1.5231883)^2) / 2 = (6.3664793 + 2.3201026) / 2 = 4.3432909
    # mean (0.1799748 + 4.3432909) / 2
    ("sppo_single_soft", SPPOSingleLoss(eta=4), 2.2616328),
    # row 0: (0.5 - 2)^2 + (-0.5 + 2)^2 = 4.5; row 1: (-1 - 2)^2 + (0 + 2)^2 = 13; mean 8.75
    ("sppo_hard", SPPOHardLoss(eta=4), 8.75),
    # eta = 1, SoftMean per prompt: c0 = log((e + e^0.5 + 1) / 3) = 0.5816574,
    # c1 = log((1 + e^2 + e) / 3) = log(3.7024460) = 1.3089937; targets r - c
    # residuals row 0: [0.5 - 0.4183426, 0 + 0.0816574, -0.5 + 0.5816574] = 0.0816574 each -> 0.0066679 each
    # row 1: [0 + 1.3089937, -1 - 0.6910063, 1 + 0.3089937] = [1.3089937, -1.6910063, 1.3089937]
    #   -> 1.7134644, 2.8595024, 1.7134644; mean (3 * 0.0066679 + 6.2864312) / 6
    ("softmean_prompt", SPPOSoftMeanLoss(eta=1, group="prompt"), 1.0510725),
    # eta = 1, SoftMean over all six scores [1, .5, 0, 0, 2, 1]:
    # c = log((e + e^0.5 + 1 + 1 + e^2 + e) / 6) = log(2.7457235) = 1.0100446
    # residuals log-ratio - (r - c) = [0.5100446] * 3 + [1.0100446, -1.9899554, 1.0100446]
    # squares 0.2601455 * 3 + 1.0201901 + 3.9599224 + 1.0201901 = 6.7806392; mean / 6
    ("softmean_batch", SPPOSoftMeanLoss(eta=1, group="batch"), 1.1301232),
    # beta = 0.1: row 0 margin lw - ll = 0.5 - (-0.5) = 1 -> -log sigmoid(0.1) = log(1 + e^-0.1) = 0.6443967
    # row 1 margin -1 - 0 = -1 -> log(1 + e^0.1) = 0.7443967; mean 0.6943967
    ("dpo", DPOLoss(beta=0.1), 0.6943967),
]


@pytest.mark.parametrize(("name", "loss_fn", "expected"), HAND_VALUES, ids=[h[0] for h in HAND_VALUES])
def test_loss_values_by_hand(name, loss_fn, expected):
    out, grad = run(loss_fn, preferences={"sppo_single_hard": HARD, "sppo_single_soft": BT}.get(name))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not out.losses.requires_grad and not out.log_ratio.requires_grad and not out.target.requires_grad


def test_sppo_per_term_losses_statistics_and_gradient_by_hand():
    out, grad = run(SPPOLoss(eta=4))
    assert out.losses.tolist() == [[0.25, 0.0, 0.25], [1.0, 4.0, 1.0]]
    # mean log-ratio (0.5 + 0 - 0.5 + 0 - 1 + 1) / 6 = 0; mean target (1 + 0 - 1 - 1 + 1 + 0) / 6 = 0
    assert out.log_ratio.item() == pytest.approx(0.0) and out.target.item() == pytest.approx(0.0)
    # d/d logp of mean_i (r_i)^2 is 2 r_i / 6 with residuals r = [[-0.5, 0, 0.5], [1, -2, 1]]
    want = torch.tensor([[-1 / 6, 0.0, 1 / 6], [1 / 3, -2 / 3, 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(grad, want)


def test_pair_losses_are_per_prompt():
    out, _ = run(SPPOPairLoss(eta=4))
    assert out.losses.tolist() == [0.25, 2.5]
    out, grad = run(SPPOHardLoss(eta=4))
    assert out.losses.tolist() == [4.5, 13.0]
    # only w and l get gradient: row 0 w=0, l=2; row 1 w=1, l=0; sample 1 of row 0 and 2 of row 1 get none
    assert grad[0, 1] == 0 and grad[1, 2] == 0 and grad[0, 0] != 0 and grad[1, 0] != 0


def test_sppo_pair_matches_uclaml_code():
    """uclaml/SPPO trainer, loss_type 'sppo' with beta = 1 / eta, written as they wrote it."""
    torch.manual_seed(0)
    pol, ref, win = torch.randn(5, 4), torch.randn(5, 4), torch.rand(5, 4)
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


def test_sppo_single_reads_p_wl_from_the_oracles_matrix():
    """P_wl is preferences[b, w, l], whatever the oracle: not sigmoid(s_w - s_l) recomputed at scale 1."""
    # a Bradley-Terry oracle at scale 3: P_wl = sigmoid(3 (s_w - s_l)) = sigmoid(3), sigmoid(6)
    bt3 = bradley_terry(torch.tensor(SCORES, dtype=torch.float64), scale=3.0)
    out, _ = run(SPPOSingleLoss(eta=4), preferences=bt3)
    t = [4 * (1 / (1 + math.exp(-x)) - 0.5) for x in (3.0, 6.0)]  # 1.8105977, 1.9901487
    want = [((0.5 - t[0]) ** 2 + (-0.5 + t[0]) ** 2) / 2, ((-1 - t[1]) ** 2 + (0 + t[1]) ** 2) / 2]
    assert out.losses.tolist() == pytest.approx(want)
    # a pairwise oracle whose matrix disagrees with the scores: P(w > l) = 0.6 in row 0, 0.9 in row 1
    pref = torch.full((2, 3, 3), 0.5, dtype=torch.float64)
    pref[0, 0, 2], pref[0, 2, 0], pref[1, 1, 0], pref[1, 0, 1] = 0.6, 0.4, 0.9, 0.1
    out, _ = run(SPPOSingleLoss(eta=4), preferences=pref)
    # t = 4 (P - 1/2) = 0.4, 1.6: row 0 ((0.5 - 0.4)^2 + (-0.5 + 0.4)^2) / 2 = 0.01; row 1 (2.6^2 + 1.6^2) / 2
    assert out.losses.tolist() == pytest.approx([0.01, (2.6**2 + 1.6**2) / 2])


def test_sppo_single_without_preferences_says_so():
    with pytest.raises(ValueError, match="sppo_single needs the oracle's preference matrix"):
        run(SPPOSingleLoss(eta=4))


def test_sppo_hard_matches_trl_code():
    """TRL DPOTrainer loss_type 'sppo_hard', written as TRL writes it (beta = 1 / eta)."""
    torch.manual_seed(1)
    pol, ref = torch.randn(6, 2), torch.randn(6, 2)
    win = torch.tensor([[0.75, 0.25]] * 6)  # chosen = column 0, rejected = column 1
    beta = 0.1
    policy_chosen_logps, policy_rejected_logps = pol[:, 0], pol[:, 1]
    reference_chosen_logps, reference_rejected_logps = ref[:, 0], ref[:, 1]
    a = policy_chosen_logps - reference_chosen_logps
    b = policy_rejected_logps - reference_rejected_logps
    losses = (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
    out = SPPOHardLoss(eta=1 / beta)(pol, ref, win, torch.zeros_like(win))
    torch.testing.assert_close(out.losses, losses)
    torch.testing.assert_close(out.loss, losses.mean())


def test_softmean_matches_verl_code():
    """verl recipe/sppo: seq reward r - softmean(r, eta) over the batch (one response per prompt), then
    loss = (log_ratio - eta * seq_reward)^2."""

    def verl_softmean(x: torch.Tensor, beta: float) -> torch.Tensor:
        return (torch.logsumexp(beta * x, dim=-1) - math.log(x.size(-1))) / beta

    torch.manual_seed(2)
    for eta in (0.5, 1.0, 3.0):
        pol, ref = torch.randn(8, 1), torch.randn(8, 1)
        r = torch.randint(0, 2, (8, 1)).float()
        rewards = r.squeeze(-1)
        seq_reward = rewards - verl_softmean(rewards, eta)
        log_ratio = pol.squeeze(-1) - ref.squeeze(-1)
        want = (log_ratio - eta * seq_reward) ** 2
        out = SPPOSoftMeanLoss(eta=eta, group="batch")(pol, ref, torch.full_like(r, 0.5), r)
        torch.testing.assert_close(out.losses.squeeze(-1), want)
        torch.testing.assert_close(out.loss, want.mean())


@pytest.mark.parametrize("loss_fn", [DPOLoss(beta=0.1), SPPOHardLoss(eta=4)], ids=["dpo", "sppo_hard"])
def test_ties_carry_no_preference(loss_fn):
    out, grad = run(loss_fn, win=[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss) and torch.isfinite(grad).all()
    assert out.log_ratio.item() == 0.0


def test_tied_prompt_adds_nothing_but_counts_in_the_mean():
    # row 0 all tie (adds 0), row 1 as in the shared case: the mean over B = 2 is half row 1's loss
    win = [[0.5, 0.5, 0.5], WIN[1]]
    out, grad = run(SPPOHardLoss(eta=4), win=win)
    assert out.loss.item() == pytest.approx(13.0 / 2)  # ((-1 - 2)^2 + (0 + 2)^2) / 2
    assert grad[0].abs().sum().item() == 0.0  # the tied prompt gets no gradient
    assert out.log_ratio.item() == pytest.approx(-0.5)  # statistics: row 1 alone, (lw + ll) / 2
    out, _ = run(DPOLoss(beta=0.1), win=win)
    assert out.loss.item() == pytest.approx(0.7443967 / 2, abs=1e-6)  # log(1 + e^0.1) / 2


@pytest.mark.parametrize("loss_fn", [DPOLoss(beta=0.1), SPPOHardLoss(eta=4)], ids=["dpo", "sppo_hard"])
def test_a_batch_with_ties_trains_alike_split_in_halves(loss_fn):
    # 4 prompts, the first tied: one batch, or two halves averaged (2 ranks, or 2 accumulation steps)
    torch.manual_seed(0)
    policy, ref = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    win = torch.tensor([[0.5] * 3, WIN[0], WIN[1], WIN[0]], dtype=torch.float64)

    def grad(rows: slice) -> torch.Tensor:
        logps = policy.clone().requires_grad_(True)
        loss_fn(logps[rows], ref[rows], win[rows], win[rows]).loss.backward()
        return logps.grad

    whole = grad(slice(0, 4))
    halves = (grad(slice(0, 2)) + grad(slice(2, 4))) / 2
    assert whole.abs().sum() > 0
    torch.testing.assert_close(halves, whole)


@pytest.mark.parametrize("cls", [SPPOLoss, SPPOPairLoss, SPPOSingleLoss, SPPOHardLoss, SPPOSoftMeanLoss])
@pytest.mark.parametrize("eta", [0, -1.0, float("inf"), float("nan")])
def test_bad_eta_is_rejected(cls, eta):
    with pytest.raises(ValueError, match="eta"):
        cls(eta=eta)


def test_bad_dpo_beta_and_softmean_group_are_rejected():
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0)
    with pytest.raises(ValueError, match="group"):
        SPPOSoftMeanLoss(group="token")


def test_softmean_limits():
    x = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    # beta = 0: the arithmetic mean (1 + 2 + 6) / 3
    assert softmean(x, 0).item() == pytest.approx(3.0)
    # beta = 1: log((e + e^2 + e^6) / 3)
    assert softmean(x, 1.0).item() == pytest.approx(math.log((math.e + math.e**2 + math.e**6) / 3))
    # large beta: max(x) - log(3) / beta + O(e^{-4 beta}) -> 6
    assert softmean(x, 200.0).item() == pytest.approx(6.0 - math.log(3) / 200, abs=1e-9)
    assert softmean(x, 1e6).item() == pytest.approx(6.0, abs=1e-5)
    # small beta tends to the mean; no overflow for large scores
    assert softmean(x, 1e-6).item() == pytest.approx(3.0, abs=1e-4)
    assert math.isfinite(softmean(torch.tensor([1e4, 0.0]), 10.0).item())


def test_dpo_matches_logsigmoid_definition():
    torch.manual_seed(3)
    pol, ref = torch.randn(4, 3), torch.randn(4, 3)
    win = torch.tensor([[0.9, 0.5, 0.1]] * 4)
    out = DPOLoss(beta=0.5)(pol, ref, win, win)
    lr = pol - ref
    torch.testing.assert_close(out.losses, -F.logsigmoid(0.5 * (lr[:, 0] - lr[:, 2])))


def test_softmean_over_the_iteration_centres_each_batch_on_every_rollout():
    """group=iteration: verl's centre over the step's whole rollout batch, applied to any training batch."""
    loss = SPPOSoftMeanLoss(eta=1, group="iteration")
    with pytest.raises(RuntimeError, match="begin_iteration"):
        loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.full((2, 1), 0.5), torch.zeros(2, 1))
    # all 4 rollouts' scores [1, 0, 0, 1]: c = log((e + 1 + 1 + e) / 4) = log((e + 1) / 2) = 0.6201145
    loss.begin_iteration(torch.tensor([[1.0], [0.0], [0.0], [1.0]]))
    assert loss.centre == pytest.approx(0.6201145, abs=1e-7)
    # a batch of two of them, log-ratios [0.5, -0.5]: targets [1 - c, -c] = [0.3798855, -0.6201145]
    # residuals [0.1201145, 0.1201145] -> squares 0.0144275 each
    out = loss(
        torch.tensor([[0.5], [-0.5]]),
        torch.zeros(2, 1),
        torch.full((2, 1), 0.5),
        torch.tensor([[1.0], [0.0]]),
    )
    assert out.loss.item() == pytest.approx(0.0144275, abs=1e-6)
    assert out.target.item() == pytest.approx((0.3798855 - 0.6201145) / 2, abs=1e-6)
    # the batch's own SoftMean would differ: log((e + 1) / 2) over these two is the same here, so check [1, 1]
    out = loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.full((2, 1), 0.5), torch.ones(2, 1))
    assert out.target.item() == pytest.approx(1 - 0.6201145, abs=1e-6)  # batch-centred would give 0


@pytest.mark.parametrize("bad", ["0.1", None, True, 0, -1.0, float("nan"), float("inf")])
def test_loss_parameters_are_finite_numbers_above_zero_named(bad):
    """A bool was taken as 1.0, and text or None failed with a TypeError that named no field."""
    with pytest.raises(ValueError, match=r"loss.beta must be a finite number > 0, got"):
        DPOLoss(beta=bad)
    with pytest.raises(ValueError, match=r"loss.eta must be a finite number > 0, got"):
        SPPOLoss(eta=bad)


@pytest.mark.parametrize("include_self", [True, False])
def test_sppo_targets_of_a_prompt_sum_to_zero(include_self):
    """What the README says of train/target: with P_hat from a preference matrix (P_ij + P_ji = 1), a prompt's K
    targets eta (P_hat_k - 1/2) sum to 0, whichever the oracle; the pair losses' mean target moves."""
    from sppo_pl.rewards.preference import p_hat

    torch.manual_seed(1)
    scores = torch.randn(3, 4, dtype=torch.float64)
    win = p_hat(bradley_terry(scores, 2.0), include_self=include_self)
    policy, ref = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert SPPOLoss(eta=4)(policy, ref, win, scores).target.abs().item() < 1e-12
    assert SPPOPairLoss(eta=4)(policy, ref, win, scores).target.abs().item() > 1e-3
