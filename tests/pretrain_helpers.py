"""Drivers for tests/test_pretrain.py: tiny configs, runs in subprocesses with N fake CPU devices, state dumps.

Every run that compiles happens in a subprocess (the device count is fixed when JAX starts), started by
`run(...)` or `start(...)`, which run this file as a script:

  python tests/pretrain_helpers.py '[["COMMAND", {"spec": ..., "overrides": [...], ...}], ...]'

which runs the jobs in order and prints one line `RESULT [json, ...]`, their results. Commands:

  train     `train_and_evaluate` in a workdir; optionally stalls before a given batch (so that the parent
            can SIGKILL it at a known point), counts traces/compilations of the train step, dumps the
            checkpoint it starts from and the one it ends with (npz, see `dump_checkpoint`).
  sharded   the adversarial train step (mask book with frozen bits) and a mask-book refresh on a
            (data=2, fsdp=2, tensor=2) mesh and on a one-device mesh, from the same state and batches.

`Lanes` runs several such subprocesses two at a time from the test process.

The subprocesses share a persistent compilation cache and compile with
`--xla_backend_optimization_level=0` (LLVM optimisation off: 2-3x faster compiles of these tiny
programs); every run a test compares is compiled the same way.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from concurrent import futures
from typing import Any, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = "configs/pretrain.py:tiny,runlocal,data=folder"
# The test model and data: a 2-layer, 32-wide encoder on 32-note windows, 8 windows per batch.
TINY = (
    ("model.hidden_size", "32"),
    ("model.num_layers", "2"),
    ("model.num_heads", "2"),
    ("model.mlp_dim", "64"),
    ("model.field_embed_dim", "16"),
    ("model.head_hidden", "32"),
    ("data.max_len", "32"),
    ("data.valid_fraction", "0.2"),
    ("data.num_workers", "1"),
    ("data.progress", "False"),
    ("data.batch_size", "8"),
    ("data.eval_batch_size", "8"),
    ("data.read_threads", "1"),
    ("data.prefetch", "1"),
    ("optim.warmup_steps", "2"),
    ("train.steps", "8"),
    ("train.log_every", "1"),
)
MESH_8 = (("mesh.data", "2"), ("mesh.fsdp", "2"), ("mesh.tensor", "2"))
MESH_4 = (("mesh.data", "2"), ("mesh.fsdp", "2"), ("mesh.tensor", "1"))


# ----------------------------------------------------------------------------- parent side (pytest)


def make_midi_folder(folder: pathlib.Path) -> pathlib.Path:
    """Sixteen small one-track pieces (8..23 bars): about 20 training windows of 32 notes."""
    import midi_factory  # pylint: disable=import-outside-toplevel

    for i in range(16):
        midi_factory.write_piece(folder / f"p{i:02d}.mid", num_bars=8 + i, notes_per_bar=2 + i % 3, seed=i, program=i % 4)
    return folder


def data_overrides(folder: os.PathLike, data_dir: os.PathLike) -> tuple[tuple[str, str], ...]:
    return (("data.folder", os.fspath(folder)), ("data.data_dir", os.fspath(data_dir)))


def pretrain_command(workdir: os.PathLike, overrides: Sequence[tuple[str, str]]) -> list[str]:
    """`midibert-jax pretrain` of the tiny test config in `workdir`, as a subprocess argv."""
    args = [sys.executable, "-m", "midibert_jax.cli", "pretrain", "--config", SPEC, "--workdir", os.fspath(workdir)]
    return args + [f"--config.{k}={v}" for k, v in overrides]


def subprocess_env(num_devices: int, cache_dir: os.PathLike) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f and "optimization_level" not in f]
    flags += [f"--xla_force_host_platform_device_count={num_devices}", "--xla_backend_optimization_level=0"]
    env.update(
        XLA_FLAGS=" ".join(flags),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=os.fspath(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def start(jobs: Sequence[tuple[str, dict[str, Any]]], *, num_devices: int, cache_dir: os.PathLike,
          log: os.PathLike) -> subprocess.Popen:
    """Starts one driver process running `jobs` ([(command, args), ...]) in order; output goes to `log`."""
    out = open(log, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    return subprocess.Popen(
        [sys.executable, str(pathlib.Path(__file__).resolve()), json.dumps([list(j) for j in jobs])],
        env=subprocess_env(num_devices, cache_dir), stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO),
    )


def result_of(proc: subprocess.Popen, log: os.PathLike, timeout: float = 600) -> list[dict[str, Any]]:
    """Waits for the driver; returns the results of its jobs (asserting that it exited cleanly)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = pathlib.Path(log).read_text(encoding="utf-8")
    assert rc == 0, f"driver exited with {rc} (log {log}):\n{text[-6000:]}"
    lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
    assert lines, f"no RESULT line (log {log}):\n{text[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def run(jobs: Sequence[tuple[str, dict[str, Any]]], *, num_devices: int, cache_dir: os.PathLike,
        log: os.PathLike, timeout: float = 600) -> list[dict[str, Any]]:
    """Runs `jobs` in one fresh process with `num_devices` CPU devices; returns their results."""
    return result_of(start(jobs, num_devices=num_devices, cache_dir=cache_dir, log=log), log, timeout)


