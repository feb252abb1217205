"""Config -> a built TFDS dataset on disk, for pre-training corpora and fine-tuning tasks alike.

    dataset_dir = prepare(config.data)          # builds on first use, reuses afterwards
    source = pipeline.load_split(dataset_dir, "train")

The config is a pre-training data block (configs/prepare.py: `dataset` 'demo' | 'folder' | 'tasks') or
a fine-tuning one (configs/finetune_data.py: `task`). Every process of a multi-host run calls
`prepare`: process 0 builds first while the others wait, then they reuse its files (shared
data_dir) or build their own copy (a data_dir on each host's local disk).

Separate runs that share a data_dir are safe too: the build holds a lock next to the dataset
(`dataset_lock`); a second run waits, naming the holder, then reuses the dataset. A build
killed midway is found (TFDS's ``incomplete.*`` folder, or no completion marker) and redone,
never read.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Any

import ml_collections
from etils import epath

from midibert_jax.data import dataset_lock, tasks
from midibert_jax.data.builders import common, corpus, task_base, task_corpus, task_kinds
from midibert_jax.data.errors import DatasetConfigError, TaskConfigError


def is_task_config(config: ml_collections.ConfigDict) -> bool:
    """True for a fine-tuning data block (it names a `task`)."""
    return "task" in config


def build_options(config: ml_collections.ConfigDict) -> common.BuildOptions:
    """How the build runs (workers, timeouts, progress): the fields both data blocks share."""
    return common.BuildOptions(
        num_workers=config.num_workers, timeout=config.timeout, convert_timeout=config.demo.convert_timeout,
        memory_limit_mb=config.memory_limit_mb or None, progress=config.progress,
        cache_dir=tasks.expand(config.demo.cache_dir) or None,
    )


def resolve_split(config: Any) -> str:
    """The concrete split source of a fine-tuning data config ('auto' -> 'file' or 'seeded')."""
    task = tasks.get_task(config.task)
    split = config.split or task.default_split
    if split not in tasks.SPLIT_SOURCES:
        raise TaskConfigError(f"data.split must be one of {tasks.SPLIT_SOURCES}, got {split!r}")
    if split == "auto":
        root = tasks.expand(config.root)
        split = "file" if root and os.path.isfile(os.path.join(root, tasks.SPLIT_FILENAME)) else "seeded"
    if split == "official" and task.dataset not in ("pop909", "pianist8", "emopia"):
        raise TaskConfigError(f"task {task.name!r} has no official split; use 'file' or 'seeded'")
    return split


def _corpus_builder_config(config: ml_collections.ConfigDict):
    identity = dict(
        max_len=config.max_len, packing=config.packing, valid_fraction=config.valid_fraction, seed=config.seed,
        extra_pad_window=config.extra_pad_window,
    )
    if config.dataset == "folder":
        if not config.folder:
            raise DatasetConfigError("data.dataset='folder' needs data.folder (a folder of MIDI files)")
        folder = os.path.expanduser(config.folder)
        if not os.path.isdir(folder):
            raise DatasetConfigError(f"data.folder {folder} does not exist or is not a folder")
        return corpus.MidiFolder, corpus.folder_config(folder, name=config.name or None, **identity)
    if config.dataset == "demo":
        return corpus.Music21Demo, corpus.demo_config(
            name=config.name or None, max_pieces=config.demo.max_pieces or None,
            collections=tasks.split_names(config.demo.collections), writer=config.demo.writer,
            exclude=tuple(sorted(config.demo.get("exclude", ()))), **identity,
        )
    if config.dataset == "tasks":
        sources = [(dataset, tasks.expand(root)) for dataset, root in config.task_roots.items() if root]
        return task_corpus.TaskTrainCorpus, task_corpus.task_corpus_config(
            sources, [tasks.expand(f) for f in config.extra_folders], name=config.name or None, **identity)
    raise DatasetConfigError(f"unknown data.dataset {config.dataset!r}; expected 'demo', 'folder' or 'tasks'")


def _task_builder_config(config: ml_collections.ConfigDict):
    task = tasks.get_task(config.task)
    return task_kinds.BUILDERS[task.name], task_base.task_config(
        task.name,
        root=tasks.expand(config.root) if task.dataset == "folder" else "",
        max_len=config.max_len,
        split=resolve_split(config),
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        track_map=config.track_map if task.level == tasks.NOTE else "",
        class_names=tasks.split_names(config.class_names),
        unmapped_tracks=config.unmapped_tracks,
        blank_velocity=config.blank_velocity,
        max_pieces=config.demo.max_pieces or None,
        collections=tasks.split_names(config.demo.collections),
        writer=config.demo.writer,
        name=config.name or None,
    )


def make_builder(config: ml_collections.ConfigDict) -> corpus.MidiFolder:
    """The TFDS builder (not yet built) that a data config describes."""
    cls, builder_config = (_task_builder_config if is_task_config(config) else _corpus_builder_config)(config)
    return cls(config=builder_config, data_dir=os.path.expanduser(config.data_dir), options=build_options(config))


def download_config(config: ml_collections.ConfigDict):
    """TFDS DownloadConfig: the task's manual_dir, overwrite, and Beam settings."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    kwargs = {}
    if config.overwrite:
        kwargs["download_mode"] = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if is_task_config(config):
        if config.root:
            kwargs["manual_dir"] = tasks.expand(config.root)
    elif config.beam:
        import apache_beam as beam  # pylint: disable=import-outside-toplevel

        flags = shlex.split(config.beam_options)
        kwargs["beam_options"] = options = beam.options.pipeline_options.PipelineOptions(flags)
        if not flags:
            kwargs["beam_runner"] = beam.runners.DirectRunner()
        warning = direct_runner_warning(options)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    return tfds.download.DownloadConfig(**kwargs)


