"""Evaluation views for note-level tasks: every note predicted in several windows, probabilities averaged.

A dataset cuts a piece every `max_len` notes, so a note near a window's edge is judged from one side of
its context only. View k (k = 0 .. views-1) cuts the same piece with its first window ending at note
k * max_len // views; view 0 is the stored cut. Each note's class probabilities are averaged over the
views, then scored as usual. POP909 melody, 128-note windows (docs/results/pop909.md): the views move
validation accuracy more than any change of training tried on a 2-core budget.

The pieces are put back together from the stored windows and the absolute bar each window starts at
(`FileRecord.window_bars` in the dataset's manifest; windows re-base their bars to 0).

    result = evaluate_views(probs_fn, source, window_bars, task, max_len=128, views=4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from midibert_jax.data import manifest as manifest_lib
from midibert_jax.data import windows as windows_lib
from midibert_jax.data.errors import DataError
from midibert_jax.tokenizer import vocab
from midibert_jax.train import classification_metrics


class MissingWindowBarsError(DataError):
    """The dataset's manifest does not say where its windows start (a build made before 2026-12-07)."""


@dataclasses.dataclass
class Piece:
    """One piece's notes in order: rows int32 [N, 8] with absolute bars, labels int32 [N] (-1: unscored)."""

    piece_id: int
    rows: np.ndarray
    labels: np.ndarray


def window_bars(dataset_dir) -> dict[int, list[int]]:
    """piece_id -> the absolute bar of each of its windows, from the dataset's manifest."""
    built = manifest_lib.Manifest.load(dataset_dir)
    return {r.piece_id: list(r.window_bars) for r in built.records if r.status == "ok"}


def gather_pieces(source: Any, bars: Mapping[int, Sequence[int]], target_key: str = "labels",
                  where: str = "the dataset") -> list[Piece]:
    """The pieces of `source` (examples in (piece_id, window) order) with their bars made absolute again.

    Raises:
      MissingWindowBarsError: a piece's manifest record has no (or too few) window bars.
    """
    grouped: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    pad_bar = int(vocab.PAD_ROW[vocab.BAR])
    for position in range(len(source)):
        example = source[position]
        piece_id, window = int(example["piece_id"]), int(example["window"])
        tokens = np.asarray(example["tokens"], np.int64)
        keep = tokens[:, vocab.BAR] != pad_bar
        grouped.setdefault(piece_id, []).append((window, tokens[keep], np.asarray(example[target_key])[keep]))
    pieces = []
    for piece_id, parts in grouped.items():
        starts = bars.get(piece_id, ())
        parts.sort(key=lambda part: part[0])
        if len(starts) <= parts[-1][0]:
            raise MissingWindowBarsError(
                f"{where}: the manifest gives no start bar for window {parts[-1][0]} of piece {piece_id} (built before "
                "evaluation views existed): rebuild it (prepare ... --config.overwrite=True) or set train.eval_views=1")
        rows, labels = [], []
        for window, tokens, target in parts:
            tokens = tokens.copy()
            tokens[:, vocab.BAR] += int(starts[window])
            rows.append(tokens)
            labels.append(target)
        pieces.append(Piece(piece_id, np.concatenate(rows).astype(np.int32), np.concatenate(labels).astype(np.int32)))
    return pieces


def view_offsets(max_len: int, views: int) -> list[int]:
    """Where view k's first window ends: k * max_len // views."""
    return [k * max_len // views for k in range(views)]


def cut_view(pieces: Sequence[Piece], max_len: int, offset: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """All pieces cut for one view: windows int32 [W, max_len, 8] (bars re-based, PAD after the notes) and,
    per window, (piece number, first note, end note)."""
    windows, spans = [], []
    for k, piece in enumerate(pieces):
        for start, end in windows_lib.view_bounds(piece.rows[:, vocab.BAR], max_len, offset):
            rows = piece.rows[start:end].astype(np.int64)
            rows[:, vocab.BAR] -= rows[0, vocab.BAR]
            windows.append(windows_lib.pad_window(rows, max_len))
            spans.append((k, start, end))
    empty = np.zeros((0, max_len, vocab.NUM_FIELDS), np.int32)
    return (np.stack(windows) if windows else empty), spans


def averaged_probabilities(probs_fn: Callable[[np.ndarray], np.ndarray], pieces: Sequence[Piece], max_len: int,
                           views: int) -> list[np.ndarray]:
    """Per piece, float32 [N, C]: the class probabilities of every note averaged over `views` cuts.

    `probs_fn(windows int32 [W, max_len, 8]) -> float [W, max_len, C]` runs the model.
    """
    total: list[np.ndarray] | None = None
    for offset in view_offsets(max_len, views):
        windows, spans = cut_view(pieces, max_len, offset)
        probs = np.asarray(probs_fn(windows), np.float32)
        if total is None:
            total = [np.zeros((len(p.rows), probs.shape[-1]), np.float32) for p in pieces]
        for (k, start, end), p in zip(spans, probs):
            total[k][start:end] += p[: end - start]
    return [t / views for t in (total or [])]


def summarize(pieces: Sequence[Piece], probs: Sequence[np.ndarray], task, views: int) -> dict[str, Any]:
    """The evaluation result of averaged probabilities: the keys of `summarize_eval` for a note task, and
    `eval_views`. The loss is the mean negative log of the averaged probability of the true class."""
    labels = np.concatenate([p.labels for p in pieces]) if pieces else np.zeros(0, np.int32)
    stacked = np.concatenate(probs) if pieces else np.zeros((0, task.num_classes), np.float32)
    scored = labels >= 0
    labels, stacked = labels[scored], stacked[scored]
    cm = classification_metrics.confusion_matrix(labels, stacked.argmax(-1), task.num_classes)
    result = classification_metrics.summarize(cm, task.class_names)
    picked = stacked[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    result["loss"] = float(-np.log(np.maximum(picked, 1e-12)).mean()) if len(labels) else float("nan")
    result["eval_views"] = views
    return result


def evaluate_views(probs_fn: Callable[[np.ndarray], np.ndarray], source: Any, bars: Mapping[int, Sequence[int]], task,
                   *, max_len: int, views: int, where: str = "the dataset") -> dict[str, Any]:
    """Metrics of a note-level task over `source` with `views` cuts of every piece (see the module docstring)."""
    pieces = gather_pieces(source, bars, task.target_key, where)
    return summarize(pieces, averaged_probabilities(probs_fn, pieces, max_len, views), task, views)
