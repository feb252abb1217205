"""Reading MIDI safely, and exact conversion between pretty_midi's seconds and file ticks.

pretty_midi stores every time in seconds, computed from ticks through its tempo map
(`_tick_scales`). Octuple positions must come from the ticks, so `seconds_to_ticks` inverts
that map with the same floating-point operations pretty_midi used to build it: a note read
from a file gets back exactly the tick it was written at.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings

import mido
import numpy as np
import pretty_midi

from midibert_jax.tokenizer.errors import AbsurdTempoError, MidiReadError, MidiTooLargeError


@dataclasses.dataclass(frozen=True)
class MidiLimits:
    """Bounds that keep one pathological file from exhausting a worker."""

    max_bytes: int = 32 * 2**20
    # pretty_midi allocates a float64 per tick of the file's length.
    max_ticks: int = 10_000_000
    # About 2.8 hours at 120 BPM; keeps a decoded piece (480 ticks a beat) under max_ticks too.
    max_beats: int = 20_000
    max_notes: int = 2_000_000


DEFAULT_LIMITS = MidiLimits()


def load_midi(
    source: str | os.PathLike | bytes, *, limits: MidiLimits = DEFAULT_LIMITS, name: str | None = None
) -> pretty_midi.PrettyMIDI:
    """Parses a MIDI file (path or bytes) into pretty_midi, raising typed errors.

    Raises:
      MidiReadError: unreadable, not a Standard MIDI File, truncated or corrupt.
      MidiTooLargeError: beyond `limits`.
      AbsurdTempoError: a tempo event of 0 microseconds per beat.
    """
    if isinstance(source, (bytes, bytearray)):
        data, path = bytes(source), name
    else:
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
            if size > limits.max_bytes:
                raise MidiTooLargeError(f"{size} bytes exceeds the limit of {limits.max_bytes}", path)
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MidiReadError(f"cannot read file: {e.strerror or e}", path) from e
    if len(data) > limits.max_bytes:
        raise MidiTooLargeError(f"{len(data)} bytes exceeds the limit of {limits.max_bytes}", path)
    if not data:
        raise MidiReadError("empty file", path)
    if not data.startswith(b"MThd"):
        raise MidiReadError("not a Standard MIDI File (no MThd header)", path)

    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
    except EOFError as e:
        raise MidiReadError("truncated MIDI data", path) from e
    except Exception as e:  # mido raises many types (OSError, ValueError, KeyError, ...) on corrupt bytes
        raise MidiReadError(f"corrupt MIDI data ({type(e).__name__}: {e})", path) from e

    _check_header_and_timing(midi, limits, path)
    try:
        with warnings.catch_warnings():
            # Tempo events outside track 0 are common in the wild; pretty_midi warns and ignores them.
            warnings.simplefilter("ignore", RuntimeWarning)
            pm = pretty_midi.PrettyMIDI(mido_object=midi)
    except Exception as e:  # pretty_midi's own parsing of event semantics
        raise MidiReadError(f"cannot interpret MIDI events ({type(e).__name__}: {e})", path) from e
    num_notes = sum(len(inst.notes) for inst in pm.instruments)
    if num_notes > limits.max_notes:
        raise MidiTooLargeError(f"{num_notes} notes exceeds the limit of {limits.max_notes}", path)
    return pm


def _check_header_and_timing(midi: mido.MidiFile, limits: MidiLimits, path: str | None) -> None:
    tpb = midi.ticks_per_beat
    if not isinstance(tpb, int) or not 0 < tpb < 0x8000:
        raise MidiReadError(f"unsupported time division {tpb!r} (SMPTE timing is not supported)", path)
    if not midi.tracks:
        raise MidiReadError("no tracks", path)
    for track in midi.tracks:
        end_tick = sum(msg.time for msg in track)
        if end_tick > limits.max_ticks:
            raise MidiTooLargeError(f"{end_tick} ticks long exceeds the limit of {limits.max_ticks}", path)
        if end_tick / tpb > limits.max_beats:
            raise MidiTooLargeError(f"{end_tick / tpb:.0f} beats long exceeds the limit of {limits.max_beats}", path)
    for msg in midi.tracks[0]:
        if msg.type == "set_tempo" and msg.tempo <= 0:
            raise AbsurdTempoError(f"tempo event of {msg.tempo} microseconds per beat", path)


def _segments(pm: pretty_midi.PrettyMIDI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start tick, start second, seconds per tick) of each constant-tempo segment.

    The start seconds are accumulated exactly as pretty_midi's `_update_tick_to_time` does.
    """
    ticks = np.array([t for t, _ in pm._tick_scales], np.int64)
    scales = np.array([s for _, s in pm._tick_scales], np.float64)
    starts = np.zeros(len(ticks))
    for i in range(1, len(ticks)):
        starts[i] = starts[i - 1] + scales[i - 1] * np.float64(ticks[i] - ticks[i - 1])
    if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
        raise AbsurdTempoError("tempo map has a zero or non-finite tempo")
    return ticks, starts, scales


