"""The shared training loop (train/loop.py) and its hooks, with a host-only step: no compilation."""

from __future__ import annotations

import numpy as np
import pytest

from midibert_jax.train import hooks, loop, nonfinite


def _batches(start: int = 0):
    step = start
    while True:
        yield {"index": np.array([2 * step, 2 * step + 1])}
        step += 1


def _step(bad: int = -1):
    """state: the number of updates; the update of state == bad is flagged non-finite and not applied."""

    def step_fn(state, batch):
        del batch
        finite = state != bad
        return (state + 1 if finite else state), {nonfinite.FLAG: np.bool_(finite), "train/loss": float(state)}

    return step_fn


def _recorder(calls, name):
    return lambda ctx: calls.append((name, ctx.step, ctx.state))


def test_hooks_run_every_n_steps_and_after_the_last():
    calls = []
    ctx = loop.run(0, _step(), _batches(), start=0, total=7, hooks=[
        loop.Hook(_recorder(calls, "log"), every=3),
        loop.Hook(_recorder(calls, "final only"), every=0),
        loop.Hook(_recorder(calls, "counted"), every=5, at_end=False),
        loop.Hook(_recorder(calls, "signal"), when=lambda step: step == 2),
    ])
    assert ctx.step == 7 and ctx.state == 7 and not ctx.stop
    assert calls == [("signal", 2, 2), ("log", 3, 3), ("counted", 5, 5), ("log", 6, 6), ("log", 7, 7),
                     ("final only", 7, 7)]


def test_a_run_resumes_at_its_step():
    calls = []
    ctx = loop.run(4, _step(), _batches(4), start=4, total=6, hooks=[loop.Hook(_recorder(calls, "log"), every=1)])
    assert calls == [("log", 5, 5), ("log", 6, 6)] and ctx.state == 6


def test_a_hook_stops_the_run():
    calls = []

    def stop(ctx):
        ctx.stop = "early"

    ctx = loop.run(0, _step(), _batches(), start=0, total=10, hooks=[
        loop.Hook(stop, when=lambda step: step == 4), loop.Hook(_recorder(calls, "after"), every=1)])
    assert ctx.stop == "early" and ctx.step == 4
    assert calls[-1] == ("after", 3, 3)  # the hooks after the stopping one do not run


@pytest.mark.parametrize("save_every", [5, 7])
def test_a_nonfinite_step_is_named_before_a_checked_hook_sees_it(save_every):
    calls = []
    with pytest.raises(nonfinite.NonFiniteLossError, match=r"at step 4 \(batch of examples \[8, 9\]\)"):
        loop.run(0, _step(bad=4), _batches(), start=0, total=10, hooks=[
            loop.Hook(_recorder(calls, "unchecked"), every=1, checked=False),
            loop.Hook(_recorder(calls, "save"), every=save_every),
        ])
    good = [("unchecked", s, s) for s in range(1, 5)]
    if save_every == 5:  # a save is due after the bad step: its flag is read first, nothing runs
        assert calls == good
    else:  # read one step late, once step 5 is dispatched; only the unchecked hook saw the kept state
        assert calls == good + [("unchecked", 5, 4)]


def test_the_last_step_is_checked_even_without_hooks():
    with pytest.raises(nonfinite.NonFiniteLossError, match="at step 2 "):
        loop.run(0, _step(bad=2), _batches(), start=0, total=3, hooks=[])


class _Checkpoints:
    def __init__(self, restored=None):
        self.restored, self.directory = restored, "ckpts"

    def restore(self, abstract, **kwargs):
        return self.restored


class _Restored:
    step, state = 3, "from checkpoint"


def test_resume_order():
    fresh, warm = (lambda: "fresh"), (lambda state: f"warm({state})")
    assert loop.resume_or_init(_Checkpoints(_Restored()), None, fresh, "elsewhere", warm)[::2] == (
        "from checkpoint", "resumed")
    assert loop.resume_or_init(_Checkpoints(), None, fresh, "elsewhere", warm) == ("warm(fresh)", None, "init_from")
    assert loop.resume_or_init(_Checkpoints(), None, fresh, "", warm) == ("fresh", None, "scratch")


def test_checkpoint_and_preemption_hooks():
    saves = []

    class Guard:
        def should_stop(self, step):
            return step == 3

    said = []
    schedule = [hooks.checkpoint(lambda ctx, force: saves.append((ctx.step, force)), every=2),
                hooks.preemption(Guard(), lambda ctx: saves.append((ctx.step, "now")), said.append, "test")]
    ctx = loop.run(0, _step(), _batches(), start=0, total=10, hooks=schedule)
    assert ctx.stop == "preempted" and saves == [(2, False), (3, "now")]
    assert said == ["[test] preemption signal: saved step 3, exiting; rerun to resume"]
    saves.clear()
    loop.run(0, _step(), _batches(), start=0, total=3, hooks=schedule[:1])
    assert saves == [(2, False), (3, True)]  # the last step is saved, and forced
