"""Building a pre-training corpus of 10^3..10^5 MIDI files: the default path and Beam, measured.

    python benchmarks/bench_corpus_build.py --sizes 1000,10000,100000 [--paths default,beam] [--workers 2]
        [--data ../shared/data] [--cache ~/.cache/midibert_jax/bench_corpus] [--out results/corpus_build.json]

The corpus is made from the real songs under --data (POP909, POP1K7, Pianist8, EMOPIA): variant i is
an excerpt of song i mod S (8-30 s from a seeded start), transposed by -5..+6 semitones and
time-scaled by 0.8..1.25, its track names tagged with i, so every file is byte-distinct. The
variants are written once into a pool under --cache and hard-linked into one folder per size,
with one corrupt file per --corrupt-every variants (random bytes, empty, a cut header, a bogus
track chunk; under corrupt/) and one README.txt (ignored).

Each build runs in a fresh child process (`prepare.prepare` of configs/prepare.py:folder, default
settings, a new data_dir): the default path with --workers tokenizer processes, and Beam's
DirectRunner in --beam-mode (in_memory, one worker, by default: the other modes lose elements at 10^5
files, docs/scaling.md). Reported per build: wall time, files/s and files/s
per core, peak resident memory of the parent (the build process) and of its largest worker
(getrusage) and of the whole process tree (sampled from /proc), shard count and sizes, the
manifest's counts and whether they account for every input file, every corrupt file's status and
reason, and the 1-minute load average before and after (figures from a busy machine mean little);
beside the CPU's ISA flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures

from cpu_info import cpu_info, describe  # benchmarks/ is on sys.path when a benchmark runs as a script
from results_io import write_results

BENCHMARKS = pathlib.Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
# Where each dataset keeps its songs under --data.
SOURCES = ("POP909/*/*.mid", "POP1K7/midi_synchronized/*/*.mid", "Pianist8/midi/*/*.mid", "EMOPIA_1.0/midis/*.mid")
CORRUPT_KINDS = ("not_midi", "empty", "cut_header", "bogus_chunk")
POOL_VERSION = 1
PATHS = ("default", "beam")


# ----------------------------------------------------------------------------- the corpus


def source_songs(data: pathlib.Path, limit: int = 0) -> list[pathlib.Path]:
    """The real songs under `data`, interleaved across datasets (so a small corpus mixes all four)."""
    per_set = [sorted(data.glob(pattern)) for pattern in SOURCES]
    if not any(per_set):
        raise SystemExit(f"no MIDI songs under {data} (expected {', '.join(SOURCES)})")
    songs = []
    for i in range(max(len(s) for s in per_set)):
        songs.extend(s[i] for s in per_set if i < len(s))
    return songs[:limit] if limit else songs


def variant_params(index: int, seed: int) -> dict:
    """Excerpt start (fraction of the song), length (s), transposition and time scale of variant `index`."""
    rng = random.Random(f"{seed}:{index}")
    return {"start": rng.random(), "seconds": rng.uniform(8.0, 30.0), "transpose": rng.randint(-5, 6),
            "scale": rng.choice((0.8, 0.9, 1.0, 1.1, 1.25))}


def write_variants(song: str, jobs: list[tuple[int, str]], seed: int) -> int:
    """Writes variant `index` of `song` to `path` for each (index, path); returns how many were written."""
    import pretty_midi  # pylint: disable=import-outside-toplevel

    pm = pretty_midi.PrettyMIDI(song)
    end = pm.get_end_time()
    for index, path in jobs:
        p = variant_params(index, seed)
        t0 = p["start"] * max(end - p["seconds"], 0.0)
        t1 = t0 + p["seconds"]
        out = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0 / p["scale"])
        for k, inst in enumerate(pm.instruments):
            copy = pretty_midi.Instrument(program=inst.program, is_drum=inst.is_drum, name=f"{inst.name or k} v{index}")
            for n in inst.notes:
                if t0 <= n.start < t1:
                    pitch = n.pitch if inst.is_drum else min(max(n.pitch + p["transpose"], 0), 127)
                    start, stop = (n.start - t0) * p["scale"], (min(n.end, t1) - t0) * p["scale"]
                    copy.notes.append(pretty_midi.Note(n.velocity, pitch, start, max(stop, start + 0.01)))
            if copy.notes:
                out.instruments.append(copy)
        if not out.instruments:  # a silent stretch: keep the file a valid, distinct piece of one note
            out.instruments.append(pretty_midi.Instrument(0, name=f"empty v{index}"))
            out.instruments[0].notes.append(pretty_midi.Note(64, 60, 0.0, 0.5))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        out.write(path + ".tmp")
        os.replace(path + ".tmp", path)
    return len(jobs)


def variant_path(pool: pathlib.Path, index: int) -> pathlib.Path:
    return pool / f"{index // 1000:03d}" / f"v{index:06d}.mid"


def make_pool(cache: pathlib.Path, songs: list[pathlib.Path], count: int, seed: int, workers: int) -> pathlib.Path:
    """The first `count` variants in `cache/pool` (written once; later calls add only the missing ones)."""
    pool = cache / "pool"
    state_file = pool / "pool.json"
    key = {"version": POOL_VERSION, "seed": seed,
           "songs": hashlib.sha256("\n".join(map(os.fspath, songs)).encode()).hexdigest()}
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if {k: state.get(k) for k in key} != key:
        shutil.rmtree(pool, ignore_errors=True)
        state = dict(key, count=0)
    if state["count"] >= count:
        return pool
    by_song: dict[int, list[tuple[int, str]]] = {}
    for index in range(state["count"], count):
        by_song.setdefault(index % len(songs), []).append((index, os.fspath(variant_path(pool, index))))
    start = time.perf_counter()
    print(f"writing variants {state['count']}..{count - 1} of {len(songs)} songs into {pool}", flush=True)
    with futures.ProcessPoolExecutor(max_workers=workers) as ex:
        done = sum(f.result() for f in [ex.submit(write_variants, os.fspath(songs[s]), jobs, seed)
                                         for s, jobs in sorted(by_song.items())])
    print(f"  {done} files in {time.perf_counter() - start:.0f} s", flush=True)
    pool.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(dict(key, count=count)))
    return pool


def corrupt_bytes(kind: str, k: int) -> bytes:
    """A file with a .mid name that no MIDI reader accepts (distinct per k)."""
    rng = random.Random(f"corrupt:{kind}:{k}")
    if kind == "not_midi":
        return b"RIFF" + bytes(rng.randrange(256) for _ in range(200 + k))
    if kind == "empty":
        return b""
    if kind == "cut_header":
        return b"MThd\x00\x00\x00\x06\x00"[: 4 + k % 5]
    if kind == "bogus_chunk":  # a valid header, then a track chunk claiming 2^31 bytes
        return b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0" + b"MTrk\x7f\xff\xff\xff" + bytes([k % 256] * 16)
    raise ValueError(kind)


def make_corpus(cache: pathlib.Path, pool: pathlib.Path, size: int,
                corrupt_every: int) -> tuple[pathlib.Path, list[str]]:
    """cache/corpus_<size>: `size` variants (hard links into the pool), corrupt files and a README.

    Returns (the folder, the corrupt files' relative paths). Rebuilt when its recorded contents differ.
    """
    folder = cache / f"corpus_{size}"
    num_corrupt = max(1, size // corrupt_every) if corrupt_every else 0
    corrupt = [f"corrupt/{CORRUPT_KINDS[k % len(CORRUPT_KINDS)]}_{k:04d}.mid" for k in range(num_corrupt)]
    stamp = {"size": size, "corrupt": corrupt, "pool": json.loads((pool / "pool.json").read_text())}
    stamp_file = cache / f"corpus_{size}.json"  # beside the folder: every file inside is an input
    if folder.is_dir() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return folder, corrupt
    shutil.rmtree(folder, ignore_errors=True)
    for index in range(size):
        target = folder / variant_path(pool, index).relative_to(pool)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(variant_path(pool, index), target)
        except OSError:
            shutil.copyfile(variant_path(pool, index), target)
    for k, rel in enumerate(corrupt):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(corrupt_bytes(CORRUPT_KINDS[k % len(CORRUPT_KINDS)], k))
    (folder / "README.txt").write_text("Variants of POP909, POP1K7, Pianist8 and EMOPIA songs, for a benchmark.\n")
    stamp_file.write_text(json.dumps(stamp))
    return folder, corrupt


def input_files(folder: pathlib.Path) -> list[str]:
    """Every file a build lists (relative paths), as the folder builder walks it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- one build, measured


def child_build(config_json: str, out_json: str) -> None:
    """In a fresh process: prepare.prepare(config); writes seconds and getrusage peaks (KiB)."""
    import ml_collections  # pylint: disable=import-outside-toplevel

    from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel

    config = ml_collections.ConfigDict(json.loads(pathlib.Path(config_json).read_text()))
    start = time.perf_counter()
    dataset_dir = prepare.prepare(config)
    seconds = time.perf_counter() - start
    pathlib.Path(out_json).write_text(json.dumps({
        "seconds": seconds, "dataset_dir": os.fspath(dataset_dir),
        "parent_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "largest_worker_peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }))


class TreeSampler:
    """Samples the resident memory of a process and its descendants from /proc every `period` s."""

    def __init__(self, pid: int, period: float = 0.2):
        self.pid, self.period = pid, period
        self.peak_total_kib = 0
        self.peak_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            total = 0
            tree = self._tree()
            for pid in tree:
                try:
                    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    continue
            self.peak_total_kib = max(self.peak_total_kib, total)
            self.peak_workers = max(self.peak_workers, len(tree) - 1)


def build_config(folder: pathlib.Path, data_dir: pathlib.Path, path: str, workers: int, beam_mode: str) -> dict:
    """configs/prepare.py:folder (default settings; `,beam` for Beam) with this corpus and data_dir."""
    sys.path.insert(0, os.fspath(REPO))
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    spec = f"{REPO / 'configs' / 'prepare.py'}:folder{',beam' if path == 'beam' else ''}"
    overrides = [("folder", os.fspath(folder)), ("data_dir", os.fspath(data_dir)), ("progress", "False"),
                 ("num_workers", str(workers))]
    if path == "beam":
        overrides.append(("beam_options", f"--runner=DirectRunner --direct_num_workers={workers} "
                                          f"--direct_running_mode={beam_mode}"))
    return config_loading.load_with_overrides(spec, overrides).to_dict()


def shards(dataset_dir: pathlib.Path) -> dict:
    files = sorted(p for p in dataset_dir.iterdir() if ".array_record-" in p.name)
    sizes = [p.stat().st_size for p in files]
    per_split = {}
    for p in files:
        split = p.name.split("-")[1].split(".")[0]
        per_split[split] = per_split.get(split, 0) + 1
    return {"count": len(files), "per_split": per_split, "total_bytes": sum(sizes),
            "min_bytes": min(sizes, default=0), "max_bytes": max(sizes, default=0)}


def examples_check(built, dataset_dir: pathlib.Path, config: dict) -> dict:
    """Per split: the examples the manifest's ok records make under the build's own settings (its packing and
    window length), the examples the dataset's info counts, and the records its shards hold. All three must
    agree: nothing lost."""
    import ml_collections  # pylint: disable=import-outside-toplevel

    from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel
    from midibert_jax.data.builders import beam, common  # pylint: disable=import-outside-toplevel

    midi_config = prepare.make_builder(ml_collections.ConfigDict(config)).builder_config
    expected = beam.expected_examples(built.summary()["splits"], midi_config)
    info = built.info.get("examples", {})
    return {split: {"manifest_examples": expected.get(split, 0), "info_examples": info.get(split, 0),
                    "shard_records": len(common.load_data_source(dataset_dir, split))}
            for split in sorted(set(expected) | set(info))}


def measure(folder: pathlib.Path, size: int, corrupt: list[str], cache: pathlib.Path, path: str, workers: int,
            beam_mode: str) -> dict:
    """Builds `folder` (`size` variants) once by `path` in a child process: the figures, the manifest's accounting."""
    sys.path.insert(0, os.fspath(REPO))
    from midibert_jax.data import manifest  # pylint: disable=import-outside-toplevel

    work = cache / "builds" / f"{path}_{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = build_config(folder, work / "tfds", path, workers, beam_mode)
    (work / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.fspath(REPO), os.environ.get("PYTHONPATH", "")]))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(work / "build.log", "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--child-build", os.fspath(work / "config.json"),
                                 os.fspath(work / "result.json")], env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreeSampler(proc.pid) as sampler:
            code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:  # a result too: recorded with the build's last error line, and the benchmark goes on
        errors = [line for line in (work / "build.log").read_text().splitlines() if "Error" in line]
        return {"path": path, "beam_mode": beam_mode if path == "beam" else None, "variants": size, "workers": workers, "wall_s": round(wall, 2), "failed": code,
                "error": errors[-1] if errors else f"exit code {code}", "log": os.fspath(work / "build.log"),
                "tree_peak_rss_mib": round(sampler.peak_total_kib / 1024, 1)}
    child = json.loads((work / "result.json").read_text())
    dataset_dir = pathlib.Path(child["dataset_dir"])
    built = manifest.Manifest.load(dataset_dir)
    counts = {status: len(built.by_status(status)) for status in manifest.STATUSES}
    inputs = input_files(folder)
    by_path = {r.path: r for r in built.records}
    corrupt_records = {rel: {"status": by_path[rel].status, "reason": by_path[rel].reason} if rel in by_path else None
                       for rel in corrupt}
    cores = min(workers, os.cpu_count() or 1)
    return {
        "path": path, "beam_mode": beam_mode if path == "beam" else None, "inputs": len(inputs), "variants": size, "corrupt": len(corrupt), "workers": workers,
        "wall_s": round(wall, 2), "build_s": round(child["seconds"], 2),
        "files_per_s": round(len(inputs) / child["seconds"], 2),
        "files_per_s_per_core": round(len(inputs) / child["seconds"] / cores, 2),
        "parent_peak_rss_mib": round(child["parent_peak_rss_kib"] / 1024, 1),
        "largest_worker_peak_rss_mib": round(child["largest_worker_peak_rss_kib"] / 1024, 1),
        "tree_peak_rss_mib": round(sampler.peak_total_kib / 1024, 1), "tree_peak_workers": sampler.peak_workers,
        "shards": shards(dataset_dir),
        "manifest": counts, "examples": built.info.get("examples", {}),
        "accounted": sum(counts.values()) == len(inputs) and sorted(by_path) == inputs,
        "examples_check": (check := examples_check(built, dataset_dir, config)),
        "examples_match_manifest": all(len(set(c.values())) == 1 for c in check.values()),
        "corrupt_files": corrupt_records,
        "all_corrupt_skipped_with_reason": all(r and r["status"] == "skipped" and r["reason"]
                                               for r in corrupt_records.values()),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after: a quiet machine?
        "dataset_dir": os.fspath(dataset_dir),
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="variants per corpus, comma-separated")
    parser.add_argument("--paths", default="default,beam", help=f"build paths, of {PATHS}")
    parser.add_argument("--workers", type=int, default=2, help="tokenizer processes / Beam workers (and writers)")
    parser.add_argument("--beam-mode", default="in_memory", choices=("multi_threading", "multi_processing", "in_memory"),
                        help="the DirectRunner's running mode (multi_processing loses elements at 10^5 files: docs/scaling.md)")
    parser.add_argument("--data", default=os.fspath(DEFAULT_DATA), help="folder holding POP909, POP1K7, ...")
    parser.add_argument("--max-songs", type=int, default=0, help="use only the first N songs (0: all)")
    parser.add_argument("--corrupt-every", type=int, default=250, help="one corrupt file per N variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "midibert_jax",
                                                        "bench_corpus"))
    parser.add_argument("--keep-builds", action="store_true", help="keep the built datasets under CACHE/builds")
    parser.add_argument("--out", default=os.fspath(BENCHMARKS / "results" / "corpus_build.json"))
    parser.add_argument("--child-build", nargs=2, metavar=("CONFIG_JSON", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_build:
        child_build(*args.child_build)
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    paths = [p for p in args.paths.split(",") if p]
    if set(paths) - set(PATHS):
        parser.error(f"--paths: choose from {PATHS}")
    cache = pathlib.Path(args.cache).expanduser().resolve()
    info = cpu_info()
    print(f"CPU: {describe(info)}", flush=True)
    songs = source_songs(pathlib.Path(args.data), args.max_songs)
    pool = make_pool(cache, songs, max(sizes), args.seed, args.workers)
    results = []
    for size in sizes:
        folder, corrupt = make_corpus(cache, pool, size, args.corrupt_every)
        for path in paths:
            row = measure(folder, size, corrupt, cache, path, args.workers, args.beam_mode)
            results.append({k: v for k, v in row.items() if k != "dataset_dir"})
            if row.get("failed"):
                print(f"{size:>7} files, {path:>7}: FAILED after {row['wall_s']:.1f} s: {row['error']} "
                      f"(see {row['log']})", flush=True)
                continue
            print(f"{size:>7} files, {path:>7}: {row['build_s']:8.1f} s, {row['files_per_s']:7.1f} files/s "
                  f"({row['files_per_s_per_core']:.1f} per core); peak RSS parent "
                  f"{row['parent_peak_rss_mib']:.0f} MiB, largest worker {row['largest_worker_peak_rss_mib']:.0f} MiB, "
                  f"tree {row['tree_peak_rss_mib']:.0f} MiB; "
                  f"{row['shards']['count']} shards, {row['shards']['total_bytes'] / 2**20:.1f} MiB; manifest "
                  f"{row['manifest']}, accounted: {row['accounted']}, examples match the manifest: "
                  f"{row['examples_match_manifest']}, corrupt all skipped: "
                  f"{row['all_corrupt_skipped_with_reason']}", flush=True)
            if not args.keep_builds:
                shutil.rmtree(cache / "builds" / f"{path}_{size}", ignore_errors=True)
    write_results(args.out, {"benchmark": "corpus_build", "cpu": info, "songs": len(songs), "seed": args.seed,
                             "corrupt_every": args.corrupt_every, "builds": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
