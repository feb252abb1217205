"""Evaluation views of note-level tasks: pieces put back together from their windows, cut again, averaged."""

import numpy as np
import pytest

from midibert_jax.data import windows
from midibert_jax.tokenizer import vocab
from midibert_jax.train import note_views
from midibert_jax.train.task_info import TaskInfo

TASK = TaskInfo(name="melody", level="note", class_names=("a", "b"))


def piece_rows(bars, seed=0):
    """Note rows int64 [N, 8] with the given absolute bars, pitches 0..N-1 (so that a row names its note)."""
    bars = np.asarray(bars, np.int64)
    rows = np.zeros((len(bars), vocab.NUM_FIELDS), np.int64)
    rows[:, vocab.BAR] = bars
    rows[:, vocab.PITCH] = np.arange(len(bars))
    rows[:, vocab.POSITION] = np.random.default_rng(seed).integers(0, 16, len(bars))
    return rows


def as_source(pieces_rows, max_len):
    """Stored examples of pieces, as a dataset holds them: (piece, window) order, labels = pitch parity."""
    source, bars = [], {}
    for piece_id, rows in enumerate(pieces_rows):
        cut = windows.piece_windows(rows, max_len)
        bars[piece_id] = windows.piece_window_bars(rows, max_len).tolist()
        for w, tokens in enumerate(cut):
            real = tokens[:, vocab.BAR] != vocab.PAD_ROW[vocab.BAR]
            labels = np.where(real, tokens[:, vocab.PITCH] % 2, -1).astype(np.int32)
            source.append({"tokens": tokens, "index": len(source), "piece_id": piece_id, "window": w, "labels": labels})
    return source, bars


def test_view_bounds_start_where_asked_and_keep_the_window_rules():
    bars = np.asarray([0] * 5 + [3] * 5 + [300] * 3 + [301] * 4)  # a jump past the 256-bar vocabulary
    assert windows.view_bounds(bars, 4, 0) == windows.piece_window_bounds(bars, 4)
    for offset in (1, 2, 3):
        bounds = windows.view_bounds(bars, 4, offset)
        assert bounds[0] == (0, offset)
        assert [s for s, _ in bounds[1:]] == [e for _, e in bounds[:-1]] and bounds[-1][1] == len(bars)  # contiguous
        assert all(0 < e - s <= 4 and bars[e - 1] - bars[s] < vocab.MAX_BARS for s, e in bounds)
    with pytest.raises(ValueError, match="offset"):
        windows.view_bounds(bars, 4, 4)


def test_pieces_come_back_whole_from_their_windows():
    rows = [piece_rows(np.sort(np.random.default_rng(k).integers(0, 400, 23)), seed=k) for k in range(3)]
    source, bars = as_source(rows, 8)
    pieces = note_views.gather_pieces(source[::-1], bars)  # any example order
    assert [p.piece_id for p in sorted(pieces, key=lambda p: p.piece_id)] == [0, 1, 2]
    for piece in pieces:
        np.testing.assert_array_equal(piece.rows, rows[piece.piece_id])
        np.testing.assert_array_equal(piece.labels, rows[piece.piece_id][:, vocab.PITCH] % 2)
    # View 0 is the stored cut, window for window.
    cut, spans = note_views.cut_view(sorted(pieces, key=lambda p: p.piece_id), 8, 0)
    np.testing.assert_array_equal(cut, np.stack([e["tokens"] for e in source]))


def test_probabilities_are_averaged_over_the_views_note_by_note():
    rows = piece_rows([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # 10 notes, windows of 4
    source, bars = as_source([rows], 4)
    pieces = note_views.gather_pieces(source, bars)

    def probs_fn(cut):  # P(class 1) = place of the row in its window / 4
        place = np.broadcast_to(np.arange(4) / 4, cut.shape[:2])
        return np.stack([1 - place, place], -1)

    got = note_views.averaged_probabilities(probs_fn, pieces, 4, views=2)[0][:, 1]
    place0 = np.arange(10) % 4  # windows [0, 4), [4, 8), [8, 10)
    place1 = np.asarray([0, 1] + [(j - 2) % 4 for j in range(2, 10)])  # [0, 2), [2, 6), [6, 10)
    np.testing.assert_allclose(got, (place0 + place1) / 8)
    one = note_views.averaged_probabilities(probs_fn, pieces, 4, views=1)[0][:, 1]
    np.testing.assert_allclose(one, place0 / 4)


def test_summary_scores_every_labelled_note_once():
    rows = piece_rows(np.arange(6))
    source, bars = as_source([rows], 4)
    pieces = note_views.gather_pieces(source, bars)
    probs = [np.asarray([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], np.float32)]
    pieces[0].labels[5] = -1  # unscored
    result = note_views.summarize(pieces, probs, TASK, views=3)
    # labels (pitch parity) 0 1 0 1 0; predictions 0 1 0 0 1 -> 3 of 5 right
    assert result["accuracy"] == pytest.approx(3 / 5) and result["count"] == 5 and result["eval_views"] == 3
    assert result["confusion_matrix"] == [[2, 1], [1, 1]]
    assert result["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.6, 0.4, 0.3])), rel=1e-6)


def test_a_dataset_without_window_bars_is_named_with_the_way_out():
    source, bars = as_source([piece_rows(np.arange(9))], 4)
    with pytest.raises(note_views.MissingWindowBarsError, match=r"/data/x \(test\).*window 2 of piece 0.*eval_views=1"):
        note_views.gather_pieces(source, {0: bars[0][:2]}, where="/data/x (test)")
