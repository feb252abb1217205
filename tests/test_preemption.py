"""Preemption through the real command: `midibert-jax pretrain` killed (SIGKILL) at random steps
several times in a row (each rerun taking over the dead run's lock), or asked to stop (SIGTERM), and
rerun each time, ends with exactly the per-step losses, evaluations and mask-book statistics of an
uninterrupted run."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import pretrain_helpers as ph  # noqa: E402

STEPS = 12


def _last_step(workdir) -> int:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return max(ph.train_records(workdir), default=0) if path.exists() else 0


def _run_until(workdir, overrides, env, step: int, sig: int) -> tuple[int, str]:
    """Starts a run, sends `sig` once its metrics reach `step`; returns (exit status, output)."""
    log = pathlib.Path(f"{workdir}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(ph.pretrain_command(workdir, overrides), env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while proc.poll() is None and _last_step(workdir) < step and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=600)
    return proc.returncode, log.read_text()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("preemption")
    folder = ph.make_midi_folder(root / "midi")
    overrides = list(ph.TINY) + list(ph.data_overrides(folder, root / "tfds")) + [
        ("train.steps", str(STEPS)), ("train.eval_every", "4"), ("train.checkpoint_every", "2"),
        ("train.keep_checkpoints", "2"), ("mask_book.unit", "step"), ("mask_book.every", "3"),
    ]
    env = ph.subprocess_env(1, root / "jax_cache")
    straight = subprocess.run(ph.pretrain_command(root / "straight", overrides), env=env, capture_output=True, text=True,
                              timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return root, overrides, env


def _records(workdir):
    train = {s: {k: v for k, v in r.items() if not k.startswith(("perf/", "epoch"))} for s, r in ph.train_records(workdir).items()}
    return train, ph.eval_records(workdir)


def test_repeated_sigkill_at_random_steps_then_resume_is_exact(setup):
    root, overrides, env = setup
    workdir = root / "killed"
    rng = np.random.default_rng(0)
    kills = sorted(int(s) for s in rng.choice(np.arange(2, STEPS - 1), size=3, replace=False))
    killed = []
    for i, step in enumerate(kills):
        code, out = _run_until(workdir, overrides, env, step, signal.SIGKILL)
        assert code == -signal.SIGKILL, out[-2000:]
        if i:  # the killed run's lock is taken over, with one line naming it
            assert f"taking over the run lock of {workdir} from pid {killed[-1]} " in out, out[-2000:]
        killed.append(int(json.loads((workdir / ".run.lock").read_text())["pid"]))
    final = subprocess.run(ph.pretrain_command(workdir, overrides), env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"taking over the run lock of {workdir} from pid {killed[-1]} " in final.stderr
    assert "resumed at step" in final.stdout
    assert _records(workdir) == _records(root / "straight")


def test_sigterm_saves_then_exits_cleanly_and_resumes_exactly(setup):
    root, overrides, env = setup
    workdir = root / "terminated"
    code, out = _run_until(workdir, overrides, env, 5, signal.SIGTERM)
    assert code == 0, out[-3000:]
    assert "preemption signal: saved step" in out
    saved = int(out.split("preemption signal: saved step")[1].split()[0].rstrip(","))
    assert 5 <= saved < STEPS
    assert (workdir / "checkpoints" / str(saved)).is_dir()  # saved on the signal, not on the schedule
    final = subprocess.run(ph.pretrain_command(workdir, overrides), env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"resumed at step {saved}" in final.stdout
    assert _records(workdir) == _records(root / "straight")
