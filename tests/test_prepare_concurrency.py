"""Preparing one dataset from several processes: locked, waited for, reused; killed builds redone.

The processes are real (tests/prepare_child.py), on a tiny folder corpus.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import TEST_MAX_LEN
from midibert_jax import cli, config_loading, locks
from midibert_jax.commands import prepare as prepare_command
from midibert_jax.data import dataset_lock, prepare
from midibert_jax.data.errors import DatasetBusyError

import midi_factory
import prepare_child

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("small_corpus")
    midi_factory.make_corpus(folder, num_good=4, broken=False)
    return folder


def folder_config(folder, data_dir, **overrides):
    config = config_loading.load_config(f"{prepare_command.DEFAULT_CONFIG}:folder")
    config.folder, config.data_dir = os.fspath(folder), os.fspath(data_dir)
    config.max_len, config.valid_fraction, config.num_workers, config.progress = TEST_MAX_LEN, 0.3, 1, False
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class Child:
    """prepare_child.py in its own process; stderr collected line by line."""

    def __init__(self, tmp_path, name: str, config, pause: tuple[pathlib.Path, pathlib.Path] | None = None):
        config_json = tmp_path / f"{name}.config.json"
        config_json.write_text(config.to_json())
        self.out_json = tmp_path / f"{name}.out.json"
        argv = [sys.executable, os.fspath(TESTS / "prepare_child.py"), os.fspath(config_json), os.fspath(self.out_json)]
        if pause:
            argv += ["--pause", *map(os.fspath, pause)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.fspath(REPO), os.fspath(TESTS)]))
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def wait_for_line(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if text in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) without printing {text!r}:\n{''.join(self.lines)}"
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout} s:\n{''.join(self.lines)}")

    def result(self, timeout: float = 300) -> dict:
        assert self.proc.wait(timeout) == 0, "".join(self.lines)
        self._reader.join(10)
        return json.loads(self.out_json.read_text())


def wait_for_file(path: pathlib.Path, child: Child, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.proc.poll() is None, "".join(child.lines)
        assert time.monotonic() < deadline, f"{path} not created within {timeout} s"
        time.sleep(0.05)


def test_two_processes_preparing_one_dataset_both_succeed_and_read_the_same_data(corpus_folder, tmp_path):
    config = folder_config(corpus_folder, tmp_path / "tfds")
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = Child(tmp_path, "first", config, pause=(ready, go))
    wait_for_file(ready, first)  # `first` holds the lock, mid-build
    second = Child(tmp_path, "second", config)
    line = second.wait_for_line("Waiting for")
    assert f"pid {first.proc.pid} " in line and "(since " in line and ".lock" in line
    go.touch()
    a, b = first.result(), second.result()
    assert a == b and a["digest"]["train"].split(":")[0] != "0"
    assert dataset_lock.is_complete(a["dataset_dir"]) and not dataset_lock.incomplete_builds(a["dataset_dir"])
    assert prepare_child.digest(prepare.prepare(config)) == a["digest"]  # a third run reuses it as is


def test_two_processes_started_together_both_succeed_with_identical_data(corpus_folder, tmp_path):
    config = folder_config(corpus_folder, tmp_path / "tfds")
    children = [Child(tmp_path, f"child{i}", config) for i in range(2)]
    results = [c.result() for c in children]
    assert results[0] == results[1]


def test_a_build_killed_midway_is_rebuilt_never_read(corpus_folder, tmp_path):
    config = folder_config(corpus_folder, tmp_path / "tfds")
    ready = tmp_path / "ready"
    killed = Child(tmp_path, "killed", config, pause=(ready, tmp_path / "never"))
    wait_for_file(ready, killed)
    dataset_dir = prepare.make_builder(config).data_path
    leftovers = dataset_lock.incomplete_builds(dataset_dir)
    assert len(leftovers) == 1 and not dataset_dir.exists()
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(30)
    assert leftovers[0].exists()  # what the killed build left: TFDS's temporary folder (and the lock file)

    rebuilder = Child(tmp_path, "rebuilt", config)
    rebuilt = rebuilder.result()  # the dead holder's lock does not block
    assert any("left by a build that did not finish" in line for line in rebuilder.lines)
    assert not leftovers[0].exists() and dataset_lock.is_complete(dataset_dir)
    reference = folder_config(corpus_folder, tmp_path / "reference")
    assert prepare_child.digest(prepare.prepare(reference)) == rebuilt["digest"]


def test_a_half_built_dataset_is_detected_and_rebuilt(corpus_folder, tmp_path, capsys):
    config = folder_config(corpus_folder, tmp_path / "tfds")
    dataset_dir = prepare.prepare(config)
    expected = prepare_child.digest(dataset_dir)
    # A copy cut short (e.g. a rename on gs:// killed midway): no completion marker, files missing.
    (dataset_dir / dataset_lock.COMPLETE_MARKER).unlink()
    (dataset_dir / "build_summary.json").unlink()
    assert not dataset_lock.is_complete(dataset_dir)
    assert prepare.prepare(config) == dataset_dir
    assert "half-built" in capsys.readouterr().err
    assert dataset_lock.is_complete(dataset_dir) and (dataset_dir / "build_summary.json").exists()
    assert prepare_child.digest(dataset_dir) == expected


def test_a_busy_dataset_is_one_line_from_the_cli(corpus_folder, tmp_path, capsys):
    config = folder_config(corpus_folder, tmp_path / "tfds")
    dataset_dir = prepare.make_builder(config).data_path
    with dataset_lock.DatasetLock(dataset_dir):  # held by this process, as another run would
        argv = ["prepare", "--config", f"{prepare_command.DEFAULT_CONFIG}:folder", f"--config.folder={corpus_folder}",
                f"--config.data_dir={tmp_path / 'tfds'}", f"--config.max_len={TEST_MAX_LEN}", "--config.valid_fraction=0.3",
                "--config.progress=False",
                "--config.lock_timeout=1"]
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "Traceback" not in err
    assert f"being built by pid {os.getpid()} " in error_lines[0] and "lock_timeout" in error_lines[0]
    assert err.count("Waiting for") == 1  # the wait named the holder once


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_without_flock_a_dead_holders_lock_file_is_taken_over(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks on this filesystem")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    dataset_dir = tmp_path / "ds" / "cfg" / "1.0.0"
    lock_file = dataset_lock.lock_path(dataset_dir)
    lock_file.parent.mkdir(parents=True)
    holder = {"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier"}
    lock_file.write_text(json.dumps(holder))
    with dataset_lock.DatasetLock(dataset_dir, timeout=5) as lock:
        assert not lock.waited and json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()
    # A live holder (this test's parent process) is waited for, then named in the error.
    lock_file.write_text(json.dumps(dict(holder, pid=os.getppid())))
    with pytest.raises(DatasetBusyError, match=f"pid {os.getppid()} on "):
        with dataset_lock.DatasetLock(dataset_dir, timeout=1, out=open(os.devnull, "w")):
            pass


def test_cloud_paths_are_not_locked(tmp_path):
    assert not dataset_lock.is_local("gs://bucket/tfds/x/1.0.0") and dataset_lock.is_local(tmp_path)
    with dataset_lock.DatasetLock("gs://bucket/tfds/x/1.0.0") as lock:
        assert not lock.waited
