r"""Memory of the full adversarial pre-training step per device: model size x length x remat / dtype.

    python benchmarks/bench_memory.py                                   # tiny, base, large x L 512, 1024, 2048
    python benchmarks/bench_memory.py --sizes base --lengths 1024 --variants bfloat16/full
    python benchmarks/bench_memory.py --sizes tiny --lengths 64 --batches 1 --out /tmp/memory.json

Each case compiles the pre-training step ahead of time exactly as `midibert-jax compile-check` does
(`Trainer(config).compile_report(num_windows)`: masker pass, adversarial masking with the
mask book, recoverer pass, both losses, gradients through both passes, AdamW), on ONE device with a
per-device batch of 1 and again of 2 windows, and reads XLA's memory analysis; nothing is run. Per case:
  state     parameters + AdamW moments (float32 whatever the compute dtype; 12 bytes a parameter)
  args      everything passed to the step: state, the batch and the mask book (`--num-windows` rows)
  temp      temporaries at batch 1: activations, plus gradients and optimizer-update buffers (the size of
            the state, whatever the batch)
  peak      args + outputs + temp - aliased (the state is donated, so its update is not counted twice)
  /window   temp(batch 2) - temp(batch 1): what each further window of the per-device batch adds
so peak(B) ~ peak + (B - 1) x /window per device. On a mesh, the state divides by the fsdp (and tensor)
size and the batch is split over data x fsdp; check a chosen config with `midibert-jax compile-check`.

Every case runs in its own subprocess (the executables of earlier cases do not pile up). Without an
accelerator the figures are the CPU backend's: the same shapes and the same program, but its own fusion
and buffer assignment, and bfloat16 arithmetic partly done in float32; a guide, not a TPU's or GPU's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs as a script

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZES = ("tiny", "base", "large")
LENGTHS = (512, 1024, 2048)
VARIANTS = ("float32/none", "float32/full", "bfloat16/full")  # compute dtype / remat policy
GIB = 2**30


def _device_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree (each leaf's shard under its sharding)."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def measure(size: str, length: int, variant: str, batches=(1, 2), num_windows: int = 100_000) -> dict[str, Any]:
    """Compiles the pre-training step of one case on one device for each per-device batch; memory per device."""
    sys.path.insert(0, str(REPO))  # configs/ is importable as a package from the repository root
    import jax  # pylint: disable=import-outside-toplevel

    from configs.pretrain import get_config  # pylint: disable=import-outside-toplevel
    from midibert_jax import sharding  # pylint: disable=import-outside-toplevel
    from midibert_jax.train.pretrain import Trainer  # pylint: disable=import-outside-toplevel

    dtype, remat = variant.split("/")
    result: dict[str, Any] = {"size": size, "length": length, "dtype": dtype, "remat": remat,
                              "num_windows": num_windows, "device": jax.devices()[0].platform, "batches": {}}
    mesh = None
    for batch in batches:
        config = get_config(size)
        config.data.max_len = length  # model.max_len follows
        config.data.batch_size = batch
        config.model.dtype = dtype
        config.model.remat = remat
        config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
        mesh = mesh or sharding.make_mesh(config.mesh, jax.devices()[:1])
        trainer = Trainer(config, mesh=mesh)
        report = trainer.compile_report(num_windows)
        result["params"] = sum(int(x.size) for x in jax.tree_util.tree_leaves(trainer.abstract_state.params))
        result["state_bytes"] = _device_bytes(trainer.abstract_state)
        result["batches"][str(batch)] = {k: report[k] for k in (
            "compile_seconds", "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "peak_bytes_estimate") if k in report}
        del trainer
    first = result["batches"][str(batches[0])]
    result.update({
        "batch": batches[0],
        "argument_bytes": first["argument_size_in_bytes"],
        "temp_bytes": first["temp_size_in_bytes"],
        "peak_bytes": first["peak_bytes_estimate"],
        "compile_seconds": first["compile_seconds"],
    })
    if len(batches) > 1:
        last = result["batches"][str(batches[-1])]
        span = batches[-1] - batches[0]
        result["temp_bytes_per_window"] = (last["temp_size_in_bytes"] - first["temp_size_in_bytes"]) / span
        result["peak_bytes_per_window"] = (last["peak_bytes_estimate"] - first["peak_bytes_estimate"]) / span
    return result


def run_case(size: str, length: int, variant: str, batches, num_windows: int, timeout: float) -> dict[str, Any]:
    """`measure` in a fresh Python process (its compiled executables die with it)."""
    spec = json.dumps({"size": size, "length": length, "variant": variant, "batches": list(batches),
                       "num_windows": num_windows})
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", spec], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode:
        raise RuntimeError(f"{size} L={length} {variant} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - t
    return result


HEADER = (f"{'size':5s} {'L':>5s} {'dtype':>8s} {'remat':>5s} {'params':>7s} {'state':>7s} {'args':>7s} "
          f"{'temp':>7s} {'peak':>7s} {'/window':>7s} {'compile':>7s}")


def row(r: dict[str, Any]) -> str:
    per_window = r.get("temp_bytes_per_window")
    return (f"{r['size']:5s} {r['length']:5d} {r['dtype']:>8s} {r['remat']:>5s} {r['params'] / 1e6:6.1f}M "
            f"{r['state_bytes'] / GIB:7.2f} {r['argument_bytes'] / GIB:7.2f} {r['temp_bytes'] / GIB:7.2f} "
            f"{r['peak_bytes'] / GIB:7.2f} {'' if per_window is None else f'{per_window / GIB:7.2f}':>7s} "
            f"{r['compile_seconds']:6.1f}s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated, from " + ",".join(SIZES))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="window lengths (multiples of 8)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated dtype/remat pairs")
    parser.add_argument("--batches", default="1,2", help="per-device batches compiled per case: the first gives "
                        "the table's figures, the last the per-window slope")
    parser.add_argument("--num-windows", type=int, default=100_000, help="training windows (mask book rows)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per case")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one case as JSON, result on stdout
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["size"], spec["length"], spec["variant"], tuple(spec["batches"]),
                                 spec["num_windows"])))
        return 0

    sizes = [s for s in args.sizes.split(",") if s]
    if unknown := set(sizes) - set(SIZES):
        parser.error(f"unknown size(s) {sorted(unknown)}")
    lengths = [int(x) for x in args.lengths.split(",") if x]
    variants = [v for v in args.variants.split(",") if v]
    batches = tuple(int(x) for x in args.batches.split(",") if x)
    result: dict[str, Any] = {
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_average_start": os.getloadavg()},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batches": list(batches),
        "num_windows": args.num_windows,
        "runs": [],
    }
    print(f"per device, 1 device, per-device batch {batches[0]}" +
          (f" (and {batches[-1]} for /window)" if len(batches) > 1 else "") + "; GiB", flush=True)
    print(HEADER, flush=True)
    for size in sizes:
        for length in lengths:
            for variant in variants:
                r = run_case(size, length, variant, batches, args.num_windows, args.timeout)
                result["runs"].append(r)
                print(row(r), flush=True)
    result["device"] = result["runs"][0]["device"] if result["runs"] else None
    result["host"]["load_average_end"] = os.getloadavg()
    print("(state: params + AdamW moments; args: state + batch + mask book; temp: temporaries at batch "
          f"{batches[0]}, gradients included; peak: args + outputs + temp - aliased; /window: temp added by "
          "each further window of the per-device batch; compile: seconds of the first batch's compile)")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
