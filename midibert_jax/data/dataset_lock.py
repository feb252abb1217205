"""One build of a dataset at a time, and no half-built dataset ever read.

    with DatasetLock(dataset_dir, timeout=0):     # waits while another process builds it
        if not is_complete(dataset_dir): ...      # build, then mark_complete(dataset_dir)

The lock is a file next to the dataset (``<data_dir>/<name>/<config>/.<version>.lock``):
* Local disks: `fcntl.flock`. The kernel drops the lock when its holder exits, SIGKILL
  included, so a dead holder never blocks anyone. The holder writes its pid, host and start
  time into the file; a waiting process prints them.
* A filesystem without flock: the file is created exclusively instead; a file whose holder
  pid is gone on this host is stale and taken over.
* Cloud paths (gs://...): object stores offer neither, so there is no lock. A jax.distributed
  run is still safe (process 0 builds first, `data.prepare`); separate runs sharing a gs://
  data_dir should build the dataset once first (`midibert-jax prepare`).

A dataset is complete when it holds the marker `prepare` writes after a build
(`COMPLETE_MARKER`), or, on a local disk where TFDS's final rename is atomic, TFDS's
`dataset_info.json` and our `build_summary.json` (datasets built before the marker existed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any

from etils import epath

from midibert_jax.data.errors import DatasetBusyError

COMPLETE_MARKER = "prepared.json"
# Files every finished local build has (TFDS's info, our build summary).
BUILD_FILES = ("dataset_info.json", "build_summary.json")
# Seconds between two attempts to take a busy lock.
POLL_SECONDS = 0.5


def is_local(path: epath.PathLike) -> bool:
    """True for a path on this machine's filesystems (not gs://, s3://, ...)."""
    return "://" not in os.fspath(path)


def lock_path(dataset_dir: epath.PathLike) -> epath.Path:
    dataset_dir = epath.Path(dataset_dir)
    return dataset_dir.parent / f".{dataset_dir.name}.lock"


def is_complete(dataset_dir: epath.PathLike) -> bool:
    """True when `dataset_dir` holds a finished build (see the module docstring)."""
    dataset_dir = epath.Path(dataset_dir)
    if (dataset_dir / COMPLETE_MARKER).exists():
        return True
    return is_local(dataset_dir) and all((dataset_dir / name).exists() for name in BUILD_FILES)


def mark_complete(dataset_dir: epath.PathLike) -> None:
    """Writes the completion marker (who built the dataset, and when)."""
    (epath.Path(dataset_dir) / COMPLETE_MARKER).write_text(json.dumps(_holder(), sort_keys=True) + "\n")


def incomplete_builds(dataset_dir: epath.PathLike) -> list[epath.Path]:
    """TFDS's temporary folders of this dataset (``incomplete.XXXXXX_<version>``) next to it."""
    dataset_dir = epath.Path(dataset_dir)
    if not dataset_dir.parent.exists():
        return []
    return sorted(p for p in dataset_dir.parent.iterdir()
                  if p.name.startswith("incomplete.") and p.name.endswith(f"_{dataset_dir.name}"))


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read_holder(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DatasetLock:
    """Exclusive right to build `dataset_dir` (a context manager; see the module docstring).

    `timeout` seconds to wait for another holder; 0 waits as long as the holder lives.
    `out` gets one line when this process has to wait, naming the holder.
    """

    def __init__(self, dataset_dir: epath.PathLike, timeout: float = 0.0, out=None):
        self.dataset_dir = epath.Path(dataset_dir)
        self.path = os.fspath(lock_path(dataset_dir))
        self.timeout = timeout
        self.out = out if out is not None else sys.stderr
        self._fd: int | None = None
        self._exclusive_file = False
        self.waited = False

    def __enter__(self) -> "DatasetLock":
        if not is_local(self.dataset_dir):
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        start = time.monotonic()
        while not self._try_acquire():
            holder = _read_holder(self.path)
            waited = time.monotonic() - start
            if self.timeout and waited >= self.timeout:
                raise DatasetBusyError(
                    f"dataset {self.dataset_dir} is being built by {describe_holder(holder)}; gave up after "
                    f"{waited:.0f} s (data.lock_timeout={self.timeout:g}; lock file {self.path})"
                )
            # The holder writes its name just after locking: give it a moment before saying "another process".
            if not self.waited and (holder or waited > 2 * POLL_SECONDS):
                self.waited = True
                print(f"Waiting for {describe_holder(holder)}, which is building {self.dataset_dir} "
                      f"(lock file {self.path}); its dataset will be reused.", file=self.out, flush=True)
            time.sleep(POLL_SECONDS)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        if self._exclusive_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        else:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            return self._try_exclusive_file()  # a filesystem without flock
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder(), sort_keys=True).encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def _try_exclusive_file(self) -> bool:
        """The fallback lock: the lock file's content names its holder; a dead holder's file is removed."""
        holder = _read_holder(self.path)
        stale = holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0) or 0))
        if stale or not holder:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        os.write(fd, json.dumps(_holder(), sort_keys=True).encode())
        self._fd, self._exclusive_file = fd, True
        return True
