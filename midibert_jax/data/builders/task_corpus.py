"""Pre-training corpora made of task datasets' training splits (plus extra folders), leak-free by construction.

    cfg = task_corpus_config((("pop909", "/data/POP909"), ("pianist8", "/data/Pianist8")),
                             extra_folders=("/data/POP1K7",), max_len=1024)
    TaskTrainCorpus(config=cfg, data_dir=...).download_and_prepare()   # or data.prepare.prepare(config)

The paper pre-trains on the union of its task datasets and POP1K7; its reference code puts every
task's test files into pre-training. Here each named dataset is listed exactly as its fine-tuning
builder lists it (`TaskBuilder.list_split_inputs`: the same files, the same official split), and:

* its validation and test files are left out (manifest status 'ignored', kind 'held_out');
* any other file, from any source or extra folder, whose bytes equal a held-out file's is left out
  too (kind 'held_out_copy', the reason names the held-out file);
* files that are not usable for the task (not a song of the dataset, not in the split lists) keep
  their status and reason; everything left is de-duplicated by content across all sources and split
  into pre-training train / validation by `valid_fraction` (a seeded split of unique contents).

Manifest paths are `<source>/<path inside it>` (`pop909/001/001.mid`, `POP1K7/src_001/x.mid`), so the
summary's per-folder table is the per-source count. Byte-identical copies are caught; a re-encoded
copy of a test song (other bytes, same notes) is not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence

from midibert_jax.data.builders import common, task_base
from midibert_jax.data.builders.common import BuildOptions, InputFile, MidiConfig
from midibert_jax.data.builders.corpus import MidiFolder
from midibert_jax.data.errors import DatasetConfigError

# Dataset name -> the task whose builder lists it (melody and velocity share POP909's files and split).
DATASET_TASKS = {"pop909": "melody", "pianist8": "composer", "emopia": "emotion"}
HELD_OUT, HELD_OUT_COPY = "held_out", "held_out_copy"


@dataclasses.dataclass(eq=False)
class TaskCorpusConfig(MidiConfig):
    """Which task datasets (training splits only) and extra folders make the corpus."""

    # (dataset, folder) pairs, dataset one of DATASET_TASKS: the official training split of each enters.
    sources: tuple[tuple[str, str], ...] = ()
    # Folders of MIDI files taken whole (e.g. POP1K7, your ASAP / GiantMIDI clones).
    extra_folders: tuple[str, ...] = ()


def task_corpus_config(sources: Sequence[tuple[str, str]], extra_folders: Sequence[str] = (), *,
                       name: str | None = None, **identity) -> TaskCorpusConfig:
    """A `TaskCorpusConfig` named after its sources, e.g. 'pop909+POP1K7-piece512-v10-s0-1a2b3c4d'."""
    sources = tuple((d, os.path.abspath(os.path.expanduser(r))) for d, r in sources)
    extra = tuple(os.path.abspath(os.path.expanduser(f)) for f in extra_folders)
    for dataset, _ in sources:
        if dataset not in DATASET_TASKS:
            raise DatasetConfigError(f"data.task_roots: unknown dataset {dataset!r}; choose from {sorted(DATASET_TASKS)}")
    if not sources and not extra:
        raise DatasetConfigError("data.task_roots: name at least one task dataset folder (or data.extra_folders)")
    cfg = TaskCorpusConfig(name="tmp", sources=sources, extra_folders=extra, **identity)
    digest = hashlib.sha256(json.dumps(common.identity_fields(cfg), sort_keys=True, default=str).encode()).hexdigest()[:8]
    label = "+".join([d for d, _ in sources] + [_source_name(f) for f in extra])
    cfg.name = name or f"{common.config_name(label, cfg.max_len, cfg.packing, cfg.valid_fraction, cfg.seed)}-{digest}"
    return cfg


def _source_name(folder: str) -> str:
    return os.path.basename(os.path.normpath(folder)) or "folder"


def split_inputs(dataset: str, root: str, options: BuildOptions) -> list[InputFile]:
    """The files of a task dataset under `root` with their official split, as its fine-tuning builder sees them."""
    from midibert_jax.data.builders import task_kinds  # pylint: disable=import-outside-toplevel

    task = DATASET_TASKS[dataset]
    if not os.path.isdir(root) or not os.listdir(root):
        raise DatasetConfigError(f"data.task_roots.{dataset}: {root} does not exist or is empty")
    cfg = task_base.task_config(task, name="listing")
    with tempfile.TemporaryDirectory(prefix="midibert-listing-") as scratch:  # the builder writes nothing there
        builder = task_kinds.BUILDERS[task](config=cfg, data_dir=scratch,
                                            options=dataclasses.replace(options, print_summary=False))
        return builder.list_split_inputs(root)


def task_train_inputs(config: TaskCorpusConfig, options: BuildOptions) -> list[InputFile]:
    """Every file of every source, renumbered; held-out files and their byte copies 'ignored' with the reason.

    The files left 'pending' are the candidates (task training splits and the extra folders); the
    corpus builder de-duplicates them across sources and splits them for pre-training.
    """
    held: dict[str, str] = {}  # sha256 -> which held-out file
    out: list[InputFile] = []
    for dataset, root in config.sources:
        for inp in split_inputs(dataset, root, options):
            inp.name = f"{dataset}/{inp.name}"
            if inp.split in (task_base.VALIDATION, task_base.TEST) and inp.sha256 is not None:
                held.setdefault(inp.sha256, f"{inp.name} ({dataset} {inp.split} split)")
                if inp.status in ("pending", "duplicate"):
                    inp.status, inp.error_kind = "ignored", HELD_OUT
                    inp.reason = f"{dataset} {inp.split} split: held out of pre-training"
            elif inp.status == "duplicate":
                inp.status = "pending"  # re-judged below against every source
            inp.split = None
            out.append(inp)
    for folder in config.extra_folders:
        files = common.list_folder(folder, config.extensions)
        common.hash_and_split(files, 0.0, config.seed, threads=options.hash_threads, progress=options.progress)
        for inp in files:
            inp.name = f"{_source_name(folder)}/{inp.name}"
            if inp.status == "duplicate":
                inp.status = "pending"
            inp.split = None
            out.append(inp)
    for piece_id, inp in enumerate(out):
        inp.piece_id = piece_id
        if inp.status == "pending":
            inp.reason, inp.error_kind = None, None
            if inp.sha256 in held:
                inp.status, inp.error_kind = "ignored", HELD_OUT_COPY
                inp.reason = f"same bytes as {held[inp.sha256]}: held out of pre-training"
    return out


class TaskTrainCorpus(MidiFolder):
    """Octuple windows of the training splits of task datasets plus extra folders (see the module docstring)."""

    VERSION = MidiFolder.VERSION
    RELEASE_NOTES = MidiFolder.RELEASE_NOTES
    BUILDER_CONFIGS = [TaskCorpusConfig(name="default", description="Set `sources` (and `extra_folders`).")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = None

    @property
    def config(self) -> TaskCorpusConfig:
        return self.builder_config

    def _source_description(self) -> str:
        parts = [f"{d} training split ({r})" for d, r in self.config.sources] + list(self.config.extra_folders)
        return "; ".join(parts)

    def _list_inputs(self, dl_manager) -> list[InputFile]:
        return task_train_inputs(self.config, self.options)


def held_out_hashes(records) -> set[str]:
    """Content hashes of the held-out files in a manifest's records (for checks and tests)."""
    return {r.sha256 for r in records if r.error_kind == HELD_OUT and r.sha256}

