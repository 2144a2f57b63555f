"""SPPO loss variants: small pure modules, one per published formula.

Every loss is called as ``loss_fn(policy_logps, ref_logps, p_hat, scores)`` with

    policy_logps: [B, K]  log pi_theta(y_k | x_b), summed over response tokens (requires grad)
    ref_logps:    [B, K]  log pi_t(y_k | x_b), the iterate that sampled the rollouts (no grad)
    p_hat:     [B, K]  P_hat(y_k > pi_t | x_b) = mean_j P(y_k > y_j | x_b)   (paper eq. 4.7)
    scores:       [B, K]  the oracle's raw scores (0/1 correctness, reward-model score, ...)

and returns a :class:`sppo_pl.types.LossOutput`. A loss that sets ``needs_preferences = True`` is also
given ``preferences=`` [B, K, K], the oracle's P(y_i > y_j | x_b). Pair losses (``requires_pairs = True``)
use the best (w) and worst (l) of the K samples, ranked by P_hat (ties: first index), as the original
code does.
Selecting one of them is ``loss=<name>`` in Hydra; each config names its class with ``_target_``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sppo_pl.types import LossOutput


def _check_eta(eta: float) -> float:
    from sppo_pl.rollout.base import positive_number

    return positive_number(eta, "loss.eta")


def best_worst(p_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Indices [B] of the best and worst of K samples by P_hat (ties resolve to the first index)."""
    return p_hat.argmax(dim=-1), p_hat.argmin(dim=-1)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b]] for x [B, K] and idx [B] -> [B]."""
    return x.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def best_worst_pairs(
    policy_logps: Tensor, ref_logps: Tensor, p_hat: Tensor, *others: Tensor
) -> tuple[tuple[Tensor, Tensor], ...]:
    """The pair losses' winner (w) and loser (l) of each prompt, picked by :func:`best_worst`.

    policy_logps, ref_logps, p_hat and each of ``others``: [B, K]. Returns ((lw, ll), (pw, pl), ...):
    [B] values at w and at l of the log-ratio log pi_theta - log pi_t, then of P_hat, then of each
    of ``others`` in order (e.g. the scores).
    """
    w, l = best_worst(p_hat)
    return tuple((_take(x, w), _take(x, l)) for x in (policy_logps - ref_logps, p_hat, *others))


def _output(losses: Tensor, log_ratio: Tensor, target: Tensor, weight: Tensor | None = None) -> LossOutput:
    """Mean of `losses` over the batch, plus detached statistics.

    losses, log_ratio, target, weight: [B] or [B, K]. A term whose `weight` is 0 adds 0 to the loss but
    still counts in its denominator, the batch size: every term weighs 1/B whatever else its batch holds,
    so a batch split over ranks or accumulation steps trains alike (averaging over the weighted terms alone
    would scale a batch's few informative pairs up). The statistics average the weighted terms.
    """
    if weight is None:
        loss = losses.mean()
        lr, tg = log_ratio.detach().mean(), target.detach().mean()
    else:
        loss = (losses * weight).mean()
        n = weight.sum().clamp(min=1)
        lr, tg = (log_ratio.detach() * weight).sum() / n, (target.detach() * weight).sum() / n
    return LossOutput(loss=loss, losses=losses.detach(), log_ratio=lr, target=tg)


class SPPOLoss(nn.Module):
    """SPPO, paper eq. 4.7 (Wu et al. 2024, arXiv 2405.00675), on all K samples of each prompt.

    loss_{b,k} = (log pi_theta(y_k|x) - log pi_t(y_k|x) - eta * (P_hat(y_k > pi_t | x) - 1/2))^2

    eta/2 stands in for eta * log Z (the paper's approximation). Paper setting: eta = 1e3.
    """

    requires_pairs = True  # P_hat needs at least two samples to compare

    def __init__(self, eta: float = 1e3):
        super().__init__()
        self.eta = _check_eta(eta)

    def forward(self, policy_logps: Tensor, ref_logps: Tensor, p_hat: Tensor, scores: Tensor) -> LossOutput:
        log_ratio = policy_logps - ref_logps
        target = self.eta * (p_hat - 0.5)
        return _output((log_ratio - target) ** 2, log_ratio, target)


class SPPOPairLoss(SPPOLoss):
    """SPPO as uclaml/SPPO trains it (loss_type "sppo"): best (w) and worst (l) sample only.

    loss_b = [(lw - eta (P_hat_w - 1/2))^2 + (ll - eta (P_hat_l - 1/2))^2] / 2,
    lw, ll = log pi_theta - log pi_t of the winner / loser; P_hat_w, P_hat_l their P_hat against pi_t.
    """

    def forward(self, policy_logps: Tensor, ref_logps: Tensor, p_hat: Tensor, scores: Tensor) -> LossOutput:
        (lw, ll), (pw, pl) = best_worst_pairs(policy_logps, ref_logps, p_hat)
        tw, tl = self.eta * (pw - 0.5), self.eta * (pl - 0.5)
        losses = ((lw - tw) ** 2 + (ll - tl) ** 2) / 2
        return _output(losses, (lw + ll) / 2, (tw + tl) / 2)


class SPPOSingleLoss(SPPOLoss):
    """uclaml/SPPO loss_type "sppo_single": one pairwise probability P_wl = P(y_w > y_l | x).

    loss_b = [(lw - eta (P_wl - 1/2))^2 + (ll + eta (P_wl - 1/2))^2] / 2

    P_wl is the oracle's own preference of the winner over the loser, ``preferences[b, w, l]``, as uclaml
    reads it from PairRM's probability matrix: Bradley-Terry at the oracle's scale for a reward model, the
    pairwise model's judgement, 1 / 0 / 1/2 for a 0/1 verifier.
    """

    needs_preferences = True

    def forward(
        self,
        policy_logps: Tensor,
        ref_logps: Tensor,
        p_hat: Tensor,
        scores: Tensor,
        preferences: Tensor | None = None,
    ) -> LossOutput:
        """preferences: [B, K, K] P(y_i > y_j | x_b)."""
        if preferences is None:
            raise ValueError(
                "loss=sppo_single needs the oracle's preference matrix P(y_i > y_j | x); these rollouts have none"
            )
        (lw, ll), _ = best_worst_pairs(policy_logps, ref_logps, p_hat)
        w, l = best_worst(p_hat)
        p_wl = preferences.to(policy_logps.dtype)[torch.arange(w.numel()), w, l]
        t = self.eta * (p_wl - 0.5)
        losses = ((lw - t) ** 2 + (ll + t) ** 2) / 2
        return _output(losses, (lw + ll) / 2, torch.zeros_like(t))


class SPPOHardLoss(SPPOLoss):
    """TRL DPOTrainer loss_type "sppo_hard": the winner's P is taken as 1, the loser's as 0.

    loss_b = (lw - eta/2)^2 + (ll + eta/2)^2    (TRL writes it with beta = 1/eta:
    (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2 with a, b the chosen / rejected log-ratios).
    Prompts whose K samples all tie carry no preference: they add 0 to the mean over the batch.
    """

    def forward(self, policy_logps: Tensor, ref_logps: Tensor, p_hat: Tensor, scores: Tensor) -> LossOutput:
        (lw, ll), (pw, pl) = best_worst_pairs(policy_logps, ref_logps, p_hat)
        losses = (lw - self.eta / 2) ** 2 + (ll + self.eta / 2) ** 2
        valid = (pw > pl).to(losses)
        return _output(losses, (lw + ll) / 2, torch.zeros_like(lw), weight=valid)


def softmean(x: Tensor, beta: float, dim: int = -1, keepdim: bool = False) -> Tensor:
    """SoftMean_beta(x) = (1/beta) log( (1/n) sum_i exp(beta x_i) ); the plain mean at beta = 0."""
    if beta == 0:
        return x.mean(dim=dim, keepdim=keepdim)
    lse = torch.logsumexp(beta * x, dim=dim, keepdim=keepdim)
    return (lse - math.log(x.size(dim))) / beta


class SPPOSoftMeanLoss(SPPOLoss):
    """verl's SPPO recipe (recipe/sppo): regress the log-ratio on a SoftMean-centred reward.

    target_i = eta * (r_i - SoftMean_eta(r)),   loss = mean_i (log pi_theta(y_i) - log pi_t(y_i) - target_i)^2

    r are the oracle's scores (0/1 correctness on MATH). Where the SoftMean is taken (``group``):
    - ``iteration``: over every response the self-play iteration sampled, on all ranks, as verl centres each
      step's whole rollout batch (one response per prompt); :meth:`begin_iteration` gets those scores;
    - ``batch``: over the responses of each training batch;
    - ``prompt``: over each prompt's K samples, closer to the paper.
    verl and sppo-pl agree on the log-ratio: both regress the sequence log-prob, summed over the response
    tokens (verl's ``compute_sppo_loss``: ``(log_prob * response_mask).sum(dim=1)``), as the paper does.
    """

    requires_pairs = False

    def __init__(self, eta: float = 1.0, group: str = "prompt"):
        super().__init__(eta)
        if group not in ("prompt", "batch", "iteration"):
            raise ValueError(f"loss.group must be 'prompt', 'batch' or 'iteration', got {group!r}")
        self.group = group
        self.requires_pairs = group == "prompt"
        self.centre: float | None = None

    def begin_iteration(self, scores: Tensor) -> None:
        """``group="iteration"``: SoftMean_eta of all the iteration's scores ([N, K], every rank's rollouts)."""
        if self.group == "iteration":
            self.centre = float(softmean(scores.reshape(-1).double(), self.eta))

    def forward(self, policy_logps: Tensor, ref_logps: Tensor, p_hat: Tensor, scores: Tensor) -> LossOutput:
        r = scores.to(policy_logps.dtype)
        if self.group == "prompt":
            centre = softmean(r, self.eta, dim=-1, keepdim=True)
        elif self.group == "batch":
            centre = softmean(r.reshape(-1), self.eta)
        elif self.centre is None:
            raise RuntimeError("loss.group=iteration: begin_iteration() has not been given the scores")
        else:
            centre = r.new_tensor(self.centre)
        target = self.eta * (r - centre)
        log_ratio = policy_logps - ref_logps
        return _output((log_ratio - target) ** 2, log_ratio, target)


class DPOLoss(nn.Module):
    """Iterative DPO on the best-vs-worst pair of each prompt's K samples (Rafailov et al. 2023, eq. 7).

    loss_b = -log sigmoid(beta * (lw - ll)); the baseline SPPO is compared with in the paper.
    Prompts whose K samples all tie carry no preference: they add 0 to the mean over the batch.
    """

    requires_pairs = True

    def __init__(self, beta: float = 0.1):
        super().__init__()
        from sppo_pl.rollout.base import positive_number

        self.beta = positive_number(beta, "loss.beta")

    def forward(self, policy_logps: Tensor, ref_logps: Tensor, p_hat: Tensor, scores: Tensor) -> LossOutput:
        (lw, ll), (pw, pl) = best_worst_pairs(policy_logps, ref_logps, p_hat)
        losses = -F.logsigmoid(self.beta * (lw - ll))
        valid = (pw > pl).to(losses)
        return _output(losses, (lw + ll) / 2, torch.zeros_like(lw), weight=valid)
