"""grain input pipeline over the TFDS ArrayRecord data sources.

The order of examples is a pure function of the global step, so that every host, and every
restart, agrees on it:

* ``steps_per_epoch = num_examples // global_batch_size`` (the remainder of each epoch is
  dropped, a different remainder every epoch), ``epoch = step // steps_per_epoch``.
* Epoch ``e`` visits the data source in a seeded permutation (grain's ``index_shuffle`` with
  seed ``seed + e``; O(1) per index, no permutation array). Global step ``s`` is the slice
  ``[(s % steps_per_epoch) * G, ... + G)`` of that permutation.
* Process ``p`` of ``P`` reads only its part ``[p * B, (p + 1) * B)`` of each global batch,
  with ``B = G / P``. Stacking the processes' batches in process order gives the global batch,
  whatever ``P`` is: a run restored at step N yields exactly the batches an uninterrupted run
  would, also with a different process count (same global batch size).

The iterator is a grain ``DatasetIterator`` whose state (``get_state()`` /
``set_state()``, ``{"next_index": step}``) is the next global step; save it with the model
(e.g. orbax + ``grain.checkpoint.CheckpointHandler``). Since the state is just the step,
``train_iterator(..., start_step=step)`` resumes equally well, on any process count. A
trainer that needs the plan itself (steps per epoch) builds it once with `train_plan` and
iterates it with `plan_iterator`.

Batches are dicts of numpy arrays with fixed shapes: ``tokens`` int32 [B, L, 8], ``index``
int64 [B] (the example's stable index in its split, for the mask book), ``piece_id`` int32
[B], ``window`` int32 [B], ``valid`` bool [B] (False only for the padding of the last
evaluation batch). Other example keys (the fine-tuning ``labels`` int32 [B, L] / ``label``
int32 [B]) are stacked too; padding gets -1.

Note: the permutation is over positions in the data source (TFDS shuffles examples when
writing), which are fixed for a given set of built files; the stable ``index`` feature is
what identifies an example across rebuilds.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import numpy as np

from midibert_jax.data.errors import BatchPlanError
from midibert_jax.tokenizer import vocab


class DataSource(Protocol):
    """What the pipeline needs from a TFDS data source (random access to example dicts)."""

    def __len__(self) -> int: ...

    def __getitem__(self, position: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which source positions process `process_index` reads at each global step."""

    # Examples in the data source.
    num_examples: int
    # Examples per global step, summed over processes.
    global_batch_size: int
    # This process and the number of processes.
    process_index: int = 0
    process_count: int = 1
    # Seed of the per-epoch permutations.
    seed: int = 0
    # Permute each epoch (training) or read in source order (evaluation).
    shuffle: bool = True
    # Training: drop each epoch's remainder. Evaluation: one pass, last batch padded (position -1).
    drop_remainder: bool = True

    def __post_init__(self):
        if self.global_batch_size < 1 or self.global_batch_size % self.process_count:
            raise BatchPlanError(
                f"global_batch_size {self.global_batch_size} must be a positive multiple of process_count {self.process_count}"
            )
        if not 0 <= self.process_index < self.process_count:
            raise BatchPlanError(f"process_index {self.process_index} not in [0, {self.process_count})")
        if self.num_examples < 1:
            raise BatchPlanError("the data source is empty")
        if self.drop_remainder and self.num_examples < self.global_batch_size:
            raise BatchPlanError(
                f"{self.num_examples} examples are fewer than one global batch of {self.global_batch_size} "
                "(lower data.batch_size)"
            )

    @property
    def batch_size(self) -> int:
        """Examples per step on this process."""
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_remainder:
            return self.num_examples // self.global_batch_size
        return -(-self.num_examples // self.global_batch_size)

    def epoch(self, step: int) -> int:
        """The epoch that global step `step` belongs to."""
        return step // self.steps_per_epoch

    def positions(self, step: int) -> np.ndarray:
        """int64 [batch_size]: source positions of this process' part of step `step` (-1: padding)."""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        if not self.drop_remainder and epoch > 0:
            raise IndexError(f"step {step} is past the single evaluation pass of {self.steps_per_epoch} steps")
        start = step_in_epoch * self.global_batch_size + self.process_index * self.batch_size
        order = np.arange(start, start + self.batch_size, dtype=np.int64)
        if not self.drop_remainder:
            return np.where(order < self.num_examples, order, -1)
        if not self.shuffle:
            return order
        seed = (self.seed + epoch) % 2**32
        shuffle = grain.experimental.index_shuffle
        return np.asarray([shuffle(int(i), max_index=self.num_examples - 1, seed=seed, rounds=4) for i in order], np.int64)


def _padding_example(max_len: int, template: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """A padding example; extra keys of `template` (e.g. fine-tuning `labels`/`label`) are filled with -1."""
    out = {
        "tokens": np.broadcast_to(vocab.PAD_ROW, (max_len, vocab.NUM_FIELDS)).astype(np.int32),
        "index": np.int64(-1),
        "piece_id": np.int32(-1),
        "window": np.int32(-1),
    }
    for key, value in (template or {}).items():
        if key not in out:
            value = _as_array(value)
            out[key] = np.full(value.shape, -1, value.dtype)
    return out


def _as_array(value: Any) -> np.ndarray:
    """An example value as numpy; Python ints (how TFDS returns int32 scalars) become int32."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return np.asarray(value, np.int32 if isinstance(value, int) else value.dtype)
    return np.asarray(value)


class ReadBatch:
    """step -> this process' batch (a grain map function; picklable if the source is)."""

    def __init__(self, source: DataSource, plan: BatchPlan):
        self.source = source
        self.plan = plan

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = self.plan.positions(int(step))
        real = [int(p) for p in positions if p >= 0]
        getitems = getattr(self.source, "__getitems__", None)
        examples = list(getitems(real)) if getitems is not None else [self.source[p] for p in real]
        if len(real) < len(positions):
            template = examples[0] if examples else self.source[0]
            max_len = np.asarray(template["tokens"]).shape[0]
            examples += [_padding_example(max_len, template)] * (len(positions) - len(real))
        batch = {
            "tokens": np.stack([np.asarray(e["tokens"], np.int32) for e in examples]),
            "index": np.asarray([e["index"] for e in examples], np.int64),
            "piece_id": np.asarray([e["piece_id"] for e in examples], np.int32),
            "window": np.asarray([e["window"] for e in examples], np.int32),
            "valid": positions >= 0,
        }
        # Any other example keys (fine-tuning `labels` [L] / `label` []) are stacked as they are.
        for key in examples[0]:
            if key not in batch:
                batch[key] = np.stack([_as_array(e[key]) for e in examples])
        return batch


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return process_index, process_count


def batch_dataset(source: DataSource, plan: BatchPlan, num_steps: int | None = None) -> grain.MapDataset:
    """A grain MapDataset whose element `step` is this process' batch of global step `step`."""
    if num_steps is None:
        num_steps = plan.steps_per_epoch if not plan.drop_remainder else sys.maxsize
    return grain.MapDataset.range(0, num_steps).map(ReadBatch(source, plan))


def _to_iterator(ds: grain.MapDataset, num_threads: int, prefetch: int) -> grain.DatasetIterator:
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def plan_iterator(
    source: DataSource,
    plan: BatchPlan,
    *,
    num_epochs: int | None = None,
    start_step: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """The batches of `plan` from step `start_step`, for `num_epochs` epochs (None: forever)."""
    num_steps = None if num_epochs is None else num_epochs * plan.steps_per_epoch
    it = _to_iterator(batch_dataset(source, plan, num_steps), num_threads, prefetch)
    if start_step:
        it.set_state({"next_index": int(start_step)})
    return it


def train_iterator(
    source: DataSource,
    *,
    global_batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 4,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """Training batches, shuffled per epoch, for `num_epochs` epochs (None: forever).

    `process_index`/`process_count` default to jax.process_index()/process_count(). Start at
    `start_step`, or restore a saved iterator state with `set_state`. `num_threads` batches are
    read in parallel threads.
    """
    process_index, process_count = _process(process_index, process_count)
    plan = train_plan(
        source, global_batch_size=global_batch_size, seed=seed, process_index=process_index, process_count=process_count
    )
    return plan_iterator(
        source, plan, num_epochs=num_epochs, start_step=start_step, num_threads=num_threads, prefetch=prefetch
    )


def eval_iterator(
    source: DataSource,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 4,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """One pass over the source in order; the last batch is padded (``valid`` False, index -1)."""
    process_index, process_count = _process(process_index, process_count)
    plan = BatchPlan(
        len(source), global_batch_size, process_index, process_count, shuffle=False, drop_remainder=False
    )
    return _to_iterator(batch_dataset(source, plan), num_threads, prefetch)


def train_plan(
    source: DataSource, *, global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> BatchPlan:
    """The plan `train_iterator` follows; build it once and iterate it with `plan_iterator`."""
    return BatchPlan(len(source), global_batch_size, process_index, process_count, seed, shuffle=True)


def load_split(dataset_dir: str | os.PathLike, split: str) -> DataSource:
    """The data source of `split` of a built dataset folder (``<data_dir>/<name>/<config>/<version>``)."""
    from midibert_jax.data.builders import common  # pylint: disable=import-outside-toplevel

    return common.load_data_source(dataset_dir, split)



class PieceSubset:
    """The windows of a seeded subset of a source's pieces: the low-label protocol.

    Pieces (not windows) are drawn, so a piece is either wholly in or wholly out; at least one piece
    is kept. The draw depends on `seed` and on the source's piece ids only, so every arm of an
    experiment trained with the same seed sees the same pieces.
    """

    def __init__(self, source: DataSource, fraction: float, seed: int):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"piece fraction must be in (0, 1], got {fraction}")
        self.source = source
        piece_ids = np.asarray([int(source[i]["piece_id"]) for i in range(len(source))], np.int64)
        pieces = np.unique(piece_ids)
        keep = max(1, round(fraction * len(pieces)))
        chosen = np.random.default_rng(seed).permutation(pieces)[:keep]
        self.positions = np.flatnonzero(np.isin(piece_ids, chosen))
        self.num_pieces = keep

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.source[int(self.positions[position])]

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        getitems = getattr(self.source, "__getitems__", None)
        underlying = [int(self.positions[p]) for p in positions]
        return list(getitems(underlying)) if getitems is not None else [self.source[p] for p in underlying]
