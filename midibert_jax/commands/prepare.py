"""`midibert-jax prepare`: build a TFDS dataset (the music21 demo corpus or a MIDI folder).

    midibert-jax prepare                                  # the demo corpus, configs/prepare.py:demo
    midibert-jax prepare --folder /data/my_midis          # a folder of MIDI files
    midibert-jax prepare --config configs/prepare.py:demo,runlocal --set max_len=128

Settings come from configs/prepare.py (`--config PATH:ARG`), then `--set key=value`
overrides (dotted keys, e.g. `--set demo.max_pieces=300`), then the explicit flags below.
Prints the build summary (files ok / skipped / duplicate / ignored, pieces, windows, notes per
split); the manifest of every input file is written beside the shards.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "prepare.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=f"{DEFAULT_CONFIG}:demo",
        help="config file and its argument, PATH[:ARG] (default: configs/prepare.py:demo)",
    )
    parser.add_argument("--folder", help="build the folder dataset from this MIDI folder (sets dataset=folder)")
    parser.add_argument("--data-dir", help="root folder of the TFDS datasets")
    parser.add_argument("--max-len", type=int, help="rows per window")
    parser.add_argument("--packing", choices=("piece", "reference"), help="windowing (see configs/prepare.py)")
    parser.add_argument("--workers", type=int, help="tokenizer processes (0: all CPUs)")
    parser.add_argument("--beam", action="store_true", help="build with Apache Beam")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )


class PrepareError(Exception):
    """A bad prepare request (config file, override)."""


def resolve_config(args: argparse.Namespace):
    """The config after --config, --set and the explicit flags."""
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    try:
        config = config_loading.load_config(args.config)
        for item in args.set:
            key, sep, text = item.partition("=")
            if not sep:
                raise PrepareError(f"--set {item!r}: expected KEY=VALUE")
            config_loading.apply_override(config, key, text)
        for key, text in getattr(args, "config_overrides", []):
            config_loading.apply_override(config, key, text)
    except config_loading.ConfigError as e:
        raise PrepareError(str(e)) from e
    if args.folder:
        config.dataset, config.folder = "folder", args.folder
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.max_len is not None:
        config.max_len = args.max_len
    if args.packing:
        config.packing = args.packing
    if args.workers is not None:
        config.num_workers = args.workers
    if args.beam:
        config.beam = True
    if args.overwrite:
        config.overwrite = True
    if args.quiet:
        config.progress = False
    return config


def run(args: argparse.Namespace) -> int:
    from midibert_jax.data import builders, datasets, demo_corpus, manifest  # pylint: disable=import-outside-toplevel

    try:
        config = resolve_config(args)
        builder = datasets.make_builder(config)
        existed = builder.is_prepared() and not config.overwrite
        datasets.prepare(config)
    except (PrepareError, datasets.DatasetConfigError, builders.BuildError, demo_corpus.DemoCorpusError) as e:
        print(f"midibert-jax prepare: error: {e}", file=sys.stderr)
        return 2
    if existed:
        print(f"Reusing the existing dataset at {builder.data_path}")
    built = manifest.Manifest.load(builder.data_path)
    summary = built.summary()
    summary["data_dir"] = os.fspath(builder.data_path)
    print(manifest.format_summary(summary))
    for line in manifest.skipped_lines(built.records, limit=10):
        print(f"  skipped {line}")
    print(f"  manifest: {builder.data_path / manifest.MANIFEST_FILENAME}")
    return 0
