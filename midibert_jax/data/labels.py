"""Worker-side labelling of the fine-tuning tasks: velocity classes and `label_note_piece`.

`label_note_piece` runs in the builders' worker processes (`workers.WorkerPool`), so this
module imports no TFDS: the tokenizer, the windows and the task registry only.
"""

from __future__ import annotations

import copy
import dataclasses
import io

import mido
import numpy as np

from midibert_jax import tokenizer
from midibert_jax.data import tasks, workers
from midibert_jax.data import windows as windows_lib
from midibert_jax.tokenizer import vocab


def velocity_class(velocity: np.ndarray) -> np.ndarray:
    """MIDI velocities 0..127 -> classes 0..5 (pp [0,31], p [32,47], mp [48,63], mf [64,79], f [80,95], ff [96,127])."""
    return np.digitize(np.asarray(velocity), tasks.VELOCITY_EDGES).astype(np.int32)


def velocity_token_class(token: np.ndarray) -> np.ndarray:
    """Velocity tokens (bins of 4) -> the same classes (the class edges are multiples of 4)."""
    return velocity_class(np.asarray(token) * vocab.VELOCITY_BIN_WIDTH)


@dataclasses.dataclass
class NotePieceResult(workers.PieceResult):
    """`PieceResult` plus `labels` int32 [W, max_len] aligned with `windows` (-1: no label)."""

    labels: np.ndarray | None = None
    # Track names that mapped to no class (for the error message / manifest notes).
    unmapped: list[str] = dataclasses.field(default_factory=list)


def _rename_parts(path: str) -> bytes:
    """The file with its note tracks named: the first one tasks.DEMO_FIRST_PART, the others tasks.DEMO_OTHER_PARTS.

    demo_corpus writes one track per score part, in score order, so the first track with
    notes holds the first part.
    """
    midi = mido.MidiFile(path)
    seen_first = False
    for track in midi.tracks:
        if not any(m.type == "note_on" and m.velocity > 0 for m in track):
            continue
        name = tasks.DEMO_OTHER_PARTS if seen_first else tasks.DEMO_FIRST_PART
        seen_first = True
        for i, msg in enumerate(track):
            if msg.type == "track_name":
                track[i] = msg.copy(name=name)
                break
        else:
            track.insert(0, mido.MetaMessage("track_name", name=name, time=0))
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def label_note_piece(
    path: str,
    *,
    max_len: int,
    mode: str = "track",
    patterns: tuple[tuple[str, int], ...] = (),
    unmapped: str = "error",
    rename_parts: bool = False,
    min_tracks: int = 1,
    blank_velocity: bool = True,
    required: tuple[tuple[int, str], ...] = (),
) -> NotePieceResult:
    """Tokenizes one file and labels every note; cuts it into windows as pre-training does.

    Args:
      path: MIDI file.
      max_len: rows per window.
      mode: 'track' (class of the note's track name, through `patterns`) or 'velocity'
        (velocity class; the velocity field of the tokens is set to PAD when `blank_velocity`).
      patterns: (lower-case track-name pattern, class) pairs (`TrackMap.patterns`).
      unmapped: 'error' (the file fails with error_kind 'unmapped_track') or 'ignore' (label -1).
      rename_parts: name the tracks by part first (demo corpus; see `_rename_parts`).
      min_tracks: files with fewer note-bearing instruments are skipped ('too_few_parts').
      required: (class, name) pairs a file must have notes of ('track' mode), else it is skipped
        ('missing_track'): a POP909 song without its MELODY track has no melody to find.

    Returns:
      windows int32 [W, max_len, 8] and labels int32 [W, max_len], or a reason when rejected.
    """
    try:
        if rename_parts:
            try:
                data = _rename_parts(path)
            except Exception as e:  # pylint: disable=broad-except  # mido raises many types on corrupt bytes
                raise tokenizer.MidiReadError(f"corrupt MIDI data ({type(e).__name__}: {e})", path) from e
            pm = tokenizer.load_midi(data, name=path)
        else:
            pm = tokenizer.load_midi(path)
        instruments = [inst for inst in pm.instruments if inst.notes]
        if not instruments:
            raise tokenizer.EmptyMidiError("no notes", path)
        if len(instruments) < min_tracks:
            return NotePieceResult(reason=f"{len(instruments)} part(s) with notes; this task needs {min_tracks}",
                                   error_kind="too_few_parts")
        track_labels = []
        unmapped_names: list[str] = []
        for inst in instruments:
            label = tasks.IGNORE_LABEL
            if mode == "track":
                found = tasks.classify_track(inst.name, patterns)
                if found is None:
                    unmapped_names.append(inst.name or "(unnamed track)")
                else:
                    label = found
            track_labels.append(label)
        unmapped_names = sorted(set(unmapped_names))
        missing = [name for label, name in required if label not in track_labels]
        if mode == "track" and missing:
            names = sorted({inst.name or "(unnamed track)" for inst in instruments})
            return NotePieceResult(reason=f"no {' or '.join(missing)} track with notes (tracks: {names})",
                                   error_kind="missing_track")
        if unmapped_names and unmapped == "error":
            return NotePieceResult(
                reason=f"track(s) {unmapped_names} map to no class of the track map", error_kind="unmapped_track",
                unmapped=unmapped_names,
            )
        # Each instrument is encoded on its own (bars, positions and tempi depend only on the
        # file's global maps), so every row keeps its track's label; the rows are then sorted as
        # encode_absolute sorts them, the label breaking ties between identical rows.
        parts_rows, parts_labels = [], []
        for inst, label in zip(instruments, track_labels):
            alone = copy.copy(pm)
            alone.instruments = [inst]
            rows = tokenizer.encode_absolute(alone)
            parts_rows.append(rows)
            parts_labels.append(np.full(len(rows), label, np.int32))
    except tokenizer.TokenizerError as e:
        return NotePieceResult(reason=e.reason, error_kind=getattr(e, "kind", type(e).__name__))
    rows = np.concatenate(parts_rows)
    labels = np.concatenate(parts_labels)
    order = np.lexsort((labels,) + tuple(rows.T[::-1]))
    rows, labels = rows[order], labels[order]
    if mode == "velocity":
        labels = velocity_token_class(rows[:, vocab.VELOCITY])
    elif mode != "track":
        raise ValueError(f"unknown labelling mode {mode!r}")
    if not np.any(labels != tasks.IGNORE_LABEL):
        return NotePieceResult(reason=f"no note on a track of the track map (tracks: {unmapped_names})",
                               error_kind="no_labelled_notes", unmapped=unmapped_names)
    notes = []
    num_bars = int(rows[-1, vocab.BAR]) + 1
    if num_bars > vocab.MAX_BARS:
        notes.append(f"{num_bars} bars: cut at 256-bar limits")
    if unmapped_names:
        notes.append(f"notes of track(s) {unmapped_names} unlabelled (-1)")
    bounds = windows_lib.piece_window_bounds(rows[:, vocab.BAR], max_len)
    tokens = windows_lib.piece_windows(rows, max_len)
    window_labels = np.full((len(bounds), max_len), tasks.IGNORE_LABEL, np.int32)
    for w, (start, end) in enumerate(bounds):
        window_labels[w, : end - start] = labels[start:end]
    if mode == "velocity" and blank_velocity:
        tokens[:, :, vocab.VELOCITY] = vocab.PAD_ROW[vocab.VELOCITY]
    return NotePieceResult(num_notes=len(rows), windows=tokens, labels=window_labels, notes=notes,
                           unmapped=unmapped_names, window_bars=[int(rows[start, vocab.BAR]) for start, _ in bounds])