def seconds_to_ticks(pm: pretty_midi.PrettyMIDI, seconds: np.ndarray) -> np.ndarray:
    """pretty_midi seconds -> integer ticks of `pm`'s own resolution (vectorised, exact for files)."""
    seg_ticks, seg_starts, seg_scales = _segments(pm)
    seconds = np.asarray(seconds, np.float64)
    seg = np.clip(np.searchsorted(seg_starts, seconds, side="right") - 1, 0, None)
    ticks = seg_ticks[seg] + (seconds - seg_starts[seg]) / seg_scales[seg]
    return np.rint(ticks).astype(np.int64)


def ticks_to_seconds(pm: pretty_midi.PrettyMIDI, ticks: np.ndarray) -> np.ndarray:
    """Integer ticks -> seconds, bit-identical to pretty_midi's own tick-to-time table."""
    seg_ticks, seg_starts, seg_scales = _segments(pm)
    ticks = np.asarray(ticks, np.int64)
    seg = np.clip(np.searchsorted(seg_ticks, ticks, side="right") - 1, 0, None)
    return seg_starts[seg] + seg_scales[seg] * (ticks - seg_ticks[seg]).astype(np.float64)


def tempo_changes_in_ticks(pm: pretty_midi.PrettyMIDI) -> tuple[np.ndarray, np.ndarray]:
    """(tick, bpm) of every tempo segment of `pm`."""
    seg_ticks, _, seg_scales = _segments(pm)
    return seg_ticks, 60.0 / (seg_scales * pm.resolution)


def write_midi(pm: pretty_midi.PrettyMIDI, path: str | os.PathLike) -> None:
    """Writes `pm` so that reading it back with pretty_midi gives every note again.

    pretty_midi's reader closes all open notes of a pitch at the first note-off and drops
    notes of zero length. So a note that overlaps an earlier same-pitch note of its
    instrument goes to an extra track of the same program, and a zero-length note lasts one
    tick (which still quantises to a zero duration).
    """
    out = pretty_midi.PrettyMIDI(resolution=pm.resolution)
    out._tick_scales = list(pm._tick_scales)
    out.time_signature_changes = list(pm.time_signature_changes)
    out.key_signature_changes = list(pm.key_signature_changes)
    for inst in pm.instruments:
        layers: list[list[pretty_midi.Note]] = []
        layer_ends: list[dict[int, int]] = []  # per layer: pitch -> end tick of its last note
        for note in sorted(inst.notes, key=lambda n: (n.start, n.pitch)):
            start, end = (int(t) for t in seconds_to_ticks(pm, [note.start, note.end]))
            end = max(end, start + 1)
            for notes, ends in zip(layers, layer_ends):
                if ends.get(note.pitch, -1) <= start:
                    break
            else:
                notes, ends = [], {}
                layers.append(notes)
                layer_ends.append(ends)
            ends[note.pitch] = end
            notes.append((note, start, end))
        for notes in layers or [[]]:
            layer = pretty_midi.Instrument(inst.program, inst.is_drum, inst.name)
            starts_ends = ticks_to_seconds(pm, np.array([[s, e] for _, s, e in notes], np.int64).reshape(-1, 2))
            layer.notes = [
                pretty_midi.Note(n.velocity, n.pitch, float(s), float(e))
                for (n, _, _), (s, e) in zip(notes, starts_ends)
            ]
            out.instruments.append(layer)
    out._update_tick_to_time(int(seconds_to_ticks(pm, [pm.get_end_time()])[0]) + 2)
    out.write(os.fspath(path))
