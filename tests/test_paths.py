"""The path layer: a run's files (metrics.jsonl, TensorBoard events, evaluations, summaries) written to
a URL workdir. gs:// is faked by an in-memory fsspec filesystem registered under GCS's protocol, the
one etils epath uses for gs:// without TensorFlow."""

import importlib
import json
import os
import struct

import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from midibert_jax import analysis, paths
from midibert_jax.train import classification_metrics, metrics


class FakeGCS(MemoryFileSystem):
    """An in-memory bucket store answering gs:// paths (its own store, apart from memory://)."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        return super()._strip_protocol("/" + path.split("://", 1)[1] if path.startswith(("gs://", "gcs://")) else path)


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    """A fake gs://bucket/run; the test runs in an empty local folder that must stay empty."""
    # fsspec.register_implementation, undone after the test (`fsspec.registry` is a read-only view of this dict).
    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "gcs", FakeGCS)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    monkeypatch.chdir(tmp_path)
    yield "gs://bucket/run"
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert os.listdir(tmp_path) == [], "a URL path was written as a local folder"


def _records(data: bytes) -> list[bytes]:
    """The records of a TFRecord (TensorBoard event) file."""
    out, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("Q", data[at:at + 8])
        out.append(data[at + 12:at + 12 + length])
        at += 12 + length + 4
    return out


def test_the_fake_bucket_is_what_epath_uses_for_gs(bucket):
    (epath.Path(bucket) / "x.txt").write_text("hello")
    assert FakeGCS.store["/bucket/run/x.txt"].getvalue() == b"hello"
    assert paths.is_url(bucket) and os.fspath(paths.resolve(bucket)) == bucket


def test_metrics_and_tensorboard_go_to_the_bucket(bucket):
    with metrics.MetricsWriter(bucket, enabled=True) as writer:
        writer.write(1, {"train/loss": 2.5, "eval/accuracy": np.float32(0.25)})
        writer.flush()
        root = epath.Path(bucket)
        assert len((root / paths.METRICS_FILE).read_text().splitlines()) == 1  # visible after a flush
        writer.write(2, {"train/loss": float("nan")})
    with metrics.MetricsWriter(bucket, enabled=True) as writer:  # a resumed run appends
        writer.write(3, {"train/loss": 1.5})
    lines = [json.loads(line) for line in (root / paths.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and lines[1]["train/loss"] == "nan"
    assert lines[0]["eval/accuracy"] == 0.25

    events = sorted((root / paths.TENSORBOARD_DIR).iterdir())
    assert len(events) == 2 and all(e.name.startswith("events.out.tfevents.") for e in events)
    records = [r for e in events for r in _records(e.read_bytes())]
    assert sum(b"train/loss" in r for r in records) == 3 and sum(b"eval/accuracy" in r for r in records) == 1

    steps, values = analysis.read_metrics(bucket)["train/loss"]
    assert steps.tolist() == [1, 3] and values.tolist() == [2.5, 1.5]  # the 'nan' string is not a number


def test_evaluations_and_summaries_go_to_the_bucket(bucket):
    root = epath.Path(bucket)
    paths.write_json(root / paths.eval_file("test"), {"accuracy": 0.5, "task": "melody"})
    assert analysis.eval_result(bucket, "test") == {"accuracy": 0.5, "task": "melody"}
    classification_metrics.plot_confusion(np.array([[3, 1], [0, 4]]), ("a", "b"), root / paths.eval_file("test", "_confusion.png"))
    assert (root / "eval_test_confusion.png").read_bytes().startswith(b"\x89PNG")
    paths.write_json(root / "deep" / paths.DEMO_SUMMARY, {"finetune": {}})
    assert paths.read_json(root / "deep" / paths.DEMO_SUMMARY) == {"finetune": {}}


def test_append_locally_and_to_a_bucket(bucket, tmp_path):
    for path in (epath.Path(bucket) / "log.txt", tmp_path.parent / f"{tmp_path.name}_local" / "log.txt"):
        with paths.open_append(path) as f:
            f.write("a\n")
        with paths.open_append(path) as f:
            f.write("b\n")
        assert epath.Path(path).read_text() == "a\nb\n"


def test_every_cache_lives_under_one_root(monkeypatch, tmp_path):
    from midibert_jax.data import demo_corpus  # pylint: disable=import-outside-toplevel

    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    assert paths.cache_root() == str(tmp_path)
    assert os.path.dirname(demo_corpus.default_cache_dir()) == str(tmp_path)
    monkeypatch.setenv(paths.CACHE_ENV, "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_root() == str(tmp_path / "home" / ".cache" / "midibert_jax")
