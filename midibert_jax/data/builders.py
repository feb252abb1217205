"""TFDS builders writing Octuple windows to ArrayRecord shards (no TensorFlow needed).

* `MidiFolder` ("midi_folder"): a folder of MIDI files (the user's corpus). The folder comes
  from `MidiConfig.folder` or, when that is empty, from the download config's `manual_dir`.
* `Music21Demo` ("music21_demo"): scores shipped inside music21, converted to MIDI by
  `demo_corpus` (cached), then built like a folder.

Each example: ``tokens`` int32 [max_len, 8]; ``index`` int64, contiguous 0..N-1 within the
split in (piece_id, window) order, stable across rebuilds and identical for Beam and local
builds; ``piece_id`` int32 (the file's position in the sorted input list; for reference
packing the piece of the window's first row); ``window`` int32 (window number within the piece,
or within the split's packed stream for reference packing).

Splits ("train", "validation") are decided per unique file content before tokenizing: the
sha256 of every input is computed, byte-identical files are marked duplicates of the first,
and a seeded permutation of the unique contents puts round(valid_fraction * n) of them
(at least one when valid_fraction > 0 and n >= 2) in "validation".

Every build writes ``manifest.jsonl`` and ``build_summary.json`` next to the shards (see
`manifest`). A split that ends up with no windows is not written (and the summary says so).

Local builds tokenize in a `workers.WorkerPool` (per-file timeout, crashed or hung workers
replaced) and spill windows to a temporary file before TFDS writes the shards. With a Beam
runner or Beam options in the `DownloadConfig`, the same work runs as a Beam pipeline
(DirectRunner for tests, Dataflow/Flink/Spark for 10^5-file corpora), each tokenizing DoFn
guarding its files with a one-process `WorkerPool`. Indices come from a side input of
per-piece window counts; the reference packing is assembled from per-piece fragments grouped
by window, so no worker holds a whole split. Beam builds produce the same examples and
manifest as local builds (tested with the DirectRunner).

Caveats: workers are started with 'spawn', so a script that builds a dataset needs the usual
``if __name__ == "__main__":`` guard. Input files must be readable by the workers as local
paths (for a cluster: a shared or mounted filesystem). With Beam, a split whose files all fail
to tokenize makes TFDS stop ("0 examples"); the local build instead leaves it out and says so.

    builder = MidiFolder(config=folder_config("/data/my_midis", max_len=1024), data_dir=...,
                         file_format="array_record")
    builder.download_and_prepare()
    print(manifest.format_summary(builder.summary))
    train = load_data_source(builder.data_path, "train")
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tqdm.auto import tqdm

from midibert_jax.data import demo_corpus, manifest, windows, workers
from midibert_jax.data.errors import DataError
from midibert_jax.tokenizer import vocab

TRAIN, VALIDATION = "train", "validation"
MIDI_EXTENSIONS = (".mid", ".midi", ".kar")
FILE_FORMAT = "array_record"


class BuildError(DataError):
    """A dataset build that cannot proceed (bad config, no inputs)."""


# ----------------------------------------------------------------------------------------
# Configs.


@dataclasses.dataclass(eq=False)
class MidiConfig(tfds.core.BuilderConfig):
    """What defines a dataset (part of its identity: change any field -> change the name)."""

    # Corpus root; empty -> the DownloadConfig's manual_dir.
    folder: str = ""
    # Rows per window.
    max_len: int = 1024
    # "piece" (windows inside one piece) or "reference" (PianoBART packing across pieces).
    packing: str = "piece"
    # Fraction of unique pieces in the validation split.
    valid_fraction: float = 0.1
    # Seed of the piece-level split.
    seed: int = 0
    # Reference packing only: add the reference's all-PAD window when the stream is a multiple of max_len.
    extra_pad_window: bool = False
    # File extensions treated as MIDI (case-insensitive).
    extensions: tuple[str, ...] = MIDI_EXTENSIONS

    def __post_init__(self):
        if self.packing not in windows.PACKINGS:
            raise BuildError(f"config {self.name}: packing must be one of {windows.PACKINGS}, got {self.packing!r}")
        if self.max_len < 1:
            raise BuildError(f"config {self.name}: max_len must be >= 1, got {self.max_len}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise BuildError(f"config {self.name}: valid_fraction must be in [0, 1), got {self.valid_fraction}")


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


def config_name(prefix: str, max_len: int, packing: str, valid_fraction: float, seed: int) -> str:
    """A TFDS config name that encodes a dataset's identity, e.g. "mycorpus-piece1024-v10-s0"."""
    prefix = re.sub(r"[^A-Za-z0-9_]+", "_", prefix).strip("_") or "corpus"
    return f"{prefix}-{packing}{max_len}-v{round(valid_fraction * 100):d}-s{seed}"


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
    skip = {"name", "version", "release_notes", "supported_versions", "description", "tags"}
    return type(a) is type(b) and all(
        getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(a) if f.name not in skip
    )


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


