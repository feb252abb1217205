"""Config -> a built TFDS dataset on disk: the one place the trainers and `prepare` build data.

    dataset_dir = prepare(config.data)          # builds on first use, reuses afterwards
    source = pipeline.load_split(dataset_dir, "train")

Every process of a multi-host run calls `prepare`; TFDS writes through a temporary folder and
renames it, so a process that finds the dataset complete reuses it.
"""

from __future__ import annotations

import os
import shlex
import sys

import ml_collections
from etils import epath

from midibert_jax.data import builders, manifest
from midibert_jax.data.errors import DataError


class DatasetConfigError(DataError, ValueError):
    """A data config that names no usable dataset (e.g. dataset='folder' without a folder)."""


def make_builder(config: ml_collections.ConfigDict) -> builders.MidiFolder:
    """The TFDS builder (not yet built) that a prepare config (configs/prepare.py) describes."""
    identity = dict(
        max_len=config.max_len, packing=config.packing, valid_fraction=config.valid_fraction, seed=config.seed,
        extra_pad_window=config.extra_pad_window,
    )
    options = builders.BuildOptions(
        num_workers=config.num_workers, timeout=config.timeout, convert_timeout=config.demo.convert_timeout,
        memory_limit_mb=config.memory_limit_mb or None, progress=config.progress,
        cache_dir=config.demo.cache_dir or None,
    )
    if config.dataset == "folder":
        if not config.folder:
            raise DatasetConfigError("data.dataset='folder' needs data.folder (a folder of MIDI files)")
        folder = os.path.expanduser(config.folder)
        if not os.path.isdir(folder):
            raise DatasetConfigError(f"data.folder {folder} does not exist or is not a folder")
        builder_config = builders.folder_config(folder, name=config.name or None, **identity)
        cls = builders.MidiFolder
    elif config.dataset == "demo":
        collections = tuple(c.strip() for c in config.demo.collections.split(",") if c.strip())
        builder_config = builders.demo_config(
            name=config.name or None, max_pieces=config.demo.max_pieces or None, collections=collections,
            writer=config.demo.writer, exclude=tuple(sorted(config.demo.get("exclude", ()))), **identity,
        )
        cls = builders.Music21Demo
    else:
        raise DatasetConfigError(f"unknown data.dataset {config.dataset!r}; expected 'demo' or 'folder'")
    return cls(config=builder_config, data_dir=os.path.expanduser(config.data_dir), options=options)


def download_config(config: ml_collections.ConfigDict):
    """TFDS DownloadConfig: overwrite and Beam settings of a prepare config."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    kwargs = {}
    if config.overwrite:
        kwargs["download_mode"] = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if config.beam:
        import apache_beam as beam  # pylint: disable=import-outside-toplevel

        flags = shlex.split(config.beam_options)
        kwargs["beam_options"] = beam.options.pipeline_options.PipelineOptions(flags)
        if not flags:
            kwargs["beam_runner"] = beam.runners.DirectRunner()
    return tfds.download.DownloadConfig(**kwargs)


def _process_index_and_barrier():
    """(this process' index, a barrier) in a jax.distributed run; (0, no-op) otherwise."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized() or jax.process_count() == 1:
        return 0, lambda name: None
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    return jax.process_index(), multihost_utils.sync_global_devices


def prepare(config: ml_collections.ConfigDict) -> epath.Path:
    """Builds the dataset if needed; returns its folder (<data_dir>/<name>/<config>/<version>).

    In a multi-process run process 0 builds first and the others wait, then reuse its files
    (shared data_dir) or build their own copy (a data_dir on each host's local disk).
    """
    builder = make_builder(config)
    if not config.progress:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        tfds.disable_progress_bar()
    process, barrier = _process_index_and_barrier()
    if process == 0:
        builder.download_and_prepare(download_config=download_config(config))
    barrier(f"midibert_jax dataset {builder.data_path}")
    if process != 0:
        builder = make_builder(config)  # sees process 0's files when data_dir is shared
        builder.download_and_prepare(download_config=download_config(config))
    return builder.data_path


def split_notes(dataset_dir: epath.PathLike, split: str) -> int:
    """Non-pad notes in `split`, from the build manifest."""
    return int(manifest.Manifest.load(dataset_dir).summary()["splits"][split]["notes"])
