"""Build manifests: one record per input file, so that nothing is dropped silently.

A manifest is written beside the TFDS shards as ``manifest.jsonl`` (one JSON record per line,
in piece-id order) and ``build_summary.json`` (the aggregate that `format_summary` prints).

Record statuses:
  ok         tokenized, contributed `num_windows` windows (piece packing) or rows to the
             packed stream (reference packing) of its split.
  skipped    rejected; `reason` says why (`error_kind` groups reasons: the tokenizer's error
             kind, `timeout`, `worker_crash`, `internal_error`, `conversion`, ...).
  duplicate  byte-identical to an earlier file (`reason` names it); not tokenized. A byte copy of a
             skipped file is skipped itself, with the first one's reason and kind: it is just as broken.
  ignored    left out on purpose, `reason` says why (`error_kind`): not a MIDI file by extension, not a
             file of the dataset's layout, not in the split lists, or held out of a pre-training
             corpus as a task's validation / test file or a byte copy of one).
"""

from __future__ import annotations

import array
import collections
import dataclasses
import heapq
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

from midibert_jax import console

MANIFEST_FILENAME = "manifest.jsonl"
SUMMARY_FILENAME = "build_summary.json"
STATUSES = ("ok", "skipped", "duplicate", "ignored")


@dataclasses.dataclass
class FileRecord:
    """What happened to one input file."""

    # Position of the file in the sorted input list (stable for a given corpus).
    piece_id: int
    # Path relative to the corpus root (or a source id such as a music21 work).
    path: str
    # sha256 of the file's bytes (None when the file was not read).
    sha256: str | None = None
    # Size in bytes (None when unknown).
    size: int | None = None
    # "train" / "validation", or None for files that never reached a split.
    split: str | None = None
    status: str = "ok"
    # Why a file was skipped / is a duplicate; None when ok.
    reason: str | None = None
    # Short category of `reason` (for summaries).
    error_kind: str | None = None
    # Free-form remarks (e.g. "repeats not expanded", "3 windows cut at 256-bar limit").
    notes: list[str] = dataclasses.field(default_factory=list)
    # Note rows the tokenizer produced.
    num_notes: int = 0
    # Windows (piece packing) or rows of the packed stream incl. EOS (reference packing).
    num_windows: int = 0
    num_stream_rows: int = 0
    # Piece packing: the absolute bar each window starts at (windows re-base their bars to 0), so that
    # evaluation can put the piece back together and cut it again (`train.eval_views`). Empty in builds
    # made before 2026-12-07.
    window_bars: list[int] = dataclasses.field(default_factory=list)
    # Seconds spent on the file (tokenization; wall-clock, not reproducible).
    seconds: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"{self.path}: unknown status {self.status!r}; expected one of {STATUSES}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FileRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _skip_copies_of_skipped(records: Sequence[FileRecord]) -> None:
    """Marks each duplicate of a skipped file skipped (same reason and kind), so that a corrupt file is
    reported as corrupt by its own name even when an identical one came first."""
    originals = _originals(records, {r.sha256 for r in records if r.status == "duplicate" and r.sha256})
    for r in records:
        _mark_copy(r, originals)


def _originals(records: Iterable[FileRecord], copied: set[str]) -> dict[str, FileRecord]:
    """The first record that is no duplicate, of each content in `copied` (records in piece-id order)."""
    first: dict[str, FileRecord] = {}
    for r in records:
        if r.sha256 in copied and r.status != "duplicate":
            first.setdefault(r.sha256, r)
    return first


def _mark_copy(r: FileRecord, originals: dict[str, FileRecord]) -> None:
    original = originals.get(r.sha256) if r.status == "duplicate" and r.sha256 else None
    if original is not None and original.status == "skipped":
        r.status, r.error_kind = "skipped", original.error_kind
        r.reason = f"{original.reason} (a byte copy of {original.path})"


