"""Fuzz the tokenizer and the dataset builder at scale (the default test run keeps a few hundred).

    python scripts/fuzz_tokenizer.py --cases 10000 [--seed 0] [--timeout 20] [--builder-files 300]
                                     [--keep tests/fixtures/fuzz_regressions] [--out fuzz.json]

Half the cases are structured random MIDI files, half byte-level mutations of them (truncation,
flipped bits, bogus chunk lengths, huge delta times, splices, inserted garbage). Each must
tokenize and round-trip, or raise a TokenizerError; anything else, a round-trip mismatch or a
case over --timeout seconds is a failure. Then --builder-files of the cases go through the
folder dataset builder, whose manifest must account for every file. Prints counts and writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import signal
import sys
import tempfile
import time

import numpy as np

from midibert_jax.testing.midi_fuzz import check_bytes, mutate, random_midi


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=20, help="seconds a case may take")
    parser.add_argument("--builder-files", type=int, default=300, help="cases also run through the folder builder")
    parser.add_argument("--keep", type=pathlib.Path, help="save one small file per (mutation, outcome) here")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("fuzz_report.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    signal.signal(signal.SIGALRM, _alarm)
    counts: collections.Counter = collections.Counter()
    failures, kept, seconds = [], {}, []
    builder_dir = pathlib.Path(tempfile.mkdtemp(prefix="fuzz_builder_"))
    t_start = time.perf_counter()
    for case in range(args.cases):
        if case % 2 == 0:
            base = random_midi(rng)
            kind, data = "structured", base
        else:
            kind, data = mutate(base, rng)
        signal.alarm(args.timeout)
        try:
            outcome = check_bytes(data, name=f"case{case}.mid")
            counts[(kind, outcome.status)] += 1
            seconds.append(outcome.seconds)
            key = (kind, outcome.status)
            if args.keep and key not in kept and len(data) < 16_384:
                kept[key] = data
        except CaseTimeout:
            counts[(kind, "HANG")] += 1
            failures.append({"case": case, "kind": kind, "error": f"over {args.timeout} s"})
        except Exception as e:  # the fuzzer's job: report every unexpected exception, keep going
            counts[(kind, "FAIL")] += 1
            failures.append({"case": case, "kind": kind, "error": f"{type(e).__name__}: {e}"[:300]})
            (builder_dir.parent / f"fuzz_failure_{case}.mid").write_bytes(data)
        finally:
            signal.alarm(0)
        if case < args.builder_files:
            (builder_dir / f"case{case:05d}_{kind}.mid").write_bytes(data)
        if (case + 1) % 1000 == 0:
            rate = (case + 1) / (time.perf_counter() - t_start)
            print(f"  {case + 1}/{args.cases} cases, {rate:.0f}/s, {len(failures)} failures", flush=True)
    fuzz_seconds = time.perf_counter() - t_start

    builder = _run_builder(builder_dir, min(args.builder_files, args.cases))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for (kind, status), data in kept.items():
            (args.keep / f"{status}__{kind}.mid").write_bytes(data)

    report = {
        "cases": args.cases,
        "seed": args.seed,
        "seconds": fuzz_seconds,
        "outcomes": {f"{k}/{s}": n for (k, s), n in sorted(counts.items())},
        "failures": failures,
        "case_seconds": {"median": float(np.median(seconds)), "p99": float(np.percentile(seconds, 99)),
                         "max": float(np.max(seconds))} if seconds else {},
        "builder": builder,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{args.cases} cases in {fuzz_seconds:.0f} s: {len(failures)} failures")
    for key, n in sorted(report["outcomes"].items()):
        print(f"  {key:32s} {n}")
    print(f"  case time: median {report['case_seconds'].get('median', 0) * 1e3:.1f} ms, "
          f"max {report['case_seconds'].get('max', 0):.2f} s")
    print(f"builder: {builder}")
    print(f"wrote {args.out}")
    return 1 if failures or not builder["complete"] else 0


def _run_builder(folder: pathlib.Path, expected: int) -> dict:
    """Builds the folder dataset over the fuzz files; the manifest must list every one."""
    from midibert_jax.data import manifest  # pylint: disable=import-outside-toplevel
    from midibert_jax.data.builders import common, corpus  # pylint: disable=import-outside-toplevel

    data_dir = tempfile.mkdtemp(prefix="fuzz_tfds_")
    config = corpus.folder_config(os.fspath(folder), max_len=64)
    options = common.BuildOptions(num_workers=2, timeout=30.0, progress=False)
    t0 = time.perf_counter()
    builder = corpus.MidiFolder(config=config, data_dir=data_dir, options=options)
    builder.download_and_prepare()
    records = manifest.Manifest.load(builder.data_path).records
    statuses = collections.Counter(r.status for r in records)
    reasons = collections.Counter(r.error_kind for r in records if r.status == "skipped")
    return {"files": expected, "manifest_records": len(records), "complete": len(records) == expected,
            "statuses": dict(statuses), "skip_kinds": dict(reasons), "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    sys.exit(main())
