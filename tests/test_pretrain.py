"""The pre-training loop (midibert_jax/train/pretrain.py) end to end, on a tiny model and a tiny MIDI dataset.

  1. the sharded step (data=2, fsdp=2, tensor=2 on 8 fake CPU devices) computes what one device computes;
  2. a run SIGKILLed after a checkpoint and resumed in a new process equals an uninterrupted run, bit for bit;
  3. a checkpoint written on 8 devices restores on 1 and on 4, identically, and training goes on;
  4. a non-finite loss stops the run naming the step and its examples, after the last good checkpoint;
  5. the random-mask baseline runs through the same step, without a masker loss;
  6. the train step is traced and compiled once per run.

Every run happens in a subprocess (tests/pretrain_helpers.py) so that it can have 8 or 4 fake devices and
be killed; the subprocesses share a persistent compilation cache, so each distinct program compiles once,
and run two at a time (the `runs` fixture starts only what the selected tests need). About 185 CPU
seconds: 1.5 minutes on two idle cores, 3 when other processes keep them busy.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import pretrain_helpers as H

N = 4  # the resume test: a checkpoint every N steps, 2N steps in all
RESUME = (("train.checkpoint_every", str(N)), ("train.eval_every", str(N - 1)), ("train.keep_checkpoints", "5"),
          ("mask_book.unit", "step"), ("mask_book.every", str(N // 2)))  # a book refresh and an eval in each half
REMESH = (("train.checkpoint_every", "2"), ("train.keep_checkpoints", "10"), ("mask_book.unit", "step"),
          ("mask_book.every", "2"))
BAD_STEP = 5  # 0-based optimizer step (state.step) made non-finite: the 6th update, due to be saved (every 3)
NONFINITE = (("train.checkpoint_every", "3"), ("train.log_every", "4"), ("train.eval_every", "100"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The dataset (built once, here) and the folders every run of this module shares."""
    from midibert_jax import config_loading
    from midibert_jax.train import pretrain

    root = tmp_path_factory.mktemp("pretrain")
    folder = H.make_midi_folder(root / "midi")
    data = H.data_overrides(folder, root / "tfds")
    config = config_loading.load_with_overrides(H.SPEC, list(H.TINY) + list(data))
    built = pretrain.load_data(config.data)
    assert len(built.train) >= 2 * config.data.batch_size and len(built.valid) > 0
    return {"root": root, "data": data, "cache": root / "jax_cache"}


def _overrides(env, *extra):
    return [list(kv) for kv in (*H.TINY, *env["data"], *extra)]


def _run(env, name, jobs, num_devices=1):
    return H.run(jobs, num_devices=num_devices, cache_dir=env["cache"], log=env["root"] / f"{name}.log")


# ----------------------------------------------------------------------------- the runs


def _eight(env, lanes):
    """Test 1 (sharded vs one device), then an 8-device run (checkpoints every 2 steps) for test 3."""
    root = env["root"]
    sharded = ("sharded", {"overrides": _overrides(env, *H.MESH_8), "workdir": str(root / "sharded"), "steps": 4})
    train = ("train", {"overrides": _overrides(env, *REMESH, *H.MESH_8), "workdir": str(root / "mesh8"),
                       "dump_final": str(root / "mesh8_final.npz"), "dump_step": 2,
                       "dump_step_to": str(root / "mesh8_step2.npz")})
    r_sharded, r_train = _run(env, "eight", [sharded, train], num_devices=8)
    return {"sharded": r_sharded, "train": r_train, "step2": H.load_dump(root / "mesh8_step2.npz"),
            "final": H.load_dump(root / "mesh8_final.npz"), "records": H.train_records(root / "mesh8")}


