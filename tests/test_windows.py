"""Windowing: piece packing (default) and the reference's packing across pieces."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midibert_jax import tokenizer
from midibert_jax.data import windows, workers
from midibert_jax.tokenizer import vocab

import midi_factory

PAD, EOS = vocab.PAD_ROW, vocab.EOS_ROW


def rows_with_bars(bars, seed=0):
    """Note rows (int64 [N, 8]) with the given absolute bars and valid random other fields."""
    rng = np.random.default_rng(seed)
    bars = np.asarray(bars, np.int64)
    rows = np.stack(
        [bars] + [rng.integers(0, n, len(bars)) for n in np.asarray(vocab.VOCAB.num_regular)[1:]], axis=1
    ).astype(np.int64)
    return rows


def real_rows(window):
    return window[~np.all(window == PAD, axis=1)]


def test_piece_windows_cut_at_max_len_rebase_and_pad():
    rows = rows_with_bars([0, 0, 1, 2, 3, 3, 4, 9, 10, 12])
    out = windows.piece_windows(rows, max_len=4)
    assert out.shape == (3, 4, 8) and out.dtype == np.int32
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(out[1, :, 0], [0, 0, 1, 6])  # bars 3,3,4,9 re-based to 3
    np.testing.assert_array_equal(out[2, :2, 0], [0, 2])  # bars 10, 12
    np.testing.assert_array_equal(out[2, 2:], np.stack([PAD, PAD]))
    np.testing.assert_array_equal(out[1, :, 1:], rows[4:8, 1:])  # other fields untouched


def test_piece_windows_cut_when_the_bar_would_not_fit_256():
    rows = rows_with_bars([0, 100, 255, 256, 300, 511, 600, 2000])
    out = windows.piece_windows(rows, max_len=1024)
    assert len(out) == 4
    np.testing.assert_array_equal(real_rows(out[0])[:, 0], [0, 100, 255])
    np.testing.assert_array_equal(real_rows(out[1])[:, 0], [0, 44, 255])  # 256, 300, 511
    np.testing.assert_array_equal(real_rows(out[2])[:, 0], [0])  # 600
    np.testing.assert_array_equal(real_rows(out[3])[:, 0], [0])  # 2000


def test_piece_windows_empty_and_invalid_input():
    assert windows.piece_windows(np.empty((0, 8), np.int64), 8).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="sorted"):
        windows.piece_windows(rows_with_bars([3, 1]), 8)
    with pytest.raises(ValueError, match="shape"):
        windows.piece_windows(np.zeros((3, 7), np.int64), 8)


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 120), min_size=1, max_size=80),
    max_len=st.integers(1, 16),
)
def test_piece_windows_properties(gaps, max_len):
    rows = rows_with_bars(np.cumsum(gaps))
    out = windows.piece_windows(rows, max_len)
    rebuilt, start = [], 0
    for w in out:
        real = real_rows(w)
        assert len(real) >= 1 and real[0, 0] == 0
        assert real[:, 0].max() < vocab.MAX_BARS
        # PAD only at the end
        assert np.all(w[len(real):] == PAD)
        real = real.astype(np.int64)
        real[:, 0] += rows[start, 0]
        rebuilt.append(real)
        start += len(real)
    np.testing.assert_array_equal(np.concatenate(rebuilt), rows)
    # Windows are maximal: each cut is forced by max_len or the 256-bar limit.
    bounds = windows.piece_window_bounds(rows[:, 0], max_len)
    for (s, e), (s2, _) in zip(bounds, bounds[1:]):
        assert e == s2 and (e - s == max_len or rows[e, 0] >= rows[s, 0] + vocab.MAX_BARS)


def test_reference_stream_chunks_every_256_bars_with_eos():
    rows = rows_with_bars([0, 5, 255, 256, 300, 700])
    stream = windows.reference_stream(rows)
    chunks = tokenizer.chunk_by_bars(rows)
    assert len(chunks) == 3  # bars [0,256), [256,512), [512,768)
    eos = np.all(stream == EOS, axis=1)
    assert eos.sum() == 3 and eos[-1]
    np.testing.assert_array_equal(stream[~eos][:, 0], [0, 5, 255, 0, 44, 188])


def test_pack_reference_crosses_pieces_and_pads_the_last_window():
    a = np.full((5, 8), 1, np.int32)
    b = np.full((4, 8), 2, np.int32)
    out, first = windows.pack_reference([a, b], max_len=4)
    assert out.shape == (3, 4, 8)
    np.testing.assert_array_equal(out[1, :, 0], [1, 2, 2, 2])
    np.testing.assert_array_equal(out[2, 0], b[3])
    np.testing.assert_array_equal(out[2, 1:], np.stack([PAD] * 3))
    np.testing.assert_array_equal(first, [0, 0, 1])


def test_reference_extra_pad_window_quirk_is_behind_a_flag():
    a = np.full((8, 8), 1, np.int32)
    assert len(windows.pack_reference([a], 4)[0]) == 2
    out, first = windows.pack_reference([a], 4, extra_pad_window=True)
    assert len(out) == 3 and np.all(out[2] == PAD) and first[2] == -1
    assert windows.num_reference_windows(8, 4) == 2 and windows.num_reference_windows(8, 4, True) == 3
    assert windows.num_reference_windows(9, 4, True) == 3


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=8), max_len=st.integers(1, 12))
def test_fragments_assemble_to_the_streaming_packing(lengths, max_len):
    streams = [np.full((n, 8), i + 1, np.int32) for i, n in enumerate(lengths)]
    expected, expected_first = windows.pack_reference(streams, max_len)
    by_window: dict[int, list] = {}
    offset = 0
    for piece_id, stream in enumerate(streams):
        for w, row, part in windows.reference_fragments(stream, offset, max_len):
            by_window.setdefault(w, []).append((row, part, piece_id))
        offset += len(stream)
    assert sorted(by_window) == list(range(len(expected)))
    for w in sorted(by_window):
        tokens, first = windows.assemble_window(by_window[w], max_len)
        np.testing.assert_array_equal(tokens, expected[w])
        assert first == expected_first[w]


def test_tokenize_piece_task_matches_the_library(tmp_path):
    path = midi_factory.write_piece(tmp_path / "p.mid", num_bars=12, notes_per_bar=5, seed=3)
    rows = tokenizer.encode_file(path)
    result = workers.tokenize_piece(str(path), max_len=16, packing="piece")
    assert result.ok and result.num_notes == len(rows) == 60
    np.testing.assert_array_equal(result.windows, windows.piece_windows(rows, 16))
    result = workers.tokenize_piece(str(path), max_len=16, packing="reference")
    np.testing.assert_array_equal(result.stream, windows.reference_stream(rows))
    bad = workers.tokenize_piece(str(midi_factory.write_empty(tmp_path / "e.mid")), max_len=16, packing="piece")
    assert not bad.ok and bad.reason and bad.error_kind
