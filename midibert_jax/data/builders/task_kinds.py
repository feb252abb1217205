"""The fine-tuning datasets' TFDS builders, one per task (`BUILDERS[task name]`).

    standard (manual_dir = your download)   pop909_melody, pop909_velocity, pianist8_composer, emopia_emotion
    your data (folder / manual_dir)         sequence_folder, note_folder
    demo (music21 corpus, no download)      demo_melody, demo_collection

Note tasks label every note in the worker processes (`labels.label_note_piece`); sequence
tasks label each piece while listing the inputs. The shared machinery is `task_base.TaskBuilder`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence

from midibert_jax.data import labels, tasks
from midibert_jax.data.builders import common, corpus
from midibert_jax.data.builders.common import InputFile
from midibert_jax.data.builders.task_base import DemoTaskConfig, TaskBuilder, TaskConfig
from midibert_jax.data.errors import SingleClassError, UnknownClassError


def _subroot(root: str, *names: str) -> str:
    """`root/name` for the first name that is a folder there (a release's inner folder), else root."""
    for name in names:
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    return root


def _ignore(inp: InputFile, reason: str, kind: str = "layout") -> None:
    inp.status, inp.reason, inp.error_kind = "ignored", reason, kind


# ----------------------------------------------------------------------------------------
# Note tasks.


class _NoteTaskBuilder(TaskBuilder, skip_registration=True):
    """Labels every note in the worker (`labels.label_note_piece`)."""

    # 'track' or 'velocity'.
    LABEL_MODE = "track"
    # Demo corpus: name tracks by part (first part -> melody).
    RENAME_PARTS = False
    MIN_TRACKS = 1
    # Classes every file must have notes of (skipped otherwise, naming them).
    REQUIRED_CLASSES: tuple[str, ...] = ()

    def _resolve_class_names(self) -> tuple[str, ...]:
        if self.LABEL_MODE == "velocity":
            return tasks.VELOCITY_CLASSES
        track_map = tasks.parse_track_map(self.config.track_map, self.config.class_names or self.task.class_names)
        return track_map.class_names

    def _worker_task(self):
        patterns, required = (), ()
        if self.LABEL_MODE == "track":
            patterns = tasks.parse_track_map(self.config.track_map, self._class_names).patterns
            required = tuple((self._class_names.index(c), c) for c in self.REQUIRED_CLASSES if c in self._class_names)
        return functools.partial(
            labels.label_note_piece, max_len=self.config.max_len, mode=self.LABEL_MODE, patterns=patterns,
            unmapped=self.config.unmapped_tracks, rename_parts=self.RENAME_PARTS, min_tracks=self.MIN_TRACKS,
            blank_velocity=self.config.blank_velocity, required=required,
        )


_POP909_FILE = re.compile(r"^(?:(\d{3})/)?(\d{3})\.mid$", re.IGNORECASE)
_POP909_LAYOUT = """\
    <root>/                  the POP909 folder of https://github.com/music-x-lab/POP909-Dataset
                             (or the repository root that contains it)
      001/001.mid            one folder per song; tracks named MELODY, BRIDGE, PIANO
      001/versions/...       (ignored: alternative versions)
      ...
      909/909.mid
    Flat copies <root>/001.mid ... are accepted too."""


class _Pop909(_NoteTaskBuilder, skip_registration=True):
    OFFICIAL = "pop909"
    DATASET_NAME = "POP909"
    DOWNLOAD = "https://github.com/music-x-lab/POP909-Dataset"
    LAYOUT = _POP909_LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Clone or download {DOWNLOAD} and pass its POP909 folder as manual_dir:\n{LAYOUT}"

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        root = _subroot(root, "POP909")
        self._root_used = root
        inputs = common.list_folder(root, self.config.extensions)
        for inp in inputs:
            if inp.status != "pending":
                continue
            m = _POP909_FILE.match(inp.name)
            if not m or (m.group(1) and m.group(1) != m.group(2)):
                _ignore(inp, "not a POP909 song file (<id>/<id>.mid)")
                continue
            self._split_keys[inp.piece_id] = f"{m.group(2)}.mid"
        return inputs


class Pop909Melody(_Pop909):
    """POP909 melody extraction: each note labelled by its track (MELODY 0, BRIDGE 1, PIANO 2)."""

    TASK = "melody"
    REQUIRED_CLASSES = ("MELODY",)
    BUILDER_CONFIGS = [TaskConfig(name="official", track_map="MELODY,BRIDGE,PIANO", unmapped_tracks="ignore",
                                  description="MidiBERT-Piano's official split, 1024-row windows.")]


class Pop909Velocity(_Pop909):
    """POP909 velocity prediction: 6 classes per note; the input's velocity field is PAD."""

    TASK = "velocity"
    LABEL_MODE = "velocity"
    BUILDER_CONFIGS = [TaskConfig(name="official", description="MidiBERT-Piano's official split, 1024-row windows.")]


class NoteFolder(_NoteTaskBuilder):
    """Your data: MIDI files anywhere under the root; note classes from track names (config.track_map)."""

    TASK = "folder_note"
    DATASET_NAME = "note folder"
    LAYOUT = """\
    <root>/**/*.mid          tracks named as data.track_map says, e.g. track_map='Vocal*=melody,Piano=accompaniment'
    <root>/split.json        optional: {"train": [...], "valid": [...], "test": [...]}, paths relative to <root>"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Pass your folder of MIDI files as manual_dir:\n{LAYOUT}"
    BUILDER_CONFIGS = [TaskConfig(name="default", split="seeded", track_map="MELODY,ACCOMPANIMENT")]

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        inputs = common.list_folder(root, self.config.extensions)
        for inp in inputs:
            self._split_keys[inp.piece_id] = inp.name
        return inputs


class DemoMelody(_NoteTaskBuilder):
    """music21 multi-part scores: notes of the first part (melody) vs. the other parts (accompaniment)."""

    TASK = "demo_melody"
    RENAME_PARTS = True
    MIN_TRACKS = 2
    DATASET_NAME = "demo_melody"
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    BUILDER_CONFIGS = [DemoTaskConfig(name="default", collections=tasks.DEMO_MELODY_COLLECTIONS,
                                      track_map=tasks.TASKS["demo_melody"].default_track_map)]

    def _needs_root(self) -> bool:
        return False

    def _source_description(self) -> str:
        return corpus.demo_source_description()

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        # The demo corpus listing (selection, cached conversion) of the pre-training builder.
        inputs = corpus.demo_inputs(self.config, self.options)
        for inp in inputs:
            self._split_keys[inp.piece_id] = inp.name
        return inputs


# ----------------------------------------------------------------------------------------
# Sequence tasks.


class _SequenceTaskBuilder(TaskBuilder, skip_registration=True):
    """One label per piece, given to each of its windows."""

    def _label_by_folder(self, inputs: list[InputFile], classes: Sequence[str], what: str, unknown_error: bool) -> None:
        index = {c: i for i, c in enumerate(classes)}
        for inp in inputs:
            if inp.status != "pending":
                continue
            parts = inp.name.split("/")
            if len(parts) < 2:
                _ignore(inp, f"not inside a {what} folder (<root>/<{what}>/*.mid)")
                continue
            label = index.get(parts[0])
            if label is None:
                if unknown_error:
                    raise UnknownClassError(
                        f"{self.name}: folder {parts[0]!r} is not one of the class names {list(classes)}"
                    )
                _ignore(inp, f"{parts[0]!r} is not a {what} of this task ({', '.join(classes)})")
                continue
            self._labels[inp.piece_id] = label
            self._split_keys[inp.piece_id] = inp.name


_PIANIST8_LAYOUT = """\
    <root>/                          the Pianist8 release (https://zenodo.org/records/5089279,
                                     https://github.com/joann8512/Pianist8), or its midi/ folder
      midi/Bethel/Bethel_<title>.mid
      midi/Clayderman/Clayderman_<title>.mid
      ... one folder per composer: Bethel, Clayderman, Einaudi, Hancock, Hillsong, Hisaishi, Ryuichi, Yiruma
    Other folders (audio/, ...) are ignored."""


class Pianist8Composer(_SequenceTaskBuilder):
    """Pianist8 composer classification: 8 classes in MidiBERT-Piano's order."""

    TASK = "composer"
    OFFICIAL = "pianist8"
    DATASET_NAME = "Pianist8"
    DOWNLOAD = "https://zenodo.org/records/5089279"
    LAYOUT = _PIANIST8_LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download and unzip Pianist8 from {DOWNLOAD}; pass the folder as manual_dir:\n{LAYOUT}"
    BUILDER_CONFIGS = [TaskConfig(name="official", description="MidiBERT-Piano's official split, 1024-row windows.")]

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        root = _subroot(root, "midi", "MIDI")
        self._root_used = root
        inputs = common.list_folder(root, self.config.extensions)
        self._label_by_folder(inputs, self._class_names, "composer", unknown_error=False)
        return inputs


_EMOPIA_FILE = re.compile(r"^(Q[1-4])_[^/]+$")
_EMOPIA_LAYOUT = """\
    <root>/                          the EMOPIA release (https://zenodo.org/records/5090631, EMOPIA_1.0),
                                     or its midis/ folder
      midis/Q1_<youtube id>_<clip>.mid     e.g. midis/Q1_0vLPYiPN7qY_1.mid; the prefix Q1..Q4 is the label
      ...
    Other files and folders (metadata, songs lists, ...) are ignored."""


class EmopiaEmotion(_SequenceTaskBuilder):
    """EMOPIA emotion classification: the Russell quadrant Q1..Q4 of the file name -> 0..3."""

    TASK = "emotion"
    OFFICIAL = "emopia"
    DATASET_NAME = "EMOPIA"
    DOWNLOAD = "https://zenodo.org/records/5090631"
    LAYOUT = _EMOPIA_LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download and unzip EMOPIA from {DOWNLOAD}; pass the folder as manual_dir:\n{LAYOUT}"
    BUILDER_CONFIGS = [TaskConfig(name="official", description="MidiBERT-Piano's official split, 1024-row windows.")]

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        root = _subroot(root, "midis", "MIDIs", "midi")
        self._root_used = root
        inputs = common.list_folder(root, self.config.extensions)
        index = {c: i for i, c in enumerate(self._class_names)}
        for inp in inputs:
            if inp.status != "pending":
                continue
            m = _EMOPIA_FILE.match(inp.name)
            if not m or m.group(1) not in index:
                _ignore(inp, f"not an EMOPIA clip of classes {list(index)} (Q<k>_<id>_<n>.mid at the top of midis/)")
                continue
            self._labels[inp.piece_id] = index[m.group(1)]
            self._split_keys[inp.piece_id] = inp.name
        return inputs


class SequenceFolder(_SequenceTaskBuilder):
    """Your data: one folder per class, <root>/<label>/*.mid (any depth below the label folder)."""

    TASK = "folder_sequence"
    DATASET_NAME = "sequence folder"
    LAYOUT = """\
    <root>/<label>/*.mid     one folder per class (at least two); files deeper inside a label folder count too
    <root>/split.json        optional: {"train": [...], "valid": [...], "test": [...]}, paths relative to <root>"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Pass your folder as manual_dir:\n{LAYOUT}"
    BUILDER_CONFIGS = [TaskConfig(name="default", split="seeded")]

    def _resolve_class_names(self) -> tuple[str, ...]:
        return ()  # from the folder, in _list_task_inputs

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        folders = tasks.label_folders(root, self.config.extensions)
        classes = tuple(self.config.class_names) or tuple(folders)
        if len(classes) < 2:
            raise SingleClassError(
                f"{self.name}: {root} has {len(classes)} label folder(s) {list(classes)}; a classification task "
                f"needs at least 2. Expected layout:\n{self.LAYOUT}"
            )
        self._class_names = classes
        inputs = common.list_folder(root, self.config.extensions)
        self._label_by_folder(inputs, classes, "label", unknown_error=bool(self.config.class_names))
        return inputs


class DemoCollection(_SequenceTaskBuilder):
    """music21 folk tunes: which collection (airdsAirs, essenFolksong, oneills1850, ryansMammoth) a tune is from."""

    TASK = "demo_collection"
    DATASET_NAME = "demo_collection"
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    BUILDER_CONFIGS = [DemoTaskConfig(name="default", max_pieces=400, collections=tasks.DEMO_COLLECTION_CLASSES)]

    def _needs_root(self) -> bool:
        return False

    def _source_description(self) -> str:
        return corpus.demo_source_description()

    def _resolve_class_names(self) -> tuple[str, ...]:
        classes = tuple(self.config.collections) or tasks.DEMO_COLLECTION_CLASSES
        if len(classes) < 2:
            raise SingleClassError(f"{self.name}: collections {list(classes)}: need at least 2 classes")
        return classes

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        inputs = corpus.demo_inputs(self.config, self.options)
        index = {c: i for i, c in enumerate(self._class_names)}
        for inp in inputs:
            self._labels[inp.piece_id] = index[inp.name.split("/", 1)[0]]
            self._split_keys[inp.piece_id] = inp.name
        return inputs


# Task name -> its builder class (data.prepare builds through it).
BUILDERS: dict[str, type[TaskBuilder]] = {
    b.TASK: b
    for b in (Pop909Melody, Pop909Velocity, Pianist8Composer, EmopiaEmotion, SequenceFolder, NoteFolder, DemoMelody, DemoCollection)
}