def _from_eight(devices, mesh):
    """The 8-device run's step-2 checkpoint (later ones deleted, as if it had died) resumed on `devices`."""

    def job(env, lanes):
        lanes.get("eight")
        root = env["root"]
        workdir = root / f"from8_on{devices}"
        shutil.copytree(root / "mesh8", workdir)
        for step_dir in (workdir / "checkpoints").iterdir():
            if step_dir.name.isdigit() and int(step_dir.name) > 2:
                shutil.rmtree(step_dir)
        (workdir / "metrics.jsonl").unlink()
        (r,) = _run(env, f"from8_on{devices}", [("train", {
            "overrides": _overrides(env, *REMESH, *mesh), "workdir": str(workdir),
            "dump_initial": str(root / f"on{devices}_initial.npz"), "dump_final": str(root / f"on{devices}_final.npz")})],
            num_devices=devices)
        return {"run": r, "initial": H.load_dump(root / f"on{devices}_initial.npz"),
                "final": H.load_dump(root / f"on{devices}_final.npz"), "records": H.train_records(workdir)}

    return job


def _straight(env, lanes):
    root = env["root"]
    (r,) = _run(env, "straight", [("train", {"overrides": _overrides(env, *RESUME), "workdir": str(root / "straight"),
                                             "dump_final": str(root / "straight.npz")})])
    return r


def _killed(env, lanes):
    """Stalls when it asks for batch N + 1 (0-based): step N + 1 ran past checkpoint N; then SIGKILL."""
    root = env["root"]
    workdir, marker = root / "killed", root / "killed.stall"
    args = {"overrides": _overrides(env, *RESUME), "workdir": str(workdir), "stall_at": N + 1, "marker": str(marker)}
    proc = H.start([("train", args)], num_devices=1, cache_dir=env["cache"], log=root / "killed.log")
    H.kill_after_checkpoint(proc, workdir, N, marker)


def _resumed(env, lanes):
    lanes.get("killed")
    root = env["root"]
    (r,) = _run(env, "resumed", [("train", {"overrides": _overrides(env, *RESUME), "workdir": str(root / "killed"),
                                            "dump_final": str(root / "resumed.npz")})])
    return r


def _nonfinite(env, lanes):
    root = env["root"]
    (r,) = _run(env, "nonfinite", [("train", {
        "overrides": _overrides(env, *NONFINITE), "workdir": str(root / "nonfinite"), "nonfinite_at": BAD_STEP,
        "expected_bad_step": BAD_STEP, "dump_final": str(root / "nonfinite.npz")})])
    return r


def _random(env, lanes):
    root = env["root"]
    (r,) = _run(env, "random", [("train", {"spec": H.SPEC + ",masking=random",
                                           "overrides": _overrides(env, ("train.steps", "3")),
                                           "workdir": str(root / "random")})])
    return r


# name -> (lane, job, the jobs it waits for), in submission order: lane 0 runs the 8- and 4-device processes,
# lane 1 the one-device ones (about the same time each; a job waiting for 'eight' comes late in its lane).
JOBS = {
    "eight": (0, _eight, ()),
    "on4": (0, _from_eight(4, H.MESH_4), ("eight",)),
    "straight": (1, _straight, ()),
    "killed": (1, _killed, ()),
    "resumed": (1, _resumed, ("killed",)),
    "random": (1, _random, ()),
    "on1": (1, _from_eight(1, ()), ("eight",)),
    "nonfinite": (1, _nonfinite, ()),
}
NEEDS = {
    "test_sharded_step_equals_single_device_step": ("eight",),
    "test_resume_after_sigkill_is_bitwise_exact": ("straight", "resumed"),
    "test_train_step_compiles_once_per_run": ("straight", "resumed"),
    "test_checkpoint_from_8_devices_restores_on_1_and_4": ("on1", "on4"),
    "test_training_continues_after_restoring_on_other_meshes": ("on1", "on4"),
    "test_nonfinite_loss_stops_the_run_before_saving_it": ("nonfinite",),
    "test_random_masking_runs_through_the_same_step": ("random",),
}


