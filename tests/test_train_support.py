"""Optimiser, train state, metric writer and preemption guard (midibert_jax.train.{optim,state,metrics,preemption})."""

import json
import os
import re
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from midibert_jax import console
from midibert_jax.train import metrics, nonfinite, optim, preemption, state

GROUPS = ("encoder", "recoverer", "masker")


def _optim_config(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            schedule="constant",
            warmup_steps=10,
            total_steps=110,
            end_learning_rate=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-6,
            weight_decay=0.01,
            grad_clip_norm=3.0,
            decay_bias_and_norm=True,
        )
    )
    cfg.update(overrides)
    return cfg


def _params():
    return {
        "encoder": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
        "recoverer": {"kernel": jnp.ones((2, 2))},
        "masker": {"kernel": jnp.ones((2, 1))},
    }


def test_schedules():
    const = optim.make_schedule(_optim_config())
    assert float(const(0)) == float(const(1000)) == pytest.approx(1e-3)
    cos = optim.make_schedule(_optim_config(schedule="warmup_cosine"))
    assert float(cos(0)) == 0.0
    assert float(cos(5)) == pytest.approx(5e-4)
    assert float(cos(10)) == pytest.approx(1e-3)
    assert float(cos(60)) == pytest.approx(5e-4, rel=1e-3)
    assert float(cos(110)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        optim.make_schedule(_optim_config(schedule="linear"))


def test_train_state_apply_gradients_clips_and_decays():
    tx, _ = optim.make_optimizer(_optim_config(decay_bias_and_norm=False, weight_decay=0.5))
    s = state.TrainState.create(params=_params(), tx=tx, seed=0, extras={"field_weights": jnp.full((8,), 0.125)},
                                groups=GROUPS)
    assert s.rng.dtype == jnp.uint32 and s.extras["field_weights"].shape == (8,)
    zero = jax.tree.map(jnp.zeros_like, s.params)
    s1 = jax.jit(lambda st, g: st.apply_gradients(g))(s, zero)
    assert int(s1.step) == 1
    # Zero gradients: only the decoupled weight decay moves parameters, and not the (1-D) bias.
    assert float(s1.params["encoder"]["kernel"][0, 0]) == pytest.approx(1 - 1e-3 * 0.5)
    assert float(s1.params["encoder"]["bias"][0]) == 1.0
    huge = jax.tree.map(lambda p: jnp.full_like(p, 1e6), s.params)
    s2 = s.apply_gradients(huge)  # clipped to norm 3, then Adam normalises: a step of about lr
    assert np.all(np.abs(np.asarray(s2.params["masker"]["kernel"]) - 1) < 2e-3)
    assert not jnp.array_equal(s.step_key(), s1.step_key())
    with pytest.raises(ValueError):
        state.TrainState.create(params={"encoder": {}}, tx=tx, seed=0, groups=GROUPS)


@pytest.mark.parametrize("bad", ["loss", "grads"])
def test_guarded_update_keeps_the_state_when_the_loss_or_gradients_are_not_finite(bad):
    tx, _ = optim.make_optimizer(_optim_config())
    s = state.TrainState.create(params=_params(), tx=tx, seed=0)
    grads = jax.tree.map(jnp.ones_like, s.params)
    new, norm, finite = nonfinite.guarded_update(s, jnp.float32(1.0), grads)
    assert bool(finite) and int(new.step) == 1 and float(norm) > 0
    if bad == "loss":
        new, _, finite = jax.jit(nonfinite.guarded_update)(s, jnp.float32(np.nan), grads)
    else:
        grads["encoder"]["kernel"] = grads["encoder"]["kernel"].at[0, 0].set(np.inf)
        new, _, finite = jax.jit(nonfinite.guarded_update)(s, jnp.float32(1.0), grads)
    assert not bool(finite)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(s)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(nonfinite.NonFiniteLossError, match=r"at step 7 \(batch of examples \[3, 4\]\)"):
        nonfinite.check_finite(7, np.array([3, 4]), {nonfinite.FLAG: finite})


def test_metrics_writer(tmp_path):
    with metrics.MetricsWriter(str(tmp_path), enabled=True) as w:
        w.write(3, {"loss": jnp.float32(1.5), "acc": 0.25})
        w.write(4, {"loss": float("nan")})
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert lines[0]["step"] == 3 and lines[0]["loss"] == 1.5 and lines[1]["loss"] == "nan"
    assert os.listdir(tmp_path / "tensorboard")
    silent = metrics.MetricsWriter(str(tmp_path / "other"), enabled=False)
    silent.write(1, {"x": 1.0})
    assert not os.path.exists(tmp_path / "other")


def test_progress_bar_prints_position_rate_and_eta_on_process_0_only(capsys, monkeypatch):
    monkeypatch.setenv(console.PROGRESS_ENV, "bars")  # what a terminal gets (tests/test_console.py: elsewhere)
    bar = metrics.progress_bar(10, initial=2, desc="pretrain")  # one process: process 0 shows it
    bar.update(3)
    bar.refresh()
    bar.close()
    err = capsys.readouterr().err
    shown = err.split("\r")
    assert shown[1].startswith("pretrain:  20%") and "| 2/10 [" in shown[1], shown  # starts at the resumed step
    # e.g. "pretrain:  50%|#####     | 5/10 [00:01<00:01, 2.50 steps/s]": position, elapsed<ETA, rate.
    assert any(re.search(r"^pretrain: +50%\|[^|]+\| 5/10 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ steps/s\]", line)
               for line in shown), shown
    assert err.endswith("\n")  # closed: the next output starts on its own line

    silent = metrics.progress_bar(10, enabled=False)
    silent.update(5)
    silent.close()
    assert capsys.readouterr().err == ""


def test_preemption_guard_sets_flag_on_sigterm():
    guard = preemption.PreemptionGuard().install()
    try:
        assert not guard.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested and guard.should_stop(1)
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGTERM) is not guard._handle
