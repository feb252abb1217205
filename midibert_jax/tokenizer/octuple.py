"""pretty_midi <-> Octuple token rows, vectorised over notes.

A row is int [8] in column order Bar, Position, Instrument, Pitch, Duration, Velocity,
TimeSig, Tempo (`vocab.FIELDS`). Rows are sorted lexicographically, like the reference.

Three views of the same piece:
  * `encode_absolute(pm)`: int64 [notes, 8], column 0 the absolute bar (may exceed 255).
    Dataset windowing starts from this.
  * `chunk_by_bars(rows)`: chunks of 256 bars, chunk c = bars [256c, 256c + 256), re-based.
  * `encode(pm)`: int32, vocabulary-valid: the chunks joined with one EOS row between
    consecutive chunks (only pieces longer than 256 bars have any). `decode` reads it back.

Differences from the reference, on purpose: drums are Instrument 128 / Pitch 128 + key
(the reference writes 129 / +256); a time-signature change off a bar line starts a new bar
instead of dropping the file; onsets are not truncated at 2^16 positions.
"""

from __future__ import annotations

import os

import numpy as np
import pretty_midi

from midibert_jax.tokenizer import quantize, vocab
from midibert_jax.tokenizer.errors import EmptyMidiError, InvalidTokensError, TokenizerError
from midibert_jax.tokenizer.midi_io import (
    DEFAULT_LIMITS,
    MidiLimits,
    load_midi,
    seconds_to_ticks,
    tempo_changes_in_ticks,
    ticks_to_seconds,
)

DECODE_TICKS_PER_BEAT = 480  # divisible by 16, so every position is a whole tick
# Longer pieces get a coarser (still exact) resolution: pretty_midi keeps a float per tick.
MAX_DECODE_TICKS = 9_000_000


def _to_positions(ticks: np.ndarray, ticks_per_beat: int) -> np.ndarray:
    return np.rint(np.asarray(ticks, np.int64) * vocab.POSITIONS_PER_BEAT / ticks_per_beat).astype(np.int64)


def _note_arrays(pm: pretty_midi.PrettyMIDI) -> dict[str, np.ndarray]:
    """Flat per-note arrays over all instruments (one Python step per instrument, not per note)."""
    parts = []
    for inst in pm.instruments:
        if not inst.notes:
            continue
        a = np.array([(n.start, n.end, n.pitch, n.velocity) for n in inst.notes], np.float64)
        program = vocab.DRUM_PROGRAM if inst.is_drum else inst.program
        parts.append((a, program, inst.is_drum))
    if not parts:
        return {}
    arr = np.concatenate([a for a, _, _ in parts])
    program = np.concatenate([np.full(len(a), p, np.int64) for a, p, _ in parts])
    is_drum = np.concatenate([np.full(len(a), d) for a, _, d in parts])
    return {
        "start": arr[:, 0],
        "end": arr[:, 1],
        "pitch": arr[:, 2].astype(np.int64),
        "velocity": arr[:, 3].astype(np.int64),
        "program": program,
        "is_drum": is_drum,
    }


def _time_signature_segments(pm: pretty_midi.PrettyMIDI) -> tuple[np.ndarray, np.ndarray]:
    """(start position, time-signature id) of each time-signature segment, starting at 0.

    Events at the same position keep the last; events that do not change the (reduced)
    signature are dropped, so a repeated event never starts a spurious bar.
    """
    changes = sorted(
        ((t, i) for i, t in enumerate(seconds_to_ticks(pm, [ts.time for ts in pm.time_signature_changes]))),
    )
    default = quantize.time_signature_to_token(4, 4)
    starts, tokens = [0], [default]
    for tick, i in changes:
        ts = pm.time_signature_changes[i]
        try:
            token = quantize.time_signature_to_token(ts.numerator, ts.denominator)
        except TokenizerError as e:
            raise type(e)(f"{e.reason} at tick {tick}") from e
        pos = int(_to_positions(tick, pm.resolution))
        if pos == starts[-1]:
            tokens[-1] = token
        else:
            starts.append(pos)
            tokens.append(token)
    keep = [0] + [i for i in range(1, len(tokens)) if tokens[i] != tokens[i - 1]]
    # A same-position overwrite can make the first kept segment equal to its successor; the
    # filter above already merged those.
    return np.asarray(starts, np.int64)[keep], np.asarray(tokens, np.int64)[keep]


