"""Metric logging: TensorBoard (tensorboardX) and a metrics.jsonl file, written by process 0 only.

Every process may call the writer (it is a no-op elsewhere), so callers never gate collectives on the
process index: fetch the (replicated) metric values on all processes, then `write`.

Both files go through the path layer (`midibert_jax.paths`, etils epath), so a gs:// workdir writes
into the bucket. tensorboardX opens event files through its own per-scheme registry
(`record_writer.register_writer_factory`); a URL workdir's scheme is registered there with a
factory writing through epath as well (tensorboardX's own gs:// writer needs google-cloud-storage).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from midibert_jax import console, paths


class _EpathEventFiles:
    """A tensorboardX writer factory for URL schemes: event files written through epath."""

    def __init__(self):
        self.opened: list[paths.RewriteOnFlush] = []

    def open(self, path: str) -> paths.RewriteOnFlush:
        self.opened.append(paths.RewriteOnFlush(path))
        return self.opened[-1]

    def directory_check(self, path: str) -> None:
        del path  # object stores have no folders to create


def _tensorboard_writer(logdir: str, files: _EpathEventFiles):
    """A tensorboardX SummaryWriter on `logdir`, local or a URL (its scheme routed through `files`)."""
    from tensorboardX import SummaryWriter, record_writer  # pylint: disable=import-outside-toplevel

    if paths.is_url(logdir):
        record_writer.register_writer_factory(logdir.split("://", 1)[0], files)
    # Event files are named by the second they are opened in; a run resumed within that second
    # would otherwise reopen (and on an object store, overwrite) the previous writer's file.
    return SummaryWriter(logdir, filename_suffix=f".{os.getpid()}.{time.time_ns()}")


class MetricsWriter:
    """Writes scalar metrics to `<workdir>/tensorboard` and `<workdir>/metrics.jsonl` on process 0
    (`workdir` local or a URL such as gs://bucket/run).

    Each jsonl line is {"step": int, "time": unix seconds, "<name>": float, ...}.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        """enabled: defaults to `jax.process_index() == 0`."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._tb_files = _EpathEventFiles()
        self._jsonl = None
        if self.enabled:
            root = paths.resolve(workdir)
            root.mkdir(parents=True, exist_ok=True)
            self._tb = _tensorboard_writer(os.fspath(root / paths.TENSORBOARD_DIR), self._tb_files)
            self._jsonl = paths.open_append(root / paths.METRICS_FILE)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Logs scalars (Python numbers or 0-d arrays, device or host) at `step`."""
        if not self.enabled:
            return
        values = {name: float(np.asarray(v)) for name, v in jax.device_get(dict(scalars)).items()}
        for name, v in values.items():
            self._tb.add_scalar(name, v, int(step))
        record = {"step": int(step), "time": time.time()}
        record |= {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}
        self._jsonl.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False

    def abandon(self) -> None:
        """Stops writing without a last flush: the run lost its folder to another run.

        A bucket's files are rewritten whole on flush (`paths.RewriteOnFlush`), which would
        overwrite the new run's; a local file here is this run's own (appends go to its inode).
        """
        if self.enabled:
            for f in [self._jsonl, *self._tb_files.opened]:
                if isinstance(f, paths.RewriteOnFlush):
                    f.discard()
            self._tb.close()
            self._jsonl.close()
            self.enabled = False

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, initial: int = 0, desc: str = "train", *, enabled: bool | None = None,
                 leave: bool = True):
    """The run's progress report on process 0 only (`console.progress`: a bar on a terminal, lines elsewhere)."""
    enabled = jax.process_index() == 0 if enabled is None else enabled
    return console.progress(total, desc, unit="steps", initial=initial, enabled=enabled, leave=leave)
