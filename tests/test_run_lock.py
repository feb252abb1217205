"""One writer per run folder (midibert_jax/train/run_lock.py, midibert_jax/locks.py).

Unit tests with real holder processes (a second holder refused in one line, a SIGKILLed holder's
lock taken over, a replaced lock file noticed, dead holders expiring by heartbeat where there is no
flock and on object stores, a save into a lost folder refused); process 0's verdicts in a
two-process jax.distributed run; and real training commands: two on one workdir, and one whose
folder is deleted and taken over while it runs, then SIGTERMed.

Run as a script, this file is the two-process driver: `python test_run_lock.py PID PORT ROOT OUT`.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from midibert_jax import locks  # noqa: E402
from midibert_jax.train import run_lock  # noqa: E402

HOLD = textwrap.dedent("""
    import pathlib, sys, time
    from midibert_jax.train import run_lock
    lock = run_lock.RunLock(sys.argv[1], "pretrain").acquire()
    pathlib.Path(sys.argv[2]).write_text("held")
    time.sleep(600)
""")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))


def _holder(tmp_path, workdir) -> subprocess.Popen:
    """A process that takes the run lock of `workdir` and keeps it (until killed)."""
    ready = tmp_path / f"ready.{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, os.fspath(workdir), os.fspath(ready)], env=_env())
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not take the lock"
        time.sleep(0.05)
    return proc


def test_a_second_run_is_refused_at_once_in_one_line_naming_the_first(tmp_path):
    holder = _holder(tmp_path, tmp_path / "run")
    try:
        start = time.monotonic()
        with pytest.raises(run_lock.RunBusyError) as caught:
            run_lock.RunLock(tmp_path / "run", "finetune").acquire()
        assert time.monotonic() - start < 2
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"{tmp_path / 'run'} is in use by pid {holder.pid} on ")
        for part in (socket.gethostname(), "(since ", "heartbeat ", "pretrain: ", f"kill {holder.pid}",
                     "another --workdir", f"{tmp_path / 'run' / '.run.lock'}"):
            assert part in message, (part, message)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_taken_over_with_a_warning(tmp_path):
    holder = _holder(tmp_path, tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    out = io.StringIO()
    with run_lock.RunLock(tmp_path / "run", "pretrain", out=out) as lock:
        lock.verify()
        assert json.loads((tmp_path / "run" / ".run.lock").read_text())["pid"] == os.getpid()
    (line,) = out.getvalue().splitlines()
    assert line.startswith(f"warning: taking over the run lock of {tmp_path / 'run'} from pid {holder.pid} on ")
    assert line.endswith("that process is gone")
    assert (tmp_path / "run" / ".run.lock").read_text() == ""  # a clean release: the next holder takes it silently
    out = io.StringIO()
    with run_lock.RunLock(tmp_path / "run", "pretrain", out=out):
        pass
    assert out.getvalue() == ""


def test_a_run_whose_folder_was_replaced_stops_and_leaves_the_new_holder_alone(tmp_path):
    run = tmp_path / "run"
    first = run_lock.RunLock(run, "pretrain").acquire()
    shutil.rmtree(run)  # the folder emptied, a new run started in it
    second = run_lock.RunLock(run, "finetune").acquire()
    with pytest.raises(run_lock.RunLockLostError, match=f"this run no longer holds {run}: the lock file .* was "
                                                        "replaced, now held by pid"):
        first.verify(fresh=False)
    assert first.lost
    first.release()
    second.verify()
    assert json.loads((run / ".run.lock").read_text())["token"] == second.file.token
    second.release()


@pytest.mark.parametrize("mode", ["exclusive", "object"])
def test_without_flock_dead_holders_expire_by_heartbeat_and_live_ones_refuse(tmp_path, mode):
    path = tmp_path / "run" / ".run.lock"
    path.parent.mkdir()
    elsewhere = {"pid": 1, "host": "another-host", "since": "earlier", "what": "pretrain: x"}
    options = dict(mode=mode, stale_after=30, heartbeat_every=0.1, settle=0.05)

    path.write_text(json.dumps(dict(elsewhere, heartbeat=time.time() - 5)))  # alive 5 s ago: refused
    with pytest.raises(run_lock.RunBusyError, match="in use by pid 1 on another-host .*stop it on another-host.*"
                                                    "expires 30 s after its last heartbeat"):
        run_lock.RunLock(tmp_path / "run", "finetune", **options).acquire()

    path.write_text(json.dumps(dict(elsewhere, heartbeat=time.time() - 31)))  # silent for 31 s: dead
    out = io.StringIO()
    lock = run_lock.RunLock(tmp_path / "run", "finetune", out=out, **options).acquire()
    assert "taking over the run lock" in out.getvalue() and "pid 1 on another-host" in out.getvalue()
    first_beat = json.loads(path.read_text())["heartbeat"]
    deadline = time.monotonic() + 10
    while json.loads(path.read_text())["heartbeat"] == first_beat:  # the heartbeat thread rewrites it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lock.verify()
    lock.release()
    assert not path.exists()

    lock = run_lock.RunLock(tmp_path / "run", "finetune", **dict(options, heartbeat_every=0)).acquire()
    path.write_text(json.dumps(dict(elsewhere, heartbeat=time.time())))  # overwritten by another run
    with pytest.raises(run_lock.RunLockLostError, match="now names pid 1 on another-host"):
        lock.verify()
    lock.release()
    assert json.loads(path.read_text())["host"] == "another-host"  # not removed: it is the other run's


def test_gs_workdirs_take_the_object_lock():
    lock = run_lock.RunLock("gs://bucket/runs/a/", "pretrain")
    assert lock.file.mode == "object" and os.fspath(lock.file.path) == "gs://bucket/runs/a/.run.lock"
    assert locks.FileLock("/tmp/x.lock").mode == "flock"


def test_a_save_into_a_folder_this_run_lost_raises_and_writes_nothing(tmp_path):
    from midibert_jax.train import checkpointing

    run = tmp_path / "run"
    lock = run_lock.RunLock(run, "pretrain").acquire()
    items = {"state": checkpointing.ARRAYS}
    with checkpointing.Checkpointer(os.fspath(run / "checkpoints"), save_every=1, keep_last=5, items=items,
                                    before_save=lock.verify) as ckpt:
        ckpt.save_now(1, state={"w": np.ones(3, np.float32)})
        os.replace(run, tmp_path / "moved")
        run.mkdir()
        other = run_lock.RunLock(run, "finetune").acquire()
        with pytest.raises(run_lock.RunLockLostError):
            ckpt.save_now(2, state={"w": np.zeros(3, np.float32)})  # what a SIGTERM would save
    assert sorted(p.name for p in run.iterdir()) == [".run.lock"]
    assert sorted(p.name for p in (tmp_path / "moved" / "checkpoints").iterdir()) == ["1"]
    lock.release()
    other.release()


# ----------------------------------------------------------------------------- two processes, one run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(process_id: int, port: int, root: pathlib.Path, out: pathlib.Path) -> None:
    """One process of two (jax.distributed): a busy folder, then a free one that process 0 then loses."""
    os.environ.update(MIDIBERT_COORDINATOR=f"127.0.0.1:{port}", MIDIBERT_NUM_PROCESSES="2",
                      MIDIBERT_PROCESS_ID=str(process_id))
    from midibert_jax import distributed

    distributed.initialize_from_environment()
    result = {"pid": os.getpid()}
    try:
        run_lock.RunLock(root / "busy", "pretrain").acquire()
    except run_lock.RunBusyError as e:
        result["busy"] = str(e)
    lock = run_lock.RunLock(root / "free", "pretrain").acquire()
    result["holder_pid"] = json.loads((root / "free" / ".run.lock").read_text())["pid"]
    lock.verify()
    if process_id == 0:  # the folder taken by another run: only process 0 can see it
        os.replace(root / "free" / ".run.lock", root / "free" / ".moved")
        (root / "free" / ".run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    try:
        lock.verify()
    except run_lock.RunLockLostError as e:
        result["lost"] = str(e)
    lock.release()
    out.write_text(json.dumps(result))


def test_process_0_decides_and_every_process_gets_its_verdict(tmp_path):
    outer = run_lock.RunLock(tmp_path / "busy", "finetune").acquire()  # held by "another run"
    try:
        env = dict(_env(), JAX_PLATFORMS="cpu")
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), os.fspath(tmp_path),
                                   os.fspath(tmp_path / f"out{i}.json")], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
        logs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], logs
    finally:
        outer.release()
    first, second = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert first["busy"] == second["busy"] and f"in use by pid {os.getpid()} " in first["busy"]
    assert first["holder_pid"] == second["holder_pid"] == first["pid"]  # process 0 holds it, for both
    assert first["lost"] == second["lost"] and "now held by pid 1 on elsewhere" in first["lost"]


# ----------------------------------------------------------------------------- real training commands


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    import pretrain_helpers as ph

    root = tmp_path_factory.mktemp("run_lock")
    folder = ph.make_midi_folder(root / "midi")
    overrides = list(ph.TINY) + list(ph.data_overrides(folder, root / "tfds"))
    return root, overrides, ph.subprocess_env(1, root / "jax_cache")


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _lock_pid(workdir: pathlib.Path) -> int | None:
    try:
        return json.loads((workdir / ".run.lock").read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_two_training_processes_on_one_workdir_the_second_is_refused_the_first_unaffected(training):
    import pretrain_helpers as ph
    from midibert_jax import run as run_lib

    root, overrides, env = training
    workdir = root / "shared"
    steps = [("train.steps", "8"), ("train.eval_every", "4"), ("train.checkpoint_every", "4"),
             ("train.keep_checkpoints", "5")]
    log = open(root / "first.log", "w")
    first = subprocess.Popen(ph.pretrain_command(workdir, overrides + steps + [("seed", "0")]), env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    _wait_for(lambda: _lock_pid(workdir) == first.pid, first, "the first run's lock")
    start = time.monotonic()
    second = subprocess.run(ph.pretrain_command(workdir, overrides + steps + [("seed", "1")]), env=env,
                            capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert second.returncode == 2, second.stderr[-3000:]
    (line,) = second.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"midibert-jax pretrain: error: {workdir} is in use by pid {first.pid} on ")
    assert "--config.seed=0" in line and "Traceback" not in second.stderr
    assert elapsed < 60, elapsed
    assert first.wait(timeout=900) == 0, (root / "first.log").read_text()[-3000:]
    log.close()
    with run_lib.Run.open(workdir) as run:
        assert run.steps == [4, 8]
        assert {run.config_at(step).seed for step in run.steps} == {0}  # every checkpoint is the first run's
    assert sorted(ph.train_records(workdir)) == list(range(1, 9))
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len([l for l in lines if "train/loss" in json.loads(l)]) == 8  # one writer


@pytest.mark.slow
def test_a_run_whose_folder_is_taken_over_then_sigtermed_writes_nothing_there(training):
    import pretrain_helpers as ph

    root, overrides, env = training
    workdir = root / "taken"
    steps = [("train.steps", "5000"), ("train.eval_every", "5000"), ("train.checkpoint_every", "5000")]
    log_path = root / "taken.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ph.pretrain_command(workdir, overrides + steps), env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        _wait_for(lambda: (workdir / "metrics.jsonl").exists() and max(ph.train_records(workdir), default=0) >= 3,
                  proc, "step 3")
        # Frozen while its folder is emptied and taken over (as by a requeued job), then SIGTERMed: the signal
        # is pending when it wakes, before it can have seen the takeover itself, as a preemption notice is.
        proc.send_signal(signal.SIGSTOP)
        shutil.rmtree(workdir)  # the folder emptied by hand, and another run started in it
        other = run_lock.RunLock(workdir, "finetune").acquire()
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        code = proc.wait(timeout=300)
    output = log_path.read_text()
    assert code == 2, output[-3000:]
    errors = [l for l in output.splitlines() if "error:" in l]
    assert len(errors) == 1 and f"this run no longer holds {workdir}: the lock file" in errors[0], output[-3000:]
    assert [p.relative_to(workdir).as_posix() for p in workdir.rglob("*")] == [".run.lock"]
    other.verify()
    other.release()


if __name__ == "__main__":
    drive(int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4]))
