"""Small MIDI files for tests: plain functions, importable by any test (``from midi_factory import ...``).

Good pieces are written with pretty_midi; broken ones are random bytes, a truncated good file,
an empty file and a valid MIDI file without notes.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pretty_midi


def make_piece(
    *,
    num_bars: int = 8,
    notes_per_bar: int = 4,
    seed: int = 0,
    program: int = 0,
    tempo: float = 120.0,
    time_signature: tuple[int, int] = (4, 4),
    drums: bool = False,
) -> pretty_midi.PrettyMIDI:
    """A piece of `num_bars` bars with `notes_per_bar` random notes per bar (one track)."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo, resolution=480)
    num, den = time_signature
    pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    beat = 60.0 / tempo
    bar_seconds = num * 4 / den * beat
    inst = pretty_midi.Instrument(program=program, is_drum=drums)
    step = bar_seconds / notes_per_bar
    for bar in range(num_bars):
        for k in range(notes_per_bar):
            start = bar * bar_seconds + k * step
            pitch = int(rng.integers(36, 52) if drums else rng.integers(40, 90))
            inst.notes.append(
                pretty_midi.Note(velocity=int(rng.integers(30, 120)), pitch=pitch, start=start, end=start + step * 0.9)
            )
    pm.instruments.append(inst)
    return pm


def write_piece(path: str | os.PathLike, **kwargs) -> pathlib.Path:
    """Writes `make_piece(**kwargs)` to `path` (parents created)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_piece(**kwargs).write(os.fspath(path))
    return path


def write_random_bytes(path: str | os.PathLike, size: int = 2000, seed: int = 0) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_truncated(path: str | os.PathLike, keep_fraction: float = 0.5, seed: int = 0) -> pathlib.Path:
    """A good piece cut short (the header survives, the track chunk does not)."""
    path = pathlib.Path(path)
    write_piece(path, seed=seed)
    data = path.read_bytes()
    path.write_bytes(data[: max(30, int(len(data) * keep_fraction))])
    return path


def write_empty(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_noteless(path: str | os.PathLike) -> pathlib.Path:
    """A valid MIDI file with one instrument and no notes."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm = pretty_midi.PrettyMIDI(initial_tempo=100.0)
    pm.instruments.append(pretty_midi.Instrument(program=0))
    pm.write(os.fspath(path))
    return path


BROKEN_KINDS = ("random_bytes", "truncated", "empty", "noteless")


def make_corpus(
    folder: str | os.PathLike,
    *,
    num_good: int = 6,
    broken: bool = True,
    duplicate: bool = True,
    extra_files: bool = True,
    long_piece_bars: int = 0,
) -> dict[str, str]:
    """A small corpus folder. Returns {relative path: expected status ("ok", "skipped", ...)}.

    Good pieces vary in length (4..20 bars, 2..6 notes per bar) and sit in two subfolders;
    `broken` adds one file of each of `BROKEN_KINDS`; `duplicate` copies the first good
    piece; `extra_files` adds a README (ignored); `long_piece_bars` adds one long piece.
    """
    folder = pathlib.Path(folder)
    expected: dict[str, str] = {}
    for i in range(num_good):
        rel = f"{'a' if i % 2 else 'b'}/piece_{i:02d}.mid"
        write_piece(folder / rel, num_bars=4 + (i * 5) % 17, notes_per_bar=2 + i % 5, seed=i, program=i % 3)
        expected[rel] = "ok"
    if long_piece_bars:
        write_piece(folder / "long.midi", num_bars=long_piece_bars, notes_per_bar=1, seed=99)
        expected["long.midi"] = "ok"
    if broken:
        write_random_bytes(folder / "broken/random.mid", seed=1)
        write_truncated(folder / "broken/truncated.mid", seed=2)
        write_empty(folder / "broken/empty.mid")
        write_noteless(folder / "broken/noteless.MID")
        expected.update(
            {
                "broken/random.mid": "skipped",
                "broken/truncated.mid": "skipped",
                "broken/empty.mid": "skipped",
                "broken/noteless.MID": "skipped",
            }
        )
    if duplicate and num_good:
        first = folder / "b/piece_00.mid"
        (folder / "copies").mkdir(parents=True, exist_ok=True)
        (folder / "copies/same_as_piece_00.mid").write_bytes(first.read_bytes())
        expected["copies/same_as_piece_00.mid"] = "duplicate"
    if extra_files:
        (folder / "README.txt").write_text("not a MIDI file\n")
        expected["README.txt"] = "ignored"
    return expected
