"""What every dataset builder shares: identity configs, build options, inputs, splits, the spill.

Each example: ``tokens`` int32 [max_len, 8]; ``index`` int64, contiguous 0..N-1 within the
split in (piece_id, window) order, stable across rebuilds and identical for Beam and local
builds; ``piece_id`` int32 (the file's position in the sorted input list; for reference
packing the piece of the window's first row); ``window`` int32 (window number within the piece,
or within the split's packed stream for reference packing).

Splits ("train", "validation") are decided per unique file content before tokenizing: the
sha256 of every input is computed, byte-identical files are marked duplicates of the first,
and a seeded permutation of the unique contents puts round(valid_fraction * n) of them
(at least one when valid_fraction > 0 and n >= 2) in "validation".

Local builds spill windows to files inside the dataset's temporary build folder while
tokenizing (`Spill`); TFDS then writes the shards from them. The inputs and the manifest's records
wait there too (`InputSpool`, `manifest.RecordSpool`), so that a build's memory does not grow with
its corpus. A build killed midway leaves only TFDS's ``incomplete.*`` folder behind (see
`data.prepare`).
"""

from __future__ import annotations

import array
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import resource
import tempfile
import types
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from midibert_jax import console
from midibert_jax.data import manifest, windows, workers
from midibert_jax.data.errors import BuildError, SplitNotFoundError
from midibert_jax.tokenizer import vocab

TRAIN, VALIDATION = "train", "validation"
MIDI_EXTENSIONS = (".mid", ".midi", ".kar")
FILE_FORMAT = "array_record"
# BuilderConfig fields that are not part of a dataset's identity.
NON_IDENTITY_FIELDS = frozenset({"name", "version", "release_notes", "supported_versions", "description", "tags"})


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


def config_name(prefix: str, max_len: int, packing: str, valid_fraction: float, seed: int) -> str:
    """A TFDS config name that encodes a dataset's identity, e.g. "mycorpus-piece1024-v10-s0"."""
    prefix = re.sub(r"[^A-Za-z0-9_]+", "_", prefix).strip("_") or "corpus"
    return f"{prefix}-{packing}{max_len}-v{round(valid_fraction * 100):d}-s{seed}"