@dataclasses.dataclass
class BuildOptions:
    """How a build runs (not part of the dataset's identity)."""

    # Tokenizer / converter processes; 0 -> the CPUs available.
    num_workers: int = 0
    # Seconds one file may take to tokenize before its worker is killed and the file skipped.
    timeout: float = 60.0
    # Seconds one music21 work may take to convert (demo corpus).
    convert_timeout: float = 120.0
    # Address-space limit per worker in MiB (None: no limit).
    memory_limit_mb: int | None = 4096
    # Show tqdm progress bars.
    progress: bool = True
    # Demo corpus: where converted MIDI files are cached (None: demo_corpus.default_cache_dir()).
    cache_dir: str | None = None
    # Threads used to hash input files.
    hash_threads: int = 8
    # Print the build summary when a build finishes.
    print_summary: bool = True


# ----------------------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass
class InputFile:
    """One input before tokenization; `status` "pending" means it will be tokenized."""

    piece_id: int
    name: str
    path: str | None
    status: str = "pending"
    reason: str | None = None
    error_kind: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    sha256: str | None = None
    size: int | None = None
    split: str | None = None
    seconds: float = 0.0

    def record(self, **kwargs) -> manifest.FileRecord:
        fields = dict(
            piece_id=self.piece_id, path=self.name, sha256=self.sha256, size=self.size, split=self.split,
            status=self.status, reason=self.reason, error_kind=self.error_kind, notes=list(self.notes),
            seconds=self.seconds,
        )
        fields.update(kwargs)
        return manifest.FileRecord(**fields)


def list_folder(root: str, extensions: Sequence[str] = MIDI_EXTENSIONS) -> list[InputFile]:
    """Every file under `root`, sorted by relative path; non-MIDI extensions are "ignored"."""
    root_path = epath.Path(root)
    if not root_path.is_dir():
        raise BuildError(f"MIDI folder {root} does not exist or is not a folder")
    exts = tuple(e.lower() for e in extensions)
    rels = []
    for dirpath, dirnames, filenames in os.walk(os.fspath(root_path)):
        dirnames.sort()
        for name in filenames:
            rels.append(os.path.relpath(os.path.join(dirpath, name), os.fspath(root_path)).replace(os.sep, "/"))
    out = []
    for piece_id, rel in enumerate(sorted(rels)):
        inp = InputFile(piece_id=piece_id, name=rel, path=os.path.join(os.fspath(root_path), rel))
        if not rel.lower().endswith(exts):
            inp.status, inp.reason, inp.error_kind = "ignored", f"extension not in {list(exts)}", "extension"
        out.append(inp)
    return out


