"""Fine-tuning tasks: the registry, their class maps and labels, and `prepare_task`.

Contract (what the fine-tuning trainer uses; keep these names):

    task = tasks.get_task(name)              # .name, .level ('note' | 'sequence'), .class_names, .num_classes
    dataset_dir = tasks.prepare_task(data_config)   # data_config: configs/finetune_data.task_data_config(name)
    source = pipeline.load_split(dataset_dir, "train")        # also "validation", "test"
    info = tasks.load_task_info(dataset_dir)  # {"task", "level", "class_names", "class_counts", ...}

Examples (and pipeline batches, with a leading batch axis B):
    tokens    int32 [max_len, 8]   Octuple rows of one window; PAD rows after the piece's end.
    labels    int32 [max_len]      note tasks: class per row; -1 = no label (PAD rows, notes of
                                   unmapped tracks when unmapped_tracks='ignore'). Ignore -1 in loss and accuracy.
    label     int32 []             sequence tasks: the piece's class (every window of a piece).
    index     int64 []             contiguous 0..N-1 per split, in (piece_id, window) order.
    piece_id  int32 []             the input file (see manifest.jsonl); aggregate sequence predictions per piece.
    window    int32 []             window number within the piece.
Batches also carry ``valid`` bool [B] (False for the padding of the last evaluation batch,
whose ``labels`` are all -1 and ``label`` is -1).

Tasks (REFERENCE.md §3):
    melody          note      POP909: the track a note is on, MELODY 0 / BRIDGE 1 / PIANO 2 (no OTHER class).
    velocity        note      POP909: 6 velocity classes pp..ff; the input's velocity field is PAD (it is the label).
    composer        sequence  Pianist8: 8 composers, MidiBERT-Piano's map (Bethel 0 ... Yiruma 7).
    emotion         sequence  EMOPIA: Russell quadrant Q1..Q4 -> 0..3, from the file name.
    folder_sequence sequence  your data: <root>/<label>/*.mid; classes = label folders (sorted) or `class_names`.
    folder_note     note      your data: any MIDI under <root>; classes from track names via `track_map`.
    demo_melody     note      music21 demo scores: notes of the first part (melody) vs. the other parts.
    demo_collection sequence  music21 demo tunes: which of 4 folk-tune collections a tune comes from.
For the two `folder_*` tasks the classes depend on the data: `get_task(name, data_config)`
resolves them, and a built dataset records them (`load_task_info`, `dataset_task`).

Long pieces are cut into windows exactly as for pre-training (`windows.piece_windows`): note
tasks cover every note, sequence tasks classify every window with the piece's label.

Splits ('train', 'validation', 'test'), by `data_config.split`:
    official  MidiBERT-Piano's file lists (resources/midibert_splits.json; standard tasks only).
              Files not in the lists are 'ignored' in the manifest.
    file      <root>/split.json: {"train": [...], "valid": [...], "test": [...]}, paths relative to root.
    seeded    a seeded split of the unique files (by content), stratified by class for sequence tasks.
    auto      'file' when <root>/split.json exists, else 'seeded' (resolved when the dataset is prepared).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from midibert_jax.data import workers
from midibert_jax.data.errors import DataError

NOTE, SEQUENCE = "note", "sequence"
LEVELS = (NOTE, SEQUENCE)
# Label of rows that carry no class (PAD rows, notes of unmapped tracks).
IGNORE_LABEL = -1
SPLIT_SOURCES = ("official", "file", "seeded", "auto")
UNMAPPED_TRACKS = ("error", "ignore")
TASK_INFO_FILENAME = "task_info.json"
SPLIT_FILENAME = "split.json"

# REFERENCE.md §3.1 class maps.
MELODY_CLASSES = ("MELODY", "BRIDGE", "PIANO")
VELOCITY_CLASSES = ("pp", "p", "mp", "mf", "f", "ff")
# Lower MIDI-velocity edges of p, mp, mf, f, ff (pp is [0, 31], ff [96, 127]).
VELOCITY_EDGES = (32, 48, 64, 80, 96)
PIANIST8_CLASSES = ("Bethel", "Clayderman", "Einaudi", "Hancock", "Hillsong", "Hisaishi", "Ryuichi", "Yiruma")
EMOPIA_CLASSES = ("Q1", "Q2", "Q3", "Q4")
# Demo tasks (music21 corpus; never bach, palestrina, monteverdi, trecento).
DEMO_MELODY_CLASSES = ("melody", "accompaniment")
# Multi-part classical scores: the first part (violin I, voice, right hand, ...) is the melody.
DEMO_MELODY_COLLECTIONS = (
    "beach", "beethoven", "chopin", "corelli", "cpebach", "handel", "haydn", "johnson_j_r", "joplin", "liliuokalani",
    "luca", "lusitano", "mozart", "schoenberg", "schubert", "schumann_clara", "schumann_robert", "verdi", "weber",
    "webern",
)
# Folk-tune collections with more than a thousand tunes each (ABC): Aird's Airs (Scottish),
# the Essen folksongs (mostly German), O'Neill's Music of Ireland, Ryan's Mammoth Collection (American fiddle tunes).
DEMO_COLLECTION_CLASSES = ("airdsAirs", "essenFolksong", "oneills1850", "ryansMammoth")
DEMO_FIRST_PART, DEMO_OTHER_PARTS = "MELODY", "ACCOMPANIMENT"


# ----------------------------------------------------------------------------------------
# Errors: every bad input is a typed error that names the problem.


class TaskDataError(DataError):
    """A fine-tuning dataset that cannot be built as asked."""


class TaskConfigError(TaskDataError, ValueError):
    """A data config that names no usable task or options (unknown task, bad split, bad track map)."""


class DatasetNotFoundError(TaskDataError):
    """The dataset folder is missing (the message says where to download it and the layout expected)."""


class DatasetLayoutError(TaskDataError):
    """The dataset folder exists but holds nothing in the expected layout."""


class SingleClassError(TaskDataError):
    """A classification folder with fewer than two classes."""


class UnknownClassError(TaskDataError):
    """A label folder that is not one of the configured class names."""


class UnmappedTrackError(TaskDataError):
    """A note task met tracks whose names map to no class (unmapped_tracks='error')."""


class SplitFileError(TaskDataError):
    """A split file (split.json, or the official lists) that cannot be used."""


# ----------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class Task:
    """One fine-tuning task."""

    # Registry name (the data config's `task`).
    name: str
    # 'note' (one label per row) or 'sequence' (one label per window).
    level: str
    # Class names in label order; () for the folder tasks until resolved from a data config.
    class_names: tuple[str, ...]
    # Where the data comes from: 'pop909', 'pianist8', 'emopia', 'folder', 'demo'.
    dataset: str
    # One line for humans.
    description: str
    # Split source used when the data config says nothing else.
    default_split: str = "official"
    # Note tasks labelled by track name: the default track map ("TRACK[=class],...").
    default_track_map: str = ""
    # Note tasks: what to do with notes on tracks no class claims.
    default_unmapped: str = "error"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def needs_root(self) -> bool:
        """True when the data come from the user's download / folder (not the demo corpus)."""
        return self.dataset != "demo"

    @property
    def builder(self) -> type:
        """The TFDS builder class (imported lazily: this module stays light for worker processes)."""
        from midibert_jax.data import task_builders  # pylint: disable=import-outside-toplevel

        return task_builders.BUILDERS[self.name]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("melody", NOTE, MELODY_CLASSES, "pop909", "POP909 melody extraction: MELODY / BRIDGE / PIANO per note.",
             default_track_map="MELODY,BRIDGE,PIANO", default_unmapped="ignore"),
        Task("velocity", NOTE, VELOCITY_CLASSES, "pop909", "POP909 velocity prediction: 6 classes per note, velocity input blanked."),
        Task("composer", SEQUENCE, PIANIST8_CLASSES, "pianist8", "Pianist8 composer classification (8 classes)."),
        Task("emotion", SEQUENCE, EMOPIA_CLASSES, "emopia", "EMOPIA emotion classification: quadrants Q1..Q4."),
        Task("folder_sequence", SEQUENCE, (), "folder", "Your data: <root>/<label>/*.mid, one class per label folder.",
             default_split="auto"),
        Task("folder_note", NOTE, (), "folder", "Your data: note classes from track names through a track map.",
             default_split="auto"),
        Task("demo_melody", NOTE, DEMO_MELODY_CLASSES, "demo",
             "music21 multi-part scores: first part (melody) vs. the other parts, per note.", default_split="seeded",
             default_track_map=f"{DEMO_FIRST_PART}=melody,{DEMO_OTHER_PARTS}=accompaniment"),
        Task("demo_collection", SEQUENCE, DEMO_COLLECTION_CLASSES, "demo",
             "music21 folk tunes: which of four collections a tune comes from.", default_split="seeded"),
    )
}