def identity_fields(config: tfds.core.BuilderConfig) -> dict[str, Any]:
    """The fields that define a dataset (everything but name, version and descriptions)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in NON_IDENTITY_FIELDS}


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
    # Report progress (midibert_jax.console: bars on a terminal, a line per stage elsewhere).
    progress: bool = True
    # Demo corpus: where converted MIDI files are cached (None: demo_corpus.default_cache_dir()).
    cache_dir: str | None = None
    # Threads used to hash input files.
    hash_threads: int = 8
    # Print a one-line build summary when a build finishes (`midibert-jax prepare` prints the full one).
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
    return list(FolderListing(root, extensions))


class FolderListing:
    """`list_folder` as a stream: the same inputs in the same order, one directory listed at a time, so that a
    corpus of 10^5 files is never held as 10^5 objects. `len()` counts the files (for progress bars)."""

    def __init__(self, root: str, extensions: Sequence[str] = MIDI_EXTENSIONS):
        if not epath.Path(root).is_dir():
            raise BuildError(f"MIDI folder {root} does not exist or is not a folder")
        self.root = os.fspath(root)
        self.extensions = tuple(e.lower() for e in extensions)

    def __len__(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.root))

    def __iter__(self) -> Iterator[InputFile]:
        for piece_id, rel in enumerate(_sorted_walk(self.root, "")):
            inp = InputFile(piece_id=piece_id, name=rel, path=os.path.join(self.root, rel))
            if not rel.lower().endswith(self.extensions):
                inp.status, inp.error_kind = "ignored", "extension"
                inp.reason = f"extension not in {list(self.extensions)}"
            yield inp


def _sorted_walk(root: str, prefix: str) -> Iterator[str]:
    """The files under root/prefix that os.walk lists (links to folders are not followed), as relative '/' paths
    in sorted() order of the whole paths: a folder "d" sorts as "d/" among its siblings, since every path under
    it starts so (and no file name holds '/')."""
    try:
        with os.scandir(os.path.join(root, prefix) if prefix else root) as entries:
            keyed = sorted((e.name + "/", not e.is_symlink()) if e.is_dir() else (e.name, None) for e in entries)
    except OSError:  # as os.walk: a folder that cannot be listed is left out
        return
    for key, descend in keyed:
        if descend is None:
            yield prefix + key
        elif descend:
            yield from _sorted_walk(root, prefix + key)


def _hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def hash_inputs(inputs: Iterable[InputFile], *, threads: int = 8, progress: bool = True) -> Iterator[InputFile]:
    """Yields `inputs` in order, the pending ones with sha256/size filled (or skipped as unreadable).

    At most 64 futures a thread are in flight: a future per file at once cost ~2.7 KiB a file at 3x10^4."""
    total = len(inputs) if isinstance(inputs, Sized) else 0
    chunk = 64 * max(1, threads)
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool, console.progress(
        total, "Hashing inputs", unit="files", enabled=progress and total >= 1000
    ) as bar:
        it = iter(inputs)
        while batch := list(itertools.islice(it, chunk)):
            futures = [pool.submit(_hash_file, i.path) if i.status == "pending" else None for i in batch]
            for inp, fut in zip(batch, futures):
                if fut is not None:
                    try:
                        inp.sha256, inp.size = fut.result()
                    except OSError as e:
                        inp.status, inp.error_kind = "skipped", "unreadable"
                        inp.reason = f"cannot read file: {e.strerror or e}"
                bar.update(1)
                yield inp


def hash_and_split(
    inputs: list[InputFile], valid_fraction: float, seed: int, *, threads: int = 8, progress: bool = True
) -> list[InputFile]:
    """Fills sha256/size, marks duplicates and unreadable files, assigns splits (in place)."""
    hashed = hash_inputs(inputs, threads=threads, progress=progress)
    for _ in split_hashed(hashed, lambda: inputs, valid_fraction, seed):
        pass
    return inputs


def split_hashed(
    hashed: Iterable[InputFile], replay: Callable[[], Iterable[InputFile]], valid_fraction: float, seed: int
) -> Iterator[InputFile]:
    """Marks duplicates and assigns splits: reads `hashed` (the inputs in order, hashed) once for their digests
    (32 bytes a file), then yields the same inputs again from `replay()` with status and split set.

    Byte-identical files are duplicates of the first; a seeded permutation of the unique contents, in order
    of first appearance, puts round(valid_fraction * n) of them (at least one when valid_fraction > 0 and
    n >= 2) in validation. A list replays itself; a corpus replays its `InputSpool`."""
    digests = bytearray()
    for inp in hashed:
        if inp.status == "pending":
            digests += bytes.fromhex(inp.sha256)
    first, valid = _plan_splits(np.frombuffer(digests, np.uint8).reshape(-1, 32), valid_fraction, seed)
    copied = set(first[first != np.arange(len(first))].tolist())  # positions of the firsts that have copies
    names: dict[int, str] = {}
    k = 0
    for inp in replay():
        if inp.status == "pending":
            if k in copied:
                names[k] = inp.name
            if first[k] != k:
                inp.status, inp.reason, inp.error_kind = "duplicate", f"identical to {names[first[k]]}", "duplicate"
            inp.split = VALIDATION if valid[k] else TRAIN
            k += 1
        yield inp


def _plan_splits(digests: np.ndarray, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pending file (rows of `digests`, in order): the position of the first file with its content, and
    whether that content is in validation."""
    n_files = len(digests)
    _, first_of_unique, unique_of_file = np.unique(
        np.ascontiguousarray(digests).view("V32").ravel(), return_index=True, return_inverse=True
    )  # return_index sorts stably: the first occurrence
    rank = np.empty(len(first_of_unique), np.int64)  # a content's place in order of first appearance
    rank[np.argsort(first_of_unique, kind="stable")] = np.arange(len(first_of_unique))
    n = len(first_of_unique)
    num_valid = round(valid_fraction * n)
    if valid_fraction > 0 and n >= 2:
        num_valid = min(max(1, num_valid), n - 1)
    valid_rank = np.zeros(n, bool)
    valid_rank[np.random.default_rng(seed).permutation(n)[:num_valid]] = True
    unique_of_file = unique_of_file.reshape(n_files)
    return first_of_unique[unique_of_file], valid_rank[rank[unique_of_file]]


