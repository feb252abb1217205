"""The embedded demo corpus: scores shipped inside the music21 package, converted to MIDI.

Works are enumerated from the music21 corpus folder (one work per score file; one per tune
``X:`` of an ABC collection). The collections bach, palestrina, monteverdi and trecento are
kept out for independent evaluation and cannot be selected; demos and theoryExercises (test
files rather than music) are left out by default.

Conversion (parse with music21, write MIDI) runs in a `WorkerPool` with a per-work timeout
and is cached on disk: ``<cache_dir>/<collection>/...mid`` plus ``conversions.json``, which
also remembers failures so that a rebuild neither retries nor hides them.

Two MIDI writers:
  'fast' (default): walks each part's notes (ties merged, grace notes dropped) and writes
    them with mido at 480 ticks per quarter, with the score's time signatures and metronome
    marks. Repeats are not expanded. Several times faster than music21's writer on large
    scores, which matters on a 2-core machine.
  'music21': `score.write('midi')` (expands repeats; slow on large scores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
from collections.abc import Sequence
from typing import Any

from midibert_jax import console, paths
from midibert_jax.data import workers
from midibert_jax.data.errors import DataError

# Collections held out for independent evaluation: never part of the demo corpus.
EXCLUDED_COLLECTIONS = ("bach", "palestrina", "monteverdi", "trecento")
# Collections left out unless asked for: test files, not music.
DEFAULT_SKIPPED_COLLECTIONS = ("demos", "theoryExercises")
# Score formats, most preferred first (a work stored twice keeps the first format).
SCORE_EXTENSIONS = (".mxl", ".musicxml", ".xml", ".krn", ".abc")
WRITERS = ("fast", "music21")
CONVERSIONS_FILENAME = "conversions.json"
TICKS_PER_QUARTER = 480
DEFAULT_VELOCITY = 90  # what music21 realizes without dynamics


class DemoCorpusError(DataError):
    """A bad demo-corpus request (unknown or excluded collection, bad option)."""


@dataclasses.dataclass(frozen=True, order=True)
class Work:
    """One piece of the music21 corpus."""

    # Source file relative to the music21 corpus folder, e.g. "essenFolksong/altdeu10.abc".
    source: str
    # Tune number (ABC "X:") within the source, or None for single-work files.
    number: int | None = None

    @property
    def collection(self) -> str:
        return self.source.split("/", 1)[0]

    @property
    def key(self) -> str:
        """Stable id, e.g. "essenFolksong/altdeu10.abc#3"."""
        return self.source if self.number is None else f"{self.source}#{self.number}"

    @property
    def midi_path(self) -> str:
        """Path of the converted file relative to the cache folder."""
        stem = os.path.splitext(self.source)[0]
        return f"{stem}.mid" if self.number is None else f"{stem}/{self.number:05d}.mid"


def corpus_root() -> str:
    """The music21 package's corpus folder."""
    from music21 import corpus  # pylint: disable=import-outside-toplevel

    return os.path.dirname(corpus.__file__)


def music21_version() -> str:
    import music21  # pylint: disable=import-outside-toplevel

    return music21.__version__


def available_collections(root: str | None = None) -> list[str]:
    """Collections of the music21 corpus that may be used (the excluded ones left out)."""
    root = root or corpus_root()
    out = []
    for name in sorted(os.listdir(root)):
        if name.startswith(("_", ".")) or name in EXCLUDED_COLLECTIONS:
            continue
        if os.path.isdir(os.path.join(root, name)):
            out.append(name)
    return out


def _abc_numbers(path: str) -> list[int]:
    numbers = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"X:\s*(\d+)", line)
            if m:
                numbers.append(int(m.group(1)))
    return sorted(set(numbers))


