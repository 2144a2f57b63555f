"""hparams_search=sppo_optuna: Hydra's Optuna sweeper (hydra-optuna-sweeper) over loss.eta and the learning
rate, maximising the val/acc that train() returns (optimized_metric)."""

from __future__ import annotations

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from tests.test_config import make_cfg
from tests.test_train_cli import ROOT, read_metrics, run_train

SEARCH = ROOT / "conf" / "hparams_search" / "sppo_optuna.yaml"
# The test's learning-rate range: the smoke model's own lr (1e-3) and up, where its two tiny updates move the
# greedy responses (at the config's lower rates both trials would end where they started)
TEST_LR = "tag(log, interval(1e-3, 1e-2))"


def log_interval(spec: str) -> tuple[float, float]:
    """``tag(log, interval(a, b))`` (Hydra's override grammar, as the sweeper reads it) -> (a, b)."""
    (override,) = OverridesParser.create().parse_overrides([f"key={spec}"])
    sweep = override.value()
    assert "log" in sweep.tags, spec
    return float(sweep.start), float(sweep.end)


def search_space() -> dict[str, str]:
    return yaml.safe_load(SEARCH.read_text())["hydra"]["sweeper"]["params"]


def test_the_search_composes_over_real_keys_around_their_defaults(tmp_path):
    cfg = make_cfg(tmp_path, ["hparams_search=sppo_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.n_jobs == 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.optimized_metric == "val/acc"
    # an experiment's own metric survives the search (a pairwise oracle logs no val/acc)
    with_pairrm = make_cfg(
        tmp_path, ["hparams_search=sppo_optuna", "experiment=uclaml_ultrafeedback_mistral7b"]
    )
    assert with_pairrm.optimized_metric == "val/win_rate"
    params = OmegaConf.to_container(sweeper.params)
    assert set(params) == {"loss.eta", "optim.optimizer.lr"}
    for key, spec in params.items():
        low, high = log_interval(spec)
        default = OmegaConf.select(cfg, key)  # a typo in a key would search a setting nothing reads
        assert isinstance(default, float) and low < default < high, (key, default, spec)


@pytest.mark.slow
def test_two_optuna_trials_run_in_their_own_folders_and_the_best_is_reported(tmp_path):
    run_train(
        tmp_path,
        "hparams_search=sppo_optuna",  # a multirun by itself (hydra.mode), no -m
        "experiment=smoke",
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        "export_hf=false",
        # the tiny random model scores 0 on arithmetic in every trial, so its val/acc here is a score that
        # moves: minus the words of each greedy response (reward=function's brevity, as a verifier)
        "reward=function",
        "reward.oracle.verifier=true",
        f"optim.optimizer.lr={TEST_LR}",  # replaces the config's range (the sweeper's override grammar)
    )
    (sweep,) = (tmp_path / "outputs" / "smoke" / "multiruns").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]
    eta_low, eta_high = log_interval(search_space()["loss.eta"])
    lr_low, lr_high = log_interval(TEST_LR)
    params, finals = [], []
    for trial in trials:
        cfg = yaml.safe_load((trial / "config_resolved.yaml").read_text())
        eta, lr = cfg["loss"]["eta"], cfg["optim"]["optimizer"]["lr"]
        assert eta_low <= eta <= eta_high and lr_low <= lr <= lr_high, (trial.name, eta, lr)
        assert not (trial / ".lock").exists()  # each trial held its own folder and let it go
        rows = [r for r in read_metrics(trial) if r.get("val/iteration")]
        assert [float(r["val/iteration"]) for r in rows] == [0.0, 1.0]
        params.append({"loss.eta": eta, "optim.optimizer.lr": lr})
        finals.append(float(rows[-1]["val/acc"]))
    assert params[0]["loss.eta"] != params[1]["loss.eta"]
    assert params[0]["optim.optimizer.lr"] != params[1]["optim.optimizer.lr"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(finals), rel=1e-6, abs=1e-9)
    best = [p for p, v in zip(params, finals) if v == pytest.approx(max(finals), rel=1e-6, abs=1e-9)]
    assert any(results["best_params"] == pytest.approx(p, rel=1e-9) for p in best), (results, params, finals)