@dataclasses.dataclass
class Manifest:
    """All records of a build plus build-level facts (config, timings)."""

    records: list[FileRecord]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.records = sorted(self.records, key=lambda r: r.piece_id)
        ids = [r.piece_id for r in self.records]
        if len(set(ids)) != len(ids):
            dup = collections.Counter(ids).most_common(1)[0][0]
            raise ValueError(f"duplicate manifest records for piece_id {dup}")
        _skip_copies_of_skipped(self.records)

    def by_status(self, status: str) -> list[FileRecord]:
        return [r for r in self.records if r.status == status]

    def summary(self) -> dict[str, Any]:
        """Aggregate counts: files per status, reasons, and per-split pieces/windows/notes."""
        counter = SummaryCounter()
        for r in self.records:
            counter.add(r)
        return counter.summary(self.info)

    def write(self, directory: epath.PathLike, summary: dict[str, Any] | None = None) -> None:
        """Writes the records and their summary (`summary`: this manifest's `summary()`, when already made)."""
        with open_manifest(directory) as f:
            for r in self.records:
                f.write(r.to_json() + "\n")
        write_summary(directory, self.summary() if summary is None else summary)

    @classmethod
    def load(cls, directory: epath.PathLike) -> "Manifest":
        directory = epath.Path(directory)
        path = directory / MANIFEST_FILENAME
        if not path.exists():
            raise FileNotFoundError(f"no {MANIFEST_FILENAME} in {directory}")
        records = [FileRecord.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line]
        info = {}
        summary_path = directory / SUMMARY_FILENAME
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            info = {k: v for k, v in summary.items() if k not in _DERIVED_SUMMARY_KEYS}
        return cls(records, info)


def open_manifest(directory: epath.PathLike):
    """``manifest.jsonl`` in `directory` (made if missing), open for writing line by line."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return (directory / MANIFEST_FILENAME).open("w")


def write_summary(directory: epath.PathLike, summary: dict[str, Any]) -> None:
    (epath.Path(directory) / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


class SummaryCounter:
    """`Manifest.summary()` counted one record at a time, in piece-id order: a build sums its records as it
    writes them, without holding them."""

    def __init__(self):
        self.files = 0
        self.status: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()
        self.ignored: collections.Counter = collections.Counter()
        self.splits: dict[str, dict[str, int]] = {}
        self.groups: dict[str, dict[str, int]] = {}
        self.seconds = 0  # summed in record order, as sum() did
        self._slowest: list[tuple[float, int, str]] = []  # a heap of the 5 slowest: (seconds, -order, path)

    def add(self, r: FileRecord) -> None:
        self.files += 1
        self.status[r.status] += 1
        if r.status in ("skipped", "ignored"):
            (self.kinds if r.status == "skipped" else self.ignored)[r.error_kind or "unknown"] += 1
        # per top-level folder: the demo corpus' collections, a folder's sub-folders
        g = self.groups.setdefault(r.path.split("/", 1)[0] if "/" in r.path else ".",
                                   {"pieces": 0, "windows": 0, "notes": 0, "skipped": 0, "duplicate": 0, "ignored": 0})
        if r.status == "ok":
            s = self.splits.setdefault(r.split or "none", {"pieces": 0, "windows": 0, "notes": 0, "stream_rows": 0})
            s["pieces"] += 1
            s["windows"] += r.num_windows
            s["notes"] += r.num_notes
            s["stream_rows"] += r.num_stream_rows
            g["pieces"] += 1
            g["windows"] += r.num_windows
            g["notes"] += r.num_notes
        else:
            g[r.status] += 1
        self.seconds += r.seconds
        entry = (r.seconds, -self.files, r.path)
        if len(self._slowest) < 5:
            heapq.heappush(self._slowest, entry)
        else:
            heapq.heappushpop(self._slowest, entry)

    def summary(self, info: dict[str, Any]) -> dict[str, Any]:
        """The summary of the records added so far, with the build-level facts `info`."""
        return {
            "files": self.files,
            "status": {k: self.status.get(k, 0) for k in STATUSES},
            "skipped_by_kind": dict(self.kinds.most_common()),
            "ignored_by_kind": dict(self.ignored.most_common()),
            "splits": self.splits,
            "groups": dict(sorted(self.groups.items(), key=lambda kv: -kv[1]["notes"])),
            "seconds_total": round(self.seconds, 3),
            "slowest": [(path, round(seconds, 3)) for seconds, _, path in sorted(self._slowest, reverse=True)
                        if seconds > 0],
            **{k: v for k, v in info.items() if k not in ("records",)},
        }


class RecordSpool:
    """A build's manifest records, kept in a JSON-lines file in the build folder as they come (in any order)
    and written out as the manifest in piece-id order at the end: 16 bytes a record in memory (its piece id
    and where its line starts), not a `FileRecord` (about 1 KiB with its window bars) until the build ends."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "wb")  # pylint: disable=consider-using-with  # closed by close()
        self._ids = array.array("q")
        self._offsets = array.array("q")
        self._copied: set[str] = set()  # contents that have duplicates (see _skip_copies_of_skipped)

    def add(self, record: FileRecord) -> None:
        self._ids.append(record.piece_id)
        self._offsets.append(self._file.tell())
        self._file.write(record.to_json().encode() + b"\n")
        if record.status == "duplicate" and record.sha256:
            self._copied.add(record.sha256)

    def __len__(self) -> int:
        return len(self._ids)

    def records(self) -> Iterator[FileRecord]:
        """The records in piece-id order (as `Manifest` holds them), read back one at a time."""
        self._file.flush()
        ids = np.frombuffer(self._ids, np.int64) if self._ids else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        repeated = sorted_ids[1:][np.diff(sorted_ids) == 0]
        if len(repeated):
            raise ValueError(f"duplicate manifest records for piece_id {repeated[0]}")
        with open(self.path, "rb") as f:
            for i in order:  # not .tolist(): 10^5 int objects
                f.seek(self._offsets[i])
                yield FileRecord.from_dict(json.loads(f.readline()))

    def write_manifest(self, directory: epath.PathLike, info: dict[str, Any]) -> dict[str, Any]:
        """Writes ``manifest.jsonl`` (what `Manifest(records, info).write` writes) and returns its summary;
        the summary file is left to `write_summary`."""
        originals = _originals(self.records(), self._copied) if self._copied else {}
        counter = SummaryCounter()
        with open_manifest(directory) as f:
            for r in self.records():
                _mark_copy(r, originals)
                counter.add(r)
                f.write(r.to_json() + "\n")
        return counter.summary(info)

    def close(self) -> None:
        self._file.close()