def _bars_and_positions(onsets: np.ndarray, seg_starts: np.ndarray, seg_ts: np.ndarray):
    """Absolute bar, position-in-bar and time-signature id of each onset position.

    Each segment's bars start at the segment start; a segment that ends mid-bar closes that
    bar early (the next segment starts a new one).
    """
    lengths = quantize.bar_length(seg_ts)
    spans = np.diff(seg_starts)
    bars_per_seg = -(-spans // lengths[:-1])  # ceil
    first_bar = np.concatenate([[0], np.cumsum(bars_per_seg)])
    seg = np.searchsorted(seg_starts, onsets, side="right") - 1
    offset = onsets - seg_starts[seg]
    return first_bar[seg] + offset // lengths[seg], offset % lengths[seg], seg_ts[seg]


def encode_absolute(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    """int64 [notes, 8], sorted; column 0 holds absolute bar numbers.

    Raises:
      EmptyMidiError: no notes.
      UnsupportedTimeSignatureError, AbsurdTempoError: see errors.py.
    """
    notes = _note_arrays(pm)
    if not notes:
        raise EmptyMidiError("no notes")
    tpb = pm.resolution
    start_pos = _to_positions(seconds_to_ticks(pm, notes["start"]), tpb)
    end_pos = _to_positions(seconds_to_ticks(pm, notes["end"]), tpb)
    start_pos = np.maximum(start_pos, 0)

    seg_starts, seg_ts = _time_signature_segments(pm)
    bar, position, ts = _bars_and_positions(start_pos, seg_starts, seg_ts)

    tempo_ticks, tempo_bpm = tempo_changes_in_ticks(pm)
    tempo_pos = _to_positions(tempo_ticks, tpb)
    tempo = quantize.tempo_to_token(tempo_bpm)[np.searchsorted(tempo_pos, start_pos, side="right") - 1]

    pitch = np.where(notes["is_drum"], notes["pitch"] + vocab.DRUM_PITCH_OFFSET, notes["pitch"])
    rows = np.stack(
        [
            bar,
            position,
            notes["program"],
            pitch,
            quantize.duration_to_token(end_pos - start_pos),
            quantize.velocity_to_token(notes["velocity"]),
            ts,
            tempo,
        ],
        axis=1,
    ).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def chunk_by_bars(rows: np.ndarray) -> list[np.ndarray]:
    """Absolute rows -> int32 chunks of at most 256 bars, bars re-based; empty chunks omitted."""
    chunk = rows[:, vocab.BAR] // vocab.MAX_BARS
    out = []
    for c in np.unique(chunk):
        part = rows[chunk == c].copy()
        part[:, vocab.BAR] -= c * vocab.MAX_BARS
        out.append(part.astype(np.int32))
    return out


def encode(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    """int32 [rows, 8], vocabulary-valid: one row a note, plus an EOS row at each 256-bar boundary."""
    rows = encode_absolute(pm)
    chunk = rows[:, vocab.BAR] // vocab.MAX_BARS
    rebased = rows.copy()
    rebased[:, vocab.BAR] -= chunk * vocab.MAX_BARS
    # EOS rows go before the first note of each later chunk: one per boundary crossed.
    boundaries = np.repeat(np.arange(len(rows)), np.diff(np.concatenate([[0], chunk])))
    return np.insert(rebased, boundaries, vocab.EOS_ROW, axis=0).astype(np.int32)


def encode_file(path: str | os.PathLike, *, limits: MidiLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Loads and encodes a file: int64 [notes, 8] absolute rows. Errors name the file."""
    try:
        return encode_absolute(load_midi(path, limits=limits))
    except TokenizerError as e:
        if e.path is None:
            raise e.with_path(path) from e
        raise


def _validate_tokens(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != vocab.NUM_FIELDS or not np.issubdtype(tokens.dtype, np.integer):
        raise InvalidTokensError(f"expected an integer array [rows, 8], got {tokens.dtype} {tokens.shape}")
    tokens = tokens.astype(np.int64)
    special = np.all(tokens == vocab.PAD_ROW, axis=1) | np.all(tokens == vocab.EOS_ROW, axis=1)
    notes = tokens[~special]
    bad = (notes < 0) | (notes >= np.asarray(vocab.VOCAB.num_regular))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InvalidTokensError(
            f"row {row}: {vocab.FIELDS[col]} id {notes[row, col]} is not a regular value "
            "(only whole PAD or EOS rows may hold specials)"
        )
    return tokens


def decode(tokens: np.ndarray, *, ticks_per_beat: int | None = None) -> pretty_midi.PrettyMIDI:
    """Token rows (as `encode` writes them) -> PrettyMIDI, one instrument per program.

    PAD rows are skipped; each EOS row advances to the next 256-bar chunk. Onsets and
    durations come back as their bin values; bars without notes keep the previous bar's time
    signature. `encode(decode(x))` reproduces `x` exactly. The resolution is 480 ticks a beat,
    or the largest multiple of 16 that keeps a very long piece under MAX_DECODE_TICKS.
    """
    tokens = _validate_tokens(tokens)
    if ticks_per_beat is not None and (ticks_per_beat <= 0 or ticks_per_beat % vocab.POSITIONS_PER_BEAT):
        raise ValueError(f"ticks_per_beat must be a positive multiple of {vocab.POSITIONS_PER_BEAT}, got {ticks_per_beat}")
    is_pad = np.all(tokens == vocab.PAD_ROW, axis=1)
    is_eos = np.all(tokens == vocab.EOS_ROW, axis=1)
    chunk = np.cumsum(is_eos)
    notes = tokens[~is_pad & ~is_eos]
    chunk = chunk[~is_pad & ~is_eos]
    if len(notes) == 0:
        return pretty_midi.PrettyMIDI(resolution=ticks_per_beat or DECODE_TICKS_PER_BEAT)
    bar = notes[:, vocab.BAR] + chunk * vocab.MAX_BARS

    # Bar lengths: each bar takes the time signature of its notes, empty bars the previous one.
    num_bars = int(bar.max()) + 1
    bar_ts = np.full(num_bars, -1, np.int64)
    bar_ts[bar] = notes[:, vocab.TIMESIG]
    filled = np.maximum.accumulate(np.where(bar_ts >= 0, np.arange(num_bars), -1))
    bar_ts = np.where(filled >= 0, bar_ts[np.maximum(filled, 0)], notes[np.argmin(bar), vocab.TIMESIG])
    bar_start = np.concatenate([[0], np.cumsum(quantize.bar_length(bar_ts))[:-1]])
    ts_change = np.flatnonzero(np.concatenate([[True], bar_ts[1:] != bar_ts[:-1]]))

    onset = bar_start[bar] + notes[:, vocab.POSITION]
    end = onset + quantize.token_to_duration(notes[:, vocab.DURATION])
    if ticks_per_beat is None:
        ticks_per_pos = int(np.clip(MAX_DECODE_TICKS // max(int(end.max()), 1), 1, DECODE_TICKS_PER_BEAT // 16))
        ticks_per_beat = ticks_per_pos * vocab.POSITIONS_PER_BEAT
    ticks_per_pos = ticks_per_beat // vocab.POSITIONS_PER_BEAT
    pm = pretty_midi.PrettyMIDI(resolution=ticks_per_beat)
    order = np.argsort(onset, kind="stable")
    tempo = notes[order, vocab.TEMPO]
    tempo_change = np.concatenate([[0], np.flatnonzero(tempo[1:] != tempo[:-1]) + 1])
    tempo_ticks = np.concatenate([[0], onset[order][tempo_change[1:]] * ticks_per_pos])
    bpm = quantize.token_to_tempo(tempo[tempo_change])
    pm._tick_scales = [(int(t), 60.0 / (float(b) * ticks_per_beat)) for t, b in zip(tempo_ticks, bpm)]

    start_tick = onset * ticks_per_pos
    end_tick = end * ticks_per_pos
    starts, ends = ticks_to_seconds(pm, start_tick), ticks_to_seconds(pm, end_tick)
    pm._update_tick_to_time(int(end_tick.max()) + 1)

    for i in ts_change:
        num, den = vocab.TIME_SIGNATURES[bar_ts[i]]
        pm.time_signature_changes.append(
            pretty_midi.TimeSignature(num, den, float(ticks_to_seconds(pm, bar_start[i] * ticks_per_pos)))
        )
    program = notes[:, vocab.INSTRUMENT]
    is_drum = program == vocab.DRUM_PROGRAM
    pitch = np.where(is_drum, notes[:, vocab.PITCH] - vocab.DRUM_PITCH_OFFSET, notes[:, vocab.PITCH])
    if np.any((pitch < 0) | (pitch > 127)):
        raise InvalidTokensError("a drum note has a pitched Pitch id, or a pitched note a drum id")
    velocity = quantize.token_to_velocity(notes[:, vocab.VELOCITY])
    for prog in np.unique(program):
        sel = np.flatnonzero(program == prog)
        drum = prog == vocab.DRUM_PROGRAM
        inst = pretty_midi.Instrument(program=0 if drum else int(prog), is_drum=bool(drum))
        inst.notes = [
            pretty_midi.Note(int(v), int(p), float(s), float(e))
            for v, p, s, e in zip(velocity[sel], pitch[sel], starts[sel], ends[sel])
        ]
        pm.instruments.append(inst)
    return pm
