"""Octuple tokenizer: vocabulary, quantisation, ordering, exact ticks, round trips, typed errors."""

import io
import json
import pathlib

import mido
import numpy as np
import pretty_midi
import pytest

from midibert_jax.tokenizer import (
    AbsurdTempoError,
    EmptyMidiError,
    InvalidTokensError,
    MidiReadError,
    MidiTooLargeError,
    MidiLimits,
    TokenizerError,
    UnsupportedTimeSignatureError,
    chunk_by_bars,
    decode,
    encode,
    encode_absolute,
    encode_file,
    load_midi,
    quantize,
    vocab,
)
from midibert_jax.tokenizer.midi_io import write_midi

GOLDEN = pathlib.Path(__file__).parent / "golden_octuple_vocab.json"
BAR, POS, INST, PITCH, DUR, VEL, TS, TEMPO = range(8)


# ----------------------------------------------------------------------------- fixtures


def _midi_bytes(tracks, ticks_per_beat=480):
    """Builds a type-1 MIDI file from lists of (absolute_tick, mido message) per track."""
    mf = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - now))
            now = tick
        mf.tracks.append(track)
    buf = io.BytesIO()
    mf.save(file=buf)
    return buf.getvalue()


def _note(tick, end, pitch, velocity=64, channel=0):
    return [
        (tick, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)),
        (end, mido.Message("note_off", note=pitch, velocity=0, channel=channel)),
    ]


