"""One build of a dataset at a time, and no half-built dataset ever read.

    with DatasetLock(dataset_dir, timeout=0):     # waits while another process builds it
        if not is_complete(dataset_dir): ...      # build, then mark_complete(dataset_dir)

The lock is a `locks.FileLock` next to the dataset (``<data_dir>/<name>/<config>/.<version>.lock``):
on local disks flock (a dead holder never blocks anyone), else an exclusive file whose dead
holder's record is taken over (see `midibert_jax.locks`). A waiting process prints the holder's
pid, host and start time. Cloud paths (gs://...) are not locked here: a jax.distributed run is
still safe (process 0 builds first, `data.prepare`); separate runs sharing a gs:// data_dir
should build the dataset once first (`midibert-jax prepare`).

A dataset is complete when it holds the marker `prepare` writes after a build
(`COMPLETE_MARKER`), or, on a local disk where TFDS's final rename is atomic, TFDS's
`dataset_info.json` and our `build_summary.json` (datasets built before the marker existed).
"""

from __future__ import annotations

import json
import os
import sys
import time

from etils import epath

from midibert_jax import locks
from midibert_jax.data.errors import DatasetBusyError

COMPLETE_MARKER = "prepared.json"
# Files every finished local build has (TFDS's info, our build summary).
BUILD_FILES = ("dataset_info.json", "build_summary.json")
# Seconds between two attempts to take a busy lock.
POLL_SECONDS = 0.5


is_local = locks.is_local


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
    (epath.Path(dataset_dir) / COMPLETE_MARKER).write_text(json.dumps(locks.holder_record(), sort_keys=True) + "\n")


def incomplete_builds(dataset_dir: epath.PathLike) -> list[epath.Path]:
    """TFDS's temporary folders of this dataset (``incomplete.XXXXXX_<version>``) next to it."""
    dataset_dir = epath.Path(dataset_dir)
    if not dataset_dir.parent.exists():
        return []
    return sorted(p for p in dataset_dir.parent.iterdir()
                  if p.name.startswith("incomplete.") and p.name.endswith(f"_{dataset_dir.name}"))


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
        self._lock = locks.FileLock(self.path, what=f"building {self.dataset_dir}")
        self.waited = False

    def __enter__(self) -> "DatasetLock":
        if not is_local(self.dataset_dir):
            return self
        start = time.monotonic()
        while not self._lock.try_acquire():
            holder = self._lock.holder
            waited = time.monotonic() - start
            if self.timeout and waited >= self.timeout:
                raise DatasetBusyError(
                    f"dataset {self.dataset_dir} is being built by {locks.describe_holder(holder)}; gave up after "
                    f"{waited:.0f} s (data.lock_timeout={self.timeout:g}; lock file {self.path})"
                )
            if not self.waited:
                self.waited = True
                print(f"Waiting for {locks.describe_holder(holder)}, which is building {self.dataset_dir} "
                      f"(lock file {self.path}); its dataset will be reused.", file=self.out, flush=True)
            time.sleep(POLL_SECONDS)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
