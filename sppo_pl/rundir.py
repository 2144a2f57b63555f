"""Run directories: a unique name per run, and one live run per directory.

Hydra names a run's directory after the second it started (``runs/<date>_<time>``), so two runs started in
the same second shared one and corrupted each other's metrics. :func:`run_name` (``${run_name:}`` in
``conf/hydra/default.yaml``) adds a random suffix; processes of one multi-process launch (torchrun, srun)
cannot share a random draw, so they keep the bare time stamp and are told to set ``hydra.run.dir`` (as the
README's several-machines section says). :func:`hold_run_dir` is the guard behind it: the launch's first
process holds ``<run>/.lock`` while it runs, and a second live run that is pointed at the same directory
(``hydra.run.dir=...``) is refused before it writes anything. A lock left by a killed run (its process is
gone) is taken over, which is how a crashed run is resumed in place.
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
    """Hold ``run`` for this run (first process of the launch only); refuse it while another live run does."""
    if not _first_process():
        yield
        return
    lock = run / LOCK
    me = f"{socket.gethostname()} {os.getpid()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = _read(lock)
            if _is_live(owner):
                raise RuntimeError(
                    f"{run} is held by a live run (host, pid: {owner}, in {lock}): a run never writes into "
                    "another's directory. Wait for it, or give this run its own hydra.run.dir"
                ) from None
            lock.unlink(missing_ok=True)  # a killed run's lock (or one being written right now: retried)
    with os.fdopen(fd, "w") as f:
        f.write(me)
    try:
        yield
    finally:
        if _read(lock) == me:
            lock.unlink(missing_ok=True)


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
