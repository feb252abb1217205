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


def test_items_are_declared_per_objective(tmp_path):
    """Fine-tuning's items: state, early_stopping, config (and version); no mask book, no data item."""
    from midibert_jax.train import finetune

    s = _state()
    record = {**finetune.new_record(), "best_accuracy": 0.5, "best_step": 3}
    ck = checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2, items=finetune.ITEMS)
    with pytest.raises(ValueError, match="mask_book"):
        ck.save(3, state=s, mask_book=_book(3), early_stopping=record, config={})
    ck.save_now(3, state=s.replace(step=jnp.int32(3)), early_stopping=record, config={"seed": 1})
    assert sorted(p.name for p in (pathlib.Path(tmp_path) / "3").iterdir() if p.is_dir()) == [
        "config", "early_stopping", "state", "version"]
    r = ck.restore(_abstract(s))
    assert r.step == 3 and r.items["early_stopping"] == record and r.mask_book is None and r.data == {}
    assert finetune.restored_record(r, 3) == record
    ck.close()


def _format1(s, **extras):
    """A state as format 1 saved it: TrainState's fields, with the extras beside them."""
    return {"step": s.step, "params": s.params, "opt_state": s.opt_state, "rng": s.rng, **extras}


def test_an_old_fine_tuning_checkpoint_is_migrated(tmp_path, monkeypatch):
    """Format 1 fine-tuning steps held a dummy mask book and the early-stopping record in `data`."""
    from midibert_jax.train import finetune

    s = _state()
    legacy = {"next_index": 4, "best_accuracy": 0.75, "best_loss": 0.5, "best_step": 4, "bad_evals": 0, "stopped": ""}
    monkeypatch.setattr(checkpointing, "FORMAT_VERSION", 1)
    with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2) as old:
        old.save_now(4, state=_format1(s.replace(step=jnp.int32(4))), mask_book=np.zeros((1, 1), np.uint8),
                     data=legacy, config={})
    monkeypatch.undo()
    with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2, items=finetune.ITEMS) as ck:
        r = ck.restore(_abstract(s))
    assert r.step == 4 and isinstance(r.state, state.TrainState) and int(r.state.step) == 4 and r.state.extras == {}
    assert r.version["format"] == 1
    jax.tree.map(np.testing.assert_array_equal, r.state.opt_state, s.opt_state)
    record = finetune.restored_record(r, 4)
    # Format 1 kept no wall time: the migrated record starts its clock at zero.
    assert record == {**{k: v for k, v in legacy.items() if k != "next_index"}, "elapsed_s": 0.0}
    with pytest.raises(RuntimeError, match="data position"):
        finetune.restored_record(r, 5)


def test_an_old_pretraining_checkpoint_is_migrated(tmp_path, monkeypatch):
    """Format 1 pre-training states kept the field weights beside the parameters, not in `extras`."""
    s = _state().replace(extras={"field_weights": jnp.ones(8)})
    weights = jnp.arange(8.0)
    monkeypatch.setattr(checkpointing, "FORMAT_VERSION", 1)
    with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2, best_metric="eval/acc/mean") as old:
        old.save_now(2, state=_format1(s.replace(step=jnp.int32(2)), field_weights=weights), mask_book=_book(2),
                     data={"epoch": 1, "position": 2}, config={}, metrics={"eval/acc/mean": 0.5})
    monkeypatch.undo()
    with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2, best_metric="eval/accuracy") as ck:
        assert ck.best_step() == 2  # ranked by its old metric name
        r = ck.restore(_abstract(s), mask_book_target=_book(0))
    assert int(r.state.step) == 2 and r.data == {"epoch": 1, "position": 2}
    np.testing.assert_array_equal(r.state.extras["field_weights"], weights)
    np.testing.assert_array_equal(r.mask_book, _book(2))
    jax.tree.map(np.testing.assert_array_equal, r.state.params, s.params)


def test_a_newer_format_is_refused_naming_it(tmp_path, monkeypatch):
    s = _state()
    monkeypatch.setattr(checkpointing, "FORMAT_VERSION", checkpointing.FORMAT_VERSION + 1)
    with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2) as new:
        _save(new, 2, s)
        new.wait()
    monkeypatch.undo()
    with checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=2) as ck:
        with pytest.raises(checkpointing.CheckpointFormatError, match=rf"step 2 in {tmp_path} has format 3"):
            ck.restore(_abstract(s))