def _random_piece(seed, seconds=60.0, resolution=220):
    """Multi-track piece with drums, a zero-length note, overlaps, tempo and mid-bar TS changes."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(resolution=resolution, initial_tempo=97.0)
    for program, is_drum, n in ((0, False, 300), (33, False, 120), (0, True, 150), (73, False, 60)):
        inst = pretty_midi.Instrument(program, is_drum=is_drum)
        for _ in range(n):
            start = float(rng.uniform(0, seconds))
            inst.notes.append(
                pretty_midi.Note(int(rng.integers(1, 128)), int(rng.integers(0, 128)), start, start + float(rng.exponential(0.5)))
            )
        pm.instruments.append(inst)
    pm.instruments[0].notes += [
        pretty_midi.Note(80, 0, 1.0, 1.0),  # zero length, pitch 0
        pretty_midi.Note(80, 127, 2.0, 4.0),  # pitch 127 overlapping ...
        pretty_midi.Note(90, 127, 3.0, 5.0),  # ... the same pitch
    ]
    pm.time_signature_changes = [
        pretty_midi.TimeSignature(3, 4, 0.0),
        pretty_midi.TimeSignature(7, 8, 11.1),  # off the bar line
        pretty_midi.TimeSignature(12, 8, 30.0),
    ]
    return pm


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_matches_published_dictionary():
    golden = json.loads(GOLDEN.read_text())["tokens"]
    ours = vocab.token_names()
    assert set(golden) == set(vocab.FIELDS)
    for field in vocab.FIELDS:
        assert len(ours[field]) == len(golden[field]), field
        if field == "Tempo":
            # One published float differs from 2**(e/12)*16 in the last bit; ids and values match.
            for a, b in zip(ours[field], golden[field]):
                if b.endswith(">"):
                    assert a == b
                else:
                    assert float(a.split()[1]) == pytest.approx(float(b.split()[1]), rel=1e-14)
        else:
            assert ours[field] == golden[field], field
    assert vocab.VOCAB_SIZES == (262, 134, 135, 262, 134, 38, 260, 55)
    assert vocab.VOCAB.total == 1280
    np.testing.assert_array_equal(vocab.PAD_ROW, [256, 128, 129, 256, 128, 32, 254, 49])
    np.testing.assert_array_equal(vocab.EOS_ROW, [259, 131, 132, 259, 131, 35, 257, 52])


# ----------------------------------------------------------------------------- quantisation


def test_duration_bins():
    edges = quantize.DURATION_LOWER_EDGES
    assert edges[:17].tolist() == list(range(16)) + [16]
    assert edges[31] == 46 and edges[32] == 48 and edges[127] == 3952
    assert quantize.duration_to_token([0, 15, 16, 17, 18, 3952, 4079, 4080, 10**6]).tolist() == [
        0, 15, 16, 16, 17, 127, 127, 127, 127,
    ]
    tokens = np.arange(128)
    np.testing.assert_array_equal(quantize.duration_to_token(quantize.token_to_duration(tokens)), tokens)


def test_velocity_tempo_and_time_signature_ids():
    assert quantize.velocity_to_token([0, 3, 4, 127]).tolist() == [0, 0, 1, 31]
    assert quantize.token_to_velocity([0, 31]).tolist() == [2, 126]
    assert quantize.tempo_to_token([120.0, 16.0, 5.0, 256.0, 1000.0]).tolist() == [35, 0, 0, 48, 48]
    np.testing.assert_array_equal(quantize.tempo_to_token(quantize.token_to_tempo(np.arange(49))), np.arange(49))
    assert quantize.time_signature_to_token(4, 4) == 9
    assert quantize.time_signature_to_token(3, 4) == 8
    assert quantize.time_signature_to_token(6, 8) == 19
    assert quantize.reduce_time_signature(6, 128) == (3, 64)
    assert quantize.reduce_time_signature(17, 4) == (1, 4)  # prime numerator above 2*den
    assert quantize.reduce_time_signature(18, 4) == (3, 4)  # 18 -> 9 -> 3
    with pytest.raises(UnsupportedTimeSignatureError):
        quantize.reduce_time_signature(3, 128)
    with pytest.raises(UnsupportedTimeSignatureError):
        quantize.reduce_time_signature(3, 6)


# ----------------------------------------------------------------------------- encoding


def test_basic_rows_drums_and_sorting():
    pm = pretty_midi.PrettyMIDI(resolution=480)  # 120 BPM: one beat = 0.5 s
    piano, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
    piano.notes = [pretty_midi.Note(100, 64, 2.25, 2.5), pretty_midi.Note(10, 60, 0.0, 0.5)]
    drums.notes = [pretty_midi.Note(127, 36, 0.0, 0.125)]
    pm.instruments = [piano, drums]
    rows = encode(pm)
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(
        rows,
        [
            [0, 0, 0, 60, 16, 2, 9, 35],  # one beat = 16 positions -> duration token 16
            [0, 0, 128, 36 + 128, 4, 31, 9, 35],  # drums: Instrument 128, Pitch 128 + key
            [1, 8, 0, 64, 8, 25, 9, 35],  # 2.25 s = beat 4.5 = bar 1, position 8
        ],
    )


def test_positions_come_from_raw_ticks_with_many_tempo_changes_and_odd_resolution():
    rng = np.random.default_rng(1)
    tpb = 97
    tempo_events = [(int(t), mido.MetaMessage("set_tempo", tempo=int(rng.integers(150_000, 2_500_000))))
                    for t in np.sort(rng.integers(1, 20_000, 60))]
    tempo_events.insert(0, (0, mido.MetaMessage("set_tempo", tempo=500_000)))
    onsets = np.sort(rng.integers(0, 20_000, 400))
    notes = []
    for i, t in enumerate(onsets):
        notes += _note(int(t), int(t) + int(rng.integers(1, 500)), 40 + i % 40)
    rows = encode_absolute(load_midi(_midi_bytes([tempo_events, notes], tpb)))
    expected_pos = np.rint(onsets * 16 / tpb).astype(int)  # 4/4: bar = 64 positions
    got_pos = np.sort(rows[:, BAR] * 64 + rows[:, POS])
    np.testing.assert_array_equal(got_pos, np.sort(expected_pos))
    # Tempo of each note is the tempo in force at its onset position.
    change_pos = np.rint(np.array([t for t, _ in tempo_events]) * 16 / tpb)
    bpm = np.array([6e7 / m.tempo for _, m in tempo_events])
    order = np.lexsort((np.arange(len(onsets)), expected_pos))
    idx = np.searchsorted(change_pos, expected_pos[order], side="right") - 1
    # Repeated tempo values are merged by pretty_midi; compare tokens, not events.
    np.testing.assert_array_equal(
        np.sort(rows[:, TEMPO]), np.sort(quantize.tempo_to_token(bpm[idx]))
    )


def test_time_signature_change_off_the_bar_line_starts_a_new_bar():
    # 4/4 (64 positions a bar); 3/4 arrives at beat 6 = position 96, halfway through bar 1.
    ts = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
          (6 * 480, mido.MetaMessage("time_signature", numerator=3, denominator=4))]
    notes = _note(0, 10, 60) + _note(5 * 480, 5 * 480 + 10, 61) + _note(6 * 480, 6 * 480 + 10, 62) \
        + _note(9 * 480, 9 * 480 + 10, 63)
    rows = encode_absolute(load_midi(_midi_bytes([ts, notes])))
    assert rows[:, [BAR, POS, TS]].tolist() == [[0, 0, 9], [1, 16, 9], [2, 0, 8], [3, 0, 8]]


def test_repeated_time_signature_events_do_not_start_bars():
    ts = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
          (480, mido.MetaMessage("time_signature", numerator=4, denominator=4))]
    rows = encode_absolute(load_midi(_midi_bytes([ts, _note(4 * 480, 4 * 480 + 5, 60)])))
    assert rows[:, [BAR, POS]].tolist() == [[1, 0]]


def test_long_pieces_are_chunked_every_256_bars():
    pm = pretty_midi.PrettyMIDI(resolution=480)
    inst = pretty_midi.Instrument(0)
    # One note at the start of bars 0, 255, 256, 511, 512 and 1000 (4/4, 2 s a bar).
    bars = [0, 255, 256, 511, 512, 1000]
    inst.notes = [pretty_midi.Note(64, 60, 2.0 * b, 2.0 * b + 0.5) for b in bars]
    pm.instruments.append(inst)
    absolute = encode_absolute(pm)
    assert absolute[:, BAR].tolist() == bars
    chunks = chunk_by_bars(absolute)
    assert [c[:, BAR].tolist() for c in chunks] == [[0, 255], [0, 255], [0], [232]]
    rows = encode(pm)
    eos = np.all(rows == vocab.EOS_ROW, axis=1)
    assert eos.sum() == 3  # boundaries at 256, 512, 768 (chunk 2 holds only bar 512)
    assert rows[~eos, BAR].max() <= 255
    np.testing.assert_array_equal(encode(decode(rows)), rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_in_memory_and_through_a_file(seed, tmp_path):
    pm = _random_piece(seed, seconds=1500.0 if seed == 0 else 60.0)
    rows = encode(pm)
    assert len(rows) == sum(len(i.notes) for i in pm.instruments) + np.all(rows == vocab.EOS_ROW, axis=1).sum()
    if seed == 0:
        assert np.all(rows == vocab.EOS_ROW, axis=1).any()  # more than 256 bars
    np.testing.assert_array_equal(encode(decode(rows)), rows)
    path = tmp_path / "back.mid"
    write_midi(decode(rows), path)
    np.testing.assert_array_equal(encode(load_midi(path)), rows)


def test_decoded_values_are_bin_values():
    pm = pretty_midi.PrettyMIDI(resolution=480)
    inst = pretty_midi.Instrument(5)
    inst.notes = [pretty_midi.Note(101, 70, 0.5, 0.5 + 0.5 * 17 / 16)]  # 17 positions -> bin [16, 18)
    pm.instruments.append(inst)
    back = decode(encode(pm))
    note = back.instruments[0].notes[0]
    assert back.instruments[0].program == 5
    assert note.pitch == 70 and note.velocity == 102  # bin 25 -> 4*25 + 2
    beat = 60.0 / quantize.token_to_tempo(35)  # 120 BPM comes back as its bin, 120.8 BPM
    assert note.start == pytest.approx(beat) and note.end - note.start == pytest.approx(beat)


def test_decode_rejects_invalid_tokens():
    with pytest.raises(InvalidTokensError):
        decode(np.zeros((3, 7), np.int32))
    bad = np.array([[0, 0, 0, 60, 4, 10, 9, 35], [0, 0, 0, 257, 4, 10, 9, 35]], np.int32)  # a MASK pitch
    with pytest.raises(InvalidTokensError, match="Pitch"):
        decode(bad)
    padded = np.concatenate([encode(_random_piece(3, 5.0)), np.tile(vocab.PAD_ROW, (5, 1))])
    np.testing.assert_array_equal(encode(decode(padded)), padded[:-5])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name,data,error",
    [
        ("random.mid", np.random.default_rng(0).bytes(2000), MidiReadError),
        ("empty.mid", b"", MidiReadError),
        ("header_only.mid", b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0", MidiReadError),
    ],
)
def test_unreadable_files_raise_typed_errors_naming_the_file(tmp_path, name, data, error):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(error) as info:
        encode_file(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_truncated_noteless_absurd_and_oversized_files(tmp_path):
    good = _midi_bytes([_note(0, 480, 60) + _note(480, 960, 62)])
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(good[: len(good) - 9])
    with pytest.raises(MidiReadError, match="truncated|corrupt"):
        encode_file(truncated)

    noteless = tmp_path / "noteless.mid"
    noteless.write_bytes(_midi_bytes([[(0, mido.MetaMessage("set_tempo", tempo=400_000))]]))
    with pytest.raises(EmptyMidiError, match="noteless.mid: no notes"):
        encode_file(noteless)

    absurd = tmp_path / "absurd.mid"
    absurd.write_bytes(_midi_bytes([[(0, mido.MetaMessage("set_tempo", tempo=0))] + _note(0, 10, 60)]))
    with pytest.raises(AbsurdTempoError):
        encode_file(absurd)

    long_file = tmp_path / "long.mid"
    long_file.write_bytes(_midi_bytes([_note(0, 10, 60) + _note(50_000_000, 50_000_001, 60)]))
    with pytest.raises(MidiTooLargeError, match="ticks"):
        encode_file(long_file)
    with pytest.raises(MidiTooLargeError, match="bytes"):
        encode_file(truncated, limits=MidiLimits(max_bytes=10))

    odd_ts = tmp_path / "odd_ts.mid"
    odd_ts.write_bytes(
        _midi_bytes([[(0, mido.MetaMessage("time_signature", numerator=3, denominator=128))] + _note(0, 10, 60)])
    )
    with pytest.raises(UnsupportedTimeSignatureError, match="odd_ts.mid"):
        encode_file(odd_ts)

    with pytest.raises(MidiReadError, match="cannot read"):
        encode_file(tmp_path / "missing.mid")
    assert issubclass(MidiReadError, TokenizerError)
