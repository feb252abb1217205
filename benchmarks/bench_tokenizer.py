"""Tokenizer throughput: MIDI parsing (mido + pretty_midi) vs Octuple encoding, separately.

    python benchmarks/bench_tokenizer.py [--midi-dir DIR] [--repeats 3] [--out results/tokenizer.json]

Without --midi-dir it uses the demo corpus' 1,000 MIDI files (converted from music21 on first use).
Prints files/s and notes/s for each stage and the encode/parse time ratio, and writes JSON.
Encoding is vectorised over notes, so it must cost less than parsing.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

from midibert_jax.tokenizer import TokenizerError, encode_absolute, load_midi
from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs as a script


def _demo_midi_files() -> list[pathlib.Path]:
    from midibert_jax.data import demo_corpus

    return sorted(pathlib.Path(p) for p in demo_corpus.demo_midi_files(max_pieces=1000, progress=True))


def benchmark(files: list[pathlib.Path], repeats: int) -> dict:
    parse_s = encode_s = 0.0
    notes = parsed_files = 0
    skipped = {}
    for _ in range(repeats):
        notes = parsed_files = 0
        for path in files:
            t0 = time.perf_counter()
            try:
                pm = load_midi(path)
            except TokenizerError as e:
                skipped[str(path)] = e.reason
                continue
            t1 = time.perf_counter()
            try:
                rows = encode_absolute(pm)
            except TokenizerError as e:
                skipped[str(path)] = e.reason
                continue
            t2 = time.perf_counter()
            parse_s += t1 - t0
            encode_s += t2 - t1
            notes += len(rows)
            parsed_files += 1
    total_files, total_notes = parsed_files * repeats, notes * repeats
    return {
        "files": parsed_files,
        "notes": notes,
        "skipped": skipped,
        "repeats": repeats,
        "parse": {"seconds": parse_s, "files_per_s": total_files / parse_s, "notes_per_s": total_notes / parse_s},
        "encode": {"seconds": encode_s, "files_per_s": total_files / encode_s, "notes_per_s": total_notes / encode_s},
        "encode_over_parse_time": encode_s / parse_s,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi-dir", type=pathlib.Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results" / "tokenizer.json")
    args = parser.parse_args()
    if args.midi_dir:
        files = sorted(p for p in args.midi_dir.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    else:
        files = _demo_midi_files()
    if not files:
        raise SystemExit(f"no MIDI files found under {args.midi_dir}")
    result = benchmark(files, args.repeats)
    print(f"{result['files']} files, {result['notes']} notes, {len(result['skipped'])} skipped, x{args.repeats}")
    for stage in ("parse", "encode"):
        r = result[stage]
        print(f"  {stage:6s}: {r['files_per_s']:9.1f} files/s  {r['notes_per_s']:12.0f} notes/s  ({r['seconds']:.2f} s)")
    print(f"  encode time / parse time = {result['encode_over_parse_time']:.3f}")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
