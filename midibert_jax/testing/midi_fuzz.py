"""Fuzzing the tokenizer: structured random MIDI files and byte-level mutations of real ones.

Both halves check one contract (`check_bytes`): any bytes either tokenize, or raise a
`TokenizerError`; nothing else escapes, and every file that tokenizes round-trips exactly
(in memory, and through a MIDI file written by `write_midi`).

Used by tests/test_fuzz.py (a few hundred cases in the default run) and by
scripts/fuzz_tokenizer.py (10^4+ cases, with counts, timings and the awkward files kept).
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import time

import mido
import numpy as np

from midibert_jax.tokenizer import MidiLimits, TokenizerError, decode, encode, load_midi
from midibert_jax.tokenizer.midi_io import write_midi


@dataclasses.dataclass
class Outcome:
    """What one case did: 'ok' (round-tripped), or the TokenizerError kind, with timing."""

    status: str
    seconds: float
    notes: int = 0
    detail: str = ""


# A decoded piece can be much longer than its source: a bar cut short by an off-bar time-signature change
# comes back whole, and a 1/32 bar comes back as the vocabulary's nearest metre (a 2,500-beat source in 1/32
# came back 80,000 beats long). The file is this project's own output of a bounded source, so its length
# is not limited when read back.
READ_BACK_LIMITS = MidiLimits(max_beats=2**62, max_ticks=2**62)


class RoundTripMismatch(AssertionError):
    """A file tokenized but did not round-trip: always a bug."""


def check_bytes(data: bytes, name: str = "fuzz.mid") -> Outcome:
    """Tokenizes `data`; on success checks both round trips. Raises anything unexpected."""
    t0 = time.perf_counter()
    try:
        rows = encode(load_midi(data, name=name))
    except TokenizerError as e:
        return Outcome(e.kind, time.perf_counter() - t0, detail=e.reason)
    again = encode(decode(rows))
    if not np.array_equal(again, rows):
        raise RoundTripMismatch(f"{name}: decode/encode changed the tokens ({len(rows)} -> {len(again)} rows)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "back.mid")
        write_midi(decode(rows), path)
        # A decoded piece can be longer than its source (READ_BACK_LIMITS says why).
        from_file = encode(load_midi(path, limits=READ_BACK_LIMITS))
    if not np.array_equal(from_file, rows):
        raise RoundTripMismatch(f"{name}: the written MIDI file re-tokenizes differently")
    return Outcome("ok", time.perf_counter() - t0, notes=int(len(rows)))


# ----------------------------------------------------------------------------- structured generation


def random_midi(rng: np.random.Generator) -> bytes:
    """A valid Standard MIDI File with random structure.

    Tracks with and without drums, tempo and time-signature changes at arbitrary ticks (also
    mid-bar), extreme pitches, velocities and durations, simultaneous identical notes,
    zero-length notes, odd resolutions and pieces of thousands of bars.
    """
    tpb = int(rng.choice([1, 7, 24, 96, 97, 120, 384, 480, 960, 1001, 32767]))
    sparse = rng.random() < 0.15  # thousands of bars: few notes far apart
    span = int(tpb * (rng.integers(4, 40) if not sparse else rng.integers(4000, 12000)))
    span = max(1, min(span, 9_000_000))
    conductor = []
    for _ in range(int(rng.integers(0, 6))):
        tick = int(rng.integers(0, span))
        if rng.random() < 0.5:
            conductor.append((tick, mido.MetaMessage("set_tempo", tempo=int(rng.integers(1, 16_777_216)))))
        else:
            den = int(2 ** rng.integers(0, 8))
            conductor.append((tick, mido.MetaMessage("time_signature", numerator=int(rng.integers(1, 40)), denominator=den)))
    tracks = [conductor]
    for _ in range(int(rng.integers(1, 5))):
        drum = rng.random() < 0.25
        channel = 9 if drum else int(rng.choice([c for c in range(16) if c != 9]))
        events = [(0, mido.Message("program_change", program=int(rng.integers(0, 128)), channel=channel))]
        for _ in range(int(rng.integers(0, 60 if not sparse else 12))):
            start = int(rng.integers(0, span))
            length = int(rng.choice([0, 1, rng.integers(1, 4 * tpb + 2), rng.integers(1, 300 * tpb + 2)]))
            pitch = int(rng.choice([0, 127, rng.integers(0, 128)]))
            velocity = int(rng.choice([1, 127, rng.integers(1, 128)]))
            copies = 2 if rng.random() < 0.05 else 1  # simultaneous identical notes
            for _ in range(copies):
                events.append((start, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)))
                events.append((start + length, mido.Message("note_off", note=pitch, velocity=0, channel=channel)))
        tracks.append(events)
    return _to_bytes(tracks, tpb)


def _to_bytes(tracks, tpb: int) -> bytes:
    mf = mido.MidiFile(ticks_per_beat=tpb)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, msg in sorted(events, key=lambda e: (e[0], e[1].type == "note_on" and e[1].velocity > 0)):
            track.append(msg.copy(time=tick - now))
            now = tick
        mf.tracks.append(track)
    buf = io.BytesIO()
    mf.save(file=buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- byte mutations

MUTATIONS = ("truncate", "flip", "chunk_length", "huge_delta", "splice", "insert")


def mutate(data: bytes, rng: np.random.Generator, kind: str | None = None) -> tuple[str, bytes]:
    """One byte-level mutation of a (valid) MIDI file: returns (mutation name, bytes)."""
    kind = kind or str(rng.choice(MUTATIONS))
    b = bytearray(data)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(0, len(b)))])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 12))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(b)
    if kind == "chunk_length":  # a bogus MThd/MTrk length field
        starts = [i for i in range(len(b) - 8) if b[i : i + 4] in (b"MThd", b"MTrk")]
        i = int(rng.choice(starts)) if starts else 0
        b[i + 4 : i + 8] = int(rng.choice([0, 1, 2**31 - 1, 2**32 - 1, rng.integers(0, 2**32)])).to_bytes(4, "big")
        return kind, bytes(b)
    if kind == "huge_delta":  # a 4-byte variable-length delta time near 2^28
        tracks = [i for i in range(len(b) - 8) if b[i : i + 4] == b"MTrk"]
        if tracks:
            i = int(rng.choice(tracks)) + 8
            b[i:i] = bytes([0x8F, 0xFF, 0xFF, 0x7F, 0x90, 0x3C, 0x40])
            length = int.from_bytes(b[i - 4 : i], "big") + 7
            b[i - 4 : i] = length.to_bytes(4, "big")
        return kind, bytes(b)
    if kind == "splice":
        i, j = sorted(int(x) for x in rng.integers(0, len(b), 2))
        return kind, bytes(b[:i] + b[j:] + b[i:j])
    if kind == "insert":
        i = int(rng.integers(0, len(b)))
        return kind, bytes(b[:i] + rng.bytes(int(rng.integers(1, 32))) + b[i:])
    raise ValueError(f"unknown mutation {kind!r}")


# ----------------------------------------------------------------------------- hypothesis strategies


def midi_strategy():
    """A hypothesis strategy of valid MIDI bytes with random structure (shrinks to small files)."""
    from hypothesis import strategies as st  # pylint: disable=import-outside-toplevel

    @st.composite
    def midi_files(draw):
        tpb = draw(st.sampled_from([1, 7, 96, 97, 480, 1001, 32767]))
        beats = draw(st.integers(1, 6000))
        span = max(1, min(beats * tpb, 9_000_000))
        tick = st.integers(0, span)
        conductor = draw(st.lists(st.one_of(
            st.builds(lambda t, v: (t, mido.MetaMessage("set_tempo", tempo=v)), tick, st.integers(1, 16_777_215)),
            st.builds(lambda t, n, d: (t, mido.MetaMessage("time_signature", numerator=n, denominator=2**d)),
                      tick, st.integers(1, 255), st.integers(0, 7)),
        ), max_size=6))
        tracks = [conductor]
        for _ in range(draw(st.integers(1, 4))):
            drum = draw(st.booleans())
            channel = 9 if drum else draw(st.sampled_from([c for c in range(16) if c != 9]))
            events = [(0, mido.Message("program_change", program=draw(st.integers(0, 127)), channel=channel))]
            notes = draw(st.lists(st.tuples(tick, st.integers(0, 300 * tpb), st.integers(0, 127), st.integers(1, 127)),
                                  max_size=40))
            for start, length, pitch, velocity in notes:
                events.append((start, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)))
                events.append((start + length, mido.Message("note_off", note=pitch, velocity=0, channel=channel)))
            tracks.append(events)
        return _to_bytes(tracks, tpb)

    return midi_files()


def mutation_strategy():
    """A hypothesis strategy of (name, mutated bytes) from a valid file and drawn edits."""
    from hypothesis import strategies as st  # pylint: disable=import-outside-toplevel

    @st.composite
    def mutated(draw):
        data = bytearray(draw(midi_strategy()))
        kind = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "truncate":
            return kind, bytes(data[:at])
        if kind == "insert":
            return kind, bytes(data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:])
        patch = draw(st.binary(min_size=1, max_size=8))
        if kind == "chunk_length":
            starts = [i for i in range(len(data) - 8) if data[i : i + 4] in (b"MThd", b"MTrk")]
            at = starts[at % len(starts)] + 4
            patch = draw(st.binary(min_size=4, max_size=4))
        elif kind == "huge_delta":
            patch = bytes([0x8F, 0xFF, 0xFF, 0x7F])
        data[at : at + len(patch)] = patch
        return kind, bytes(data)

    return mutated()
