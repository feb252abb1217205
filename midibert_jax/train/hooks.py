"""Hooks of the training loop shared by both objectives: log, checkpoint, preemption, progress bar, run lock.

Each returns a `loop.Hook`; an objective adds its own (evaluation, mask-book refresh, early stop).
`close_run` is the way out both objectives share, however the loop ended.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax

from midibert_jax.train.loop import Context, Hook


def log_train(writer, every: int, *, schedule, steps_per_epoch: int, start: int, bar=None,
              tokens_per_step: int = 0, rate=None, extra: Callable[[Context], dict[str, float]] | None = None) -> Hook:
    """Writes the step's metrics, step time (and tokens/s, ETA), learning rate and epoch every `every` steps."""
    last = {"time": time.perf_counter(), "step": start}

    def fn(ctx: Context) -> None:
        scalars = {k: float(v) for k, v in jax.device_get(ctx.metrics).items()}
        now = time.perf_counter()
        step_time = (now - last["time"]) / max(ctx.step - last["step"], 1)
        last.update(time=now, step=ctx.step)
        if tokens_per_step:
            scalars["perf/tokens_per_s"] = tokens_per_step / step_time
        scalars["perf/step_time_s"] = step_time
        if rate is not None:
            scalars["perf/eta_s"] = rate.update(ctx.step)["eta_sec"]
        scalars["optim/learning_rate"] = float(schedule(ctx.step))
        scalars["epoch"] = ctx.step / steps_per_epoch
        if extra is not None:
            scalars.update(extra(ctx))
        writer.write(ctx.step, scalars)
        if bar is not None:
            bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", acc=f"{scalars['train/accuracy']:.3f}", refresh=False)

    return Hook(fn, every=every)


def progress(bar) -> Hook:
    """Advances the progress bar every step (reads nothing: no finite check, no wait for the device)."""
    return Hook(lambda ctx: bar.update(1), every=1, checked=False)


def checkpoint(save: Callable[..., Any], every: int) -> Hook:
    """`save(ctx, force=last step)` every `every` steps and at the end (a due save; ctx.eval ranks it)."""

    def fn(ctx: Context) -> None:
        save(ctx, force=ctx.step == ctx.total)

    return Hook(fn, every=every)


def preemption(guard, save_now: Callable[[Context], Any], say: Callable[[str], Any], label: str) -> Hook:
    """On a preemption signal (all processes agree, `guard.should_stop`): save now and stop the run."""

    def fn(ctx: Context) -> None:
        save_now(ctx)
        say(f"[{label}] preemption signal: saved step {ctx.step}, exiting; rerun to resume")
        ctx.stop = "preempted"

    return Hook(fn, when=guard.should_stop)


def run_lock(lock) -> Hook:
    """Before the other hooks of every step (put it first): stop once this run no longer holds its folder.

    `lock` is a `run_lock.RunLock`; its `verify` raises `RunLockLostError` (on every process).
    Reads nothing of the step: no finite check, no wait for the device.
    """
    return Hook(lambda ctx: lock.verify(fresh=False), every=1, checked=False)


def close_run(*, bar, checkpointer, writer, lock) -> None:
    """Ends a run however its loop ended: the bar closed, pending checkpoint writes finished, and the
    metrics kept, unless another run took the folder over (then this one's unwritten metrics are dropped
    rather than mixed into the new owner's)."""
    if bar is not None:
        bar.close()
    checkpointer.wait()
    checkpointer.close()
    if lock.lost:
        writer.abandon()
    else:
        writer.close()