def list_works(collections: Sequence[str] | None = None, root: str | None = None) -> list[Work]:
    """All works of `collections` (default: all available except demos/theoryExercises), sorted."""
    root = root or corpus_root()
    available = available_collections(root)
    if collections is None:
        collections = [c for c in available if c not in DEFAULT_SKIPPED_COLLECTIONS]
    for c in collections:
        if c in EXCLUDED_COLLECTIONS:
            raise DemoCorpusError(f"collection {c!r} is held out for evaluation and cannot be used")
        if c not in available:
            raise DemoCorpusError(f"unknown music21 collection {c!r}; available: {', '.join(available)}")
    works = []
    for c in sorted(set(collections)):
        by_stem: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, c)):
            dirnames.sort()
            for name in filenames:
                stem, ext = os.path.splitext(name)
                if ext.lower() not in SCORE_EXTENSIONS:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                key = rel[: -len(ext)]
                best = by_stem.get(key)
                if best is None or SCORE_EXTENSIONS.index(ext.lower()) < SCORE_EXTENSIONS.index(
                    os.path.splitext(best)[1].lower()
                ):
                    by_stem[key] = rel
        for rel in sorted(by_stem.values()):
            if rel.lower().endswith(".abc"):
                works.extend(Work(rel, n) for n in _abc_numbers(os.path.join(root, rel)))
            else:
                works.append(Work(rel))
    return sorted(works)


def select_works(works: Sequence[Work], max_pieces: int | None, seed: int) -> list[Work]:
    """A seeded subset, balanced across collections (round-robin), returned sorted.

    Small collections are taken whole; large ones (the folk-song books) fill the rest.
    """
    if max_pieces is None or max_pieces >= len(works):
        return sorted(works)
    by_collection: dict[str, list[Work]] = {}
    for w in sorted(works):
        by_collection.setdefault(w.collection, []).append(w)
    rng = random.Random(seed)
    queues = []
    for name in sorted(by_collection):
        items = list(by_collection[name])
        rng.shuffle(items)
        queues.append(items)
    chosen: list[Work] = []
    while len(chosen) < max_pieces:
        progressed = False
        for q in queues:
            if q and len(chosen) < max_pieces:
                chosen.append(q.pop())
                progressed = True
        if not progressed:
            break
    return sorted(chosen)


# ----------------------------------------------------------------------------------------
# Conversion (runs in worker processes).


def _score_to_midi_fast(score, path: str) -> list[str]:
    """Writes `score` as a type-1 MIDI file with mido; returns remarks for the manifest."""
    import mido  # pylint: disable=import-outside-toplevel
    from music21 import dynamics, meter, note, stream  # pylint: disable=import-outside-toplevel

    notes_out: list[str] = []
    tpq = TICKS_PER_QUARTER

    def ticks(quarters) -> int:
        return int(round(float(quarters) * tpq))

    parts = list(score.parts) if isinstance(score, stream.Score) and score.parts else [score]
    conductor: list[tuple[int, int, mido.MetaMessage]] = []
    first = parts[0].flatten()
    for ts in first.getElementsByClass(meter.TimeSignature):
        conductor.append(
            (ticks(ts.offset), 0, mido.MetaMessage("time_signature", numerator=ts.numerator, denominator=ts.denominator, time=0))
        )
    for start, _, mark in score.metronomeMarkBoundaries():
        bpm = mark.getQuarterBPM()
        if bpm and bpm > 0:
            conductor.append((ticks(start), 1, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0)))
    tracks = [_to_track(sorted(conductor, key=lambda e: (e[0], e[1])))]

    grace = 0
    channel_iter = (c for c in range(16) if c != 9)
    for part in parts:
        instrument = part.getInstrument(returnDefault=True)
        program = instrument.midiProgram if instrument.midiProgram is not None else 0
        try:
            channel = next(channel_iter)
        except StopIteration:
            channel_iter = (c for c in range(16) if c != 9)
            channel = next(channel_iter)
        open_notes: dict[int, list[int]] = {}  # midi pitch -> [start, end, velocity] of a tied chain
        spans: list[list[int]] = []
        dynamic_velocity = DEFAULT_VELOCITY
        for element in part.flatten().getElementsByClass((note.NotRest, dynamics.Dynamic)):
            if isinstance(element, dynamics.Dynamic):
                if element.volumeScalar is not None:
                    dynamic_velocity = int(round(element.volumeScalar * 127))
                continue
            if element.duration.quarterLength == 0:
                grace += 1
                continue
            start = ticks(element.offset)
            end = ticks(element.offset + element.duration.quarterLength)
            members = [element] if isinstance(element, note.Note) else list(getattr(element, "notes", []))
            for n in members:
                if not hasattr(n, "pitch"):
                    continue
                pitch = n.pitch.midi
                if not 0 <= pitch < 128:
                    continue
                tie = n.tie.type if n.tie is not None else (element.tie.type if element.tie is not None else None)
                velocity = n.volume.velocity if n.volume.velocity is not None else dynamic_velocity
                chain = open_notes.get(pitch)
                if tie in ("stop", "continue") and chain is not None and chain[1] == start:
                    chain[1] = end
                else:
                    chain = [start, end, int(velocity), pitch]
                    spans.append(chain)
                if tie in ("start", "continue"):
                    open_notes[pitch] = chain
                else:
                    open_notes.pop(pitch, None)
        events = [(0, 0, mido.Message("program_change", program=program, channel=channel, time=0))]
        for start, end, velocity, pitch in spans:
            events.append((start, 2, mido.Message("note_on", note=pitch, velocity=max(1, min(127, velocity)), channel=channel, time=0)))
            events.append((end, 1, mido.Message("note_off", note=pitch, velocity=0, channel=channel, time=0)))
        tracks.append(_to_track(sorted(events, key=lambda e: (e[0], e[1]))))
    if grace:
        notes_out.append(f"{grace} grace notes dropped")
    notes_out.append("repeats not expanded")
    midi = mido.MidiFile(type=1, ticks_per_beat=tpq)
    midi.tracks.extend(tracks)
    midi.save(path)
    return notes_out


