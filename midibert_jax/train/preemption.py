"""Preemption: a SIGTERM handler that only sets a flag; the train loop checks it between steps.

On a preemption notice the loop saves (`Checkpointer.save_now`, every process), waits for the save and
exits cleanly. In a multi-process run the processes must agree on the step at which they stop, or the
save's collectives would hang: `should_stop(step)` makes that decision collectively (a tiny all-gather
every `sync_every` steps, called by every process at the same steps).

Usage:
    guard = PreemptionGuard(sync_every=10).install()
    for step in ...:
        ...
        if guard.should_stop(step):
            checkpointer.save_now(step, ...)
            break
"""

from __future__ import annotations

import logging
import signal
import threading
import types

import jax
import numpy as np

log = logging.getLogger(__name__)


class PreemptionGuard:
    """Catches SIGTERM (and any extra signals) and records that a stop was requested."""

    def __init__(self, sync_every: int = 1, signals: tuple[int, ...] = (signal.SIGTERM,)):
        """sync_every: how often (in steps) `should_stop` may return True in a multi-process run."""
        self.sync_every = max(int(sync_every), 1)
        self.signals = signals
        self._event = threading.Event()
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionGuard":
        """Installs the handlers (main thread only; a second call keeps the first's); returns self."""
        if self._previous:
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers that were there before `install` (nothing if not installed).

        Training uninstalls only after its run lock is released, so a SIGTERM that lands during the teardown
        (the last save's wait, the release) sets the flag instead of killing the process halfway through it.
        """
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        log.warning("received signal %d: will save a checkpoint and stop at the next sync point", signum)
        self._event.set()

    def request(self) -> None:
        """Requests a stop as if a signal had arrived (tests, or a time limit)."""
        self._event.set()

    @property
    def requested(self) -> bool:
        """True once this process has received a stop signal (local, no communication)."""
        return self._event.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether every process should stop after `step`; the same answer on every process.

        Single-process: the local flag. Multi-process: at steps that are multiples of `sync_every`, True if
        any process was signalled (an all-gather, so all processes must call this at the same steps).
        """
        if jax.process_count() == 1:
            return self.requested
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))
