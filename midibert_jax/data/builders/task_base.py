"""The fine-tuning datasets' common machinery: `TaskConfig`, the labelled spill, `TaskBuilder`.

The concrete builders are in `task_kinds` (see `tasks` for the task contract).

Each builder lists its inputs with their labels, assigns the splits ('official', 'file' or
'seeded'), tokenizes in a `workers.WorkerPool` (per-file timeout, crashed workers replaced),
and writes ArrayRecord shards with `manifest.jsonl` / `build_summary.json` (as the pre-training
builders do: every input file has a record, skipped files say why) and ``task_info.json``
(task, level, class names, class counts per split). The class names are also in the
DatasetInfo metadata (``metadata["task"]``).

Only local builds (no Beam): these datasets hold at most a few thousand files.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from midibert_jax.data import manifest, tasks, workers
from midibert_jax.data.builders import common
from midibert_jax.data.builders.common import InputFile
from midibert_jax.data.builders.corpus import MidiFolder
from midibert_jax.data.errors import (
    DatasetLayoutError, DatasetNotFoundError, SplitFileError, TaskConfigError, TaskDataError, UnmappedTrackError,
)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# Keys of split files (split.json and the official lists) -> split names.
SPLIT_FILE_KEYS = {"train": TRAIN, "valid": VALIDATION, "validation": VALIDATION, "test": TEST}
# MidiBERT-Piano's official file lists (midibert_jax/resources/).
OFFICIAL_SPLITS_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "resources", "midibert_splits.json"
)


# ----------------------------------------------------------------------------------------
# Configs.


@dataclasses.dataclass(eq=False)
class TaskConfig(common.MidiConfig):
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
            raise TaskConfigError(f"config {self.name}: fine-tuning datasets use packing='piece'")
        if self.split not in ("official", "file", "seeded"):
            raise TaskConfigError(f"config {self.name}: split must be 'official', 'file' or 'seeded', got {self.split!r}")
        if not 0.0 <= self.test_fraction < 1.0 or self.valid_fraction + self.test_fraction >= 1.0:
            raise TaskConfigError(
                f"config {self.name}: need 0 <= test_fraction and valid_fraction + test_fraction < 1, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        if self.unmapped_tracks not in tasks.UNMAPPED_TRACKS:
            raise TaskConfigError(f"config {self.name}: unmapped_tracks must be one of {tasks.UNMAPPED_TRACKS}")


@dataclasses.dataclass(eq=False)
class DemoTaskConfig(TaskConfig):
    """A demo task: which music21 works (the same fields as `corpus.DemoConfig`)."""

    split: str = "seeded"
    # Works to take (balanced across collections, seeded by `seed`); None -> all of `collections`.
    max_pieces: int | None = None
    # music21 collections (demo_collection: the classes, in label order; demo_melody: the sources).
    collections: tuple[str, ...] = ()
    # Score -> MIDI writer: 'fast' or 'music21' (demo_corpus).
    writer: str = "fast"


def config_name(config: TaskConfig, prefix: str = "") -> str:
    """Readable part + a hash of every identity field, e.g. 'official-len1024-1a2b3c4d'."""
    if config.split == "seeded":
        split = f"seeded-v{round(config.valid_fraction * 100):d}-t{round(config.test_fraction * 100):d}-s{config.seed}"
    else:
        split = config.split
    digest = hashlib.sha256(json.dumps(common.identity_fields(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
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
        raise TaskConfigError("resolve split='auto' first (prepare.resolve_split)")
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


class LabelledSpill(common.Spill):
    """`common.Spill` plus per-window labels ([max_len] rows for note tasks, one int for sequence tasks)."""

    def __init__(self, directory: str, max_len: int, level: str):
        super().__init__(directory, max_len)
        self.level = level
        self.sequence_labels: dict[str, array.array] = {}

    def add_labelled(self, split: str, windows_: np.ndarray, piece_id: int, labels) -> None:
        n = len(windows_)
        self.add(split, windows_, [piece_id] * n, range(n))
        if self.level == tasks.NOTE:
            key = f"{split}:labels"
            self.open_file(key, f"{split}.labels.bin")
            self.write(key, labels)
        else:
            self.sequence_labels.setdefault(split, array.array("q")).extend([int(labels)] * n)

    def examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        n = self.count(split)
        if not n:
            return
        labels = self.read(f"{split}.labels.bin", (self.max_len,), n) if self.level == tasks.NOTE else None
        meta = self.meta[split]
        for i, tokens in enumerate(self.tokens(split)):
            example = common.make_example(tokens, i, meta["piece_id"][i], meta["window"][i])
            if labels is not None:
                example["labels"] = next(labels)
            else:
                example["label"] = np.int32(self.sequence_labels[split][i])
            yield i, example


# ----------------------------------------------------------------------------------------
# The shared builder.


class TaskBuilder(MidiFolder, skip_registration=True):
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
        features = common.example_features(max_len)
        if self.task.level == tasks.NOTE:
            features["labels"] = tfds.features.Tensor(shape=(max_len,), dtype=np.int32)
        else:
            features["label"] = tfds.features.Scalar(dtype=np.int32)
        return common.LocalDatasetInfo(
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
            raise DatasetNotFoundError(self._not_found(root))
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
            raise TaskConfigError(f"{self.name}: fine-tuning datasets are built locally; Beam is not supported")
        root = self._root(dl_manager) if self._needs_root() else None
        self._source = root or self._source_description()
        pending = common.InputSpool(os.path.join(self._spill_dir, "pending.jsonl"))
        for inp in self.list_split_inputs(root):  # the listing is let go before tokenizing
            if inp.status == "pending":
                pending.add(inp)
            else:
                self._records.add(inp.record())
        self._tokenize(pending)
        if not self._spill.count(TRAIN):
            raise TaskDataError(self._no_training_piece(root))
        return {split: self._spill.examples(split) for split in SPLITS if self._spill.count(split)}

    def _no_training_piece(self, root: str | None) -> str:
        """The one-line error of a build whose train split came out empty, naming the train files and why."""
        root = self._root_used or root
        failed = [r for r in self._records.records() if r.split == TRAIN and r.status != "ok"]
        if failed:
            return f"{self.name}: no usable piece in the train split of {root}: {manifest.brief(failed)}"
        listed = self._split_notes.get("split_source", "the split")
        return f"{self.name}: no file of the train split ({listed}) is in {root}; only validation / test files are"

    def list_split_inputs(self, root: str | None) -> list[InputFile]:
        """Every file under `root`, hashed, with its split ('train' / 'validation' / 'test'); files that
        cannot be used keep their status and reason (not a song of the dataset, not in the split lists,
        a duplicate, unreadable). The one answer to "which files of this task are in which split",
        shared by this builder and the pre-training corpora of task training splits (`task_corpus`).
        """
        self._root_used = root
        self._class_names = tuple(self._resolve_class_names())
        inputs = self._list_task_inputs(root)
        if not any(i.status == "pending" for i in inputs):
            found = f"{len(inputs)} file(s), none usable: {manifest.brief([i.record() for i in inputs])}" if inputs \
                else "no files"
            raise DatasetLayoutError(f"{self.name}: no usable MIDI file in {self._root_used or root} ({found}). "
                                     f"Expected layout:\n{self.LAYOUT}")
        if self.config.split in ("official", "file"):
            assignment = self._listed_splits(inputs, root)
        common.hash_and_split(inputs, 0.0, self.config.seed, threads=self.options.hash_threads, progress=self.options.progress)
        if self.config.split == "seeded":
            self._seeded_splits(inputs)
        else:
            for inp in inputs:
                if inp.sha256 is not None and inp.status in ("pending", "duplicate"):
                    inp.split = assignment[inp.piece_id]
        return inputs

    def _listed_splits(self, inputs: list[InputFile], root: str | None) -> dict[int, str]:
        """Official lists or split.json: split per piece_id; unlisted files become 'ignored'."""
        if self.config.split == "official":
            if not self.OFFICIAL:
                raise TaskConfigError(f"{self.name} has no official split; use 'file' or 'seeded'")
            with open(OFFICIAL_SPLITS_PATH, encoding="utf-8") as f:
                lists = json.load(f)[self.OFFICIAL]
            source, strict = "MidiBERT-Piano's official split lists", False
        else:
            path = os.path.join(root or "", tasks.SPLIT_FILENAME)
            try:
                with open(path, encoding="utf-8") as f:
                    lists = json.load(f)
            except FileNotFoundError:
                raise SplitFileError(f"split='file' but there is no {path}") from None
            except json.JSONDecodeError as e:
                raise SplitFileError(f"{path} is not valid JSON: {e}") from None
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
            raise DatasetLayoutError(
                f"{self.name}: none of the {len(key_split)} files of {source} is in {root} "
                f"(e.g. {sorted(key_split)[:3]}). Expected layout:\n{self.LAYOUT}"
            )
        if missing and strict:
            raise SplitFileError(f"{source} lists {len(missing)} files that do not exist, e.g. {missing[:5]}")
        # Every missing file by name and split (`missing_lines` prints them, bounded).
        self._split_notes = {"split_source": source, "listed": len(key_split), "listed_missing": len(missing),
                             "listed_missing_files": [[path, key_split[path]] for path in missing]}
        if missing and self.options.print_summary:
            print(f"{self.name}: {len(missing)} of the {len(key_split)} files of {source} are not in {root} "
                  f"(e.g. {missing[:3]}; all in {tasks.TASK_INFO_FILENAME})")
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

    def _tokenize(self, pending: common.InputSpool) -> None:
        cfg, opts = self.config, self.options
        self._spill = LabelledSpill(self._spill_dir, cfg.max_len, self.task.level)
        num_classes = len(self._class_names)
        counts = {s: {"pieces": np.zeros(num_classes, np.int64), "windows": np.zeros(num_classes, np.int64),
                      "notes": np.zeros(num_classes, np.int64)} for s in SPLITS}
        unmapped: list[tuple[str, list[str]]] = []
        for item in common.tokenize_pending(
            pending, self._worker_task(), name=self.name, options=opts, packing="piece", records=self._records
        ):
            inp, result = item.input, item.result
            if result is None:
                value = item.outcome.value if item.outcome.ok else None
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
            raise UnmappedTrackError(
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
            splits = [split for split, c in self._counts.items() if any(c[key].values())]
            if splits:
                print(f"  {key} per class ({'/'.join(splits)}): " + ", ".join(
                    f"{name} " + "/".join(str(self._counts[split][key][name]) for split in splits)
                    for name in self._class_names))


def missing_lines(info: dict[str, Any], limit: int = 10) -> list[str]:
    """The listed files a build did not find (`task_info.json`'s `listed_missing_files`), by name: for command
    output beside `manifest.left_out_lines`."""
    if "listed_missing_files" not in info and info.get("listed_missing"):  # built before the names were kept
        return [f"missing {info['listed_missing']} file(s) listed in {info['split_source']} (rebuild with "
                "--config.overwrite=True to have them named)"]
    lines = [f"missing ({split}) {path}: listed in {info['split_source']}, not in the dataset folder"
             for path, split in info.get("listed_missing_files", ())]
    return manifest.bounded(lines, limit, f"missing (see {tasks.TASK_INFO_FILENAME})")


def _parse_split_lists(lists: Any, source: str) -> dict[str, str]:
    """{"train": [...], "valid": [...], "test": [...]} -> {normalized path: split}."""
    if not isinstance(lists, dict):
        raise SplitFileError(f"{source}: expected an object with train/valid/test lists")
    out: dict[str, str] = {}
    for key, paths in lists.items():
        if key == "note":
            continue
        split = SPLIT_FILE_KEYS.get(key)
        if split is None:
            raise SplitFileError(f"{source}: unknown key {key!r}; expected train, valid (or validation), test")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise SplitFileError(f"{source}: {key!r} must be a list of paths relative to the dataset root")
        for p in paths:
            norm = _normalize(p)
            if out.get(norm, split) != split:
                raise SplitFileError(f"{source}: {p!r} is in both {out[norm]!r} and {split!r}")
            out[norm] = split
    if not out:
        raise SplitFileError(f"{source}: no files listed")
    return out


def _normalize(rel: str) -> str:
    rel = rel.replace("\\", "/").strip()
    while rel.startswith("./"):
        rel = rel[2:]
    return rel

