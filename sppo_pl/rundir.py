"""Run directories: a unique name per run, and one live run per directory.

Hydra names a run's directory after the second it started (``runs/<date>_<time>``), so two runs started in
the same second shared one and corrupted each other's metrics. :func:`run_name` (``${run_name:}`` in
``conf/hydra/default.yaml``) adds a random suffix; processes of one multi-process launch (torchrun, srun)
cannot share a random draw, so they keep the bare time stamp and are told to set ``hydra.run.dir`` (as the
README's several-machines section says). :func:`hold_run_dir` is the guard behind it: the launch's first
process holds ``<run>/.lock`` while it runs, and a second live run that is pointed at the same directory
(``hydra.run.dir=...``) is refused before it writes anything (Hydra's own record of the job,
``.hydra/``, is written after the hold: :func:`save_job_record`). A lock left by a killed run (the kernel freed
its ``flock``) is taken over, which is how a crashed run is resumed in place.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


def run_name() -> str:
    """``<date>_<time>_<6 hex>``, or ``<date>_<time>`` in a process started by a multi-process launcher."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return stamp if _launched() else f"{stamp}_{secrets.token_hex(3)}"


def _launched() -> bool:
    return any(os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "SLURM_STEP_ID"))


def _first_process() -> bool:
    """Rank 0 of the launch (Lightning's own child processes, torchrun's and srun's other ranks: False)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


@contextmanager
def hold_run_dir(run: Path) -> Iterator[None]:
    """Hold ``run`` for this run (first process of the launch only); refuse it while another live run does.

    The hold is an ``flock`` on ``<run>/.lock`` (the kernel lets it go when the process dies, so two runs
    that find a killed run's lock cannot both take it over); the file names the holder (host, pid) for the
    message, and an owner on another host is taken as live (a lock there need not reach this host). Where
    the file system has no locks, the owner's pid alone decides, as it did before.
    """
    if not _first_process():
        yield
        return
    lock = run / LOCK
    me = f"{socket.gethostname()} {os.getpid()}"
    fd, locked = _locked_fd(lock, run)
    owner = os.read(fd, 4096).decode(errors="replace").strip()
    host = owner.partition(" ")[0]
    if owner and owner != me and (host != socket.gethostname() if locked else _is_live(owner)):
        os.close(fd)
        raise _held(run, lock, owner)
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode(), 0)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # still held: a run waiting to open it finds the file gone, and retries
        os.close(fd)


def save_job_record(run: Path, cfg) -> None:
    """Hydra's record of the job in ``<run>/.hydra/`` (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``),
    written by the launch's first process once it holds ``run`` and ``run`` is checked. Hydra itself would
    write them before the task starts, over a live or earlier run's own, and the run would then be refused:
    ``hydra.output_subdir`` is null in ``conf/hydra/default.yaml``. Nothing outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized() or not _first_process():
        return
    folder = run / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    hydra = HydraConfig.instance().cfg
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # unresolved, as Hydra writes it
    for name, node in (("config", task), ("hydra", hydra), ("overrides", hydra.hydra.overrides.task)):
        (folder / f"{name}.yaml").write_text(OmegaConf.to_yaml(node))


def _locked_fd(lock: Path, run: Path) -> tuple[int, bool]:
    """An open descriptor of ``lock`` holding its ``flock`` (True), or without one where the file system
    has none (False); refused while a live process holds it. A file unlinked by its releasing holder between
    our open and our lock is opened again."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _held(run, lock, _read(lock)) from None
        except OSError:  # no locks on this file system (some network mounts)
            return fd, False
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd, True
        except FileNotFoundError:
            pass
        os.close(fd)


def _held(run: Path, lock: Path, owner: str) -> RuntimeError:
    host = owner.partition(" ")[0]
    elsewhere = (
        f" That host is not this one, and a lock cannot tell whether a run on another host is alive: if that "
        f"run is gone (a SLURM job killed on another node), delete {lock} and resume."
        if host and host != socket.gethostname()
        else ""
    )
    return RuntimeError(
        f"{run} is held by a live run (host, pid: {owner or 'unknown'}, in {lock}): a run never writes into "
        f"another's directory. Wait for it, or give this run its own hydra.run.dir.{elsewhere}"
    )


def _read(lock: Path) -> str:
    """The lock's ``host pid`` ("" if gone); waits a moment for a lock that was just created to be filled."""
    for _ in range(20):
        try:
            owner = lock.read_text().strip()
        except FileNotFoundError:
            return ""
        if owner:
            return owner
        time.sleep(0.1)
    return ""


def _is_live(owner: str) -> bool:
    """Whether the lock's ``host pid`` is a running process (on another host: assumed live)."""
    if not owner:
        return False
    host, _, pid = owner.partition(" ")
    return host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
