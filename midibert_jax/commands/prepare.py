"""`midibert-jax prepare`: build a TFDS dataset (the music21 demo corpus or a MIDI folder).

    midibert-jax prepare                                             # the demo corpus, configs/prepare.py:demo
    midibert-jax prepare --config.folder=/data/my_midis              # your folder, configs/prepare.py:folder
    midibert-jax prepare --config configs/prepare.py:demo,runlocal --config.max_len=128

Settings come from configs/prepare.py (`--config PATH:ARG`; without it, the folder variant when
`--config.folder` is given, else the demo variant), then `--config.KEY=VALUE` overrides (dotted
keys, e.g. `--config.demo.max_pieces=300`), type-checked against the field; a field the variant
does not read (`folder` with `:demo`, `beam_options` without `beam`) is refused in one line.
Prints the build summary (files ok / skipped / duplicate / ignored, pieces, windows, notes per
split); the manifest of every input file is written beside the shards. A dataset another
process is building is waited for and reused (see `midibert_jax.data.prepare`).
"""

from __future__ import annotations

import argparse
import os
import pathlib

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "prepare.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="config file and its argument, PATH[:ARG] (default: configs/prepare.py:folder when --config.folder "
        "is given, else configs/prepare.py:demo); override any field with --config.KEY=VALUE, e.g. "
        "--config.folder=DIR --config.max_len=512",
    )


def resolve_config(args: argparse.Namespace):
    """The config after --config and the --config.KEY=VALUE overrides (ConfigError on a bad one)."""
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    overrides = list(getattr(args, "config_overrides", []))
    spec = args.config
    if spec is None:
        spec = f"{DEFAULT_CONFIG}:{'folder' if any(key == 'folder' for key, _ in overrides) else 'demo'}"
    return config_loading.load_with_overrides(spec, overrides)


def run(args: argparse.Namespace) -> int:
    from midibert_jax.data import dataset_lock, manifest, prepare, tasks  # pylint: disable=import-outside-toplevel
    from midibert_jax.data.builders import task_base  # pylint: disable=import-outside-toplevel

    config = resolve_config(args)
    dataset_dir = prepare.make_builder(config).data_path
    existed = dataset_lock.is_complete(dataset_dir) and not config.overwrite
    prepare.prepare(config)
    if existed:
        print(f"Reusing the existing dataset at {dataset_dir}")
    built = manifest.Manifest.load(dataset_dir)
    summary = built.summary()
    summary["data_dir"] = os.fspath(dataset_dir)
    print(manifest.format_summary(summary))
    left_out = manifest.left_out_lines(built.records, limit=10)
    if prepare.is_task_config(config):
        left_out += task_base.missing_lines(tasks.load_task_info(dataset_dir), limit=10)
    for line in left_out:
        print(f"  {line}")
    print(f"  manifest: {dataset_dir / manifest.MANIFEST_FILENAME}")
    return 0