def _to_track(events: list[tuple[int, int, Any]]) -> Any:
    import mido  # pylint: disable=import-outside-toplevel

    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


@contextlib.contextmanager
def _beaming_skipped():
    """music21's ABC import beams every part (half of a folk tune's parse time); beams are notation
    only and never reach the fast writer's MIDI, so the worker skips them while it parses."""
    from music21 import stream  # pylint: disable=import-outside-toplevel

    original = stream.Stream.makeBeams
    stream.Stream.makeBeams = lambda self, *args, **kwargs: None if kwargs.get("inPlace") else self
    try:
        yield
    finally:
        stream.Stream.makeBeams = original


@dataclasses.dataclass(frozen=True)
class ConvertTask:
    source_path: str
    number: int | None
    out_path: str
    writer: str


def convert_work(task: ConvertTask) -> dict[str, Any]:
    """Parses one work and writes its MIDI file (atomically). Runs inside a worker.

    Returns {"status": "ok"|"failed", "reason": str|None, "notes": [...]}; music21 errors
    become a failed status with the error as reason.
    """
    import warnings  # pylint: disable=import-outside-toplevel

    from music21 import converter  # pylint: disable=import-outside-toplevel
    from music21 import exceptions21  # pylint: disable=import-outside-toplevel

    os.makedirs(os.path.dirname(task.out_path), exist_ok=True)
    tmp = f"{task.out_path}.tmp{os.getpid()}"
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Neither read nor write music21's pickle cache: each work is parsed once, and the pickle
            # round trip cost as much as the parse.
            if task.writer == "fast":
                with _beaming_skipped():
                    score = converter.parse(task.source_path, number=task.number, forceSource=True, storePickle=False)
                notes = _score_to_midi_fast(score, tmp)
            else:
                score = converter.parse(task.source_path, number=task.number, forceSource=True, storePickle=False)
                score.write("midi", fp=tmp)
    except (exceptions21.Music21Exception, ValueError, TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500], "notes": notes}
    os.replace(tmp, task.out_path)
    return {"status": "ok", "reason": None, "notes": notes}


# ----------------------------------------------------------------------------------------
# Materialization (parallel, cached).


@dataclasses.dataclass
class Conversion:
    """The cached result of converting one work."""

    work: Work
    # "ok" or "failed".
    status: str
    # Absolute path of the MIDI file when ok.
    midi_path: str | None
    reason: str | None = None
    # "conversion" (music21 error), "timeout" or "worker_crash" when failed.
    error_kind: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    # True when taken from the cache without converting.
    cached: bool = False


