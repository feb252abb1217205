"""The Beam build path of the corpus builders (apache_beam is imported only when a Beam build runs).

With a Beam runner or Beam options in the `DownloadConfig`, `corpus.MidiFolder` runs the same
work as a Beam pipeline (DirectRunner for tests, Dataflow/Flink/Spark for 10^5-file corpora),
each tokenizing DoFn guarding its files with a one-process `WorkerPool`. Indices come from a
side input of per-piece window counts; the reference packing is assembled from per-piece
fragments grouped by window, so no worker holds a whole split. Beam builds produce the same
examples and manifest as local builds (tested with the DirectRunner).

A tokenized piece's tokens go to a file in the build folder (`tokens_dir`), and only its path
travels to the step that makes its examples: the pipeline waits there for the side input, so a
runner holds that PCollection whole (the DirectRunner in memory: 3 GiB of tokens at 10^5 files).

A split's inputs travel as a JSON-lines file (`write_inputs`) rather than inside the pipeline
graph, which stays small for 10^5 files; the manifest records come back the same way
(`collect_records`).
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath

from midibert_jax.data import manifest, windows, workers
from midibert_jax.data.builders.common import (
    BuildOptions, InputFile, MidiConfig, input_from_json, input_to_json, make_example, record_from_outcome,
)
from midibert_jax.data.errors import BuildError
from midibert_jax.tokenizer import vocab


def _save_tokens(tokens: np.ndarray, folder: str, piece_id: int) -> str:
    path = epath.Path(folder) / f"{piece_id}.npy"
    with path.open("wb") as f:
        np.save(f, tokens, allow_pickle=False)
    return os.fspath(path)


def _load_tokens(path: str) -> np.ndarray:
    with epath.Path(path).open("rb") as f:
        return np.load(f, allow_pickle=False)


def _piece_examples(record_and_tokens, counts: list[tuple[int, int]]):
    """Beam: the examples of one piece, indexed after all earlier pieces of the split."""
    record, tokens_path = record_and_tokens
    offsets = _offsets(counts)
    start = offsets[record.piece_id]
    for w, window in enumerate(_load_tokens(tokens_path)):
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


def _reference_fragments(record_and_tokens, lengths: list[tuple[int, int]], max_len: int):
    """Beam: (window, (row_in_window, rows, piece_id)) slices of one piece's packed stream."""
    record, tokens_path = record_and_tokens
    offset = _offsets(lengths)[record.piece_id]
    for window, row, rows in windows.reference_fragments(_load_tokens(tokens_path), offset, max_len):
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


def split_transform(inputs_path: str, config: MidiConfig, options: BuildOptions, records_path: str, task,
                    tokens_folder: str):
    """A beam.PTransform producing the (key, example) pairs of one split.

    The split's inputs are read from `inputs_path` (JSON lines) rather than embedded in the
    pipeline graph, which stays small for 10^5 files; each piece's tokens are written to
    `tokens_folder` and read back by the step that makes its examples.
    """
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    class TokenizeDoFn(beam.DoFn):
        """Tokenizes one input in a guarded worker process; yields (record, path of its tokens or None)."""

        def setup(self):
            self._pool = workers.WorkerPool(
                task, num_workers=1, timeout=options.timeout, memory_limit_mb=options.memory_limit_mb
            )

        def process(self, inp):
            outcome = self._pool.run(inp.path)
            record, result = record_from_outcome(inp, outcome, config.packing)
            tokens = None if result is None else (result.windows if config.packing == "piece" else result.stream)
            yield record, None if tokens is None else _save_tokens(tokens, tokens_folder, record.piece_id)

        def teardown(self):
            self._pool.close()

    class BuildSplit(beam.PTransform):
        def expand(self, pbegin):
            results = (
                pbegin
                | "ReadInputs" >> beam.io.ReadFromText(inputs_path)
                | "ParseInputs" >> beam.Map(input_from_json)
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
                    | "Counts" >> beam.Map(lambda rr: (rr[0].piece_id, rr[0].num_windows))
                    | "CountList" >> beam.combiners.ToList()
                )
                return ok | "Examples" >> beam.FlatMap(_piece_examples, counts=beam.pvalue.AsSingleton(counts))
            lengths = (
                ok
                | "Lengths" >> beam.Map(lambda rr: (rr[0].piece_id, rr[0].num_stream_rows))
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


def inputs_path(build_dir: epath.PathLike, split: str) -> epath.Path:
    return epath.Path(build_dir) / f"_inputs-{split}.jsonl"


def records_path(build_dir: epath.PathLike, split: str) -> epath.Path:
    return epath.Path(build_dir) / f"_records-{split}.jsonl"


def tokens_dir(build_dir: epath.PathLike, split: str) -> epath.Path:
    return epath.Path(build_dir) / f"_tokens-{split}"


def write_inputs(build_dir: epath.PathLike, split: str, members: list[InputFile]) -> epath.Path:
    """The split's inputs as JSON lines in the build folder (read by `split_transform`), and the empty
    folder its tokens go to."""
    tokens_dir(build_dir, split).mkdir(parents=True, exist_ok=True)
    path = inputs_path(build_dir, split)
    path.write_text("".join(input_to_json(i) + "\n" for i in members))
    return path


def collect_records(build_dir: epath.PathLike, splits) -> list[manifest.FileRecord]:
    """The manifest records the pipeline wrote per split; removes the pipeline's side files."""
    records = []
    for split in splits:
        part = records_path(build_dir, split)
        if part.exists():
            records.extend(manifest.read_jsonl_records(part.read_text().splitlines()))
            part.unlink()
        inputs_path(build_dir, split).unlink(missing_ok=True)
        if tokens_dir(build_dir, split).exists():
            tokens_dir(build_dir, split).rmtree()
    return records


def expected_examples(splits: dict[str, dict[str, int]], config: MidiConfig) -> dict[str, int]:
    """Examples per split that the manifest's ok records make (`splits`: `Manifest.summary()["splits"]`): their
    windows (piece packing), or their packed stream cut into windows of max_len, plus the all-PAD window when
    asked for (reference packing)."""
    expected = {}
    for split, counts in splits.items():
        if config.packing == "piece":
            expected[split] = counts["windows"]
        else:
            rows = counts["stream_rows"]
            expected[split] = -(-rows // config.max_len) + int(bool(config.extra_pad_window and rows and rows % config.max_len == 0))
    return {split: n for split, n in expected.items() if n}


def check_examples(splits: dict[str, dict[str, int]], examples: dict[str, int], config: MidiConfig) -> None:
    """Raises BuildError when a split's shards hold other than the examples its manifest makes.

    Apache Beam's DirectRunner (2.78, multi_processing, 2 workers) lost 20-45 % of a 90,000-window split
    in two 10^5-file builds (docs/scaling.md), with no error; multi_threading loses elements too, and
    benchmarks/beam_direct_runner_loss.py shows both without this project's code. A dataset short of
    examples must not pass.
    """
    expected = expected_examples(splits, config)
    wrong = {split: (examples.get(split, 0), n) for split, n in expected.items() if examples.get(split, 0) != n}
    wrong.update({split: (n, 0) for split, n in examples.items() if split not in expected and n})
    if wrong:
        said = "; ".join(f"{split}: {got} examples in the shards, {want} in the manifest" for split, (got, want) in sorted(wrong.items()))
        raise BuildError(f"the Beam pipeline lost or added examples ({said}); nothing was kept: build again, or "
                         "without Beam")
