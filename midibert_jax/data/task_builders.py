"""TFDS builders of the fine-tuning datasets (see `tasks` for the task contract).

Each builder lists its inputs with their labels, assigns the splits ('official', 'file' or
'seeded'), tokenizes in a `workers.WorkerPool` (per-file timeout, crashed workers replaced),
and writes ArrayRecord shards with `manifest.jsonl` / `build_summary.json` (as the pre-training
builders do: every input file has a record, skipped files say why) and ``task_info.json``
(task, level, class names, class counts per split). The class names are also in the
DatasetInfo metadata (``metadata["task"]``).

    standard (manual_dir = your download)   pop909_melody, pop909_velocity, pianist8_composer, emopia_emotion
    your data (folder / manual_dir)         sequence_folder, note_folder
    demo (music21 corpus, no download)      demo_melody, demo_collection

Only local builds (no Beam): these datasets hold at most a few thousand files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from midibert_jax.data import builders, tasks, workers
from midibert_jax.data.builders import InputFile
from midibert_jax.tokenizer import vocab

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# Keys of split files (split.json and the official lists) -> split names.
SPLIT_FILE_KEYS = {"train": TRAIN, "valid": VALIDATION, "validation": VALIDATION, "test": TEST}
OFFICIAL_SPLITS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "midibert_splits.json")


# ----------------------------------------------------------------------------------------
# Configs.


@dataclasses.dataclass(eq=False)
class TaskConfig(builders.MidiConfig):
    """A fine-tuning dataset's identity (every field decides the config name)."""

    # 'official' (MidiBERT-Piano's lists), 'file' (<root>/split.json) or 'seeded'.
    split: str = "official"
    # Seeded split: fraction of unique pieces in 'test' (valid_fraction: in 'validation').
    test_fraction: float = 0.1
    # Note tasks labelled by track name: "TRACK[=class],..." (see tasks.parse_track_map).
    track_map: str = ""
    # Class names in label order; () -> the task's own, or derived from the data (folder tasks).
    class_names: tuple[str, ...] = ()
    # Notes on tracks that map to no class: 'error' (the build fails naming them) or 'ignore' (label -1).
    unmapped_tracks: str = "error"
    # Velocity task: set the input's velocity field to PAD (False reproduces the reference's leak).
    blank_velocity: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.packing != "piece":
            raise tasks.TaskConfigError(f"config {self.name}: fine-tuning datasets use packing='piece'")
        if self.split not in ("official", "file", "seeded"):
            raise tasks.TaskConfigError(f"config {self.name}: split must be 'official', 'file' or 'seeded', got {self.split!r}")
        if not 0.0 <= self.test_fraction < 1.0 or self.valid_fraction + self.test_fraction >= 1.0:
            raise tasks.TaskConfigError(
                f"config {self.name}: need 0 <= test_fraction and valid_fraction + test_fraction < 1, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        if self.unmapped_tracks not in tasks.UNMAPPED_TRACKS:
            raise tasks.TaskConfigError(f"config {self.name}: unmapped_tracks must be one of {tasks.UNMAPPED_TRACKS}")


@dataclasses.dataclass(eq=False)
class DemoTaskConfig(TaskConfig):
    """A demo task: which music21 works (the same fields as `builders.DemoConfig`)."""

    split: str = "seeded"
    # Works to take (balanced across collections, seeded by `seed`); None -> all of `collections`.
    max_pieces: int | None = None
    # music21 collections (demo_collection: the classes, in label order; demo_melody: the sources).
    collections: tuple[str, ...] = ()
    # Score -> MIDI writer: 'fast' or 'music21' (demo_corpus).
    writer: str = "fast"


def _identity(config: TaskConfig) -> dict[str, Any]:
    skip = {"name", "version", "release_notes", "supported_versions", "description", "tags"}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in skip}


