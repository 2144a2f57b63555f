"""SPPOModule: pi_t log-probs (precomputed or from a held reference copy), the training step, weight names."""

from __future__ import annotations

import pytest
import torch

from sppo_pl.datamodule import collate_rollouts
from sppo_pl.losses import SPPOLoss, SPPOSingleLoss
from sppo_pl.module import SPPOModule
from sppo_pl.types import Rollout


def _rollouts() -> list[Rollout]:
    return [
        Rollout("a", [5, 6, 7], ["", ""], [[10, 11], [12, 13, 14]], scores=[1.0, 0.0], p_hat=[0.75, 0.25]),
        Rollout("b", [8, 9], ["", ""], [[15], [16, 17]], scores=[0.0, 0.0], p_hat=[0.5, 0.5]),
    ]


def _perturb(module: SPPOModule) -> None:
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("reference", ["precompute", "model"])
def test_first_step_of_an_iteration_has_zero_log_ratio(tiny_model_dir, reference):
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=4.0), reference=reference)
    rollouts = _rollouts()
    module.refresh_reference()
    module.compute_ref_logps(rollouts, pad_id=0)
    batch = collate_rollouts(rollouts, pad_id=0)
    loss = module.training_step(batch, 0)
    # pi_theta == pi_t at the first step: log-ratio 0, so the loss is the mean of (eta (P_hat - 1/2))^2:
    # targets 4 * [0.25, -0.25, 0, 0] = [1, -1, 0, 0] -> mean of squares 0.5
    assert loss.item() == pytest.approx(0.5, abs=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())


def test_the_training_step_hands_the_oracles_matrix_to_sppo_single(tiny_model_dir):
    module = SPPOModule(str(tiny_model_dir), loss=SPPOSingleLoss(eta=4.0))
    rollouts = _rollouts()
    # a pairwise oracle's matrices: P(w > l) = 0.9 for prompt a (w = 0, l = 1); prompt b ties (w = l = 0)
    rollouts[0].preferences = [[0.5, 0.9], [0.1, 0.5]]
    rollouts[1].preferences = [[0.5, 0.5], [0.5, 0.5]]
    module.compute_ref_logps(rollouts, pad_id=0)
    loss = module.training_step(collate_rollouts(rollouts, pad_id=0), 0)
    # log-ratios 0 at the first step: prompt a ((0 - t)^2 + (0 + t)^2) / 2 = t^2 with t = 4 (0.9 - 1/2) = 1.6;
    # prompt b: P = 1/2, t = 0. Mean (2.56 + 0) / 2 (from the scores, sigmoid(1 - 0) would give t = 0.924)
    assert loss.item() == pytest.approx(1.28, abs=1e-4)


def test_train_metrics_are_averaged_over_the_ranks(tiny_model_dir):
    """Each rank holds 1/N of the global batch: train/* are synced, so a 4-device run's curves are those of
    its whole batch, comparable with a 1-device run's (rank 0's share alone was logged before)."""
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=4.0))
    rollouts = _rollouts()
    module.compute_ref_logps(rollouts, pad_id=0)
    logged = {}
    module.log = lambda name, value, **kw: logged.update({name: kw})
    module.training_step(collate_rollouts(rollouts, pad_id=0), 0)
    assert sorted(logged) == ["train/log_ratio", "train/loss", "train/target"]
    assert all(kw["sync_dist"] and kw["batch_size"] == 2 for kw in logged.values())


def test_reference_copy_stays_frozen_until_refreshed(tiny_model_dir):
    torch.manual_seed(0)
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss(eta=4.0), reference="model")
    assert all(not p.requires_grad for p in module.reference.parameters())
    before = _rollouts()
    module.compute_ref_logps(before, pad_id=0)
    _perturb(module)
    stale = _rollouts()
    module.compute_ref_logps(stale, pad_id=0)
    assert [r.ref_logps for r in stale] == [r.ref_logps for r in before]  # the copy did not move
    module.refresh_reference()
    fresh = _rollouts()
    module.compute_ref_logps(fresh, pad_id=0)
    assert [r.ref_logps for r in fresh] != [r.ref_logps for r in before]
    with torch.no_grad():
        policy = module.policy_logps(collate_rollouts(fresh, pad_id=0))
    torch.testing.assert_close(policy, torch.tensor([r.ref_logps for r in fresh]), atol=1e-5, rtol=1e-5)


def test_named_weights_include_the_tied_lm_head(tiny_model_dir):
    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss())
    names = dict(module.named_weights())
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
    assert names["lm_head.weight"].data_ptr() == names["model.embed_tokens.weight"].data_ptr()
    # the very tensor yielded for the embedding: sharded, that is one all-gather of it, not two
    assert names["lm_head.weight"] is names["model.embed_tokens.weight"]
    assert module.reference is None  # precompute: no second copy of the model


def test_bad_reference_mode(tiny_model_dir):
    with pytest.raises(ValueError, match="module.reference"):
        SPPOModule(str(tiny_model_dir), loss=SPPOLoss(), reference="frozen")


def test_pi_t_logps_are_computed_in_the_trainers_precision(tiny_model_dir):
    """Under bf16-mixed the training step runs in bf16 autocast: pi_t's no-grad pass must too, else the
    iteration starts from a log-ratio of bf16 rounding noise (and FSDP1's bf16 parameters meet fp32 inputs)."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    module = SPPOModule(str(tiny_model_dir), loss=SPPOLoss())
    fp32 = _rollouts()
    module.compute_ref_logps(fp32, pad_id=0)
    plugin = MixedPrecision("bf16-mixed", "cpu")
    module._trainer = SimpleNamespace(precision_plugin=plugin, strategy=SimpleNamespace(model=None))
    mixed = _rollouts()
    module.compute_ref_logps(mixed, pad_id=0)
    with torch.no_grad(), plugin.forward_context():
        step = module.policy_logps(collate_rollouts(mixed, pad_id=0))
    assert torch.equal(step, torch.tensor([r.ref_logps for r in mixed]))
    assert [r.ref_logps for r in mixed] != [r.ref_logps for r in fp32]
