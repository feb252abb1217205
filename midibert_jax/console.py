"""What long work prints while it runs: one policy for every progress report and console notice.

Training, dataset builds and the music21 conversion all report through `progress(...)`:

* on a terminal, a tqdm bar redrawn in place, with rate and ETA;
* anywhere else (a log file, a pipe, a notebook cell), where every redraw would become a line, a
  stage prints one line to stdout (beside the stage messages) when it ends and, while it runs, one
  after 1, 2, 4, 8 and 16 minutes and then every 10 minutes, each with the rate and the time left.

`MIDIBERT_JAX_PROGRESS=bars|lines|off` overrides the choice. Kept free of heavy imports (like
`errors` and `paths`) so that every layer can use it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, TextIO

from midibert_jax.errors import UserError

PROGRESS_ENV = "MIDIBERT_JAX_PROGRESS"
MODES = ("bars", "lines", "off")
# Lines mode: the first report after this many seconds, then at twice the time, up to this gap between two.
FIRST_LINE_S = 60.0
MAX_LINE_GAP_S = 600.0


class ProgressModeError(UserError):
    """MIDIBERT_JAX_PROGRESS holds a value that is not a mode."""


def mode(stream: TextIO | None = None) -> str:
    """'bars' when `stream` (default stderr, where bars draw) is a terminal, else 'lines'; or the env var."""
    chosen = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ProgressModeError(f"{PROGRESS_ENV}={chosen!r}: must be one of {', '.join(MODES)}")
        return chosen
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bars" if isatty is not None and isatty() else "lines"


def format_seconds(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'; '?' when unknown (inf or nan)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RateMeter:
    """Steps per second and ETA since a start point, with an injectable clock for tests."""

    def __init__(self, total: int, initial: int = 0, clock: Callable[[], float] = time.monotonic):
        self.total, self.clock = total, clock
        self._start_step, self._start_time = initial, clock()
        self.step = initial

    def update(self, step: int) -> dict[str, float]:
        """Records that `step` was reached; returns {"steps_per_sec", "eta_sec"} (inf ETA before any progress)."""
        self.step = step
        elapsed = max(self.clock() - self._start_time, 1e-9)
        rate = (step - self._start_step) / elapsed
        eta = (self.total - step) / rate if rate > 0 else math.inf
        return {"steps_per_sec": rate, "eta_sec": eta}


class Lines:
    """A progress report without redraws: the lines-mode face of `progress` (the tqdm calls used here).

    `leave=False` keeps a stage that ends before its first report silent (its caller says how it went).
    """

    def __init__(self, total: int, desc: str, *, unit: str = "steps", initial: int = 0, leave: bool = True,
                 enabled: bool = True, out: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.leave, self.disable, self.clock = leave, not enabled, clock
        self._out = out
        self._initial = initial
        self._start = clock()
        self._meter = RateMeter(total, initial, clock)
        self._due = FIRST_LINE_S  # seconds after the start at which the next line is due
        self._postfix = ""
        self._reports = 0  # lines printed while running
        self._closed = False

    def _print(self, text: str) -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        elapsed = self.clock() - self._start
        if self.disable or elapsed < self._due or self.n >= self.total:
            return
        rate = self._meter.update(self.n)
        self._print(f"  {self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%) "
                    f"after {format_seconds(elapsed)}, {rate['steps_per_sec']:.3g} {self.unit}/s, "
                    f"about {format_seconds(rate['eta_sec'])} left{self._postfix}")
        self._reports += 1
        while self._due <= elapsed:
            self._due = min(2 * self._due, self._due + MAX_LINE_GAP_S)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        del refresh  # nothing is redrawn
        self._postfix = "".join(f", {k}={v}" for k, v in values.items())

    def write(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.disable or self.n == self._initial or not (self.leave or self._reports):
            return
        rate = self._meter.update(self.n)["steps_per_sec"]
        self._print(f"  {self.desc}: {self.n}/{self.total} {self.unit} in {format_seconds(self.clock() - self._start)} "
                    f"({rate:.3g} {self.unit}/s){self._postfix}")

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, *, unit: str = "steps", initial: int = 0, enabled: bool = True,
             leave: bool = True):
    """The progress report of one stage: a tqdm bar on a terminal, else `Lines` (see the module doc).

    Both take update(n), set_postfix(**values), write(text) (a message that does not break the bar),
    close(), and work as context managers.
    """
    chosen = mode()
    if chosen == "bars":
        from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

        return tqdm(total=total, initial=initial, desc=desc, unit=f" {unit}", disable=not enabled, leave=leave,
                    dynamic_ncols=True, smoothing=0.1)
    return Lines(total, desc, unit=unit, initial=initial, leave=leave, enabled=enabled and chosen == "lines")


def line_buffered() -> None:
    """Makes stdout flush at every line, so a log file shows each stage as it happens, in order with stderr."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None and not sys.stdout.isatty():
        reconfigure(line_buffering=True)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def dropped_log_messages(logger: str, *prefixes: str) -> Iterator[None]:
    """Drops the records of `logger` whose message template starts with one of `prefixes`, inside the block.

    For third-party notices that a user can do nothing about; every other record goes through.
    """
    target = logging.getLogger(logger)
    drop = _DropMessages(prefixes)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)
