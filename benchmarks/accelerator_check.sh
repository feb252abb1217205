#!/usr/bin/env bash
# One-shot accelerator check of the real pre-training step: base model, bfloat16, adversarial masking with
# the mask book, on the first GPU/TPU. Prints and writes (JSON) tokens/s, step time, compile time, peak
# memory and MFU against the device's peak bfloat16 rate. Installs nothing and reaches no network: if jax
# cannot see an accelerator (e.g. jax[cuda] is not installed) it says so and exits 2.
#
#   benchmarks/accelerator_check.sh                       # base, L=1024, batch 8, 10 timed steps
#   benchmarks/accelerator_check.sh --batch 16 --steps 20 --out /tmp/check.json
#   benchmarks/accelerator_check.sh --smoke               # tiny, L=64, batch 2, on the CPU (tests the script)
#
# Environment: PYTHON (default: python3) is the interpreter that has jax, flax, optax and this project's
# dependencies. Runs in well under 8 minutes on an A100/H100-class GPU (one compile of about a minute or
# two, then seconds of steps).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
export PYTHONPATH="$repo:$here${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import jax, flax, optax" 2>/dev/null; then
  echo "accelerator_check: $PYTHON cannot import jax, flax and optax; install the project (pip install -e .[cuda]) first" >&2
  exit 2
fi
exec "$PYTHON" - "$@" <<'PY'
import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

ap = argparse.ArgumentParser(prog="accelerator_check.sh")
ap.add_argument("--smoke", action="store_true", help="tiny model, L=64, batch 2, on the CPU")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--length", type=int, default=1024)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/accelerator_check.json)")
args = ap.parse_args()
if args.smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

import bench_pretrain  # noqa: E402  (benchmarks/: the step exactly as training builds it)

# Peak dense bfloat16 FLOP/s per chip, by a substring of jax's device_kind (vendor data sheets, no sparsity).
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; PCIe parts peak lower (756e12)
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
}

device = jax.devices()[0]
if device.platform == "cpu" and not args.smoke:
    print(f"accelerator_check: jax sees no GPU/TPU (backend {jax.default_backend()}, devices {jax.devices()}); "
          "jax[cuda] or jax[tpu] is missing or cannot find the driver. Nothing was measured (--smoke runs on the CPU).",
          file=sys.stderr)
    sys.exit(2)

size, batch, length = ("tiny", 2, 64) if args.smoke else ("base", args.batch, args.length)
config = bench_pretrain.make_config(size, batch, length, (("model.dtype", "bfloat16"),))
parts = bench_pretrain.trainer_parts(config, batch, length)
state = parts.state
with parts.context():
    t = time.perf_counter()
    compiled = parts.train_step.lower(state, parts.arrays, parts.book).compile()
    compile_s = time.perf_counter() - t
state, metrics = compiled(state, parts.arrays, parts.book)  # warm-up
jax.block_until_ready((state, metrics))
times = []
for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, parts.arrays, parts.book)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
step_s = statistics.median(times)
flops = bench_pretrain.analytic_flops(config, batch, length)["total"]
stats = device.memory_stats() or {}
peak_rate = next((v for k, v in PEAK_BF16.items() if k.lower() in device.device_kind.lower()), None)
result = {
    "device_kind": device.device_kind,
    "platform": device.platform,
    "num_devices": jax.device_count(),
    "jax": jax.__version__,
    "size": size,
    "batch": batch,
    "length": length,
    "dtype": "bfloat16",
    "steps": args.steps,
    "compile_s": compile_s,
    "step_s": step_s,
    "step_times_s": times,
    "tokens_per_s": batch * length / step_s,
    "flops_per_step": flops,
    "achieved_tflops": flops / step_s / 1e12,
    "peak_bf16_flops": peak_rate,
    "mfu": None if peak_rate is None else flops / step_s / (peak_rate * jax.device_count()),
    "peak_memory_bytes": stats.get("peak_bytes_in_use"),
    "xla_peak_bytes_estimate": bench_pretrain.xla_peak_bytes(compiled),
    "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "loss": metrics["train/loss"],
    "finite": bool(metrics["train/finite"]),
}
print(f"{device.device_kind} x {jax.device_count()} ({device.platform}), {size}, L={length}, batch {batch}, bfloat16")
print(f"  compile          {compile_s:8.1f} s")
print(f"  step             {step_s:8.3f} s (median of {args.steps})")
print(f"  tokens/s         {result['tokens_per_s']:8.0f}")
print(f"  achieved         {result['achieved_tflops']:8.2f} TFLOP/s (analytic model FLOPs)")
if peak_rate is None:
    print(f"  MFU              not computed: no peak bf16 rate known for device kind {device.device_kind!r}")
else:
    print(f"  MFU              {result['mfu']:8.1%} of {peak_rate / 1e12:.0f} TFLOP/s per chip")
peak = result["peak_memory_bytes"]
print(f"  peak memory      {'n/a (backend reports none)' if peak is None else f'{peak / 2**30:.2f} GiB'}"
      f"; XLA estimate {result['xla_peak_bytes_estimate'] / 2**30:.2f} GiB")
print(f"  loss             {result['loss']:.3f} (finite: {result['finite']})")
out = pathlib.Path(args.out or pathlib.Path(bench_pretrain.REPO) / "benchmarks" / "results" / "accelerator_check.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {out}")
if not result["finite"]:
    sys.exit(1)
PY