class InputSpool:
    """Inputs passing through a JSON-lines file in the build folder (written once, then read back in order), so
    that a corpus' inputs are not all held in memory between listing and tokenizing."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "w", encoding="utf-8")  # pylint: disable=consider-using-with  # closed by __iter__
        self.count = 0

    def add(self, inp: InputFile) -> None:
        self._file.write(input_to_json(inp) + "\n")
        self.count += 1

    def write_through(self, inputs: Iterable[InputFile]) -> Iterator[InputFile]:
        """Yields `inputs`, each added to the spool as it passes."""
        for inp in inputs:
            self.add(inp)
            yield inp

    def __iter__(self) -> Iterator[InputFile]:
        """The inputs added (no more can be added then)."""
        self._file.close()
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                yield input_from_json(line)


def input_to_json(inp: InputFile) -> str:
    return json.dumps(dataclasses.asdict(inp), sort_keys=True)


def input_from_json(line: str) -> InputFile:
    return InputFile(**json.loads(line))


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
        window_bars=[int(b) for b in result.window_bars] if packing == "piece" else [],
    )
    return record, result


@dataclasses.dataclass(frozen=True)
class Tokenized:
    """One pending input after its worker ran: its manifest record, its result when usable, and the raw
    outcome (for callers that look at why a file failed)."""

    input: InputFile
    record: manifest.FileRecord
    result: workers.PieceResult | None
    outcome: workers.Outcome


def tokenize_pending(
    pending: InputSpool, task: Callable, *, name: str, options: BuildOptions, packing: str,
    records: manifest.RecordSpool,
) -> Iterator[Tokenized]:
    """Runs `task` on every pending input in a worker pool and yields them in spool order, each record
    already added to `records`, under one progress bar (rate, ETA, files skipped, workers replaced).

    Both the corpus and the task builders tokenize this way, so a crashed worker, a timeout or a corrupt
    file reaches the manifest the same way in both."""
    if not pending.count:
        return
    num_workers = min(options.num_workers or workers.default_num_workers(), pending.count)
    skipped = 0
    with workers.WorkerPool(
        task, num_workers=num_workers, timeout=options.timeout, memory_limit_mb=options.memory_limit_mb
    ) as pool, console.progress(pending.count, f"Tokenizing {name}", unit="files", enabled=options.progress) as bar:
        inputs, paths = itertools.tee(pending)  # tee holds only the few inputs in flight in the workers
        for inp, outcome in zip(inputs, pool.imap(i.path for i in paths)):
            record, result = record_from_outcome(inp, outcome, packing)
            records.add(record)
            skipped += record.status != "ok"
            bar.update(1)
            bar.set_postfix(skipped=skipped, replaced=pool.replaced, refresh=False)
            yield Tokenized(inp, record, result, outcome)


# TFDS's local writer holds a split's serialized examples in memory up to 1 GiB
# (tfds.core.shuffle.MAX_MEM_BUFFER_SIZE), then moves them to 1,000 bucket files on disk, opened through
# TensorFlow's tf.io.gfile. Without TensorFlow (this project does not need it) a split past 1 GiB failed with
# "No module named 'tensorflow'" (about 80,000 windows of 1,024 notes), and below it the build's memory grew
# with the corpus. `bounded_local_writer` spills past WRITER_BUFFER_MB, through plain files when TensorFlow is
# absent. The shards are the same either way: TFDS orders a split by hashed key, in memory or bucket by bucket.
# This buffer is the write phase's peak over the tokenizing phase (+62 MiB at 64 MiB, measured at 10^4 files).
WRITER_BUFFER_MB = 16


class _NeverRaised(Exception):
    """Stands for tf.errors.ResourceExhaustedError, which plain file I/O does not raise."""


def _open(path, mode="rb"):
    return open(os.fspath(path), mode)  # pylint: disable=unspecified-encoding  # binary modes only


def _remove(path) -> None:
    os.remove(os.fspath(path))


# The slice of TensorFlow that tfds.core.shuffle's bucket files use, for local paths (the build's temporary
# folder is local: cloud data_dirs build through Beam or on a machine with TensorFlow).
_PLAIN_FILE_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=_open, exists=os.path.exists, remove=_remove)),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
)


@contextlib.contextmanager
def bounded_local_writer(data_dir: epath.PathLike | None = None, megabytes: int | None = None):
    """While open, TFDS's local writer keeps at most `megabytes` (default WRITER_BUFFER_MB) of examples in
    memory, and spills the rest to bucket files without TensorFlow when it is not installed (and `data_dir`
    is local)."""
    from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel

    before = shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf
    shuffle.MAX_MEM_BUFFER_SIZE = min(before[0], int((WRITER_BUFFER_MB if megabytes is None else megabytes) * 2**20))
    local = data_dir is None or "://" not in os.fspath(data_dir)
    if local and importlib.util.find_spec("tensorflow") is None:
        shuffle.tf = _PLAIN_FILE_TF
        _allow_open_files(shuffle.BUCKETS_NUMBER + 256)
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf = before


def _allow_open_files(count: int) -> None:
    """Raises the soft limit on open files to `count` where the hard limit allows (the buckets stay open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# ----------------------------------------------------------------------------------------
# Local spill: windows written in order while tokenizing, read back by the TFDS generator.


def make_spill_dir(build_dir: epath.PathLike) -> str:
    """A fresh spill folder inside the build's temporary folder (removed with it when a build dies)."""
    build_dir = os.fspath(build_dir)
    os.makedirs(build_dir, exist_ok=True)
    return tempfile.mkdtemp(prefix=".spill-", dir=build_dir)


class Spill:
    """Windows (int32 [n, max_len, 8]) and their piece/window ids per split, in files under `directory`.

    Subclasses add per-window fields (the task builders' labels) through `open_file`.
    """

    def __init__(self, directory: str, max_len: int):
        self.directory = directory
        self.max_len = max_len
        self.meta: dict[str, dict[str, array.array]] = {}  # 8 bytes a window, not a list of int objects
        self._files: dict[str, Any] = {}

    def add(self, split: str, windows_: np.ndarray, piece_ids: Sequence[int], window_ids: Sequence[int]) -> None:
        if split not in self._files:
            self.open_file(split, f"{split}.bin")
            self.meta[split] = {"piece_id": array.array("q"), "window": array.array("q")}
        self.write(split, windows_)
        self.meta[split]["piece_id"].extend(int(p) for p in piece_ids)
        self.meta[split]["window"].extend(int(w) for w in window_ids)

    def open_file(self, key: str, filename: str) -> None:
        """Opens `filename` in the spill folder for writing under `key` (once per key)."""
        if key not in self._files:
            self._files[key] = open(os.path.join(self.directory, filename), "wb")  # pylint: disable=consider-using-with

    def write(self, key: str, array: np.ndarray) -> None:
        """Appends `array` (as int32) to the file opened under `key`."""
        self._files[key].write(np.ascontiguousarray(array, np.int32).tobytes())

    def read(self, filename: str, shape: tuple[int, ...], count: int) -> Iterator[np.ndarray]:
        """The first `count` int32 arrays of `shape` written to `filename`, in order.

        Read window by window rather than memory-mapped: a map's pages count in the build's resident memory,
        which then grew with the corpus (320 MiB at 10^4 windows of 1,024 notes)."""
        size = int(np.prod(shape)) * 4
        with open(os.path.join(self.directory, filename), "rb") as f:
            for _ in range(count):
                yield np.frombuffer(f.read(size), np.int32).reshape(shape)

    def tokens(self, split: str) -> Iterator[np.ndarray]:
        """The spilled windows of `split` in order: int32 [max_len, 8] each."""
        return self.read(f"{split}.bin", (self.max_len, vocab.NUM_FIELDS), self.count(split))

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
        meta = self.meta[split]
        for i, tokens in enumerate(self.tokens(split)):
            yield i, make_example(tokens, i, meta["piece_id"][i], meta["window"][i])


def make_example(tokens: np.ndarray, index: int, piece_id: int, window: int) -> dict[str, Any]:
    return {
        "tokens": np.asarray(tokens, np.int32),
        "index": np.int64(index),
        "piece_id": np.int32(piece_id),
        "window": np.int32(window),
    }


def example_features(max_len: int) -> dict[str, Any]:
    """The TFDS features of every example (task builders add their labels)."""
    return {
        "tokens": tfds.features.Tensor(shape=(max_len, vocab.NUM_FIELDS), dtype=np.int32),
        "index": tfds.features.Scalar(dtype=np.int64),
        "piece_id": tfds.features.Scalar(dtype=np.int32),
        "window": tfds.features.Scalar(dtype=np.int32),
    }


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo of a dataset that exists only where it was built.

    TFDS looks up every unprepared builder's metadata in its public bucket (gs://tfds-data): a network
    round trip per builder on a pod worker, and a temporary directory left behind each time. These
    datasets are never there, so the lookup is skipped.
    """

    def initialize_from_bucket(self) -> None:
        return None


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
        raise SplitNotFoundError(f"{dataset_dir}: no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)