_DERIVED_SUMMARY_KEYS = ("files", "status", "skipped_by_kind", "ignored_by_kind", "splits", "groups", "seconds_total",
                         "slowest")


def read_jsonl_records(lines: Iterable[str]) -> list[FileRecord]:
    return [FileRecord.from_dict(json.loads(line)) for line in lines if line.strip()]


def format_summary(summary: dict[str, Any], max_reasons: int = 10, max_groups: int = 12) -> str:
    """Human-readable multi-line summary of `Manifest.summary()`."""
    lines = []
    name = summary.get("dataset", "dataset")
    lines.append(f"{name}: {summary['files']} input files")
    st = summary["status"]
    lines.append("  " + ", ".join(f"{k} {st.get(k, 0)}" for k in STATUSES))
    for split, s in sorted(summary["splits"].items()):
        parts = [f"{s['pieces']} pieces"]
        if s["windows"] or not s.get("stream_rows"):
            parts.append(f"{s['windows']} windows")
        parts.append(f"{s['notes']} notes")
        if s.get("stream_rows"):
            parts.append(f"{s['stream_rows']} packed rows incl. EOS")
        lines.append(f"  {split}: " + ", ".join(parts))
    groups = summary.get("groups", {})
    if len(groups) > 1:
        columns = (("pieces", 7), ("windows", 8), ("notes", 9), ("skipped", 7), ("duplicate", 9), ("ignored", 7))
        lines.append("  per folder (largest first): " + " ".join(f"{k:>{w}s}" for k, w in columns))
        shown = list(groups.items())[:max_groups]
        rest = list(groups.values())[max_groups:]
        if rest:
            shown.append((f"... {len(rest)} more", {k: sum(g.get(k, 0) for g in rest) for k, _ in columns}))
        for name, g in shown:
            lines.append(f"    {name[:26]:26s} " + " ".join(f"{g.get(k, 0):{w}d}" for k, w in columns))
    for split, n in sorted(summary.get("examples", {}).items()):
        lines.append(f"  {split}: {n} examples written")
    for status in ("skipped", "ignored"):
        kinds = summary.get(f"{status}_by_kind", {})
        if kinds:
            lines.append(f"  {status} by reason: " + ", ".join(f"{k} {v}" for k, v in list(kinds.items())[:max_reasons]))
    if summary.get("build_seconds") is not None:
        lines.append(f"  build time {summary['build_seconds']:.1f} s ({summary['seconds_total']:.1f} s of worker time)")
    empty = summary.get("empty_splits")
    if empty:
        lines.append(f"  not written (no usable pieces): {', '.join(empty)}")
    if summary.get("data_dir"):
        lines.append(f"  written to {summary['data_dir']}")
    return "\n".join(lines)


