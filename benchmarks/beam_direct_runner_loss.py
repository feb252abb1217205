"""Does Apache Beam's DirectRunner drop elements? A pipeline shaped like the corpus build, with no project code.

    python benchmarks/beam_direct_runner_loss.py --pieces 100000 --rows 256 --mode multi_processing

Why it exists: a 10^5-file corpus build on the DirectRunner (multi_processing, 2 workers) lost 20-45 % of
its training windows with no error (docs/scaling.md). This script builds the same shape from synthetic
pieces: read a JSON-lines file, reshuffle, "tokenize" (a seeded int32 array of 0-2 windows a piece), count
windows per piece into a side input, expand each piece into its examples indexed by that side input,
serialize, then assign shards from two more side inputs and group them, as TFDS's BeamWriter does. Each
stage's element count is written to a file and printed with the count the stage should have had; the exit
status is 1 when any stage lost elements. Measured with Beam 2.78 on 2 cores (--pieces 100000 --rows 256,
2 workers): multi_processing lost 2,377 of 95,294 examples, multi_threading 5,185, in_memory none; the
count varies from run to run (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time


def _tokenize(line: str, rows: int):
    import numpy as np  # pylint: disable=import-outside-toplevel

    piece = json.loads(line)["piece"]
    windows = 0 if piece % 10 == 0 else (2 if piece % 17 == 0 else 1)  # some pieces skipped, some long
    tokens = np.random.default_rng(piece).integers(0, 100, size=(windows, rows, 8), dtype=np.int32)
    return piece, tokens


def _examples(piece_and_tokens, counts):
    piece, tokens = piece_and_tokens
    start = _first_index(counts)[piece]
    for w, window in enumerate(tokens):
        yield start + w, (piece, window)


_FIRST: dict[int, tuple[list, dict[int, int]]] = {}


def _first_index(counts) -> dict[int, int]:
    """piece -> index of its first example (cached: every element gets the same side-input list)."""
    hit = _FIRST.get(id(counts))
    if hit is None or hit[0] is not counts:
        first, total = {}, 0
        for piece, n in sorted(counts):
            first[piece], total = total, total + n
        _FIRST[id(counts)] = hit = (counts, first)
    return hit[1]


def _serialize(key_and_example):
    key, (_, window) = key_and_example
    return int(hashlib.sha256(str(key).encode()).hexdigest()[:15], 16), window.tobytes()


def _assign_shard(key_and_bytes, num_shards: int, largest):
    return key_and_bytes[0] * num_shards // (largest[0] + 1), key_and_bytes


def _write(value, folder: str, name: str) -> None:
    with open(os.path.join(folder, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(value, f)


def run(pieces: int, rows: int, workers: int, mode: str, folder: str) -> dict[str, int]:
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel

    inputs = os.path.join(folder, "inputs.jsonl")
    with open(inputs, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"piece": i}) + "\n" for i in range(pieces))
    options = PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"])
    count = lambda name: beam.combiners.Count.Globally() | f"Write{name}" >> beam.Map(_write, folder, name)  # noqa: E731
    with beam.Pipeline(options=options) as p:
        tokenized = (p | beam.io.ReadFromText(inputs) | beam.Reshuffle()
                     | "Tokenize" >> beam.Map(_tokenize, rows=rows))
        _ = tokenized | "CountTokenized" >> count("tokenized")
        counts = tokenized | beam.Map(lambda pt: (pt[0], len(pt[1]))) | beam.combiners.ToList()
        _ = counts | beam.Map(lambda c: _write(sum(n for _, n in c), folder, "expected_examples"))
        examples = tokenized | "Examples" >> beam.FlatMap(_examples, counts=beam.pvalue.AsSingleton(counts))
        _ = examples | "CountExamples" >> count("examples")
        serialized = examples | beam.Map(_serialize)
        largest = serialized | beam.Keys() | beam.combiners.Top.Largest(1)
        num_shards = serialized | "CountSerialized" >> beam.combiners.Count.Globally() | beam.Map(lambda n: max(1, n // 8000))
        grouped = (serialized
                   | beam.Map(_assign_shard, num_shards=beam.pvalue.AsSingleton(num_shards),
                              largest=beam.pvalue.AsSingleton(largest))
                   | beam.GroupByKey())
        _ = (grouped | beam.Map(lambda shard: len(list(shard[1]))) | beam.CombineGlobally(sum)
             | beam.Map(_write, folder, "written"))
    read = lambda name: json.load(open(os.path.join(folder, f"{name}.json"), encoding="utf-8"))  # noqa: E731
    return {name: read(name) for name in ("tokenized", "expected_examples", "examples", "written")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=256, help="notes per window (int32 x 8 fields each)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", default="multi_processing", choices=("multi_processing", "multi_threading", "in_memory"))
    parser.add_argument("--out", default="", help="also write the counts here (JSON)")
    args = parser.parse_args(argv)
    import apache_beam as beam  # pylint: disable=import-outside-toplevel

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        got = run(args.pieces, args.rows, args.workers, args.mode, folder)
    want = {"tokenized": args.pieces, "examples": got["expected_examples"], "written": got["expected_examples"]}
    lost = {name: want[name] - got[name] for name in want}
    result = {"beam": beam.__version__, "mode": args.mode, "workers": args.workers, "pieces": args.pieces,
              "rows": args.rows, "counts": got, "lost": lost, "seconds": round(time.monotonic() - start, 1)}
    for name in want:
        print(f"{name:>10}: {got[name]:>8} of {want[name]:>8}" + (f"  LOST {lost[name]}" if lost[name] else ""))
    print(f"Beam {beam.__version__}, DirectRunner {args.mode}, {args.workers} workers, {result['seconds']} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return int(any(lost.values()))


if __name__ == "__main__":
    sys.exit(main())