def get_task(name: str, data_config: Any = None) -> Task:
    """The task `name`; for 'folder_*' tasks, pass the data config to resolve the class names."""
    try:
        task = TASKS[name]
    except KeyError:
        raise TaskConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    if task.class_names or data_config is None:
        return task
    if task.name == "folder_note":
        classes = parse_track_map(data_config.track_map, _split_names(data_config.class_names)).class_names
    else:
        classes = _split_names(data_config.class_names) or tuple(label_folders(_expand(data_config.root)))
    return dataclasses.replace(task, class_names=tuple(classes))


def dataset_task(dataset_dir: str | os.PathLike) -> Task:
    """The task of a built dataset, with the class names it was built with."""
    info = load_task_info(dataset_dir)
    return dataclasses.replace(get_task(info["task"]), class_names=tuple(info["class_names"]))


def load_task_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """task_info.json of a built dataset: task, level, class_names, class_counts per split, split source."""
    path = os.path.join(os.fspath(dataset_dir), TASK_INFO_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {TASK_INFO_FILENAME} in {dataset_dir}: not a fine-tuning dataset")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _split_names(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    if not spec:
        return ()
    if isinstance(spec, str):
        return tuple(s.strip() for s in spec.split(",") if s.strip())
    return tuple(spec)


def _expand(path: str) -> str:
    return os.path.expanduser(path) if path else path


# ----------------------------------------------------------------------------------------
# Labels.


def velocity_class(velocity: np.ndarray) -> np.ndarray:
    """MIDI velocities 0..127 -> classes 0..5 (pp [0,31], p [32,47], mp [48,63], mf [64,79], f [80,95], ff [96,127])."""
    return np.digitize(np.asarray(velocity), VELOCITY_EDGES).astype(np.int32)


def velocity_token_class(token: np.ndarray) -> np.ndarray:
    """Velocity tokens (bins of 4) -> the same classes (the class edges are multiples of 4)."""
    from midibert_jax.tokenizer import vocab  # pylint: disable=import-outside-toplevel

    return velocity_class(np.asarray(token) * vocab.VELOCITY_BIN_WIDTH)


@dataclasses.dataclass(frozen=True)
class TrackMap:
    """Track name -> class: (pattern, class index) pairs, first match wins (case-insensitive fnmatch)."""

    patterns: tuple[tuple[str, int], ...]
    class_names: tuple[str, ...]

    def classify(self, track_name: str) -> int | None:
        return classify_track(track_name, self.patterns)


def classify_track(track_name: str, patterns: Sequence[tuple[str, int]]) -> int | None:
    name = (track_name or "").strip().casefold()
    for pattern, label in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return label
    return None


def parse_track_map(spec: str, class_names: Sequence[str] = ()) -> TrackMap:
    """Parses "TRACK[=class],..." (e.g. "MELODY,BRIDGE,PIANO" or "Vocal*=melody,Piano=accomp").

    Track names match case-insensitively after stripping, with shell wildcards (* ?); the
    first matching entry wins. An entry without "=class" names a class after the track. Class
    order: `class_names` when given (every class must be one of them), else first appearance.
    """
    entries = [e.strip() for e in (spec or "").split(",") if e.strip()]
    if not entries:
        raise TaskConfigError("a note task labelled by track names needs a track_map, e.g. 'MELODY=melody,PIANO=piano'")
    pairs = []
    for entry in entries:
        track, _, cls = entry.partition("=")
        track, cls = track.strip(), (cls.strip() or track.strip())
        if not track:
            raise TaskConfigError(f"track_map entry {entry!r} has no track name")
        pairs.append((track, cls))
    order = list(class_names)
    if order:
        unknown = sorted({c for _, c in pairs} - set(order))
        if unknown:
            raise TaskConfigError(f"track_map classes {unknown} are not in class_names {list(order)}")
    else:
        for _, cls in pairs:
            if cls not in order:
                order.append(cls)
    if len(order) < 2:
        raise SingleClassError(f"track_map {spec!r} defines one class ({order[0]!r}); a classification task needs at least 2")
    return TrackMap(tuple((t.casefold(), order.index(c)) for t, c in pairs), tuple(order))


# ----------------------------------------------------------------------------------------
# Note labelling (runs inside worker processes; keep this module free of TFDS imports).


@dataclasses.dataclass
class NotePieceResult(workers.PieceResult):
    """`PieceResult` plus `labels` int32 [W, max_len] aligned with `windows` (-1: no label)."""

    labels: np.ndarray | None = None
    # Track names that mapped to no class (for the error message / manifest notes).
    unmapped: list[str] = dataclasses.field(default_factory=list)


def _rename_parts(path: str) -> bytes:
    """The file with its note tracks named: the first one DEMO_FIRST_PART, the others DEMO_OTHER_PARTS.

    demo_corpus writes one track per score part, in score order, so the first track with
    notes holds the first part.
    """
    import mido  # pylint: disable=import-outside-toplevel

    midi = mido.MidiFile(path)
    seen_first = False
    for track in midi.tracks:
        if not any(m.type == "note_on" and m.velocity > 0 for m in track):
            continue
        name = DEMO_OTHER_PARTS if seen_first else DEMO_FIRST_PART
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

    Returns:
      windows int32 [W, max_len, 8] and labels int32 [W, max_len], or a reason when rejected.
    """
    from midibert_jax import tokenizer  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import windows as windows_lib  # pylint: disable=import-outside-toplevel
    from midibert_jax.tokenizer import vocab  # pylint: disable=import-outside-toplevel

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
            label = IGNORE_LABEL
            if mode == "track":
                found = classify_track(inst.name, patterns)
                if found is None:
                    unmapped_names.append(inst.name or "(unnamed track)")
                else:
                    label = found
            track_labels.append(label)
        unmapped_names = sorted(set(unmapped_names))
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
    if not np.any(labels != IGNORE_LABEL):
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
    window_labels = np.full((len(bounds), max_len), IGNORE_LABEL, np.int32)
    for w, (start, end) in enumerate(bounds):
        window_labels[w, : end - start] = labels[start:end]
    if mode == "velocity" and blank_velocity:
        tokens[:, :, vocab.VELOCITY] = vocab.PAD_ROW[vocab.VELOCITY]
    return NotePieceResult(num_notes=len(rows), windows=tokens, labels=window_labels, notes=notes,
                           unmapped=unmapped_names)


# ----------------------------------------------------------------------------------------
# Folder helpers shared with the builders.


def label_folders(root: str, extensions: Sequence[str] = (".mid", ".midi", ".kar")) -> list[str]:
    """Sorted names of the sub-folders of `root` that hold MIDI files (at any depth)."""
    if not root or not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"sequence folder {root!r} does not exist; expected <root>/<label>/*.mid (one folder per class)"
        )
    exts = tuple(e.lower() for e in extensions)
    out = []
    for name in sorted(os.listdir(root)):
        sub = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(sub):
            continue
        if any(f.lower().endswith(exts) for _, _, files in os.walk(sub) for f in files):
            out.append(name)
    return out


# ----------------------------------------------------------------------------------------
# Preparation.


def resolve_split(config: Any) -> str:
    """The concrete split source of a data config ('auto' -> 'file' or 'seeded')."""
    task = get_task(config.task)
    split = config.split or task.default_split
    if split not in SPLIT_SOURCES:
        raise TaskConfigError(f"data.split must be one of {SPLIT_SOURCES}, got {split!r}")
    if split == "auto":
        root = _expand(config.root)
        split = "file" if root and os.path.isfile(os.path.join(root, SPLIT_FILENAME)) else "seeded"
    if split == "official" and task.dataset not in ("pop909", "pianist8", "emopia"):
        raise TaskConfigError(f"task {task.name!r} has no official split; use 'file' or 'seeded'")
    return split


def make_task_builder(config: Any):
    """The TFDS builder (not yet built) of a fine-tuning data config (configs/finetune_data.py)."""
    from midibert_jax.data import builders, task_builders  # pylint: disable=import-outside-toplevel

    task = get_task(config.task)
    options = builders.BuildOptions(
        num_workers=config.num_workers, timeout=config.timeout, convert_timeout=config.demo.convert_timeout,
        memory_limit_mb=config.memory_limit_mb or None, progress=config.progress,
        cache_dir=_expand(config.demo.cache_dir) or None,
    )
    builder_config = task_builders.task_config(
        task.name,
        root=_expand(config.root) if task.dataset == "folder" else "",
        max_len=config.max_len,
        split=resolve_split(config),
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        track_map=config.track_map if task.level == NOTE else "",
        class_names=_split_names(config.class_names),
        unmapped_tracks=config.unmapped_tracks,
        blank_velocity=config.blank_velocity,
        max_pieces=config.demo.max_pieces or None,
        collections=_split_names(config.demo.collections),
        writer=config.demo.writer,
        name=config.name or None,
    )
    return task.builder(config=builder_config, data_dir=_expand(config.data_dir), options=options)


def prepare_task(config: Any):
    """Builds the task's dataset if needed; returns its folder (<data_dir>/<builder>/<config>/<version>).

    `config` is a data config from `configs/finetune_data.task_data_config(task)` (possibly
    overridden). The user's download goes in `config.root` (TFDS manual_dir).
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = make_task_builder(config)
    if not config.progress:
        tfds.disable_progress_bar()
    kwargs = {}
    if config.root:
        kwargs["manual_dir"] = _expand(config.root)
    if config.overwrite:
        kwargs["download_mode"] = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**kwargs))
    return builder.data_path