def summary_line(summary: dict[str, Any]) -> str:
    """`Manifest.summary()` in one line: what a build prints when it runs inside training (`format_summary`: all of it)."""
    st = summary["status"]
    others = ", ".join(f"{st[k]} {k}" for k in STATUSES[1:] if st.get(k))
    splits = ", ".join(f"{name} {s['windows'] or s.get('stream_rows', 0)}" for name, s in sorted(summary["splits"].items()))
    unit = "windows" if any(s["windows"] for s in summary["splits"].values()) else "packed rows"
    took = f" in {console.format_seconds(summary['build_seconds'])}" if summary.get("build_seconds") is not None else ""
    empty = f"; not written (no usable pieces): {', '.join(summary['empty_splits'])}" if summary.get("empty_splits") else ""
    return (f"{summary.get('dataset', 'dataset')}: {st.get('ok', 0)} of {summary['files']} files tokenized"
            f"{f' ({others})' if others else ''}; {unit}: {splits}{empty}; built{took} "
            f"(per file: {MANIFEST_FILENAME}, totals: {SUMMARY_FILENAME})")


def bounded(lines: Sequence[str], limit: int, more: str) -> list[str]:
    """The first `limit` of `lines`, then `... and N more {more}`: every problem named while there are a
    handful, a readable screen when there are thousands (a full POP909 clone ignores 6,579 files)."""
    lines = list(lines)
    return lines if len(lines) <= limit else lines[:limit] + [f"... and {len(lines) - limit} more {more}"]


def left_out_lines(records: Sequence[FileRecord], limit: int = 10) -> list[str]:
    """What a build left out, by name (for command output): per status (skipped, duplicate, ignored) and
    kind, `STATUS (KIND) PATH: reason` for the first `limit` files, then how many more (all are in the manifest)."""
    groups: dict[tuple[str, str], list[FileRecord]] = {}
    for r in records:
        if r.status != "ok":
            groups.setdefault((r.status, r.error_kind or "unknown"), []).append(r)
    lines = []
    for (status, kind), rs in sorted(groups.items(), key=lambda kv: STATUSES.index(kv[0][0])):
        label = status if kind == status else f"{status} ({kind})"
        lines += bounded([f"{label} {r.path}: {r.reason}" for r in rs], limit, f"{label} (see {MANIFEST_FILENAME})")
    return lines


def brief(records: Sequence[FileRecord], limit: int = 3) -> str:
    """`PATH (reason); ...` of the first `limit` records, for a one-line error when a build cannot go on
    (it writes no manifest then: the message is the only place that names the files)."""
    named = [f"{r.path} ({r.reason})" for r in records]
    return "; ".join(bounded(named, limit, "file(s)"))


def split_notes(dataset_dir: epath.PathLike, split: str) -> int:
    """Non-pad notes in `split` of a built dataset, from its manifest."""
    return int(Manifest.load(dataset_dir).summary()["splits"][split]["notes"])
