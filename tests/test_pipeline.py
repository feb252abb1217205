"""grain pipeline: determinism, epochs, resume at step N (also with another process count)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from midibert_jax.data import manifest, pipeline
from midibert_jax.errors import UserError
from midibert_jax.tokenizer import vocab

MAX_LEN = 4


class FakeSource:
    """An in-memory data source whose example i has index 1000 + i (stored order != index)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {
            "tokens": np.full((MAX_LEN, 8), i % 200, np.int32),
            "index": np.int64(1000 + i),
            "piece_id": np.int32(i // 3),
            "window": np.int32(i % 3),
        }


def stack_process_batches(batches):
    """Concatenates per-process batches (in process order) into the global batch."""
    return {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def train(source, **kwargs):
    kwargs.setdefault("global_batch_size", 8)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("num_threads", 2)
    return pipeline.train_iterator(source, **kwargs)


def test_batches_have_fixed_shapes_and_same_seed_gives_same_batches():
    source = FakeSource(37)
    a, b, c = take(train(source), 10), take(train(source), 10), take(train(source, seed=1), 10)
    assert_batches_equal(a, b)
    assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
    for batch in a:
        assert batch["tokens"].shape == (8, MAX_LEN, 8) and batch["tokens"].dtype == np.int32
        assert batch["index"].shape == (8,) and batch["index"].dtype == np.int64
        assert batch["piece_id"].dtype == np.int32 and batch["window"].dtype == np.int32
        assert batch["valid"].all()


def test_each_epoch_is_a_fresh_permutation_and_the_epoch_follows_from_the_step():
    source = FakeSource(37)
    plan = pipeline.train_plan(source, global_batch_size=8, seed=0)
    assert plan.steps_per_epoch == 4 and plan.epoch(3) == 0 and plan.epoch(4) == 1 and plan.epoch(11) == 2
    batches = take(train(source), 12)
    epochs = [np.concatenate([b["index"] for b in batches[4 * e : 4 * e + 4]]) for e in range(3)]
    for seen in epochs:
        assert len(set(seen.tolist())) == 32 and set(seen.tolist()) <= set(range(1000, 1037))
    assert not np.array_equal(epochs[0], epochs[1])
    finite = list(train(source, num_epochs=2))
    assert len(finite) == 8
    assert_batches_equal(finite, batches[:8])
    # The plan built once by a trainer yields the same batches, also from a later step.
    assert_batches_equal(take(pipeline.plan_iterator(source, plan, start_step=5, num_threads=1), 7), batches[5:])


def test_resume_at_step_n_matches_an_uninterrupted_run():
    source = FakeSource(37)
    reference = take(train(source), 14)
    it = train(source)
    take(it, 6)
    state = it.get_state()
    assert json.loads(json.dumps(state)) == state  # checkpointable as plain JSON
    restored = train(source)
    restored.set_state(state)
    assert_batches_equal(take(restored, 8), reference[6:])
    assert_batches_equal(take(train(source, start_step=9), 5), reference[9:])


@pytest.mark.parametrize("process_count", [2, 4])
def test_resume_with_another_process_count_gives_the_same_global_batches(process_count):
    source = FakeSource(53)
    single = take(train(source, global_batch_size=8), 12)
    it = train(source, global_batch_size=8)
    take(it, 5)
    state = it.get_state()  # saved by a 1-process run ...
    per_process = []
    for p in range(process_count):  # ... restored on `process_count` processes
        restored = train(source, global_batch_size=8, process_index=p, process_count=process_count)
        restored.set_state(state)
        batches = take(restored, 7)
        assert batches[0]["tokens"].shape[0] == 8 // process_count
        per_process.append(batches)
    stacked = [stack_process_batches([per_process[p][s] for p in range(process_count)]) for s in range(7)]
    assert_batches_equal(stacked, single[5:])


def test_eval_iterator_covers_every_example_once_and_pads_the_last_batch():
    source = FakeSource(21)
    per_process = [
        list(pipeline.eval_iterator(source, global_batch_size=8, process_index=p, process_count=2, num_threads=1))
        for p in range(2)
    ]
    assert [len(b) for b in per_process] == [3, 3]
    stacked = [stack_process_batches([per_process[0][s], per_process[1][s]]) for s in range(3)]
    index = np.concatenate([b["index"] for b in stacked])
    valid = np.concatenate([b["valid"] for b in stacked])
    assert valid.sum() == 21 and sorted(index[valid].tolist()) == list(range(1000, 1021))
    assert np.all(index[~valid] == -1)
    pad = stacked[-1]["tokens"][~stacked[-1]["valid"]]
    assert np.all(pad == vocab.PAD_ROW)


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple"):
        pipeline.BatchPlan(100, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="fewer") as raised:
        pipeline.BatchPlan(5, global_batch_size=8)
    assert isinstance(raised.value, UserError)  # the command line prints it as one line


def test_pipeline_over_the_tfds_array_record_source(built_folder_dataset):
    source = pipeline.load_split(built_folder_dataset.data_path, "train")
    n = len(source)
    a = take(train(source, global_batch_size=4, seed=3), 2 * (n // 4))
    b = take(train(source, global_batch_size=4, seed=3), 2 * (n // 4))
    assert_batches_equal(a, b)
    first_epoch = np.concatenate([x["index"] for x in a[: n // 4]])
    assert len(set(first_epoch.tolist())) == len(first_epoch) and first_epoch.max() < n
    assert a[0]["tokens"].shape == (4, built_folder_dataset.builder_config.max_len, 8)
    with pytest.raises(KeyError, match="no split 'test'") as raised:
        pipeline.load_split(built_folder_dataset.data_path, "test")
    assert isinstance(raised.value, UserError)
    validation = pipeline.load_split(built_folder_dataset.data_path, "validation")
    windows = built_folder_dataset.summary["splits"]["validation"]["windows"]
    assert len(validation) == windows > 0
    indices = sorted(int(validation[i]["index"]) for i in range(len(validation)))
    assert indices == list(range(windows))  # contiguous 0..N-1, each once
    assert manifest.split_notes(built_folder_dataset.data_path, "validation") == \
        built_folder_dataset.summary["splits"]["validation"]["notes"]


def test_piece_subset_keeps_whole_pieces_seeded():
    source = [{"piece_id": np.int32(i // 3), "index": np.int64(i)} for i in range(30)]  # 10 pieces of 3 windows
    subset = pipeline.PieceSubset(source, 0.3, seed=7)
    pieces = [int(subset[i]["piece_id"]) for i in range(len(subset))]
    assert len(subset) == 9 and subset.num_pieces == 3 and len(set(pieces)) == 3
    assert all(pieces.count(p) == 3 for p in set(pieces))
    again = pipeline.PieceSubset(source, 0.3, seed=7)
    assert [e["index"] for e in again.__getitems__(range(9))] == [subset[i]["index"] for i in range(9)]
    other = {int(pipeline.PieceSubset(source, 0.3, seed=s)[0]["piece_id"]) for s in range(8)}
    assert len(other) > 1  # the seed decides the draw
    assert len(pipeline.PieceSubset(source, 0.01, seed=0)) == 3  # at least one piece
    with pytest.raises(ValueError, match="piece fraction"):
        pipeline.PieceSubset(source, 1.5, seed=0)
