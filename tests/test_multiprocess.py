"""Multi-host code path on one machine: `midibert-jax pretrain` as 2 processes (jax.distributed on
127.0.0.1, gloo CPU collectives, one CPU device each) against 1 process with 2 devices — the same
global mesh and batches, so the same losses; the 2-process checkpoint then restores in 1 process."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import pretrain_helpers as ph  # noqa: E402

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path, **extra) -> dict:
    env = ph.subprocess_env(devices, cache)
    env.update(extra)
    return env


def _losses(workdir) -> dict[int, float]:
    return {step: r["train/loss"] for step, r in ph.train_records(workdir).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    folder = ph.make_midi_folder(root / "midi")
    overrides = list(ph.TINY) + list(ph.data_overrides(folder, root / "tfds")) + [
        ("train.steps", str(STEPS)), ("train.eval_every", "3"), ("train.checkpoint_every", "3"),
        ("mask_book.unit", "step"), ("mask_book.every", "3"), ("mesh.data", "2"),
    ]
    cache = root / "jax_cache"
    single = subprocess.run(ph.pretrain_command(root / "one", overrides), env=_env(2, cache), capture_output=True, text=True,
                            timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(1, cache, MIDIBERT_COORDINATOR=f"127.0.0.1:{port}", MIDIBERT_NUM_PROCESSES="2",
                   MIDIBERT_PROCESS_ID=str(pid))
        log = open(root / f"process{pid}.log", "w")
        procs.append((subprocess.Popen(ph.pretrain_command(root / "two", overrides), env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        code = proc.wait(timeout=900)
        log.close()
        assert code == 0, (root / f"process{procs.index((proc, log))}.log").read_text()[-3000:]
    return root, overrides, cache


def test_two_processes_give_the_losses_of_one(runs):
    root, _, _ = runs
    one, two = _losses(root / "one"), _losses(root / "two")
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
    evals_one, evals_two = ph.eval_records(root / "one"), ph.eval_records(root / "two")
    assert sorted(evals_one) == sorted(evals_two) == [3, 6]
    for step in evals_one:
        assert evals_two[step]["eval/accuracy"] == pytest.approx(evals_one[step]["eval/accuracy"], abs=1e-6)
    # Only process 0 wrote metrics: one line per step, not two.
    lines = (root / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([l for l in lines if "train/loss" in json.loads(l)]) == STEPS


def test_the_two_process_checkpoint_restores_in_one_process(runs):
    root, overrides, cache = runs
    more = [(k, v) for k, v in overrides if k not in ("train.steps", "mesh.data")] + [("train.steps", str(STEPS + 2))]
    resumed = subprocess.run(ph.pretrain_command(root / "two", more), env=_env(1, cache), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 6" in resumed.stdout
    losses = _losses(root / "two")
    assert sorted(losses)[-2:] == [STEPS + 1, STEPS + 2] and all(np.isfinite(list(losses.values())))
