"""One writer per run folder: the lock a training run holds on its workdir while it runs.

    with RunLock(workdir, "pretrain") as lock:            # RunBusyError at once if a live run has it
        ckpt = Checkpointer(..., before_save=lock.verify)  # RunLockLostError instead of a stray save
        hooks = [hooks.run_lock(lock), ...]                # the same check before every step's hooks

Every trainer takes it (train/pretrain.py, train/finetune.py, so every run `experiment` and `demo`
start; `experiment` also locks its own folder) before it reads or writes a checkpoint. Readers
(`evaluate`, `predict`, `Run.open`, notebooks, export) take none. The lock is a `locks.FileLock`,
``<workdir>/.run.lock`` (a dot file, so `rm -rf <workdir>/*` leaves a live run's lock in place):

* a second live run is refused at once, in one line naming the holder (pid, host, start time,
  heartbeat, command) and what to do;
* a dead holder's lock is taken over with one warning line: on local disks the kernel dropped its
  flock (SIGKILL included); elsewhere its pid is gone on this host, or its heartbeat is older than
  `locks.STALE_AFTER_S`;
* the holder checks the lock before the hooks of every step and before every checkpoint save, and
  stops with `RunLockLostError` once it no longer holds it (its lock file removed or replaced: the
  folder deleted and another run started there): a preempted run never saves into a folder that
  another run has taken.

Multi-process runs: one lock per run, held by process 0. Its verdicts (taken or refused, still
held or lost) are broadcast, so all processes raise the same error at the same step, and none is
left writing checkpoint shards or waiting in a collective. Every process calls `acquire`, `verify`
and `release` at the same points.

gs:// workdirs ('object' mode, see `midibert_jax.locks`): a second run started while the holder's
heartbeat is fresh is refused, a dead holder expires after `STALE_AFTER_S`, and a holder whose
record was overwritten stops before its next save. Not guaranteed: two runs started within about a
second of each other may both start (object stores offer no exclusive create here); the loser
stops at its first save (it checks the object then) or within one heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sys

import numpy as np

from midibert_jax import locks
from midibert_jax.errors import UserError
from midibert_jax.train.preemption import PreemptionGuard

LOCK_FILE = ".run.lock"
# Bytes of a broadcast verdict (a message of one line).
_MESSAGE_BYTES = 8192


class RunBusyError(UserError):
    """Another live process holds the run folder's lock; the message names it."""


class RunLockLostError(UserError):
    """This run no longer holds its folder's lock (taken over, or its lock file removed)."""


def command_line() -> str:
    """This process' command line, as a holder record shows it."""
    return shlex.join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])


def _process() -> tuple[int, int]:
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def broadcast_text(text: str) -> str:
    """Process 0's `text` on every process (itself in a single-process run). Every process calls it."""
    index, count = _process()
    if count == 1:
        return text
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    data = np.zeros(_MESSAGE_BYTES, np.uint8)
    if index == 0:
        raw = text.encode("utf-8")[:_MESSAGE_BYTES]
        data[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(data), np.uint8)
    return bytes(out).rstrip(b"\0").decode("utf-8", errors="replace")


class RunLock:
    """The lock of the run folder `workdir` (local or gs://); see the module docstring.

    `kind` says what holds it ('pretrain', 'finetune', 'experiment'), shown with the command line.
    The other arguments go to `locks.FileLock` (tests shorten the timeouts).
    """

    def __init__(self, workdir: str | os.PathLike, kind: str, *, out=None, **lock_kwargs):
        self.workdir = os.fspath(workdir)
        self.out = out if out is not None else sys.stderr
        self.file = locks.FileLock(os.path.join(self.workdir, LOCK_FILE) if locks.is_local(self.workdir)
                                   else f"{self.workdir.rstrip('/')}/{LOCK_FILE}",
                                   what=f"{kind}: {command_line()}", **lock_kwargs)
        self.primary = _process()[0] == 0
        self.lost = False

    def acquire(self) -> "RunLock":
        """Takes the lock on process 0 (every process calls this); RunBusyError on all when it is held."""
        refusal = ""
        if self.primary:
            if self.file.try_acquire():
                if self.file.taken_over:
                    print(f"warning: taking over the run lock of {self.workdir} from "
                          f"{locks.describe_holder(self.file.taken_over)}: that process is gone", file=self.out,
                          flush=True)
            else:
                refusal = self._refusal(self.file.holder)
        refusal = broadcast_text(refusal)
        if refusal:
            raise RunBusyError(refusal)
        return self

    def _refusal(self, holder: dict) -> str:
        who = locks.describe_holder(holder)
        if holder.get("host") == socket.gethostname() and holder.get("pid"):
            stop = f"stop it (kill {holder['pid']}; SIGTERM saves a checkpoint first)"
        else:
            stop = f"stop it on {holder.get('host', 'its host')}"
        expiry = ("" if self.file.mode == "flock" else
                  f"; a dead holder's lock expires {self.file.stale_after:.0f} s after its last heartbeat")
        return (f"{self.workdir} is in use by {who}; wait for that run to end or {stop}, or give this one "
                f"another --workdir (lock file {self.file.path}{expiry})")

    def verify(self, fresh: bool = True) -> None:
        """Raises RunLockLostError on every process once process 0 no longer holds the lock (collective).

        `fresh` False lets a gs:// lock answer from its last heartbeat (the per-step check).
        """
        problem = ""
        if self.primary:
            problem = self.file.problem(fresh=fresh)
        problem = broadcast_text(problem)
        if problem:
            self.lost = True
            raise RunLockLostError(f"this run no longer holds {self.workdir}: {problem}; stopped without "
                                   "writing there again")

    def release(self) -> None:
        if self.primary:
            self.file.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def held_run(workdir, command: str):
    """A trainer's hold on `workdir`: (its RunLock, taken before any data is built or checkpoint read; a
    PreemptionGuard the trainer installs once its data are loaded). The guard is restored only after the
    lock is let go, so a SIGTERM during the teardown (the last save, the release) still waits for it."""
    guard = PreemptionGuard()
    try:
        with RunLock(workdir, command) as lock:
            yield lock, guard
    finally:
        guard.uninstall()
