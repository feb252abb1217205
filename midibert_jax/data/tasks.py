"""Fine-tuning tasks: the registry, their class maps, track maps and label folders.

A leaf module (no TFDS, no builders): the builders (`data.builders.task_kinds.BUILDERS[name]`),
the worker-side labelling (`data.labels`) and the trainers all read it.

    task = tasks.get_task(name)              # .name, .level ('note' | 'sequence'), .class_names, .target_key
    dataset_dir = prepare.prepare(data_config)   # data_config: configs/finetune_data.task_data_config(name)
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

import dataclasses
import fnmatch
import json
import os
from collections.abc import Sequence
from typing import Any

from midibert_jax.data.errors import DatasetNotFoundError, SingleClassError, TaskConfigError

NOTE, SEQUENCE = "note", "sequence"
LEVELS = (NOTE, SEQUENCE)
# Example key of the target: one class per row (note tasks) or per window (sequence tasks).
TARGET_KEY = {NOTE: "labels", SEQUENCE: "label"}
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
    def target_key(self) -> str:
        """The example key holding the target: 'labels' [max_len] (note) or 'label' [] (sequence)."""
        return TARGET_KEY[self.level]


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
        classes = parse_track_map(data_config.track_map, split_names(data_config.class_names)).class_names
    else:
        classes = split_names(data_config.class_names) or tuple(label_folders(expand(data_config.root)))
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


def split_names(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """'a, b' or ('a', 'b') -> ('a', 'b'); empty -> ()."""
    if not spec:
        return ()
    if isinstance(spec, str):
        return tuple(s.strip() for s in spec.split(",") if s.strip())
    return tuple(spec)


def expand(path: str) -> str:
    """`~` expanded; '' stays ''."""
    return os.path.expanduser(path) if path else path


# ----------------------------------------------------------------------------------------
# Track maps.


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
# Label folders.


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
