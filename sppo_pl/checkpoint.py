"""Checkpoints that survive crashes: written atomically, checked before anything loads, found in a run.

- :class:`AtomicCheckpointIO` (``trainer.plugins``) writes a checkpoint file next to its final name and
  renames it into place, so a kill or a full disk never leaves a half-written file under a checkpoint's name
  (and never one that ``last.ckpt`` points to); the temp file is removed when the write fails.
- :func:`resolve_ckpt` turns ``ckpt_path`` (a file, a sharded folder, or a run directory) into the checkpoint
  to resume from, refusing a missing, empty, truncated or foreign file with its name. In a run directory it
  takes ``checkpoints/last.ckpt``, or, when that is missing, dangling or corrupt, the newest intact checkpoint
  there, with a warning that names it.
- :func:`check_ckpt_model` compares the checkpoint's policy weights with ``model.path``'s architecture (built
  on the meta device: nothing is loaded), so a checkpoint of another model is refused before the model loads.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sppo_pl.rundir import pid_alive

log = logging.getLogger(__name__)

_TMP = ".tmp-"  # infix of the temp files AtomicCheckpointIO writes: <name>.tmp-<host>-<pid>


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``<path>.tmp-<host>-<pid>`` in the checkpoint's own folder, fsync, then
    ``os.replace``: the checkpoint's name only ever holds a complete file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(temp_name(path.name))
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def temp_name(name: str) -> str:
    """The name a checkpoint ``name`` is written under first: ``<name>.tmp-<host>-<pid>``."""
    return f"{name}{_TMP}{socket.gethostname()}-{os.getpid()}"


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of checkpoint writes that never finished (their process, on this host, is gone): deleted,
    and returned. Another host's are left alone: this host cannot tell whether its writer lives (a run
    still training on another node, whose directory a run here resumes from). A name without a host
    (written before the host was added) is taken as this host's."""
    removed = []
    for tmp in folder.glob(f"*{_TMP}*") if folder.is_dir() else []:
        host, _, pid = tmp.name.rsplit(_TMP, 1)[-1].rpartition("-")
        if host in ("", socket.gethostname()) and pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, memory-mapped (tensors are read only when touched). Raises ``ValueError``
    naming the file when it is empty, truncated, not a torch file, or not a Lightning checkpoint."""
    if path.is_dir():
        meta = path / "meta.pt"
        if not meta.is_file():
            raise ValueError(
                f"checkpoint folder {path} has no meta.pt: it is not a finished sharded checkpoint"
            )
        return _load(meta, mmap=False)
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): its write never finished")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {path} is corrupt or not a checkpoint: it is not a complete torch file "
            "(truncated by a crash or a full disk, or some other file)"
        )
    return _load(path, mmap=True)


def _load(path: Path, mmap: bool) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # a damaged member of a zip that still opens
        raise ValueError(f"checkpoint {path} is corrupt: torch cannot read it ({e})") from e
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise ValueError(f"{path} is a torch file but not a Lightning checkpoint (no global_step)")
    return ckpt


def resolve_ckpt(path: str | None) -> str | None:
    """``ckpt_path``: a checkpoint (file, or sharded folder) checked to be intact, or a run directory (its
    ``checkpoints/last.ckpt``, else its newest intact checkpoint, with a warning)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"ckpt_path does not exist: {path}")
    if p.is_dir() and not (p / "meta.pt").exists():
        return str(_newest_in_run(p))
    read_checkpoint(p)
    return str(p)


