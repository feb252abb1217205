"""The one training loop of both objectives, driven by hooks; and the resume order.

    state, restored, origin = resume_or_init(ckpt, trainer.abstract_state, trainer.init_state, init_from, load)
    ctx = run(state, step_fn, batches, start=start, total=total, hooks=[...])

Each step dispatches `step_fn(state, batch)` and, while the device works on it, checks the previous
step's `finite` flag (one step late, so the host never waits for the device in between). Before
any due hook that reads the state or the metrics (`Hook.checked`), the current step is checked too:
a non-finite step raises `NonFiniteLossError` naming the step and its examples before anything
from it is logged, evaluated or saved. A hook ends the run by setting `ctx.stop`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from midibert_jax.train import nonfinite

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
    """What hooks read and write: the state after step `step` (1-based count of updates done)."""

    state: Any
    step: int
    total: int
    metrics: Any = None  # the train step's metrics of this step (device arrays)
    eval: dict[str, Any] | None = None  # this step's evaluation result (set by an evaluation hook)
    last_eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop: str = ""  # set by a hook to end the run after this step: 'early', 'preempted', ...


@dataclasses.dataclass
class Hook:
    """`fn(ctx)` after every `every`-th step (0: never by count), and after the last one if `at_end`.

    `when(step)`, if given, decides instead (e.g. a preemption signal). `checked`: the step must be
    known finite first (false only for hooks that read neither the state nor the metrics).
    """

    fn: Callable[[Context], None]
    every: int = 1
    at_end: bool = True
    when: Callable[[int], bool] | None = None
    checked: bool = True

    def due(self, step: int, total: int) -> bool:
        if self.when is not None:
            return self.when(step)
        return (self.every > 0 and step % self.every == 0) or (self.at_end and step == total)


def run(state: Any, step_fn: Callable[[Any, Any], tuple[Any, Any]], batches: Iterator[dict[str, Any]], *,
        start: int, total: int, hooks: Sequence[Hook]) -> Context:
    """Steps `start` .. `total - 1` (0-based) over `batches` (host batches with an "index" [B] entry).

    Returns the context after the last step run (`ctx.stop` says why it ended early, '' otherwise).
    """
    ctx = Context(state=state, step=start, total=total)
    pending = None  # (step, example indices, metrics) of the step dispatched last, not yet checked
    for step in range(start, total):
        batch = next(batches)
        ctx.state, metrics = step_fn(ctx.state, batch)
        if pending is not None:
            nonfinite.check_finite(*pending)
        pending = (step, np.asarray(batch["index"]), metrics)
        ctx.step, ctx.metrics, ctx.eval = step + 1, metrics, None
        due = [hook for hook in hooks if hook.due(ctx.step, total)]
        if pending is not None and any(hook.checked for hook in due):
            nonfinite.check_finite(*pending)
            pending = None
        for hook in due:
            hook.fn(ctx)
            if ctx.stop:
                return ctx
    if pending is not None:
        nonfinite.check_finite(*pending)
    return ctx


def resume_or_init(ckpt, abstract_state: Any, init_state: Callable[[], Any], init_from: str,
                   load_init_from: Callable[[Any], Any], **restore_kwargs) -> tuple[Any, Any, str]:
    """The resume order: the workdir's newest readable checkpoint, else `init_from` (warm start), else scratch.

    Returns (state, the `checkpointing.Restored` or None, origin: 'resumed' | 'init_from' | 'scratch').
    """
    restored = ckpt.restore(abstract_state, **restore_kwargs)
    if restored is not None:
        log.info("resuming from %s at step %d", ckpt.directory, restored.step)
        return restored.state, restored, "resumed"
    state = init_state()
    if init_from:
        log.info("warm start from %s", init_from)
        return load_init_from(state), None, "init_from"
    return state, None, "scratch"
