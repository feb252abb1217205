"""The non-neural baselines on tiny hand-made windows, whose answers are worked out by hand below."""

from __future__ import annotations

import numpy as np
import pytest

from midibert_jax import baselines
from midibert_jax.tokenizer import vocab

PAD = np.asarray(vocab.PAD_ROW, np.int32)


def window(notes, length=8) -> np.ndarray:
    """Rows (bar, position, pitch, duration, velocity) -> one int32 [length, 8] window, PAD after the notes."""
    out = np.tile(PAD, (length, 1))
    for i, (bar, pos, pitch, dur, vel) in enumerate(notes):
        out[i] = (bar, pos, 0, pitch, dur, vel, 6, 29)
    return out


# Two onsets in bar 0 (positions 0 and 8), one in bar 1; labels MELODY 0 / BRIDGE 1 / PIANO 2.
W = window([(0, 0, 48, 4, 20), (0, 0, 60, 4, 20), (0, 0, 72, 4, 20),   # onset A: 72 is the top
            (0, 8, 50, 4, 20), (0, 8, 67, 4, 20),                      # onset B: 67 is the top
            (1, 0, 55, 4, 20)])                                         # onset C: alone, so the top
LABELS = np.asarray([[2, 0, 1, 2, 0, 1, -1, -1]])  # PAD rows unlabelled


def test_skyline_marks_the_highest_note_of_each_onset():
    top = baselines.skyline_top(W[None])
    np.testing.assert_array_equal(top[0], [False, False, True, False, True, True, False, False])
    preds = baselines.skyline_predictions(W[None], melody=0, other=2)
    np.testing.assert_array_equal(preds[0], [2, 2, 0, 2, 0, 0, 2, 2])


def test_note_baselines_by_hand():
    train = {"tokens": W[None], "target": np.asarray([[2, 2, 2, 0, 1, 2, -1, -1]])}  # PIANO is the majority
    test = {"tokens": W[None], "target": LABELS}
    out = baselines.note_baselines(train, test, ("MELODY", "BRIDGE", "PIANO"))
    # Majority (PIANO) is right on rows 0 and 3: 2 of the 6 labelled notes.
    assert out["majority"]["class"] == "PIANO" and out["majority"]["accuracy"] == pytest.approx(2 / 6)
    # Skyline predicts 2 2 0 2 0 0 against 2 0 1 2 0 1: right on rows 0, 3, 4 -> 3 / 6; the other class is the
    # most frequent non-melody training class (PIANO, 4 notes, over BRIDGE, 1).
    sky = out["skyline"]
    assert sky["other_class"] == "PIANO" and sky["accuracy"] == pytest.approx(3 / 6)
    # Melody or not: predicted melody rows 2, 4, 5; true melody rows 1, 4 -> agree on rows 0, 3, 4 -> 3 / 6.
    assert sky["binary_accuracy"] == pytest.approx(3 / 6)
    assert sky["confusion_matrix"] == [[1, 0, 1], [2, 0, 0], [0, 0, 2]]
    assert "skyline" not in baselines.note_baselines(train, test, ("pp", "p", "mp"))  # no melody class: no skyline


def test_window_features_by_hand():
    f = baselines.window_features(W[None])[0]
    assert f.shape == (baselines._num_features(),)
    pitches = np.asarray([48, 60, 72, 50, 67, 55])
    np.testing.assert_allclose(f[:12], np.bincount(pitches % 12, minlength=12) / 6)  # C x3, D, G x2
    np.testing.assert_allclose(f[12:23], np.bincount(pitches // 12, minlength=11) / 6)
    intervals = f[23:48]  # top notes 72 -> 67 -> 55: steps -5 and -12
    assert intervals[12 - 5] == pytest.approx(0.5) and intervals[0] == pytest.approx(0.5) and intervals.sum() == pytest.approx(1)
    tail = f[-6:]
    np.testing.assert_allclose(tail, [pitches.mean() / 127, pitches.std() / 127, 6 / 2 / 32, 6 / 3 / 8, 29 / 48, 0.0])
    assert not baselines.window_features(np.tile(PAD, (1, 4, 1))).any()  # an empty window: zeros


def test_feature_classifier_learns_a_separable_rule_and_picks_l2_on_validation():
    rng = np.random.default_rng(0)

    def windows(n):
        """Class 0: low register; class 1: high register."""
        labels = np.repeat(rng.integers(0, 2, n // 2), 2)  # two windows a piece
        tokens = np.stack([window([(0, 4 * k, int(rng.integers(40, 55) + 30 * y), 4, 20) for k in range(6)])
                           for y in labels])
        return {"tokens": tokens, "target": labels, "piece_id": np.arange(n) // 2}

    train, valid, test = windows(40), windows(20), windows(20)
    out = baselines.sequence_baselines(train, valid, test, ("low", "high"), l2_grid=(1e-3, 1.0))
    feats = out["features"]
    assert feats["accuracy"] == 1.0 and feats["validation_accuracy"] == 1.0 and feats["l2"] == 1e-3  # first best
    assert feats["num_pieces"] == 10 and 0.0 <= out["majority"]["accuracy"] <= 1.0
    model = baselines.fit_logistic(baselines.window_features(train["tokens"]), train["target"], 2, 1e-3)
    probs = baselines.predict_logistic(model, baselines.window_features(test["tokens"]))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_array_equal(probs.argmax(1), test["target"])