def _hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def hash_and_split(
    inputs: list[InputFile], valid_fraction: float, seed: int, *, threads: int = 8, progress: bool = True
) -> list[InputFile]:
    """Fills sha256/size, marks duplicates and unreadable files, assigns splits (in place)."""
    todo = [i for i in inputs if i.status == "pending"]
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {pool.submit(_hash_file, i.path): i for i in todo}
        for fut in tqdm(
            concurrent.futures.as_completed(futures), total=len(futures), desc="Hashing inputs", unit=" files",
            disable=not progress or len(futures) < 1000, dynamic_ncols=True,
        ):
            inp = futures[fut]
            try:
                inp.sha256, inp.size = fut.result()
            except OSError as e:
                inp.status, inp.reason, inp.error_kind = "skipped", f"cannot read file: {e.strerror or e}", "unreadable"
    first_of: dict[str, InputFile] = {}
    unique: list[str] = []
    for inp in inputs:
        if inp.status != "pending":
            continue
        original = first_of.get(inp.sha256)
        if original is not None:
            inp.status, inp.reason, inp.error_kind = "duplicate", f"identical to {original.name}", "duplicate"
            continue
        first_of[inp.sha256] = inp
        unique.append(inp.sha256)
    n = len(unique)
    num_valid = round(valid_fraction * n)
    if valid_fraction > 0 and n >= 2:
        num_valid = min(max(1, num_valid), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    valid_hashes = {unique[i] for i in perm[:num_valid]}
    for inp in inputs:
        if inp.sha256 is not None and inp.status in ("pending", "duplicate"):
            inp.split = VALIDATION if inp.sha256 in valid_hashes else TRAIN
    return inputs


def record_from_outcome(inp: InputFile, outcome: workers.Outcome, packing: str) -> tuple[manifest.FileRecord, workers.PieceResult | None]:
    """The manifest record of a tokenized file, and its result when usable."""
    if not outcome.ok:
        first_line = outcome.message.splitlines()[0] if outcome.message else outcome.error
        kind = "internal_error" if outcome.error == workers.EXCEPTION else outcome.error
        notes = [] if outcome.error != workers.EXCEPTION else [outcome.message[-1000:]]
        return inp.record(status="skipped", reason=first_line, error_kind=kind, notes=notes, seconds=outcome.seconds), None
    result: workers.PieceResult = outcome.value
    if not result.ok:
        return inp.record(status="skipped", reason=result.reason, error_kind=result.error_kind, seconds=outcome.seconds), None
    n_windows = len(result.windows) if packing == "piece" else 0
    n_rows = len(result.stream) if packing == "reference" else 0
    record = inp.record(
        status="ok", notes=inp.notes + result.notes, num_notes=result.num_notes, num_windows=n_windows,
        num_stream_rows=n_rows, seconds=outcome.seconds,
    )
    return record, result


# ----------------------------------------------------------------------------------------
# Local spill: windows written in order while tokenizing, read back by the TFDS generator.


class _Spill:
    def __init__(self, directory: str, max_len: int):
        self.directory = directory
        self.max_len = max_len
        self.meta: dict[str, dict[str, list[int]]] = {}
        self._files: dict[str, Any] = {}

    def add(self, split: str, windows_: np.ndarray, piece_ids: Sequence[int], window_ids: Sequence[int]) -> None:
        if split not in self._files:
            self._files[split] = open(os.path.join(self.directory, f"{split}.bin"), "wb")  # pylint: disable=consider-using-with
            self.meta[split] = {"piece_id": [], "window": []}
        self._files[split].write(np.ascontiguousarray(windows_, np.int32).tobytes())
        self.meta[split]["piece_id"].extend(int(p) for p in piece_ids)
        self.meta[split]["window"].extend(int(w) for w in window_ids)

    def count(self, split: str) -> int:
        return len(self.meta.get(split, {}).get("piece_id", []))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        n = self.count(split)
        if not n:
            return
        tokens = np.memmap(os.path.join(self.directory, f"{split}.bin"), np.int32, "r", shape=(n, self.max_len, vocab.NUM_FIELDS))
        meta = self.meta[split]
        for i in range(n):
            yield i, make_example(np.asarray(tokens[i]), i, meta["piece_id"][i], meta["window"][i])


def make_example(tokens: np.ndarray, index: int, piece_id: int, window: int) -> dict[str, Any]:
    return {
        "tokens": np.asarray(tokens, np.int32),
        "index": np.int64(index),
        "piece_id": np.int32(piece_id),
        "window": np.int32(window),
    }


# ----------------------------------------------------------------------------------------
# Beam pieces (apache_beam is imported only when a Beam build runs).


def _piece_examples(record_and_result, counts: list[tuple[int, int]]):
    """Beam: the examples of one piece, indexed after all earlier pieces of the split."""
    record, result = record_and_result
    offsets = _offsets(counts)
    start = offsets[record.piece_id]
    for w, window in enumerate(result.windows):
        yield start + w, make_example(window, start + w, record.piece_id, w)


_OFFSETS: dict[int, tuple[list, dict[int, int]]] = {}


def _offsets(counts: list[tuple[int, int]]) -> dict[int, int]:
    """piece_id -> first index of the piece, from (piece_id, count) pairs of a split.

    Beam hands every element the same side-input list, so the result is cached by identity
    (recomputing it per piece would be quadratic in the number of pieces).
    """
    hit = _OFFSETS.get(id(counts))
    if hit is not None and hit[0] is counts:
        return hit[1]
    offsets, total = {}, 0
    for piece_id, n in sorted(counts):
        offsets[piece_id] = total
        total += n
    if len(_OFFSETS) >= 8:
        _OFFSETS.clear()
    _OFFSETS[id(counts)] = (counts, offsets)
    return offsets


def _reference_fragments(record_and_result, lengths: list[tuple[int, int]], max_len: int):
    """Beam: (window, (row_in_window, rows, piece_id)) slices of one piece's packed stream."""
    record, result = record_and_result
    offset = _offsets(lengths)[record.piece_id]
    for window, row, rows in windows.reference_fragments(result.stream, offset, max_len):
        yield window, (row, rows, record.piece_id)


def _assemble(window_and_fragments, max_len: int):
    window, fragments = window_and_fragments
    tokens, piece_id = windows.assemble_window(list(fragments), max_len)
    return window, make_example(tokens, window, piece_id, window)


def _extra_pad_windows(lengths: list[tuple[int, int]], max_len: int, extra_pad_window: bool):
    total = sum(n for _, n in lengths)
    if extra_pad_window and total and total % max_len == 0:
        w = total // max_len
        yield w, make_example(windows.pad_window(np.empty((0, vocab.NUM_FIELDS), np.int32), max_len), w, -1, w)


def _write_lines(lines: list[str], path: str) -> None:
    epath.Path(path).write_text("".join(sorted(line + "\n" for line in lines)))


def _input_to_json(inp: InputFile) -> str:
    return json.dumps(dataclasses.asdict(inp), sort_keys=True)


def _input_from_json(line: str) -> InputFile:
    return InputFile(**json.loads(line))


def _beam_split(inputs_path: str, config: MidiConfig, options: BuildOptions, records_path: str, task):
    """A beam.PTransform producing the (key, example) pairs of one split.

    The split's inputs are read from `inputs_path` (JSON lines) rather than embedded in the
    pipeline graph, which stays small for 10^5 files.
    """
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    class TokenizeDoFn(beam.DoFn):
        """Tokenizes one input in a guarded worker process; yields (record, result)."""

        def setup(self):
            self._pool = workers.WorkerPool(
                task, num_workers=1, timeout=options.timeout, memory_limit_mb=options.memory_limit_mb
            )

        def process(self, inp):
            outcome = self._pool.run(inp.path)
            yield record_from_outcome(inp, outcome, config.packing)

        def teardown(self):
            self._pool.close()

    class BuildSplit(beam.PTransform):
        def expand(self, pbegin):
            results = (
                pbegin
                | "ReadInputs" >> beam.io.ReadFromText(inputs_path)
                | "ParseInputs" >> beam.Map(_input_from_json)
                | "Reshuffle" >> beam.Reshuffle()
                | "Tokenize" >> beam.ParDo(TokenizeDoFn())
            )
            _ = (
                results
                | "RecordJson" >> beam.Map(lambda rr: rr[0].to_json())
                | "RecordList" >> beam.combiners.ToList()
                | "WriteRecords" >> beam.Map(_write_lines, path=records_path)
            )
            ok = results | "KeepOk" >> beam.Filter(lambda rr: rr[0].status == "ok")
            if config.packing == "piece":
                counts = (
                    ok
                    | "Counts" >> beam.Map(lambda rr: (rr[0].piece_id, len(rr[1].windows)))
                    | "CountList" >> beam.combiners.ToList()
                )
                return ok | "Examples" >> beam.FlatMap(_piece_examples, counts=beam.pvalue.AsSingleton(counts))
            lengths = (
                ok
                | "Lengths" >> beam.Map(lambda rr: (rr[0].piece_id, len(rr[1].stream)))
                | "LengthList" >> beam.combiners.ToList()
            )
            packed = (
                ok
                | "Fragments" >> beam.FlatMap(_reference_fragments, lengths=beam.pvalue.AsSingleton(lengths), max_len=config.max_len)
                | "GroupWindows" >> beam.GroupByKey()
                | "Assemble" >> beam.Map(_assemble, max_len=config.max_len)
            )
            extra = lengths | "ExtraPad" >> beam.FlatMap(
                _extra_pad_windows, max_len=config.max_len, extra_pad_window=config.extra_pad_window
            )
            return (packed, extra) | "AllWindows" >> beam.Flatten()

    return BuildSplit()


# ----------------------------------------------------------------------------------------
# Builders.


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo of a dataset that exists only where it was built.

    TFDS looks up every unprepared builder's metadata in its public bucket (gs://tfds-data): a network
    round trip per builder on a pod worker, and a temporary directory left behind each time. These
    datasets are never there, so the lookup is skipped.
    """

    def initialize_from_bucket(self) -> None:
        return None


class MidiFolder(tfds.core.GeneratorBasedBuilder):
    """Octuple windows of a folder of MIDI files (see the module docstring)."""

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
        self._records: list[manifest.FileRecord] = []
        self._inputs: list[InputFile] = []
        self._spill: _Spill | None = None
        self._spill_dir: str | None = None
        super().__init__(**kwargs)

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
            features=tfds.features.FeaturesDict(
                {
                    "tokens": tfds.features.Tensor(shape=(max_len, vocab.NUM_FIELDS), dtype=np.int32),
                    "index": tfds.features.Scalar(dtype=np.int64),
                    "piece_id": tfds.features.Scalar(dtype=np.int32),
                    "window": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    # -- inputs --------------------------------------------------------------------------

    def _list_inputs(self, dl_manager) -> list[InputFile]:
        folder = self.config.folder or os.fspath(dl_manager.manual_dir)
        self._source = folder
        return list_folder(folder, self.config.extensions)

    def _source_description(self) -> str:
        return getattr(self, "_source", None) or self.config.folder or "manual_dir"

    # -- generation ----------------------------------------------------------------------

    def _download_and_prepare(self, dl_manager, download_config):
        start = time.monotonic()
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        self._records = []
        try:
            super()._download_and_prepare(dl_manager, download_config)
            records = list(self._records)
            if self._use_beam:
                for split in (TRAIN, VALIDATION):
                    part = self.data_path / f"_records-{split}.jsonl"
                    if part.exists():
                        records.extend(manifest.read_jsonl_records(part.read_text().splitlines()))
                        part.unlink()
                    (self.data_path / f"_inputs-{split}.jsonl").unlink(missing_ok=True)
            examples = {name: info.num_examples for name, info in self.info.splits.items()}
            info = {
                "dataset": f"{self.name}/{self.builder_config.name}",
                "source": self._source_description(),
                "config": _config_dict(self.config),
                "examples": examples,
                "empty_splits": [s for s in self.SPLITS if s not in examples and self._split_expected(s)],
                "build_seconds": round(time.monotonic() - start, 2),
                "beam": self._use_beam,
            }
            built = manifest.Manifest(records, info)
            built.write(self.data_path)
            self.summary = built.summary()
            self.info.metadata["summary"] = {k: v for k, v in self.summary.items() if k != "slowest"}
            if self.options.print_summary:
                print(manifest.format_summary(self.summary))
        finally:
            if self._spill is not None:
                self._spill.close()
            if self._spill_dir:
                shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill, self._spill_dir = None, None

    def _split_expected(self, split: str) -> bool:
        return split == TRAIN or self.config.valid_fraction > 0

    def _split_generators(self, dl_manager):
        inputs = self._list_inputs(dl_manager)
        if not inputs:
            raise BuildError(f"{self.name}: no input files in {self._source_description()}")
        hash_and_split(
            inputs, self.config.valid_fraction, self.config.seed, threads=self.options.hash_threads,
            progress=self.options.progress,
        )
        self._inputs = inputs
        self._records = [i.record() for i in inputs if i.status != "pending"]
        pending = [i for i in inputs if i.status == "pending"]
        if self._use_beam:
            splits = {}
            for split in (TRAIN, VALIDATION):
                members = [i for i in pending if i.split == split]
                if members:
                    inputs_path = self.data_path / f"_inputs-{split}.jsonl"
                    inputs_path.write_text("".join(_input_to_json(i) + "\n" for i in members))
                    path = os.fspath(self.data_path / f"_records-{split}.jsonl")
                    splits[split] = _beam_split(os.fspath(inputs_path), self.config, self.options, path, self._task())
            return splits
        self._tokenize_locally(pending)
        return {split: self._spill.examples(split) for split in (TRAIN, VALIDATION) if self._spill.count(split)}

    def _generate_examples(self, **kwargs):  # pylint: disable=arguments-differ
        raise NotImplementedError("examples come from _split_generators")  # pragma: no cover

    def _task(self):
        return functools.partial(self.tokenize_task, max_len=self.config.max_len, packing=self.config.packing)

    def _tokenize_locally(self, pending: list[InputFile]) -> None:
        cfg, opts = self.config, self.options
        root = os.fspath(self.data_dir_root)
        self._spill_dir = tempfile.mkdtemp(prefix=".midibert_spill-", dir=root if os.path.isdir(root) else None)
        self._spill = _Spill(self._spill_dir, cfg.max_len)
        packers = {s: windows.ReferencePacker(cfg.max_len, cfg.extra_pad_window) for s in (TRAIN, VALIDATION)}
        stream_windows = {TRAIN: 0, VALIDATION: 0}

        def spill_packed(split: str, pairs) -> None:
            for window, piece_id in pairs:
                self._spill.add(split, window[None], [piece_id], [stream_windows[split]])
                stream_windows[split] += 1

        if pending:
            task = self._task()
            num_workers = min(opts.num_workers or workers.default_num_workers(), len(pending))
            skipped = 0
            with workers.WorkerPool(
                task, num_workers=num_workers, timeout=opts.timeout, memory_limit_mb=opts.memory_limit_mb
            ) as pool, tqdm(
                total=len(pending), desc=f"Tokenizing {self.name}", unit=" files", disable=not opts.progress, dynamic_ncols=True
            ) as bar:
                for inp, outcome in zip(pending, pool.imap(i.path for i in pending)):
                    record, result = record_from_outcome(inp, outcome, cfg.packing)
                    self._records.append(record)
                    if result is not None and cfg.packing == "piece":
                        n = len(result.windows)
                        self._spill.add(inp.split, result.windows, [inp.piece_id] * n, range(n))
                    elif result is not None:
                        spill_packed(inp.split, packers[inp.split].add(result.stream, inp.piece_id))
                    skipped += record.status != "ok"
                    bar.update(1)
                    bar.set_postfix(skipped=skipped, replaced=pool.replaced, refresh=False)
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
        return f"music21 {demo_corpus.music21_version()} corpus"

    def _list_inputs(self, dl_manager) -> list[InputFile]:
        return demo_inputs(self.config, self.options, exclude=self.config.exclude)


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


def _config_dict(config: MidiConfig) -> dict[str, Any]:
    skip = {"name", "version", "release_notes", "supported_versions", "description", "tags"}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in skip}


# ----------------------------------------------------------------------------------------
# Reading.


def load_data_source(dataset_dir: epath.PathLike, split: str = TRAIN):
    """The ArrayRecord data source of one split of a built dataset (a `.../<version>` folder).

    Random access: ``len(source)``, ``source[i]`` and ``source.__getitems__(indices)`` give
    dicts of numpy arrays. Same as `tfds.data_source(...)[split]`, without needing the
    builder class or config to be registered.
    """
    builder = tfds.builder_from_directory(os.fspath(dataset_dir))
    if split not in builder.info.splits:
        raise KeyError(f"{dataset_dir}: no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


def load_manifest(dataset_dir: epath.PathLike) -> manifest.Manifest:
    return manifest.Manifest.load(dataset_dir)