def config_name(config: TaskConfig, prefix: str = "") -> str:
    """Readable part + a hash of every identity field, e.g. 'official-len1024-1a2b3c4d'."""
    if config.split == "seeded":
        split = f"seeded-v{round(config.valid_fraction * 100):d}-t{round(config.test_fraction * 100):d}-s{config.seed}"
    else:
        split = config.split
    digest = hashlib.sha256(json.dumps(_identity(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    prefix = re.sub(r"[^A-Za-z0-9_]+", "_", prefix).strip("_")
    return "-".join(p for p in (prefix, split, f"len{config.max_len}", digest) if p)


def task_config(
    task_name: str,
    *,
    root: str = "",
    max_len: int = 1024,
    split: str | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    track_map: str | None = None,
    class_names: Sequence[str] = (),
    unmapped_tracks: str | None = None,
    blank_velocity: bool = True,
    max_pieces: int | None = None,
    collections: Sequence[str] = (),
    writer: str = "fast",
    name: str | None = None,
) -> TaskConfig:
    """The builder config of `task_name`; unset options take the task's defaults.

    `root` is part of the identity only for the folder tasks (your data); the standard
    datasets read it from the DownloadConfig's manual_dir.
    """
    task = tasks.get_task(task_name)
    split = split or task.default_split
    if split == "auto":
        raise tasks.TaskConfigError("resolve split='auto' first (tasks.resolve_split)")
    common = dict(
        name="tmp", max_len=max_len, split=split, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed,
        track_map=task.default_track_map if track_map is None else track_map, class_names=tuple(class_names),
        unmapped_tracks=unmapped_tracks or task.default_unmapped, blank_velocity=blank_velocity,
    )
    if task.dataset == "demo":
        default = tasks.DEMO_COLLECTION_CLASSES if task.name == "demo_collection" else tasks.DEMO_MELODY_COLLECTIONS
        cfg = DemoTaskConfig(max_pieces=max_pieces, collections=tuple(collections) or default, writer=writer, **common)
        prefix = f"n{max_pieces or 'all'}"
    else:
        folder = os.path.abspath(os.path.expanduser(root)) if task.dataset == "folder" and root else ""
        cfg = TaskConfig(folder=folder, **common)
        prefix = os.path.basename(os.path.normpath(folder)) if folder else ""
    cfg.name = name or config_name(cfg, prefix)
    return cfg


# ----------------------------------------------------------------------------------------
# Spill: windows and labels written while tokenizing, read back by the TFDS generator.


class _LabelledSpill(builders._Spill):  # pylint: disable=protected-access
    """`builders._Spill` plus per-window labels ([max_len] rows for note tasks, one int for sequence tasks)."""

    def __init__(self, directory: str, max_len: int, level: str):
        super().__init__(directory, max_len)
        self.level = level
        self.sequence_labels: dict[str, list[int]] = {}

    def add_labelled(self, split: str, windows_: np.ndarray, piece_id: int, labels) -> None:
        n = len(windows_)
        self.add(split, windows_, [piece_id] * n, range(n))
        if self.level == tasks.NOTE:
            key = f"{split}:labels"
            if key not in self._files:
                self._files[key] = open(os.path.join(self.directory, f"{split}.labels.bin"), "wb")  # pylint: disable=consider-using-with
            self._files[key].write(np.ascontiguousarray(labels, np.int32).tobytes())
        else:
            self.sequence_labels.setdefault(split, []).extend([int(labels)] * n)

    def examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        n = self.count(split)
        if not n:
            return
        shape = (n, self.max_len, vocab.NUM_FIELDS)
        tokens = np.memmap(os.path.join(self.directory, f"{split}.bin"), np.int32, "r", shape=shape)
        if self.level == tasks.NOTE:
            labels = np.memmap(os.path.join(self.directory, f"{split}.labels.bin"), np.int32, "r", shape=(n, self.max_len))
        meta = self.meta[split]
        for i in range(n):
            example = builders.make_example(np.asarray(tokens[i]), i, meta["piece_id"][i], meta["window"][i])
            if self.level == tasks.NOTE:
                example["labels"] = np.asarray(labels[i], np.int32)
            else:
                example["label"] = np.int32(self.sequence_labels[split][i])
            yield i, example


# ----------------------------------------------------------------------------------------
# The shared builder.


class _TaskBuilder(builders.MidiFolder, skip_registration=True):
    """Common machinery: listing -> labels -> splits -> tokenization -> labelled shards."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SPLITS = SPLITS
    # Registry name in `tasks`.
    TASK = ""
    # Key of the official lists in resources/midibert_splits.json (standard datasets).
    OFFICIAL = ""
    # For error messages: the dataset, where it is published, the layout expected.
    DATASET_NAME = ""
    DOWNLOAD = ""
    LAYOUT = ""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._labels: dict[int, int] = {}
        self._split_keys: dict[int, str] = {}
        self._class_names: tuple[str, ...] = ()
        self._counts: dict[str, dict[str, Any]] = {}
        self._split_notes: dict[str, Any] = {}
        self._root_used: str | None = None

    @property
    def config(self) -> TaskConfig:
        return self.builder_config

    @property
    def task(self) -> tasks.Task:
        return tasks.get_task(self.TASK)

    def _info(self) -> tfds.core.DatasetInfo:
        max_len = self.builder_config.max_len
        features = {
            "tokens": tfds.features.Tensor(shape=(max_len, vocab.NUM_FIELDS), dtype=np.int32),
            "index": tfds.features.Scalar(dtype=np.int64),
            "piece_id": tfds.features.Scalar(dtype=np.int32),
            "window": tfds.features.Scalar(dtype=np.int32),
        }
        if self.task.level == tasks.NOTE:
            features["labels"] = tfds.features.Tensor(shape=(max_len,), dtype=np.int32)
        else:
            features["label"] = tfds.features.Scalar(dtype=np.int32)
        return builders.LocalDatasetInfo(
            builder=self,
            description=f"{self.task.description} Octuple windows (REFERENCE.md §1, §3).",
            features=tfds.features.FeaturesDict(features),
            homepage=self.DOWNLOAD or None,
            metadata=tfds.core.MetadataDict(),
        )

    # -- inputs (overridden per dataset) ------------------------------------------------

    def _root(self, dl_manager) -> str:
        """The dataset folder: config.folder, else the DownloadConfig's manual_dir."""
        if self.config.folder:
            root = self.config.folder
        else:
            try:
                root = os.fspath(dl_manager.manual_dir)
            except (AssertionError, ValueError):
                root = os.fspath(getattr(dl_manager, "_manual_dir", "") or "")
        if not root or not os.path.isdir(root) or not os.listdir(root):
            raise tasks.DatasetNotFoundError(self._not_found(root))
        return root

    def _not_found(self, root: str) -> str:
        where = f" from {self.DOWNLOAD}" if self.DOWNLOAD else ""
        return (
            f"{self.DATASET_NAME or self.name}: dataset folder {root or '(none given)'} does not exist or is empty. "
            f"Download it{where}, unpack it, and pass the folder as data.root (TFDS manual_dir). "
            f"Expected layout:\n{self.LAYOUT}"
        )

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        """All files, with `self._labels` (sequence tasks) and `self._split_keys` filled."""
        raise NotImplementedError

    def _resolve_class_names(self) -> tuple[str, ...]:
        return self.config.class_names or self.task.class_names

    def _needs_root(self) -> bool:
        return True

    # -- generation -----------------------------------------------------------------------

    def _split_expected(self, split: str) -> bool:
        if self.config.split == "seeded":
            return split == TRAIN or (self.config.valid_fraction if split == VALIDATION else self.config.test_fraction) > 0
        return True

    def _split_generators(self, dl_manager):
        if self._use_beam:
            raise tasks.TaskConfigError(f"{self.name}: fine-tuning datasets are built locally; Beam is not supported")
        root = self._root(dl_manager) if self._needs_root() else None
        self._root_used = root
        self._source = root or self._source_description()
        self._class_names = tuple(self._resolve_class_names())
        inputs = self._list_task_inputs(root)
        if not any(i.status == "pending" for i in inputs):
            raise tasks.DatasetLayoutError(f"{self.name}: no usable MIDI files in {root}. Expected layout:\n{self.LAYOUT}")
        if self.config.split in ("official", "file"):
            assignment = self._listed_splits(inputs, root)
        builders.hash_and_split(inputs, 0.0, self.config.seed, threads=self.options.hash_threads, progress=self.options.progress)
        if self.config.split == "seeded":
            self._seeded_splits(inputs)
        else:
            for inp in inputs:
                if inp.sha256 is not None and inp.status in ("pending", "duplicate"):
                    inp.split = assignment[inp.piece_id]
        self._inputs = inputs
        self._records = [i.record() for i in inputs if i.status != "pending"]
        self._tokenize([i for i in inputs if i.status == "pending"])
        if not self._spill.count(TRAIN):
            raise tasks.TaskDataError(f"{self.name}: no usable piece in the train split (see the skipped files above)")
        return {split: self._spill.examples(split) for split in SPLITS if self._spill.count(split)}

    def _listed_splits(self, inputs: list[InputFile], root: str | None) -> dict[int, str]:
        """Official lists or split.json: split per piece_id; unlisted files become 'ignored'."""
        if self.config.split == "official":
            if not self.OFFICIAL:
                raise tasks.TaskConfigError(f"{self.name} has no official split; use 'file' or 'seeded'")
            with open(OFFICIAL_SPLITS_PATH, encoding="utf-8") as f:
                lists = json.load(f)[self.OFFICIAL]
            source, strict = "MidiBERT-Piano's official split lists", False
        else:
            path = os.path.join(root or "", tasks.SPLIT_FILENAME)
            try:
                with open(path, encoding="utf-8") as f:
                    lists = json.load(f)
            except FileNotFoundError:
                raise tasks.SplitFileError(f"split='file' but there is no {path}") from None
            except json.JSONDecodeError as e:
                raise tasks.SplitFileError(f"{path} is not valid JSON: {e}") from None
            source, strict = path, True
        key_split = _parse_split_lists(lists, source)
        found: dict[int, str] = {}
        seen = set()
        for inp in inputs:
            key = self._split_keys.get(inp.piece_id)
            if inp.status != "pending" or key is None:
                continue
            if key in key_split:
                found[inp.piece_id] = key_split[key]
                seen.add(key)
            else:
                inp.status, inp.reason, inp.error_kind = "ignored", f"not in {source}", "not_in_split"
        missing = sorted(set(key_split) - seen)
        if not seen:
            raise tasks.DatasetLayoutError(
                f"{self.name}: none of the {len(key_split)} files of {source} is in {root} "
                f"(e.g. {sorted(key_split)[:3]}). Expected layout:\n{self.LAYOUT}"
            )
        if missing and strict:
            raise tasks.SplitFileError(f"{source} lists {len(missing)} files that do not exist, e.g. {missing[:5]}")
        self._split_notes = {"split_source": source, "listed": len(key_split), "listed_missing": len(missing),
                             "listed_missing_examples": missing[:10]}
        if missing and self.options.print_summary:
            print(f"{self.name}: {len(missing)} of the {len(key_split)} files of {source} are not in {root} "
                  f"(e.g. {missing[:3]})")
        return found

    def _seeded_splits(self, inputs: list[InputFile]) -> None:
        """Unique contents permuted by seed; test first, then validation; stratified by class for sequence tasks."""
        cfg = self.config
        groups: dict[int, list[str]] = {}
        first_of: dict[str, InputFile] = {}
        for inp in inputs:
            if inp.status == "pending" and inp.sha256 not in first_of:
                first_of[inp.sha256] = inp
                groups.setdefault(self._labels.get(inp.piece_id, 0), []).append(inp.sha256)
        total = sum(len(g) for g in groups.values())
        rng = np.random.default_rng(cfg.seed)
        split_of: dict[str, str] = {}
        counts = {TEST: 0, VALIDATION: 0}
        for label in sorted(groups):
            hashes = groups[label]
            perm = rng.permutation(len(hashes))
            n_test = round(cfg.test_fraction * len(hashes))
            n_valid = round(cfg.valid_fraction * len(hashes))
            for rank, i in enumerate(perm):
                split = TEST if rank < n_test else VALIDATION if rank < n_test + n_valid else TRAIN
                split_of[hashes[i]] = split
                counts[split] = counts.get(split, 0) + 1
        # Small data: at least one piece in each requested split, taken from the largest class's train pieces.
        for split, fraction in ((TEST, cfg.test_fraction), (VALIDATION, cfg.valid_fraction)):
            if fraction > 0 and counts[split] == 0 and total >= 3:
                label = max(groups, key=lambda g: sum(split_of[h] == TRAIN for h in groups[g]))
                train = [h for h in groups[label] if split_of[h] == TRAIN]
                if len(train) > 1:
                    split_of[train[int(rng.integers(len(train)))]] = split
                    counts[split] += 1
        for inp in inputs:
            if inp.sha256 is not None and inp.status in ("pending", "duplicate"):
                inp.split = split_of.get(inp.sha256, TRAIN)
        self._split_notes = {"split_source": f"seeded (seed {cfg.seed}, valid {cfg.valid_fraction}, test {cfg.test_fraction}"
                             + (", stratified by class)" if self.task.level == tasks.SEQUENCE else ")")}

    def _worker_task(self):
        return functools.partial(workers.tokenize_piece, max_len=self.config.max_len, packing="piece")

    def _tokenize(self, pending: list[InputFile]) -> None:
        cfg, opts = self.config, self.options
        root = os.fspath(self.data_dir_root)
        self._spill_dir = tempfile.mkdtemp(prefix=".midibert_spill-", dir=root if os.path.isdir(root) else None)
        self._spill = _LabelledSpill(self._spill_dir, cfg.max_len, self.task.level)
        num_classes = len(self._class_names)
        counts = {s: {"pieces": np.zeros(num_classes, np.int64), "windows": np.zeros(num_classes, np.int64),
                      "notes": np.zeros(num_classes, np.int64)} for s in SPLITS}
        unmapped: list[tuple[str, list[str]]] = []
        if pending:
            num_workers = min(opts.num_workers or workers.default_num_workers(), len(pending))
            with workers.WorkerPool(
                self._worker_task(), num_workers=num_workers, timeout=opts.timeout, memory_limit_mb=opts.memory_limit_mb
            ) as pool, tqdm(
                total=len(pending), desc=f"Tokenizing {self.name}", unit=" files", disable=not opts.progress, dynamic_ncols=True
            ) as bar:
                for inp, outcome in zip(pending, pool.imap(i.path for i in pending)):
                    record, result = builders.record_from_outcome(inp, outcome, "piece")
                    self._records.append(record)
                    bar.update(1)
                    if result is None:
                        value = outcome.value if outcome.ok else None
                        if getattr(value, "error_kind", None) == "unmapped_track":
                            unmapped.append((inp.name, value.unmapped))
                        continue
                    c = counts[inp.split]
                    if self.task.level == tasks.NOTE:
                        self._spill.add_labelled(inp.split, result.windows, inp.piece_id, result.labels)
                        valid = result.labels[result.labels >= 0]
                        c["notes"] += np.bincount(valid, minlength=num_classes)[:num_classes]
                        for row in result.labels:
                            c["windows"] += np.bincount(np.unique(row[row >= 0]), minlength=num_classes)[:num_classes]
                    else:
                        label = self._labels[inp.piece_id]
                        self._spill.add_labelled(inp.split, result.windows, inp.piece_id, label)
                        c["pieces"][label] += 1
                        c["windows"][label] += len(result.windows)
                        c["notes"][label] += result.num_notes
        self._spill.close()
        if unmapped:
            lines = [f"  {path}: {names}" for path, names in unmapped[:20]]
            more = f"\n  ... and {len(unmapped) - 20} more files" if len(unmapped) > 20 else ""
            raise tasks.UnmappedTrackError(
                f"{self.name}: {len(unmapped)} file(s) have tracks that the track map {cfg.track_map!r} maps to no class:\n"
                + "\n".join(lines) + more
                + "\nAdd them to data.track_map (e.g. 'Vocal*=melody'), or set data.unmapped_tracks='ignore' to label their notes -1."
            )
        kinds = ("notes", "windows") if self.task.level == tasks.NOTE else ("pieces", "windows", "notes")
        self._counts = {
            s: {k: dict(zip(self._class_names, (int(x) for x in c[k]))) for k in kinds} for s, c in counts.items()
        }

    def _task_info(self) -> dict[str, Any]:
        return {
            "task": self.TASK,
            "level": self.task.level,
            "class_names": list(self._class_names),
            "num_classes": len(self._class_names),
            "ignore_label": tasks.IGNORE_LABEL,
            "max_len": self.config.max_len,
            "split": self.config.split,
            **self._split_notes,
            # Per split and class: note tasks {notes (labelled rows), windows (that hold the class)};
            # sequence tasks {pieces, windows, notes}.
            "class_counts": self._counts,
            "source": self._root_used or self._source_description(),
        }

    def _download_and_prepare(self, dl_manager, download_config):
        self._counts, self._split_notes = {}, {}
        super()._download_and_prepare(dl_manager, download_config)
        info = self._task_info()
        self.info.metadata["task"] = info
        (self.data_path / tasks.TASK_INFO_FILENAME).write_text(json.dumps(info, indent=1) + "\n")
        if self.options.print_summary:
            key = "notes" if self.task.level == tasks.NOTE else "pieces"
            for split, c in self._counts.items():
                if any(c[key].values()):
                    print(f"  {split} {key} per class: " + ", ".join(f"{k} {v}" for k, v in c[key].items()))


def _parse_split_lists(lists: Any, source: str) -> dict[str, str]:
    """{"train": [...], "valid": [...], "test": [...]} -> {normalized path: split}."""
    if not isinstance(lists, dict):
        raise tasks.SplitFileError(f"{source}: expected an object with train/valid/test lists")
    out: dict[str, str] = {}
    for key, paths in lists.items():
        if key == "note":
            continue
        split = SPLIT_FILE_KEYS.get(key)
        if split is None:
            raise tasks.SplitFileError(f"{source}: unknown key {key!r}; expected train, valid (or validation), test")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise tasks.SplitFileError(f"{source}: {key!r} must be a list of paths relative to the dataset root")
        for p in paths:
            norm = _normalize(p)
            if out.get(norm, split) != split:
                raise tasks.SplitFileError(f"{source}: {p!r} is in both {out[norm]!r} and {split!r}")
            out[norm] = split
    if not out:
        raise tasks.SplitFileError(f"{source}: no files listed")
    return out


def _normalize(rel: str) -> str:
    rel = rel.replace("\\", "/").strip()
    while rel.startswith("./"):
        rel = rel[2:]
    return rel


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


class _NoteTaskBuilder(_TaskBuilder, skip_registration=True):
    """Labels every note in the worker (`tasks.label_note_piece`)."""

    # 'track' or 'velocity'.
    LABEL_MODE = "track"
    # Demo corpus: name tracks by part (first part -> melody).
    RENAME_PARTS = False
    MIN_TRACKS = 1

    def _resolve_class_names(self) -> tuple[str, ...]:
        if self.LABEL_MODE == "velocity":
            return tasks.VELOCITY_CLASSES
        track_map = tasks.parse_track_map(self.config.track_map, self.config.class_names or self.task.class_names)
        return track_map.class_names

    def _worker_task(self):
        patterns = ()
        if self.LABEL_MODE == "track":
            patterns = tasks.parse_track_map(self.config.track_map, self._class_names).patterns
        return functools.partial(
            tasks.label_note_piece, max_len=self.config.max_len, mode=self.LABEL_MODE, patterns=patterns,
            unmapped=self.config.unmapped_tracks, rename_parts=self.RENAME_PARTS, min_tracks=self.MIN_TRACKS,
            blank_velocity=self.config.blank_velocity,
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
        inputs = builders.list_folder(root, self.config.extensions)
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
        inputs = builders.list_folder(root, self.config.extensions)
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
        return builders.Music21Demo._source_description(self)  # pylint: disable=protected-access

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        # The demo corpus listing (selection, cached conversion) of the pre-training builder.
        inputs = builders.demo_inputs(self.config, self.options)
        for inp in inputs:
            self._split_keys[inp.piece_id] = inp.name
        return inputs


# ----------------------------------------------------------------------------------------
# Sequence tasks.


class _SequenceTaskBuilder(_TaskBuilder, skip_registration=True):
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
                    raise tasks.UnknownClassError(
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
        inputs = builders.list_folder(root, self.config.extensions)
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
        inputs = builders.list_folder(root, self.config.extensions)
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
            raise tasks.SingleClassError(
                f"{self.name}: {root} has {len(classes)} label folder(s) {list(classes)}; a classification task "
                f"needs at least 2. Expected layout:\n{self.LAYOUT}"
            )
        self._class_names = classes
        inputs = builders.list_folder(root, self.config.extensions)
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
        return builders.Music21Demo._source_description(self)  # pylint: disable=protected-access

    def _resolve_class_names(self) -> tuple[str, ...]:
        classes = tuple(self.config.collections) or tasks.DEMO_COLLECTION_CLASSES
        if len(classes) < 2:
            raise tasks.SingleClassError(f"{self.name}: collections {list(classes)}: need at least 2 classes")
        return classes

    def _list_task_inputs(self, root: str | None) -> list[InputFile]:
        inputs = builders.demo_inputs(self.config, self.options)
        index = {c: i for i, c in enumerate(self._class_names)}
        for inp in inputs:
            self._labels[inp.piece_id] = index[inp.name.split("/", 1)[0]]
            self._split_keys[inp.piece_id] = inp.name
        return inputs


# Task name -> builder class (tasks.Task.builder).
BUILDERS: dict[str, type[_TaskBuilder]] = {
    b.TASK: b
    for b in (Pop909Melody, Pop909Velocity, Pianist8Composer, EmopiaEmotion, SequenceFolder, NoteFolder, DemoMelody, DemoCollection)
}

