"""The pre-training corpora: TFDS builders writing Octuple windows to ArrayRecord shards.

* `MidiFolder` ("midi_folder"): a folder of MIDI files (the user's corpus). The folder comes
  from `MidiConfig.folder` or, when that is empty, from the download config's `manual_dir`.
* `Music21Demo` ("music21_demo"): scores shipped inside music21, converted to MIDI by
  `demo_corpus` (cached), then built like a folder.

Examples and splits: see `builders.common`. Every build writes ``manifest.jsonl`` and
``build_summary.json`` next to the shards (see `manifest`). A split that ends up with no
windows is not written (and the summary says so).

Local builds tokenize in a `workers.WorkerPool` (per-file timeout, crashed or hung workers
replaced) and spill windows to a temporary file before TFDS writes the shards; with a Beam
runner or Beam options in the `DownloadConfig` the same work runs as a Beam pipeline
(`builders.beam`).

Caveats: workers are started with 'spawn', so a script that builds a dataset needs the usual
``if __name__ == "__main__":`` guard. Input files must be readable by the workers as local
paths (for a cluster: a shared or mounted filesystem). With Beam, a split whose files all fail
to tokenize makes TFDS stop ("0 examples"); the local build instead leaves it out and says so.

    builder = MidiFolder(config=folder_config("/data/my_midis", max_len=1024), data_dir=...)
    builder.download_and_prepare()        # or data.prepare.prepare(config): locked, reused
    print(manifest.format_summary(builder.summary))
    train = common.load_data_source(builder.data_path, "train")
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from typing import Any

import tensorflow_datasets as tfds

from midibert_jax import console
from midibert_jax.data import demo_corpus, manifest, windows, workers
from midibert_jax.data.builders import beam
from midibert_jax.data.builders.common import (
    FILE_FORMAT, TRAIN, VALIDATION, BuildOptions, FolderListing, InputFile, InputSpool, LocalDatasetInfo, MidiConfig,
    Spill, bounded_local_writer, config_name, example_features, hash_inputs, identity_fields, make_spill_dir,
    split_hashed, tokenize_pending,
)
from midibert_jax.data.errors import BuildError


# ----------------------------------------------------------------------------------------
# Configs.


@dataclasses.dataclass(eq=False)
class DemoConfig(MidiConfig):
    """The music21 demo corpus: which works, and how they are converted."""

    # Works to take (balanced across collections, seeded by `seed`); None -> all (~13k, slow).
    max_pieces: int | None = 1000
    # music21 collections to draw from; empty -> all except demos/theoryExercises (and never the held-out four).
    collections: tuple[str, ...] = ()
    # Score -> MIDI writer: "fast" or "music21" (see demo_corpus).
    writer: str = "fast"
    # Works never taken (their keys, e.g. "airdsAirs/book1.abc#83"): a downstream task's held-out pieces,
    # so that pre-training does not see, even unlabelled, what the fine-tuned model is tested on.
    exclude: tuple[str, ...] = ()


def folder_config(folder: str = "", *, name: str | None = None, **kwargs) -> MidiConfig:
    """A `MidiConfig` for `folder`, named after the folder and the identity fields."""
    cfg = MidiConfig(name="tmp", folder=os.fspath(folder), **kwargs)
    cfg.name = name or config_name(
        os.path.basename(os.path.normpath(folder)) if folder else "manual", cfg.max_len, cfg.packing, cfg.valid_fraction, cfg.seed
    )
    if cfg.extra_pad_window and not name:
        cfg.name += "-xpad"
    return cfg


def _same_identity(a: MidiConfig, b: MidiConfig) -> bool:
    return type(a) is type(b) and identity_fields(a) == identity_fields(b)


def demo_config(*, name: str | None = None, **kwargs) -> DemoConfig:
    """A `DemoConfig`: one of the registered configs ("default", "reference", "small") when the
    fields match one (and `name` is not given), else a new one named after its fields."""
    cfg = DemoConfig(name="tmp", **kwargs)
    if name:
        cfg.name = name
        return cfg
    for registered in Music21Demo.BUILDER_CONFIGS:
        if _same_identity(cfg, registered):
            return registered
    pieces = "all" if cfg.max_pieces is None else str(cfg.max_pieces)
    cfg.name = config_name(f"n{pieces}_{cfg.writer}", cfg.max_len, cfg.packing, cfg.valid_fraction, cfg.seed)
    if cfg.extra_pad_window:
        cfg.name += "-xpad"
    if cfg.collections:
        cfg.name += "-" + hashlib.sha256(",".join(sorted(cfg.collections)).encode()).hexdigest()[:8]
    if cfg.exclude:
        cfg.name += "-x" + hashlib.sha256("\n".join(sorted(cfg.exclude)).encode()).hexdigest()[:8]
    return cfg


# ----------------------------------------------------------------------------------------
# Builders.


class MidiFolder(tfds.core.GeneratorBasedBuilder):
    """Octuple windows of a folder of MIDI files (see the module docstring); the base of every builder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [MidiConfig(name="default", description="A folder given as manual_dir, default settings.")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put MIDI files (.mid/.midi/.kar, any depth) in a folder and pass it as `manual_dir`
    (or set `MidiConfig.folder`). Other files are listed in the manifest as ignored.
    """

    # The per-file task run in the worker processes: (path, *, max_len, packing) -> PieceResult.
    tokenize_task = staticmethod(workers.tokenize_piece)
    # Splits this builder writes (listed in the summary when one ends up empty).
    SPLITS: tuple[str, ...] = (TRAIN, VALIDATION)

    def __init__(self, *, options: BuildOptions | None = None, **kwargs):
        kwargs.setdefault("file_format", FILE_FORMAT)
        self.options = options or BuildOptions()
        self.summary: dict[str, Any] | None = None
        self._use_beam = False
        self._records: manifest.RecordSpool | None = None
        self._spill: Spill | None = None
        self._spill_dir: str | None = None
        # Every config of ours is a custom one: TFDS's warning about it would print the whole config.
        with console.dropped_log_messages("absl", "Using custom data configuration"):
            super().__init__(**kwargs)

    def _log_download_bytes(self) -> None:
        """Says what is built where (TFDS's own line has only 'Unknown size' to tell)."""
        print(f"Building {self.name}/{self.builder_config.name} in {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        """Nothing: the summary line printed at the end of the build says it."""

    @property
    def config(self) -> MidiConfig:
        return self.builder_config

    def load_summary(self) -> dict[str, Any]:
        """The build summary: of this run, or read back from the dataset built earlier."""
        if self.summary is None:
            self.summary = manifest.Manifest.load(self.data_path).summary()
        return self.summary

    def _info(self) -> tfds.core.DatasetInfo:
        max_len = self.builder_config.max_len
        return LocalDatasetInfo(
            builder=self,
            description="Octuple token windows (REFERENCE.md §1) of MIDI files.",
            features=tfds.features.FeaturesDict(example_features(max_len)),
            metadata=tfds.core.MetadataDict(),
        )

    # -- inputs --------------------------------------------------------------------------

    def _list_inputs(self, dl_manager) -> Iterable[InputFile]:
        folder = self.config.folder or os.fspath(dl_manager.manual_dir)
        self._source = folder
        return FolderListing(folder, self.config.extensions)

    def _source_description(self) -> str:
        return getattr(self, "_source", None) or self.config.folder or "manual_dir"

    # -- generation ----------------------------------------------------------------------

    def _download_and_prepare(self, dl_manager, download_config):
        start = time.monotonic()
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        # The build's own files (inputs, manifest records, spilled windows) stay on disk until the manifest is written.
        self._spill_dir = make_spill_dir(self.data_path)
        self._records = manifest.RecordSpool(os.path.join(self._spill_dir, "records.jsonl"))
        try:
            with bounded_local_writer(data_dir=self.data_path):
                super()._download_and_prepare(dl_manager, download_config)
            if self._use_beam:
                for record in beam.collect_records(self.data_path, (TRAIN, VALIDATION)):
                    self._records.add(record)
            examples = {name: info.num_examples for name, info in self.info.splits.items()}
            info = {
                "dataset": f"{self.name}/{self.builder_config.name}",
                "source": self._source_description(),
                "config": identity_fields(self.config),
                "examples": examples,
                "empty_splits": [s for s in self.SPLITS if s not in examples and self._split_expected(s)],
                "build_seconds": round(time.monotonic() - start, 2),
                "beam": self._use_beam,
            }
            self.summary = self._records.write_manifest(self.data_path, info)
            if self._use_beam:
                beam.check_examples(self.summary["splits"], examples, self.config)
            manifest.write_summary(self.data_path, self.summary)
            self.info.metadata["summary"] = {k: v for k, v in self.summary.items() if k != "slowest"}
            if self.options.print_summary:
                print(manifest.summary_line(self.summary))
        finally:
            self._records.close()
            if self._spill is not None:
                self._spill.close()
            if self._spill_dir:
                shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill, self._spill_dir = None, None

    def _split_expected(self, split: str) -> bool:
        return split == TRAIN or self.config.valid_fraction > 0

    def _split_generators(self, dl_manager):
        pending = self._split_inputs(dl_manager)
        if self._use_beam:
            pending = list(pending)
            splits = {}
            for split in (TRAIN, VALIDATION):
                members = [i for i in pending if i.split == split]
                if members:
                    inputs = beam.write_inputs(self.data_path, split, members)
                    records = beam.records_path(self.data_path, split)
                    splits[split] = beam.split_transform(
                        os.fspath(inputs), self.config, self.options, os.fspath(records), self._task(),
                        os.fspath(beam.tokens_dir(self.data_path, split)),
                    )
            return splits
        self._tokenize_locally(pending)
        return {split: self._spill.examples(split) for split in (TRAIN, VALIDATION) if self._spill.count(split)}

    def _split_inputs(self, dl_manager) -> InputSpool:
        """Lists, hashes and splits the inputs and adds the records of those not to tokenize; the others come
        back in order from a spool in the build folder: no list of 10^5 inputs is held."""
        cfg, opts = self.config, self.options
        listed = InputSpool(os.path.join(self._spill_dir, "inputs.jsonl"))
        hashed = hash_inputs(self._list_inputs(dl_manager), threads=opts.hash_threads, progress=opts.progress)
        pending = InputSpool(os.path.join(self._spill_dir, "pending.jsonl"))
        for inp in split_hashed(listed.write_through(hashed), lambda: listed, cfg.valid_fraction, cfg.seed):
            if inp.status == "pending":
                pending.add(inp)
            else:
                self._records.add(inp.record())
        if not listed.count:
            raise BuildError(f"{self.name}: no input files in {self._source_description()}")
        return pending

    def _generate_examples(self, **kwargs):  # pylint: disable=arguments-differ
        raise NotImplementedError("examples come from _split_generators")  # pragma: no cover

    def _task(self):
        return functools.partial(self.tokenize_task, max_len=self.config.max_len, packing=self.config.packing)

    def _tokenize_locally(self, pending: InputSpool) -> None:
        cfg, opts = self.config, self.options
        self._spill = Spill(self._spill_dir, cfg.max_len)
        packers = {s: windows.ReferencePacker(cfg.max_len, cfg.extra_pad_window) for s in (TRAIN, VALIDATION)}
        stream_windows = {TRAIN: 0, VALIDATION: 0}

        def spill_packed(split: str, pairs) -> None:
            for window, piece_id in pairs:
                self._spill.add(split, window[None], [piece_id], [stream_windows[split]])
                stream_windows[split] += 1

        for item in tokenize_pending(
            pending, self._task(), name=self.name, options=opts, packing=cfg.packing, records=self._records
        ):
            inp, result = item.input, item.result
            if result is not None and cfg.packing == "piece":
                n = len(result.windows)
                self._spill.add(inp.split, result.windows, [inp.piece_id] * n, range(n))
            elif result is not None:
                spill_packed(inp.split, packers[inp.split].add(result.stream, inp.piece_id))
        if cfg.packing == "reference":
            for split, packer in packers.items():
                spill_packed(split, packer.finish())
        self._spill.close()


class Music21Demo(MidiFolder):
    """The demo corpus: music21's bundled scores (minus bach, palestrina, monteverdi, trecento)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DemoConfig(name="default", description="1000 works balanced across collections, piece packing, 1024 rows."),
        DemoConfig(name="reference", packing="reference", description="As default, with the reference packing."),
        DemoConfig(name="small", max_pieces=200, max_len=256, description="200 works, 256-row windows (quick runs)."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = None

    @property
    def config(self) -> DemoConfig:
        return self.builder_config

    def _source_description(self) -> str:
        return demo_source_description()

    def _list_inputs(self, dl_manager) -> list[InputFile]:
        return demo_inputs(self.config, self.options, exclude=self.config.exclude)


def demo_source_description() -> str:
    """Where the demo datasets come from (the manifest's `source`)."""
    return f"music21 {demo_corpus.music21_version()} corpus"


def demo_inputs(cfg, opts: BuildOptions, exclude: Sequence[str] = ()) -> list[InputFile]:
    """The demo works a config selects (minus `exclude`), converted to MIDI (cached): the listing of
    Music21Demo and of the demo fine-tuning tasks. `cfg` has max_pieces, collections, seed and writer."""
    excluded = set(exclude)
    works = [w for w in demo_corpus.list_works(cfg.collections or None) if w.key not in excluded]
    chosen = demo_corpus.select_works(works, cfg.max_pieces, cfg.seed)
    cache_dir = opts.cache_dir or demo_corpus.default_cache_dir(cfg.writer)
    conversions = demo_corpus.materialize(
        chosen, cache_dir, writer=cfg.writer, num_workers=opts.num_workers, timeout=opts.convert_timeout,
        memory_limit_mb=opts.memory_limit_mb, progress=opts.progress,
    )
    out = []
    for piece_id, conv in enumerate(conversions):
        inp = InputFile(piece_id=piece_id, name=conv.work.key, path=conv.midi_path, notes=list(conv.notes))
        if conv.status != "ok":
            inp.status, inp.reason = "skipped", f"conversion failed: {conv.reason}"
            inp.error_kind = f"conversion_{conv.error_kind}" if conv.error_kind != "conversion" else "conversion"
            inp.seconds = conv.seconds
        out.append(inp)
    return out