class Lanes:
    """Named tasks run in a few threads (lanes), each lane in order; `get(name)` waits for a task's result.

    The tasks here mostly wait on subprocesses, so two lanes keep both CPU cores busy; a task may `get`
    another lane's task (a dependency), never a later task of its own lane.
    """

    def __init__(self, lanes: int = 2):
        self._pools = [futures.ThreadPoolExecutor(max_workers=1) for _ in range(lanes)]
        self._futures: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self.timeline: dict[str, tuple[int, float, float]] = {}  # name -> (lane, start s, end s)

    def submit(self, lane: int, name: str, fn, *args) -> None:
        def timed():
            start = time.monotonic() - self._t0
            try:
                return fn(*args)
            finally:
                self.timeline[name] = (lane, round(start, 1), round(time.monotonic() - self._t0, 1))

        self._futures[name] = self._pools[lane].submit(timed)

    def get(self, name: str, timeout: float = 1200) -> Any:
        return self._futures[name].result(timeout=timeout)

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)


def kill_after_checkpoint(proc: subprocess.Popen, workdir: os.PathLike, step: int, stall_marker: os.PathLike,
                          timeout: float = 600) -> None:
    """SIGKILLs `proc` once checkpoint `step` is complete on disk and the driver has stalled past it."""
    done = pathlib.Path(workdir) / "checkpoints" / str(step)
    deadline = time.monotonic() + timeout
    while not (pathlib.Path(stall_marker).exists() and (done / "_CHECKPOINT_METADATA").exists()):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before checkpoint {step} and the stall")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint {step} within {timeout} s")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def read_metrics(workdir: os.PathLike) -> list[dict[str, Any]]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def train_records(workdir: os.PathLike) -> dict[int, dict[str, Any]]:
    """step -> the last training record ('train/loss' present) written for it, without times and rates."""
    out = {}
    for r in read_metrics(workdir):
        if "train/loss" in r:
            out[r["step"]] = {k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")}
    return out


def eval_records(workdir: os.PathLike) -> dict[int, dict[str, Any]]:
    out = {}
    for r in read_metrics(workdir):
        if "eval/accuracy" in r:
            out[r["step"]] = {k: v for k, v in r.items() if k != "time"}
    return out


def load_dump(path: os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- driver side (subprocess)


def _config(args: dict[str, Any]):
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    return config_loading.load_with_overrides(args.get("spec", SPEC), [tuple(kv) for kv in args["overrides"]])


def _flat(tree) -> dict[str, np.ndarray]:
    import jax  # pylint: disable=import-outside-toplevel

    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(x) for path, x in leaves}


def dump_checkpoint(config, workdir: str, out: str, step: int | None = None) -> dict[str, Any]:
    """Restores the workdir's checkpoint (newest, or `step`) onto this process' mesh and saves it as npz.

    Keys: state/<path> for every TrainState leaf, mask_book, next_index. Returns facts about the restore.
    """
    from midibert_jax.train import checkpointing, pretrain  # pylint: disable=import-outside-toplevel

    trainer = pretrain.Trainer(config)
    data = pretrain.load_data(config.data)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep_last=100)
    book = np.zeros((len(data.train), config.model.max_len // 8), np.uint8)
    restored = ckpt.restore(trainer.abstract_state, mask_book_target=book, step=step)
    ckpt.close()
    arrays = {f"state/{k}": v for k, v in _flat(restored.state).items()}
    arrays["mask_book"] = np.asarray(restored.mask_book)
    arrays["next_index"] = np.asarray(restored.data["next_index"])
    np.savez(out, **arrays)
    query = restored.state.params["encoder"]["layers"]["attention"]["query"]["kernel"]
    return {
        "step": int(restored.step),
        "devices": len(trainer.mesh.devices.flat),
        "mesh": {k: int(v) for k, v in trainer.mesh.shape.items()},
        "query_spec": [list(a) if isinstance(a, tuple) else a for a in query.sharding.spec],
        "query_shards": len({tuple((s.start, s.stop) for s in sh.index) for sh in query.addressable_shards}),
        "shardings_match": all(
            a.sharding.is_equivalent_to(s, a.ndim)
            for a, s in zip(jax_leaves(restored.state), jax_leaves(trainer.state_shardings))
        ),
    }


def jax_leaves(tree):
    import jax  # pylint: disable=import-outside-toplevel

    return jax.tree_util.tree_leaves(tree)


def _stalling(stall_at: int, marker: str):
    """A `wrap_batches` for train_and_evaluate: asking for batch `stall_at` (0-based step) blocks forever."""

    def wrap(it, start_step: int):
        step = start_step
        while True:
            if step >= stall_at:
                pathlib.Path(marker).write_text(str(step))
                time.sleep(3600)
            yield next(it)
            step += 1

    return wrap


def nonfinite_at(bad_step: int):
    """A `wrap_step` for train_and_evaluate: the update of state.step == bad_step sees NaN parameters, so its
    loss and gradients are not finite (the step's own check flags it); the state is kept as it was."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    def wrap(step):
        def train_step(state, batch, *rest):
            bad = state.step == bad_step
            poisoned = state.replace(params=jax.tree_util.tree_map(lambda p: jnp.where(bad, jnp.nan, p), state.params))
            new, metrics = step(poisoned, batch, *rest)
            return jax.tree_util.tree_map(lambda n, o: jnp.where(bad, o, n), new, state), metrics

        return train_step

    return wrap


# jax.monitoring events (jax/_src/dispatch.py): one per trace of a jitted function, one per XLA compilation
# (or persistent-cache load) of a lowered one; both carry the function's name.
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_STEP_COUNTS: dict[str, int] = {}


def _step_counts() -> dict[str, int]:
    """Running counts of traces and compilations of functions named train_step in this process."""
    import jax  # pylint: disable=import-outside-toplevel

    if not _STEP_COUNTS:
        _STEP_COUNTS.update(traces=0, compiles=0)

        def listener(event: str, duration: float, **kwargs) -> None:
            del duration
            if "train_step" in str(kwargs.get("fun_name", "")):
                if event == TRACE_EVENT:
                    _STEP_COUNTS["traces"] += 1
                elif event == COMPILE_EVENT:
                    _STEP_COUNTS["compiles"] += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
    return dict(_STEP_COUNTS)


def cmd_train(args: dict[str, Any]) -> dict[str, Any]:
    from midibert_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import nonfinite, pretrain  # pylint: disable=import-outside-toplevel

    config = _config(args)
    workdir = args["workdir"]
    out: dict[str, Any] = {}
    if args.get("dump_initial"):
        out["initial"] = dump_checkpoint(config, workdir, args["dump_initial"])
    stall = _stalling(args["stall_at"], args["marker"]) if args.get("stall_at") is not None else None
    poison = nonfinite_at(args["nonfinite_at"]) if args.get("nonfinite_at") is not None else None
    before = _step_counts()
    try:
        result = pretrain.train_and_evaluate(config, workdir, wrap_step=poison, wrap_batches=stall)
        out["result"] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    except nonfinite.NonFiniteLossError as e:
        out["error"] = {"type": type(e).__name__, "message": str(e)}
        step = args.get("expected_bad_step")
        if step is not None:  # the batch of that step, read again independently of the failed run
            data = pretrain.load_data(config.data)
            it = pipeline.train_iterator(
                data.train, global_batch_size=config.data.batch_size, seed=config.seed, start_step=step,
                num_threads=1, prefetch=1,
            )
            out["bad_batch_index"] = np.asarray(next(it)["index"]).tolist()
    out["counts"] = {k: v - before[k] for k, v in _step_counts().items()}
    if args.get("dump_final"):
        out["final"] = dump_checkpoint(config, workdir, args["dump_final"])
    if args.get("dump_step") is not None:
        out["dumped_step"] = dump_checkpoint(config, workdir, args["dump_step_to"], step=args["dump_step"])
    return out


def cmd_sharded(args: dict[str, Any]) -> dict[str, Any]:
    """Test 1: steps on the 8-device mesh and on one device, from the same state, batches and mask book."""
    import jax  # pylint: disable=import-outside-toplevel

    from midibert_jax import sharding  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import mask_book, pretrain  # pylint: disable=import-outside-toplevel

    config = _config(args)
    data = pretrain.load_data(config.data)
    assert jax.device_count() == 8, jax.devices()
    big = pretrain.Trainer(config)
    one_mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    one = pretrain.Trainer(config, mesh=one_mesh)
    out: dict[str, Any] = {"mesh": {k: int(v) for k, v in big.mesh.shape.items()}}

    state_big = big.init_state()
    host = jax.device_get(state_big)
    out["init_equal"] = all(
        np.array_equal(a, b) for a, b in zip(jax_leaves(host), jax_leaves(jax.device_get(one.init_state())))
    )
    state_one = jax.device_put(host.replace(tx=one.tx), one.state_shardings)
    rng = np.random.default_rng(0)
    book_np = mask_book.pack(rng.random((len(data.train), config.model.max_len)) < 0.3)
    out["book_frozen_bits"] = int(mask_book.count_frozen(book_np))
    book_big, book_one = big.put_book(book_np), one.put_book(book_np)
    it = pipeline.train_iterator(
        data.train, global_batch_size=config.data.batch_size, seed=config.seed, num_threads=1, prefetch=1
    )
    steps = []
    for _ in range(args["steps"]):
        batch = next(it)
        with sharding.activate(big.mesh, big.rules):
            state_big, m_big = big.train_step(state_big, big.put_batch(batch), book_big)
        with sharding.activate(one.mesh, one.rules):
            state_one, m_one = one.train_step(state_one, one.put_batch(batch), book_one)
        m_big, m_one = jax.device_get(m_big), jax.device_get(m_one)
        steps.append({"big": {k: float(v) for k, v in m_big.items()}, "one": {k: float(v) for k, v in m_one.items()}})
    out["steps"] = steps
    out["param_spec"] = [list(a) if isinstance(a, tuple) else a
                         for a in state_big.params["encoder"]["layers"]["mlp_in"]["kernel"].sharding.spec]
    out["batch_spec"] = list(big.put_batch(batch)["tokens"].sharding.spec[0])
    a, b = _flat(state_big), _flat(state_one)
    out["state_keys_equal"] = sorted(a) == sorted(b)
    out["state_max_abs"] = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)
    out["state_max_rel"] = max(
        float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)) / (np.abs(b[k].astype(np.float64)) + 1e-3)))
        for k in a
    )
    out["params_changed"] = float(max(np.max(np.abs(a[k] - _flat(host)[k])) for k in a if k.startswith("params/")))
    # A mask-book refresh (masker scores + per-window top-k freezing) under both shardings.
    eval_batch = next(pipeline.eval_iterator(data.train, global_batch_size=config.data.eval_batch_size,
                                                      num_threads=1, prefetch=1))
    key = jax.random.key(7)
    with sharding.activate(big.mesh, big.rules):
        new_big = big.book_step(state_big.params, book_big, big.put_batch(eval_batch, ("tokens", "index", "valid")), key)
    with sharding.activate(one.mesh, one.rules):
        new_one = one.book_step(state_one.params, book_one, one.put_batch(eval_batch, ("tokens", "index", "valid")), key)
    new_big, new_one = np.asarray(jax.device_get(new_big)), np.asarray(jax.device_get(new_one))
    out["book_equal"] = bool(np.array_equal(new_big, new_one))
    out["book_bits_changed"] = int(mask_book.count_frozen(np.bitwise_xor(new_one, book_np)))
    out["book_bits_differing"] = int(mask_book.count_frozen(np.bitwise_xor(new_big, new_one)))
    return out


COMMANDS = {"train": cmd_train, "sharded": cmd_sharded}


def main(argv: Sequence[str]) -> None:
    results = []
    for command, args in json.loads(argv[1]):
        start_wall, start_cpu = time.monotonic(), time.process_time()
        results.append(COMMANDS[command](args))
        results[-1]["seconds"] = {"wall": time.monotonic() - start_wall, "cpu": time.process_time() - start_cpu}
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv)
