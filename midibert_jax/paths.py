"""Where a run's files live, and how they are written on local disks and cloud buckets alike.

Every file a run writes goes through `etils.epath` (local paths, gs://, s3://: whatever filesystem
the installed backends reach), never through os.makedirs / open, so a `--workdir gs://bucket/run`
writes its metrics, TensorBoard events, evaluations and summaries into the bucket.

    root = paths.resolve(workdir)                 # absolute local path, or the URL as it is
    paths.write_json(root / paths.DEMO_SUMMARY, summary)
    with paths.open_append(root / paths.METRICS_FILE) as f: f.write(line)

The layout of a training workdir (the only place these names are spelled):

    <workdir>/checkpoints/<step>/<item>/   orbax step folders (items: see train/checkpointing.py)
    <workdir>/config.json                  the resolved run config
    <workdir>/metrics.jsonl                one JSON object of scalars per logged step
    <workdir>/tensorboard/                 event files of the same scalars
    <workdir>/eval_<split>.json            evaluations (+ eval_<split>_confusion.png)
    <workdir>/experiment_run.json          a run of `midibert-jax experiment`, finished: its test results

of an experiment folder (`midibert-jax experiment`): `experiment.json`, `experiment.md`, `experiment.png`,
`pretrain/<arm>_s<seed>/` and `finetune/<task>/<arm>_s<seed>_<protocol>_f<fraction>/` (workdirs),

of an imported PyTorch checkpoint (`midibert-jax import-torch`): `<dir>/config.json` and
`<dir>/params/` (an orbax tree), and of an export for PyTorch (`midibert-jax export`):
`<dir>/model.safetensors` or `<dir>/pytorch_model.bin`, `config.json`, `vocab.json`, `README.md`.

Caches shared by runs (converted demo scores, JAX's compiled programs) live under `cache_root()`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from midibert_jax.errors import UserError

CHECKPOINTS = "checkpoints"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
COMPILE_REPORT = "compile_report.json"
DEMO_SUMMARY = "demo_summary.json"
CACHE_ENV = "MIDIBERT_JAX_CACHE"
EXPERIMENT_FILE = "experiment.json"
EXPERIMENT_PLOT = "experiment.png"
EXPERIMENT_TABLE = "experiment.md"
EXPERIMENT_TIME_PLOT = "experiment_time.png"
EXPERIMENT_RUN = "experiment_run.json"
IMPORTED_CONFIG = "config.json"
IMPORTED_PARAMS = "params"
EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = {"safetensors": "model.safetensors", "torch": "pytorch_model.bin"}  # by --format
EXPORT_VOCAB = "vocab.json"
EXPORT_CARD = "README.md"


def is_url(path: str | os.PathLike) -> bool:
    """True for `scheme://...` paths (gs://, s3://, ...), False for local ones."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
    """An absolute path for local folders (orbax needs them; `~` expanded), URLs as they are."""
    text = os.fspath(path)
    return epath.Path(text if is_url(text) else os.path.abspath(os.path.expanduser(text)))


class WorkdirError(UserError):
    """A workdir that cannot hold runs: empty, or an existing file."""


def check_workdir(path: str | os.PathLike, flag: str = "--workdir") -> epath.Path:
    """`resolve(path)` when it can be a run folder (missing: created later); else WorkdirError naming `flag`."""
    text = os.fspath(path)
    if not text.strip():
        raise WorkdirError(f"{flag} is empty: give a folder (created when missing), local or gs://")
    root = resolve(text)
    if root.exists() and not root.is_dir():
        raise WorkdirError(f"{flag} {text}: is a file; give a folder (created when missing)")
    return root


def eval_file(split: str, suffix: str = ".json") -> str:
    """`eval_<split>.json` (or another suffix, e.g. `_confusion.png`): an evaluation's file name."""
    return f"eval_{split}{suffix}"


def write_text(path: str | os.PathLike, text: str) -> epath.Path:
    """Writes `text` to `path`, creating the parent folder; returns the path."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> epath.Path:
    """Writes `obj` as indented JSON (one trailing newline), creating the parent folder."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(epath.Path(path).read_text())


class RewriteOnFlush:
    """A file opened for appending on a filesystem without append (object stores such as GCS).

    Holds the existing content plus everything written, and rewrites the whole object on `flush`
    and `close`: the same thing an appending writer to a bucket has to do. Takes str or bytes.
    (A plain object, not an io class: callers such as tensorboardX fsync anything with a `fileno`.)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        self._data = bytearray(self.path.read_bytes() if self.path.exists() else b"")
        self._written = -1  # nothing written yet: the first flush creates the object
        self._discarded = False
        self.closed = False

    def write(self, data: str | bytes) -> int:
        if self.closed:
            raise ValueError(f"{self.path}: write to a closed file")
        self._data += data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return len(data)

    def flush(self) -> None:
        if not self.closed and not self._discarded and len(self._data) != self._written:
            self.path.write_bytes(bytes(self._data))
            self._written = len(self._data)

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True

    def discard(self) -> None:
        """From now on writes nothing, not even what is pending (the object is someone else's now)."""
        self._discarded = True

    def __enter__(self) -> "RewriteOnFlush":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_append(path: str | os.PathLike, *, binary: bool = False):
    """A file object appending to `path` (parent folder created): a real append on local disks, a
    `RewriteOnFlush` on cloud paths (object stores cannot append); `flush` makes the data visible."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_url(path):
        return path.open("ab" if binary else "a", encoding=None if binary else "utf-8")
    return RewriteOnFlush(path)


def cache_root() -> str:
    """$MIDIBERT_JAX_CACHE, default ~/.cache/midibert_jax: the machine-local caches runs share."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "midibert_jax")
