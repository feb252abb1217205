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
import ast
import importlib.util
import os
import pathlib
import shlex
import sys
from typing import Any

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


def load_config(spec: str):
    """`PATH[:ARG]` -> the ConfigDict of PATH's get_config(ARG)."""
    path, _, arg = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise PrepareError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location("_midibert_prepare_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(arg) if arg else module.get_config()
    except ValueError as e:
        raise PrepareError(f"{path}: {e}") from e


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise PrepareError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise PrepareError(f"cannot parse {text!r}") from e
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        raise PrepareError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config, overrides: list[str]) -> None:
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise PrepareError(f"--set {item!r}: expected KEY=VALUE")
        node, *rest = key.split(".")
        target = config
        path = [node, *rest]
        for name in path[:-1]:
            if name not in target:
                raise PrepareError(f"--set {key}: unknown field {name!r}")
            target = target[name]
        if path[-1] not in target:
            raise PrepareError(f"--set {key}: unknown field; known: {', '.join(sorted(target.keys()))}")
        try:
            target[path[-1]] = _parse_value(text, target[path[-1]])
        except PrepareError as e:
            raise PrepareError(f"--set {key}: {e}") from e


def resolve_config(args: argparse.Namespace):
    """The config after --config, --set and the explicit flags."""
    config = load_config(args.config)
    apply_overrides(config, args.set)
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


def make_builder(config):
    """The TFDS builder (not yet built) that `config` describes."""
    from midibert_jax.data import builders  # pylint: disable=import-outside-toplevel

    identity = dict(
        max_len=config.max_len, packing=config.packing, valid_fraction=config.valid_fraction, seed=config.seed,
        extra_pad_window=config.extra_pad_window,
    )
    options = builders.BuildOptions(
        num_workers=config.num_workers, timeout=config.timeout, convert_timeout=config.demo.convert_timeout,
        memory_limit_mb=config.memory_limit_mb or None, progress=config.progress, cache_dir=config.demo.cache_dir or None,
        print_summary=False,  # `run` prints a fuller one
    )
    if config.dataset == "folder":
        if not config.folder:
            raise PrepareError("dataset=folder needs a folder (--folder PATH or --set folder=PATH)")
        builder_config = builders.folder_config(os.path.expanduser(config.folder), name=config.name or None, **identity)
        cls = builders.MidiFolder
    elif config.dataset == "demo":
        collections = tuple(c.strip() for c in config.demo.collections.split(",") if c.strip())
        builder_config = builders.demo_config(
            name=config.name or None, max_pieces=config.demo.max_pieces or None, collections=collections,
            writer=config.demo.writer, **identity,
        )
        cls = builders.Music21Demo
    else:
        raise PrepareError(f"unknown dataset {config.dataset!r}; expected 'demo' or 'folder'")
    data_dir = os.path.expanduser(config.data_dir)
    return cls(config=builder_config, data_dir=data_dir, options=options)


def download_config(config):
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


def run(args: argparse.Namespace) -> int:
    from midibert_jax.data import builders, demo_corpus, manifest  # pylint: disable=import-outside-toplevel

    try:
        config = resolve_config(args)
        builder = make_builder(config)
        if not config.progress:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

            tfds.disable_progress_bar()
        existed = builder.is_prepared() and not config.overwrite
        builder.download_and_prepare(download_config=download_config(config))
    except (PrepareError, builders.BuildError, demo_corpus.DemoCorpusError) as e:
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