@pytest.fixture(scope="module")
def runs(env, request):
    """Starts, in two lanes, the runs that this session's selected tests of this module need."""
    selected = {item.originalname for item in request.session.items if getattr(item, "module", None) is request.module}
    needed: set[str] = set()
    todo = [job for test in selected for job in NEEDS.get(test, ())]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(JOBS[name][2])
    lanes = H.Lanes(2)
    for name, (lane, job, _) in JOBS.items():
        if name in needed:
            lanes.submit(lane, name, job, env, lanes)
    yield lanes
    lanes.close()
    (env["root"] / "timeline.json").write_text(json.dumps(lanes.timeline, indent=1))


# ----------------------------------------------------------------------------- 1. sharded == one device


def test_sharded_step_equals_single_device_step(runs):
    r = runs.get("eight")["sharded"]
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert r["batch_spec"] == ["data", "fsdp"] and r["param_spec"] == [None, "fsdp", "tensor"]
    assert r["init_equal"]  # born sharded, the same values as on one device
    assert r["book_frozen_bits"] > 0
    for i, step in enumerate(r["steps"]):
        big, one = step["big"], step["one"]
        assert sorted(big) == sorted(one)
        assert big["train/finite"] == 1.0 and big["train/mask/frozen_fraction_batch"] > 0.1 and big["train/loss/masker"] > 0
        for key in big:
            assert big[key] == pytest.approx(one[key], rel=1e-5, abs=1e-5), (i, key)
    assert r["state_keys_equal"] and r["params_changed"] > 1e-4
    assert r["state_max_abs"] < 1e-5 and r["state_max_rel"] < 1e-5, r
    # The mask-book refresh (masker scores + per-window top-k) under sharding: the same bits.
    assert r["book_equal"] and r["book_bits_changed"] > 0


# ----------------------------------------------------------------------------- 2. exact resume


@pytest.fixture(scope="module")
def resume(env, runs):
    """An uninterrupted 2N-step run, and one SIGKILLed after checkpoint N and resumed in a new process."""
    root = env["root"]
    return {"straight": runs.get("straight"), "resumed": runs.get("resumed"),
            "workdirs": (root / "straight", root / "killed"),
            "dumps": (H.load_dump(root / "straight.npz"), H.load_dump(root / "resumed.npz")),
            "resumed_log": (root / "resumed.log").read_text()}


def test_resume_after_sigkill_is_bitwise_exact(resume):
    assert f"resumed at step {N}" in resume["resumed_log"]
    straight, resumed = resume["dumps"]
    assert int(straight["next_index"]) == int(resumed["next_index"]) == 2 * N
    assert sorted(straight) == sorted(resumed)
    differing = [k for k in straight if not np.array_equal(straight[k], resumed[k])]
    assert not differing, differing  # parameters, optimizer moments and counts, rng, field weights, mask book
    assert any(k.startswith("state/opt_state") for k in straight)
    assert int(straight["state/step"]) == 2 * N
    weights = straight["state/extras/field_weights"]
    assert not np.allclose(weights, 1 / 8)  # set from an evaluation
    assert int(np.unpackbits(straight["mask_book"]).sum()) > 0  # notes frozen by the refreshes

    a_dir, b_dir = resume["workdirs"]
    a, b = H.train_records(a_dir), H.train_records(b_dir)
    assert sorted(a) == list(range(1, 2 * N + 1))
    assert sorted(b) == sorted(a)  # steps <= N flushed by the killed run, the rest by the resumed one
    for step in a:
        assert a[step] == b[step], step  # the same batches, masks and losses
    assert H.eval_records(a_dir) == H.eval_records(b_dir)
    evals = sorted(H.eval_records(a_dir))
    assert any(s <= N for s in evals) and any(s > N for s in evals)
    updates = {r["step"] for r in H.read_metrics(b_dir) if "train/mask/book_updates" in r}
    assert {s for s in updates if s <= N} and {s for s in updates if s > N}


# ----------------------------------------------------------------------------- 6. one compilation per run