def default_cache_dir(writer: str = "fast") -> str:
    """$MIDIBERT_JAX_CACHE (default ~/.cache/midibert_jax)/music21-<version>-<writer>."""
    return os.path.join(paths.cache_root(), f"music21-{music21_version()}-{writer}")


def _load_index(cache_dir: str) -> dict[str, dict[str, Any]]:
    path = os.path.join(cache_dir, CONVERSIONS_FILENAME)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save_index(cache_dir: str, index: dict[str, dict[str, Any]]) -> None:
    path = os.path.join(cache_dir, CONVERSIONS_FILENAME)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=0, sort_keys=True)
    os.replace(tmp, path)


def materialize(
    works: Sequence[Work],
    cache_dir: str,
    *,
    writer: str = "fast",
    num_workers: int = 0,
    timeout: float | None = 60.0,
    memory_limit_mb: int | None = None,
    progress: bool = True,
) -> list[Conversion]:
    """Converts `works` to MIDI under `cache_dir` (reusing earlier conversions), in order.

    A cached failure is retried only when it was a timeout and `timeout` is now larger.
    """
    if writer not in WRITERS:
        raise DemoCorpusError(f"unknown writer {writer!r}; expected one of {WRITERS}")
    root = corpus_root()
    os.makedirs(cache_dir, exist_ok=True)
    index = _load_index(cache_dir)
    results: dict[Work, Conversion] = {}
    todo: list[Work] = []
    for w in works:
        entry = index.get(w.key)
        out = os.path.join(cache_dir, w.midi_path)
        if entry and entry["status"] == "ok" and os.path.exists(out):
            results[w] = Conversion(w, "ok", out, notes=entry.get("notes", []), seconds=entry.get("seconds", 0.0), cached=True)
        elif entry and entry["status"] == "failed" and not (
            entry.get("error_kind") == workers.TIMEOUT and (timeout is None or timeout > entry.get("timeout", 0))
        ):
            results[w] = Conversion(
                w, "failed", None, entry.get("reason"), entry.get("error_kind"), entry.get("notes", []),
                entry.get("seconds", 0.0), cached=True,
            )
        else:
            todo.append(w)
    if todo:
        tasks = [ConvertTask(os.path.join(root, w.source), w.number, os.path.join(cache_dir, w.midi_path), writer) for w in todo]
        num_workers = num_workers or workers.default_num_workers()
        with workers.WorkerPool(convert_work, num_workers=min(num_workers, len(todo)), timeout=timeout, memory_limit_mb=memory_limit_mb) as pool:
            bar = console.progress(len(todo), "Converting music21 scores (cached for later runs)", unit="works",
                                   enabled=progress)
            failed = 0
            try:
                for w, outcome in zip(todo, pool.imap(tasks)):
                    if outcome.ok and outcome.value["status"] == "ok":
                        conv = Conversion(w, "ok", outcome.item.out_path, notes=outcome.value["notes"], seconds=outcome.seconds)
                    elif outcome.ok:
                        conv = Conversion(w, "failed", None, outcome.value["reason"], "conversion", outcome.value["notes"], outcome.seconds)
                    else:
                        reason = outcome.message.splitlines()[0] if outcome.message else outcome.error
                        conv = Conversion(w, "failed", None, reason, outcome.error, [], outcome.seconds)
                    failed += conv.status != "ok"
                    results[w] = conv
                    index[w.key] = {
                        "status": conv.status, "reason": conv.reason, "error_kind": conv.error_kind, "notes": conv.notes,
                        "seconds": round(conv.seconds, 3), "timeout": timeout,
                    }
                    bar.update(1)
                    bar.set_postfix(failed=failed, refresh=False)
                    if bar.n % 200 == 0:
                        _save_index(cache_dir, index)
            finally:
                bar.close()
                _save_index(cache_dir, index)
    return [results[w] for w in works]


def demo_midi_files(max_pieces: int | None = 200, seed: int = 0, *, progress: bool = False) -> list[str]:
    """MIDI paths of the demo corpus' default selection (converted and cached on first use).

    For benchmarks, notebooks and examples that want real files without building a dataset.
    """
    works = select_works(list_works(), max_pieces, seed)
    conversions = materialize(works, default_cache_dir(), progress=progress)
    return [c.midi_path for c in conversions if c.status == "ok"]
