"""Robust parallel map: one pathological input can neither stall nor crash a build.

`WorkerPool` runs a picklable function over items in worker processes, each with its own
pipe, so the parent always knows which item a worker holds. A task that exceeds `timeout`
seconds gets its worker killed; a worker that dies (segfault, OOM kill, `os._exit`) is
noticed through its process sentinel. Either way the item comes back as a failed `Outcome`
and a fresh worker replaces the old one. Exceptions raised by the function come back as
failed outcomes too. Results are yielded in input order.

`tokenize_piece` is the task the dataset builders run in the workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

# Seconds a new worker may take to start (import numpy, the tokenizer, ...).
STARTUP_TIMEOUT_S = 300.0

# Outcome.error values.
TIMEOUT = "timeout"
WORKER_CRASH = "worker_crash"
EXCEPTION = "exception"


@dataclasses.dataclass
class Outcome:
    """The result of one item: `value` when `error` is None, else the failure and a message."""

    item: Any
    value: Any = None
    error: str | None = None
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _worker_main(conn, fn: Callable[[Any], Any], memory_limit_mb: int | None) -> None:
    """Worker loop: receive (task_id, item), send (task_id, ok, value_or_message, seconds)."""
    if memory_limit_mb:
        import resource  # pylint: disable=import-outside-toplevel

        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send("ready")  # imports are done: the parent starts the clock of the first task now
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        task_id, item = task
        start = time.perf_counter()
        try:
            value = fn(item)
            ok = True
        except Exception as e:  # pylint: disable=broad-except  # reported to the parent, never lost
            value = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
            ok = False
        seconds = time.perf_counter() - start
        try:
            conn.send((task_id, ok, value, seconds))
        except Exception as e:  # pylint: disable=broad-except  # e.g. an unpicklable result
            conn.send((task_id, False, f"cannot send result: {type(e).__name__}: {e}", seconds))


@dataclasses.dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    ready: bool = False
    task_id: int | None = None
    item: Any = None
    started: float = 0.0
    deadline: float = float("inf")


class WorkerPool:
    """A process pool with per-item timeouts and worker replacement.

    Args:
      fn: picklable function (module-level, or a functools.partial of one) of one item.
      num_workers: worker processes (>= 1).
      timeout: seconds one item may take before its worker is killed (None: no limit).
      memory_limit_mb: address-space limit per worker (None: no limit); an item that exceeds
        it usually fails with MemoryError.
      start_method: multiprocessing start method. 'spawn' (default) is safe when the parent
        has threads (JAX, grain, TFDS); 'forkserver' starts replacements faster.
      max_outstanding: items held (running or finished but not yet yielded) at once, to bound
        memory when one slow item holds back in-order output. Default 16 per worker.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        num_workers: int,
        timeout: float | None,
        memory_limit_mb: int | None = None,
        start_method: str = "spawn",
        max_outstanding: int | None = None,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._fn = fn
        self._num_workers = num_workers
        self._timeout = timeout
        self._memory_limit_mb = memory_limit_mb
        self._ctx = multiprocessing.get_context(start_method)
        self._max_outstanding = max_outstanding or 16 * num_workers
        self._workers: list[_Worker] = []
        self._next_task_id = 0
        self.replaced = 0  # workers replaced after a timeout or crash

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child, self._fn, self._memory_limit_mb), daemon=True
        )
        process.start()
        child.close()
        return _Worker(process=process, conn=parent)

    def _ensure_workers(self, n: int) -> None:
        while len(self._workers) < n:
            self._workers.append(self._start_worker())

    def _kill(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()

    def _replace(self, worker: _Worker) -> None:
        self._kill(worker)
        index = next(i for i, w in enumerate(self._workers) if w is worker)
        self._workers[index] = self._start_worker()
        self.replaced += 1

    def close(self) -> None:
        """Stops all workers (politely, then by force)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            self._kill(worker)
        self._workers = []

    def _wait_ready(self, worker: _Worker) -> None:
        """Blocks until a new worker has imported everything (not counted in any timeout)."""
        try:
            if worker.conn.poll(STARTUP_TIMEOUT_S) and worker.conn.recv() == "ready":
                worker.ready = True
                return
        except (EOFError, OSError):
            pass
        worker.process.join(timeout=1)
        raise RuntimeError(
            f"a worker process failed to start (exit code {worker.process.exitcode}); "
            "scripts that build datasets need an `if __name__ == '__main__':` guard"
        )

    def _submit(self, worker: _Worker, task_id: int, item: Any) -> None:
        if not worker.ready:
            self._wait_ready(worker)
        worker.task_id, worker.item = task_id, item
        worker.started = time.monotonic()
        worker.deadline = worker.started + self._timeout if self._timeout else float("inf")
        worker.conn.send((task_id, item))

    def _collect(self, wait_s: float) -> list[tuple[int, Outcome]]:
        """Waits up to `wait_s` for busy workers; returns finished (task_id, outcome) pairs."""
        busy = [w for w in self._workers if w.task_id is not None]
        if not busy:
            return []
        handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        multiprocessing.connection.wait(handles, timeout=max(0.0, wait_s))
        done = []
        now = time.monotonic()
        for worker in busy:
            task_id, item = worker.task_id, worker.item
            outcome = None
            try:
                if worker.conn.poll():
                    _, ok, value, seconds = worker.conn.recv()
                    if ok:
                        outcome = Outcome(item, value=value, seconds=seconds)
                    else:
                        outcome = Outcome(item, error=EXCEPTION, message=value, seconds=seconds)
            except (EOFError, OSError):
                outcome = None  # the worker died mid-send; handled below
            if outcome is not None:
                worker.task_id, worker.item = None, None
                done.append((task_id, outcome))
                continue
            if not worker.process.is_alive():
                code = worker.process.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                done.append(
                    (task_id, Outcome(item, error=WORKER_CRASH, message=f"worker died ({how})", seconds=now - worker.started))
                )
                self._replace(worker)
            elif now >= worker.deadline:
                done.append(
                    (task_id, Outcome(item, error=TIMEOUT, message=f"no result after {self._timeout:g} s", seconds=now - worker.started))
                )
                self._replace(worker)
        return done

    def imap(self, items: Iterable[Any]) -> Iterator[Outcome]:
        """Outcomes of `fn` over `items`, in input order."""
        self._ensure_workers(self._num_workers)
        pending = iter(items)
        finished: dict[int, Outcome] = {}
        next_out = self._next_task_id
        try:
            yield from self._imap_loop(pending, finished, next_out)
        finally:
            if any(w.task_id is not None for w in self._workers):
                self.close()  # abandoned mid-way: drop the workers and their stale tasks

    def _imap_loop(self, pending: Iterator[Any], finished: dict[int, Outcome], next_out: int) -> Iterator[Outcome]:
        exhausted = False
        while True:
            # Submit while there are idle workers and room.
            for worker in self._workers:
                if exhausted:
                    break
                outstanding = self._next_task_id - next_out
                if worker.task_id is None and outstanding < self._max_outstanding:
                    try:
                        item = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    self._submit(worker, self._next_task_id, item)
                    self._next_task_id += 1
            while next_out in finished:
                yield finished.pop(next_out)
                next_out += 1
            if exhausted and next_out == self._next_task_id:
                return
            deadlines = [w.deadline for w in self._workers if w.task_id is not None]
            wait_s = min(deadlines) - time.monotonic() if deadlines else 0.0
            for task_id, outcome in self._collect(min(wait_s, 1.0)):
                finished[task_id] = outcome

    def run(self, item: Any) -> Outcome:
        """One item, synchronously (used by the Beam DoFn)."""
        return next(self.imap([item]))


# ----------------------------------------------------------------------------------------
# The tokenization task.


@dataclasses.dataclass
class PieceResult:
    """What a worker returns for one file.

    `windows` int32 [W, max_len, 8] (piece packing) or `stream` int32 [M, 8] (reference
    packing); `reason`/`error_kind` set (and arrays empty) when the tokenizer rejected the file.
    `window_bars`: the absolute bar each window starts at (piece packing; `windows.piece_window_bars`).
    """

    num_notes: int = 0
    windows: np.ndarray | None = None
    stream: np.ndarray | None = None
    reason: str | None = None
    error_kind: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    window_bars: list[int] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None


def tokenize_piece(path: str, *, max_len: int, packing: str) -> PieceResult:
    """Tokenizes one MIDI file and cuts it as `packing` says. Runs inside a worker."""
    # Imported here so that the parent process does not need to import the tokenizer.
    from midibert_jax import tokenizer  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import windows as windows_lib  # pylint: disable=import-outside-toplevel

    try:
        rows = tokenizer.encode_file(path)
    except tokenizer.TokenizerError as e:
        return PieceResult(reason=e.reason, error_kind=getattr(e, "kind", type(e).__name__))
    notes = []
    num_bars = int(rows[-1, 0]) + 1 if len(rows) else 0
    if num_bars > tokenizer.vocab.MAX_BARS:
        notes.append(f"{num_bars} bars: cut at 256-bar limits")
    if packing == "piece":
        return PieceResult(num_notes=len(rows), windows=windows_lib.piece_windows(rows, max_len), notes=notes,
                           window_bars=windows_lib.piece_window_bars(rows, max_len).tolist())
    if packing == "reference":
        return PieceResult(num_notes=len(rows), stream=windows_lib.reference_stream(rows), notes=notes)
    raise ValueError(f"unknown packing {packing!r}; expected one of {windows_lib.PACKINGS}")


def default_num_workers() -> int:
    """Worker processes to use when the config says 0: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