def test_train_step_compiles_once_per_run(resume):
    # 2N steps (with evaluations, mask-book refreshes and checkpoints in between), fresh and resumed.
    assert resume["straight"]["counts"] == {"traces": 1, "compiles": 1}
    assert resume["resumed"]["counts"] == {"traces": 1, "compiles": 1}


# ----------------------------------------------------------------------------- 3. restore on other meshes


@pytest.fixture(scope="module")
def remesh(runs):
    eight = runs.get("eight")
    return {"big_step2": eight["step2"], "big_final": eight["final"], "big_records": eight["records"],
            1: runs.get("on1"), 4: runs.get("on4")}


def test_checkpoint_from_8_devices_restores_on_1_and_4(remesh):
    saved = remesh["big_step2"]
    assert int(saved["state/step"]) == 2 and int(np.unpackbits(saved["mask_book"]).sum()) > 0
    for devices in (1, 4):
        r = remesh[devices]
        info = r["run"]["initial"]
        assert info["step"] == 2 and info["devices"] == devices and info["shardings_match"]
        assert sorted(r["initial"]) == sorted(saved)
        differing = [k for k in saved if not np.array_equal(saved[k], r["initial"][k])]
        assert not differing, (devices, differing)
    four = remesh[4]["run"]["initial"]
    assert four["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert four["query_spec"][1] == "fsdp" and four["query_shards"] == 2  # [layers, embed/fsdp, heads, kv]


def test_training_continues_after_restoring_on_other_meshes(remesh):
    big = remesh["big_records"]
    steps = sorted(big)
    assert steps[-1] == 8
    for devices in (1, 4):
        r = remesh[devices]
        assert r["run"]["final"]["step"] == 8
        assert sorted(r["records"]) == [s for s in steps if s > 2]
        for step, record in r["records"].items():
            assert math.isfinite(record["train/loss"])
            # The same batches and masks; only float summation orders differ between meshes.
            assert record["train/loss"] == pytest.approx(big[step]["train/loss"], rel=1e-4), (devices, step)
        for key, value in remesh["big_final"].items():
            if key.startswith("state/params/"):
                np.testing.assert_allclose(r["final"][key], value, rtol=1e-4, atol=1e-5, err_msg=f"{devices}: {key}")


# ----------------------------------------------------------------------------- 4. non-finite guard


def test_nonfinite_loss_stops_the_run_before_saving_it(env, runs):
    # The 6th update (state.step 5) is not a logging step (log_every 4): its loss is checked only because a
    # checkpoint of step 6 is due, which must not be written.
    r, bad_step, root = runs.get("nonfinite"), BAD_STEP, env["root"]
    assert r["error"]["type"] == "NonFiniteLossError"
    message = r["error"]["message"]
    assert f"at step {bad_step} " in message
    assert f"(batch of examples {r['bad_batch_index']})" in message
    assert r["final"]["step"] == 3  # the last checkpoint is from before the bad step
    dump = H.load_dump(root / "nonfinite.npz")
    params = [v for k, v in dump.items() if k.startswith("state/")]
    assert all(np.isfinite(v).all() for v in params if v.dtype.kind == "f")
    assert max(H.train_records(root / "nonfinite")) <= bad_step  # nothing logged from the bad step on


# ----------------------------------------------------------------------------- 5. the random baseline


def test_random_masking_runs_through_the_same_step(env, runs):
    r, root = runs.get("random"), env["root"]
    assert r["counts"] == {"traces": 1, "compiles": 1}
    assert 0.0 <= r["result"]["eval/accuracy"] <= 1.0
    records = H.read_metrics(root / "random")
    train = [rec for rec in records if "train/loss" in rec]
    assert [rec["step"] for rec in train] == [1, 2, 3]
    for rec in train:
        assert not [k for k in rec if "masker" in k]
        assert not [k for k in rec if k.startswith("train/mask/frozen")]  # no mask book for the baseline
        assert rec["train/loss"] == rec["train/loss/recoverer"]
        assert 0.1 <= rec["train/mask/selected_fraction"] <= 0.2  # ~15% of the notes