def direct_runner_warning(options) -> str | None:
    """One line when Beam options pick a DirectRunner mode that drops elements of a large corpus.

    Beam 2.78's DirectRunner lost examples in multi_processing and multi_threading mode, with no error,
    at 10^5 files; in_memory (its default) built them all (docs/scaling.md). The build's examples check
    fails such a build at its end; this says so at its start.
    """
    from apache_beam.options import pipeline_options as po  # pylint: disable=import-outside-toplevel

    runner = options.view_as(po.StandardOptions).runner
    mode = options.view_as(po.DirectOptions).direct_running_mode
    if runner not in (None, "DirectRunner", "direct", "Direct") or mode == "in_memory":
        return None
    return (f"warning: Beam's DirectRunner in {mode} mode lost examples of a 10^5-file build (docs/scaling.md); "
            "a short build fails at its end: --direct_running_mode=in_memory, or the default path, builds it whole")


def _process_index_and_barrier():
    """(this process' index, a barrier) in a jax.distributed run; (0, no-op) otherwise."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized() or jax.process_count() == 1:
        return 0, lambda name: None
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    return jax.process_index(), multihost_utils.sync_global_devices


def _build(config: ml_collections.ConfigDict, dataset_dir: epath.Path, out) -> None:
    """Builds the dataset in this process unless a complete one exists.

    A complete dataset is reused without the lock (it may sit on a read-only disk). Otherwise
    the build holds the dataset's lock throughout and first removes what killed builds left.
    """
    if dataset_lock.is_complete(dataset_dir) and not config.overwrite:
        return
    local = dataset_lock.is_local(dataset_dir)
    with dataset_lock.DatasetLock(dataset_dir, timeout=config.get("lock_timeout", 0.0), out=out):
        if local:
            for leftover in dataset_lock.incomplete_builds(dataset_dir):
                print(f"Removing {leftover}: left by a build that did not finish", file=out, flush=True)
                shutil.rmtree(leftover, ignore_errors=True)
        if dataset_dir.exists() and not dataset_lock.is_complete(dataset_dir):
            print(f"{dataset_dir} is half-built (no {dataset_lock.COMPLETE_MARKER}): rebuilding it", file=out, flush=True)
            dataset_dir.rmtree()
        elif not local and not dataset_dir.exists():
            print(f"Building {dataset_dir}: builds on a cloud path are not locked against other runs "
                  "(processes of this run wait for process 0)", file=out, flush=True)
        builder = make_builder(config)  # made under the lock: sees what another process finished
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        # TFDS's own bars cover writing the shards (seconds) and would only add lines; the builders
        # report the slow work themselves (midibert_jax.console).
        tfds.display_progress_bar(False)
        builder.download_and_prepare(download_config=download_config(config))
        if not (dataset_dir / dataset_lock.COMPLETE_MARKER).exists():
            dataset_lock.mark_complete(dataset_dir)


def prepare(config: ml_collections.ConfigDict, out=None) -> epath.Path:
    """Builds the dataset if needed; returns its folder (<data_dir>/<name>/<config>/<version>).

    In a multi-process run process 0 builds first and the others wait, then reuse its files
    (shared data_dir) or build their own copy (a data_dir on each host's local disk). Messages
    (waiting for another build, removing a killed one's leftovers) go to `out` (stderr).
    """
    out = out if out is not None else sys.stderr
    dataset_dir = make_builder(config).data_path
    process, barrier = _process_index_and_barrier()
    if process == 0:
        _build(config, dataset_dir, out)
    barrier(f"midibert_jax dataset {dataset_dir}")
    if process != 0:
        _build(config, dataset_dir, out)
    return dataset_dir
