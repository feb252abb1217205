"""Checkpoints (midibert_jax.train.checkpointing): roundtrip, retention, fallback, refusal; other meshes: multidevice/."""

import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from midibert_jax.train import checkpointing, mask_book, state

DEVICE = jax.devices()[0]


def _state(seed=0):
    params = {
        "encoder": {"kernel": jnp.arange(12.0).reshape(4, 3) + seed},
        "recoverer": {"bias": jnp.zeros(3)},
        "masker": {"kernel": jnp.ones((3, 1))},
    }
    return state.TrainState.create(params=params, tx=optax.adamw(1e-3), seed=seed)


def _abstract(s):
    sharding = jax.sharding.SingleDeviceSharding(DEVICE)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), s)


def _book(step):
    book = mask_book.create(6, 16)
    book[step % 6, 0] = step
    return book


def _save(ck, step, s, **kw):
    return ck.save(
        step,
        state=s.replace(step=jnp.int32(step)),
        mask_book=_book(step),
        data={"epoch": 1, "position": step},
        config=ml_collections.ConfigDict({"train": {"batch_size": 8}}),
        **kw,
    )


def test_roundtrip_keep_last_and_best(tmp_path):
    s = _state()
    ck = checkpointing.Checkpointer(str(tmp_path), save_every=2, keep_last=2, best_metric="valid/acc", best_mode="max")
    assert ck.restore(_abstract(s)) is None
    saved = [step for step in range(1, 11) if _save(ck, step, s, metrics={"valid/acc": 0.9 if step == 4 else 0.1})]
    ck.wait()
    assert saved == [2, 4, 6, 8, 10]
    assert ck.all_steps() == [4, 8, 10], "the last two plus the best"
    assert ck.best_step() == 4

    r = ck.restore(_abstract(s))
    assert r.step == 10 and isinstance(r.state, state.TrainState) and int(r.state.step) == 10
    jax.tree.map(np.testing.assert_array_equal, r.state.params, s.params)
    jax.tree.map(np.testing.assert_array_equal, r.state.opt_state, s.opt_state)
    np.testing.assert_array_equal(r.state.rng, s.rng)
    assert r.state.params["encoder"]["kernel"].sharding == jax.sharding.SingleDeviceSharding(DEVICE)
    assert isinstance(r.mask_book, np.ndarray) and r.mask_book.dtype == np.uint8
    np.testing.assert_array_equal(r.mask_book, _book(10))
    assert r.data == {"epoch": 1, "position": 10} and r.config == {"train": {"batch_size": 8}}
    assert r.version["vocab_sizes"] == list(checkpointing.version_info()["vocab_sizes"])

    book_target = jax.ShapeDtypeStruct((6, 2), jnp.uint8, sharding=jax.sharding.SingleDeviceSharding(DEVICE))
    r4 = ck.restore(_abstract(s), mask_book_target=book_target, step=4)
    assert isinstance(r4.mask_book, jax.Array) and r4.data["position"] == 4
    np.testing.assert_array_equal(np.asarray(r4.mask_book), _book(4))
    ck.close()


# A failed tensorstore read may complete after orbax closed its event loop ("Event loop is closed").
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_save_now_and_fallback_when_latest_is_corrupted(tmp_path, caplog):
    s = _state(1)
    ck = checkpointing.Checkpointer(str(tmp_path), save_every=10, keep_last=3)
    assert _save(ck, 10, s)
    assert not _save(ck, 15, s), "not due"
    ck.save_now(15, state=s.replace(step=jnp.int32(15)), mask_book=_book(15), data={"position": 15}, config={})
    assert ck.all_steps() == [10, 15]
    for root, _, files in os.walk(pathlib.Path(tmp_path) / "15" / "state"):
        for name in files:
            if "ocdbt" not in name and not name.startswith("_") and "commit" not in name:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(4)
    ck.close()

    ck = checkpointing.Checkpointer(str(tmp_path), save_every=10, keep_last=3)
    with caplog.at_level(logging.WARNING, logger="midibert_jax.train.checkpointing"):
        r = ck.restore(_abstract(s))
    assert r.step == 10 and r.data["position"] == 10
    assert any("step 15" in m and "falling back to step 10" in m for m in caplog.messages), caplog.messages
    ck.close()


def test_vocabulary_mismatch_is_refused(tmp_path):
    s = _state()
    ck = checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=1, async_save=False)
    _save(ck, 1, s)
    meta = pathlib.Path(tmp_path) / "1" / "version" / "metadata"
    info = json.loads(meta.read_text())
    info["vocab_sizes"][0] += 1
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="vocab_sizes"):
        ck.restore(_abstract(s))
    ck.close()