def _newest_in_run(run: Path) -> Path:
    folder = run / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ckpt_path={run} is a folder with neither checkpoints/ (a run directory) nor meta.pt "
            "(a sharded checkpoint)"
        )
    remove_stale_temp_files(folder)
    last = folder / "last.ckpt"
    problems: list[str] = []
    if last.exists():
        try:
            read_checkpoint(last)
            return last
        except ValueError as e:
            problems.append(str(e))
    elif last.is_symlink():
        problems.append(f"{last} points to {os.readlink(last)}, which no longer exists")
    intact = []
    for c in sorted(folder.iterdir()):
        if c.name == "last.ckpt" or not _is_checkpoint(c):
            continue
        try:
            intact.append((read_checkpoint(c)["global_step"], c.stat().st_mtime, c))
        except ValueError as e:
            problems.append(str(e))
    if not intact:
        found = "; ".join(problems) or "none was written (the run stopped before its first iteration ended)"
        raise FileNotFoundError(f"ckpt_path={run}: no intact checkpoint in {folder}: {found}")
    newest = max(intact)[2]
    if problems:
        log.warning(
            "ckpt_path=%s: %s; resuming from the newest intact checkpoint, %s",
            run,
            "; ".join(problems),
            newest,
        )
    return newest


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint's name in a run's ``checkpoints/``: a ``.ckpt`` file or a sharded folder, not a temp file."""
    return _TMP not in path.name and (path.suffix == ".ckpt" or (path / "meta.pt").exists())


def requeued_ckpt(run: Path) -> str | None:
    """Under SLURM, the checkpoint Lightning's auto-requeue left in ``run`` (its newest ``hpc_ckpt_<N>.ckpt``),
    checked as ``ckpt_path`` is; None elsewhere or when there is none. The requeued job runs the same command,
    without ``ckpt_path``: Lightning would resume from this file by itself, after the validation of the
    starting model had already run on it (logged as iteration 0) and without the architecture check."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    found = [(int(m.group(1)), f) for f in run.glob("hpc_ckpt_*.ckpt") if (m := _HPC.fullmatch(f.name))]
    if not found:
        return None
    path = max(found)[1]
    log.info("SLURM requeue: resuming from %s", path)
    return resolve_ckpt(str(path))


_HPC = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def refuse_earlier_run(run: Path) -> None:
    """A run that does not resume may not start in a directory that holds another run's checkpoints: it would
    write its own over them (the checkpoint names, ``last.ckpt``, the rollouts and ``hf_model/`` are the same
    for every run). ``FileExistsError`` naming them and the way to resume."""
    folder = run / "checkpoints"
    found = sorted(c.name for c in (folder.iterdir() if folder.is_dir() else []) if _is_checkpoint(c))
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise FileExistsError(
            f"{run} holds an earlier run's checkpoints ({shown}), which this run would overwrite. Resume that "
            f"run in place with ckpt_path={run} hydra.run.dir={run}, or give this run its own hydra.run.dir"
        )


def last_checkpoint(trainer) -> str:
    """The file of the run's newest checkpoint (what ``last.ckpt`` points to), or "" if none was written."""
    path = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    return os.path.realpath(path) if path else ""


def check_ckpt_model(path: str | Path, model_path: str) -> None:
    """The checkpoint's policy weights have the names and shapes of ``model_path``'s model (built on the
    meta device from its config.json, so nothing is loaded); else ``ValueError`` saying the models differ."""
    path = Path(path)
    if path.is_dir():  # a sharded checkpoint's tensors are not listed in meta.pt; export checks them
        return
    ckpt = read_checkpoint(path)
    saved = {
        k[len("policy.") :]: tuple(v.shape)
        for k, v in ckpt.get("state_dict", {}).items()
        if k.startswith("policy.")
    }
    want = _meta_shapes(model_path)
    differ = sorted(k for k in want.keys() | saved.keys() if k in want and saved.get(k, want[k]) != want[k])
    missing = sorted(want.keys() - saved.keys() - {"lm_head.weight"})
    extra = sorted(saved.keys() - want.keys())
    if differ or missing or extra:
        trained = (ckpt.get("hyper_parameters") or {}).get("model_path", "an unknown model")
        e = differ[0] if differ else None
        example = (
            f"{e} is {list(saved[e])} there and {list(want[e])} here"
            if e
            else f"e.g. {(missing or extra)[0]}"
        )
        raise ValueError(
            f"ckpt_path {path} holds a different model than model.path={model_path}: it was trained from "
            f"{trained}; {len(differ)} weights differ in shape, {len(missing)} are missing and {len(extra)} "
            f"are unknown ({example}). Resume with the model.path the checkpoint was trained from."
        )


def _meta_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
