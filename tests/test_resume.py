"""Checkpoints, run directories and metrics that survive crashes (unit level; end to end: test_faults.py)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sppo_pl.checkpoint import AtomicCheckpointIO, check_ckpt_model, resolve_ckpt
from sppo_pl.loggers import CSVLogger
from sppo_pl.rundir import LOCK, hold_run_dir
from tests.test_config import make_cfg


def fake_ckpt(path: Path, step: int, state: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "epoch": step // 2, "state_dict": state or {}}, path)
    return path


def test_ckpt_path_is_checked_and_bad_files_are_named(tmp_path):
    good = fake_ckpt(tmp_path / "good.ckpt", 4)
    assert resolve_ckpt(str(good)) == str(good) and resolve_ckpt(None) is None
    (tmp_path / "empty.ckpt").write_bytes(b"")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "random.bin").write_bytes(os.urandom(4096))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    for name, match in [
        ("empty.ckpt", "empty.ckpt is empty"),
        ("truncated.ckpt", "truncated.ckpt is corrupt or not a checkpoint"),
        ("notes.txt", "notes.txt is corrupt or not a checkpoint"),
        ("random.bin", "random.bin is corrupt or not a checkpoint"),
        ("plain.pt", "plain.pt is a torch file but not a Lightning checkpoint"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_ckpt(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="ckpt_path does not exist"):
        resolve_ckpt(str(tmp_path / "nope"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no intact checkpoint .* none was written"):
        resolve_ckpt(str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="neither checkpoints/ .* nor meta.pt"):
        resolve_ckpt(str(tmp_path / "good.ckpt").rsplit("/", 1)[0] + "/run/checkpoints")


def test_a_run_directory_falls_back_to_its_newest_intact_checkpoint(tmp_path, caplog):
    folder = tmp_path / "run" / "checkpoints"
    fake_ckpt(folder / "epoch_00.ckpt", 2)
    fake_ckpt(folder / "epoch_01.ckpt", 4)
    (folder / "last.ckpt").symlink_to("epoch_01.ckpt")
    assert resolve_ckpt(str(tmp_path / "run")) == str(folder / "last.ckpt")
    # last.ckpt points to a checkpoint that was deleted: the newest intact one is taken, with a warning
    (folder / "last.ckpt").unlink()
    (folder / "last.ckpt").symlink_to("epoch_02.ckpt")
    assert resolve_ckpt(str(tmp_path / "run")) == str(folder / "epoch_01.ckpt")
    assert "no longer exists" in caplog.text and "epoch_01.ckpt" in caplog.text
    # ... or to a truncated one
    (folder / "epoch_02.ckpt").write_bytes(b"PK\x03\x04 half a checkpoint")
    caplog.clear()
    assert resolve_ckpt(str(tmp_path / "run")) == str(folder / "epoch_01.ckpt")
    assert "epoch_02.ckpt is corrupt" in caplog.text
    # a dead writer's temp file is cleaned up, a live one's is left alone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host, dead_pid = socket.gethostname(), dead.stdout.strip()
    (folder / f"epoch_03.ckpt.tmp-{host}-{dead_pid}").write_bytes(b"partial")
    (folder / f"epoch_03.ckpt.tmp-{dead_pid}").write_bytes(b"partial")  # named before the host was added
    (folder / f"epoch_04.ckpt.tmp-{host}-{os.getpid()}").write_bytes(b"partial")
    # another node's writer, whose pid means nothing here: it may be a live run writing its checkpoint
    (folder / f"epoch_05.ckpt.tmp-node-17-{dead_pid}").write_bytes(b"partial")
    resolve_ckpt(str(tmp_path / "run"))
    assert sorted(p.name for p in folder.glob("*.tmp-*")) == [
        f"epoch_04.ckpt.tmp-{host}-{os.getpid()}",
        f"epoch_05.ckpt.tmp-node-17-{dead_pid}",
    ]


def test_checkpoints_are_staged_beside_their_name_and_a_failed_write_leaves_the_old_one(
    tmp_path, monkeypatch
):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "epoch": 0}, path)
    seen = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: seen.append(sorted(p.name for p in path.parent.iterdir())) or real_fsync(fd)
    )
    io.save_checkpoint({"global_step": 2, "epoch": 1}, path)
    # written to a temp file in the checkpoint's own folder and flushed to disk before the rename (Lightning's
    # own writer stages it in the system temp folder, which a kill leaves behind and may be another disk)
    assert seen == [["last.ckpt", f"last.ckpt.tmp-{socket.gethostname()}-{os.getpid()}"]]
    assert torch.load(path, weights_only=False)["global_step"] == 2

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 3, "epoch": 2}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=False)["global_step"] == 2


def test_a_checkpoint_of_another_model_is_refused_before_loading(tmp_path, tiny_model_dir):
    from sppo_pl.utils.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other", hidden_size=32)
    from transformers import AutoModelForCausalLM

    state = {f"policy.{k}": v for k, v in AutoModelForCausalLM.from_pretrained(other).state_dict().items()}
    ckpt = fake_ckpt(tmp_path / "other.ckpt", 2, state)
    with pytest.raises(
        ValueError, match=r"holds a different model than model.path=.*weights differ in shape"
    ):
        check_ckpt_model(ckpt, str(tiny_model_dir))
    check_ckpt_model(ckpt, str(other))  # its own model passes


def test_run_directories_are_unique_and_never_shared_by_live_runs(tmp_path):
    dirs = {make_cfg(tmp_path).hydra.run.dir for _ in range(3)}  # in the same second
    assert len(dirs) == 3
    run = tmp_path / "run"
    run.mkdir()
    with hold_run_dir(run):
        assert (run / LOCK).read_text() == f"{socket.gethostname()} {os.getpid()}"
        with pytest.raises(RuntimeError, match="is held by a live run"), hold_run_dir(run):
            pass
    assert not (run / LOCK).exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (run / LOCK).write_text(f"{socket.gethostname()} {dead.stdout.strip()}")  # a killed run's lock
    with hold_run_dir(run):
        assert (run / LOCK).read_text().endswith(str(os.getpid()))


def _take_over(run: Path, barrier, delay: float, results) -> None:
    """Hold ``run`` for a second; both takers meet at ``barrier`` once they find its owner dead."""
    import sppo_pl.rundir as rundir

    is_live = rundir._is_live

    def meet(owner: str) -> bool:  # the old takeover's window: both saw the dead owner, then unlinked in turn
        live = is_live(owner)
        if not live:
            barrier.wait(timeout=10)
            time.sleep(delay)
        return live

    rundir._is_live = meet
    try:
        with rundir.hold_run_dir(run):
            results.put("holds")
            time.sleep(1.0)
    except RuntimeError as e:
        results.put("refused" if "is held by a live run" in str(e) else str(e))


def test_two_runs_finding_a_killed_runs_lock_do_not_both_take_it_over(tmp_path):
    """Both read the dead owner, one unlinked it and created its own lock, the other unlinked that live one:
    two runs wrote into one directory."""
    import multiprocessing as mp

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(f"{socket.gethostname()} 999999999")  # a killed run's (no such pid)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    takers = [ctx.Process(target=_take_over, args=(run, barrier, d, results)) for d in (0.0, 0.3)]
    for t in takers:
        t.start()
    for t in takers:
        t.join(timeout=30)
    assert sorted(results.get(timeout=5) for _ in takers) == ["holds", "refused"]
    assert not (run / LOCK).exists()  # the holder let it go


def _log(logger: CSVLogger, step: int) -> None:
    logger.log_metrics({"a": float(step)}, step=step)
    logger.save()


def test_csv_logger_continues_a_resumed_run_and_warns_only_when_it_replaces_one(tmp_path):
    (tmp_path / "config_resolved.yaml").write_text("x: 1\n")  # what Hydra and train() write first
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning warned "will be deleted" here on every fresh run
        first = CSVLogger(tmp_path, name="", version="")
        for step in range(3):
            _log(first, step)
    resumed = CSVLogger(tmp_path, name="", version="")
    resumed.keep_rows = 2  # the checkpoint was written after two rows
    _ = resumed.experiment
    resumed.log_metrics({"a": 2.5, "b": 1.0}, step=2)
    resumed.save()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [
        ("0", "0.0", ""),
        ("1", "1.0", ""),
        ("2", "2.5", "1.0"),
    ]
    fresh = CSVLogger(tmp_path, name="", version="")
    with pytest.warns(UserWarning, match="holds an earlier run's metrics and is replaced.*ckpt_path="):
        _log(fresh, 0)


def test_non_finite_weights_are_never_checkpointed_nor_exported(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from callbacks.finite import FiniteCheck
    from sppo_pl.export import export_hf
    from sppo_pl.module import load_policy

    policy = load_policy(str(tiny_model_dir))
    with torch.no_grad():
        policy.model.norm.weight[0] = float("nan")
    trainer = SimpleNamespace(
        current_epoch=1,
        global_step=4,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda ok, all: ok),
        checkpoint_callback=SimpleNamespace(last_model_path=str(tmp_path / "epoch_00.ckpt")),
    )
    # at the iteration's end, before ModelCheckpoint (Lightning runs it last) writes the NaN policy
    with pytest.raises(
        FloatingPointError, match="not finite at the end of self-play iteration 1 .*epoch_00.ckpt"
    ):
        FiniteCheck().on_train_epoch_end(trainer, policy)
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    ckpt = fake_ckpt(tmp_path / "nan.ckpt", 4, state)
    torch.save(
        {**torch.load(ckpt, weights_only=False), "hyper_parameters": {"model_path": str(tiny_model_dir)}},
        ckpt,
    )
    with pytest.raises(ValueError, match="weights are not finite .*model.norm.weight.*nothing exported"):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


class TaggedEngine:
    """An engine whose every response names it and the temperature it was asked for."""

    def __init__(self, tag: str):
        self.tag = tag

    def sync_weights(self, named) -> None:
        list(named)

    def generate(self, prompt_ids, sampling, seeds=None, logprobs=False):
        from sppo_pl.rollout.base import Generation

        text = f"{self.tag} T={sampling.temperature}"
        return [
            Generation([[1]] * sampling.n, [text] * sampling.n, ["stop"] * sampling.n) for _ in prompt_ids
        ]


@pytest.mark.parametrize(
    "change, sampling, seed",
    [
        ("nothing", {"n": 2, "temperature": 0.7}, 0),
        ("run", {"n": 2, "temperature": 0.7}, 0),
        ("model", {"n": 2, "temperature": 0.7}, 0),
        ("sampling", {"n": 4, "temperature": 1.0}, 0),
        ("seed", {"n": 2, "temperature": 0.7}, 1),
        (
            "prompt_ids",
            {"n": 2, "temperature": 0.7},
            0,
        ),  # the same texts, e.g. under another data.system_prompt
    ],
)
def test_saved_generations_are_reused_only_when_sampled_alike(tmp_path, change, sampling, seed):
    """Generations saved at this iteration and step are reused by the run that saved them, resumed from its
    checkpoint (the callback's state), and only with the same model, prompt token ids, rollout.sampling and
    seed: a run started afresh in the old run's directory ("run"), or resumed with other settings, samples
    anew."""
    from types import SimpleNamespace

    from callbacks.rollout import RolloutCallback

    trainer = SimpleNamespace(global_step=8, is_global_zero=True)
    prompts = [{"prompt": f"What is {i}+1?", "prompt_ids": [5, i]} for i in range(3)]

    def generations(tag, model, sampling, seed, state=None, prompts=prompts):
        pl_module = SimpleNamespace(hparams=SimpleNamespace(reference="precompute", model_path=model))
        pl_module.named_weights = lambda: iter([])
        cb = RolloutCallback(engine=None, sampling=sampling, save_dir=str(tmp_path / "rollouts"), seed=seed)
        if state is not None:
            cb.load_state_dict(state)  # what Lightning restores from the run's checkpoint
        cb.engine = TaggedEngine(tag)
        gens, gen_s, _ = cb.generations(trainer, pl_module, 1, prompts)
        return gens[0].texts, gen_s is None, cb.state_dict()

    texts, reused, state = generations("first", "/models/a", {"n": 2, "temperature": 0.7}, 0)
    assert (texts, reused) == (["first T=0.7"] * 2, False)
    model = "/models/b" if change == "model" else "/models/a"
    again = (
        [{**p, "prompt_ids": [7, *p["prompt_ids"]]} for p in prompts] if change == "prompt_ids" else prompts
    )
    texts, reused, _ = generations("second", model, sampling, seed, None if change == "run" else state, again)
    if change == "nothing":
        assert (texts, reused) == (["first T=0.7"] * 2, True)
    else:
        assert (texts, reused) == ([f"second T={sampling['temperature']}"] * sampling["n"], False)


def test_the_skipped_step_count_survives_a_resume():
    from callbacks.finite import FiniteCheck

    before = FiniteCheck(on_nonfinite="skip")
    before.skipped = 3
    after = FiniteCheck(on_nonfinite="skip")
    after.load_state_dict(before.state_dict())
    assert after.skipped == 3
    after.load_state_dict({})  # a checkpoint written before the count was saved
    assert after.skipped == 0


def test_a_new_run_in_a_directory_with_an_earlier_runs_checkpoints_is_refused(tmp_path):
    """It wrote its epoch_XX.ckpt, last.ckpt, rollouts and hf_model/ over the earlier run's (only metrics.csv
    was warned about); refused before it writes anything, even its config_resolved.yaml."""
    from sppo_pl.training import train

    run = tmp_path / "run"
    fake_ckpt(run / "checkpoints" / "epoch_00.ckpt", 2)
    (run / "config_resolved.yaml").write_text("the earlier run's")
    with pytest.raises(
        FileExistsError, match=r"holds an earlier run's checkpoints \(epoch_00\.ckpt\).*ckpt_path="
    ):
        train(make_cfg(run, ["experiment=smoke"]))
    assert (run / "config_resolved.yaml").read_text() == "the earlier run's"
    from sppo_pl.checkpoint import refuse_earlier_run

    only_temp = tmp_path / "killed"
    (only_temp / "checkpoints").mkdir(parents=True)
    (only_temp / "checkpoints" / "epoch_00.ckpt.tmp-999999").write_bytes(b"")
    refuse_earlier_run(only_temp)  # a run killed before its first checkpoint: nothing to lose
    refuse_earlier_run(tmp_path / "new")


# the variables of a one-task SLURM job (Lightning's SLURMEnvironment detects it and reads its rank from them)
SLURM = {
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "sppo",
    "SLURM_JOB_ID": "7",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def test_a_slurm_requeue_resumes_from_lightnings_newest_hpc_checkpoint(tmp_path, monkeypatch):
    """The requeued job runs the same command, without ckpt_path: it resumes from the newest hpc_ckpt_<N>.ckpt
    (checked like ckpt_path), so the starting model's validation does not run on the trained weights."""
    from sppo_pl.checkpoint import requeued_ckpt

    for n in (2, 10):
        fake_ckpt(tmp_path / f"hpc_ckpt_{n}.ckpt", n)
    assert requeued_ckpt(tmp_path) is None  # not under SLURM
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    assert requeued_ckpt(tmp_path) == str(tmp_path / "hpc_ckpt_10.ckpt")
    assert requeued_ckpt(tmp_path / "elsewhere") is None
    (tmp_path / "hpc_ckpt_11.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="hpc_ckpt_11.ckpt is empty"):
        requeued_ckpt(tmp_path)


class _Tiny(__import__("lightning").LightningModule):
    """A linear model on 8 rows in batches of 2; ``nan_at``: the batch whose loss is NaN."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.lin, self.nan_at = torch.nn.Linear(4, 4), nan_at

    def training_step(self, batch, i):
        loss = self.lin(batch[0]).float().pow(2).mean()
        return loss * float("nan") if i == self.nan_at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2)


def _fit(module, callbacks, **kw):
    import lightning as L

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(module)
    return trainer


def test_fp16_gradient_overflows_are_left_to_the_grad_scaler():
    """Under trainer.precision=16-mixed the unscaled gradients of a step overflow now and then; GradScaler
    skips that step and lowers its scale. FiniteCheck had stopped the run at the first one."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from callbacks.finite import FiniteCheck

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows fp16 at once
    check = FiniteCheck()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(_Tiny(), [check], plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert scaler.get_scale() < 2.0**40 and check.skipped == 0


def test_a_nan_micro_batch_loss_is_named_as_the_loss_under_gradient_accumulation():
    """The NaN loss of a step's first micro-batch was reported as a non-finite gradient, beside the last
    micro-batch's finite loss."""
    from callbacks.finite import FiniteCheck

    with (
        warnings.catch_warnings(),
        pytest.raises(FloatingPointError, match=r"non-finite loss at step 0 .*loss nan"),
    ):
        warnings.simplefilter("ignore")
        _fit(_Tiny(nan_at=0), [FiniteCheck()], accumulate_grad_batches=2)
    check = FiniteCheck(on_nonfinite="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(_Tiny(nan_at=0), [check], accumulate_grad_batches=2)
    assert check.skipped == 1  # only the step that held the NaN micro-batch


def test_a_lock_left_by_a_run_on_another_host_says_how_to_take_it_over(tmp_path):
    """A SLURM job killed on another node leaves its lock naming that node; a lock cannot tell whether that
    run lives, so the run is refused, and told to delete the lock if that run is gone (it was told to wait)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("node017 4242")
    with pytest.raises(RuntimeError, match=rf"node017 4242.*if that run is gone .* delete {run / LOCK}"):
        with hold_run_dir(run):
            pass
    (run / LOCK).unlink()
    with hold_run_dir(run):
        pass


def test_a_refused_run_leaves_the_other_runs_hydra_record_as_it_was(tmp_path):
    """Hydra wrote .hydra/config.yaml, hydra.yaml and overrides.yaml before the task started, so a run then
    refused (a live run holds the directory, or it holds an earlier run's checkpoints) had already replaced
    that run's record; train() writes it once the directory is held and checked."""
    from tests.test_train_cli import run_train

    run = tmp_path / "run"
    fake_ckpt(run / "checkpoints" / "epoch_00.ckpt", 2)
    record = run / ".hydra" / "overrides.yaml"
    record.parent.mkdir()
    record.write_text("- loss.eta=7\n")
    proc = run_train(tmp_path, "experiment=smoke", f"hydra.run.dir={run}", "loss.eta=9", returncode=1)
    assert "holds an earlier run's checkpoints" in proc.stderr
    with hold_run_dir(run):  # a live run
        proc = run_train(tmp_path, "experiment=smoke", f"hydra.run.dir={run}", "loss.eta=9", returncode=1)
    assert "is held by a live run" in proc.stderr
    assert record.read_text() == "- loss.eta=7\n" and not (run / ".hydra" / "config.yaml").exists()
