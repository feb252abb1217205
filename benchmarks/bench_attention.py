r"""Where an encoder layer's time goes: attention vs the dense layers, each as a fraction of the matmul rate.

    python benchmarks/bench_attention.py                    # tiny (L=512, B=8) and base (L=1024, B=2) shapes
    python benchmarks/bench_attention.py --sizes tiny --steps 5 --out /tmp/attention.json

bench_pretrain.py times the whole adversarial step; this script splits one encoder layer of it into
parts, each jitted alone, forward + backward with dropout on (training mode), at the step's shapes:
  layer                one post-LN BERT layer (attention, dropout, LayerNorm, feed-forward)
  attention            the SelfAttention module: q, k, v, o projections + the attention core with BERT's
                       relative key-query terms, softmax and attention-probability dropout
  attention_absolute   the same without the relative terms (what the core costs without its skewed products)
  attention_no_dropout the relative attention with the attention dropout off
  dense_rest           layer - attention: LayerNorms, dropout and the feed-forward matmuls
and a memory figure: a jitted x * 2 over one [B, H, L, L] float32 tensor (the size of the attention
scores), read + write GB/s. Each part's analytic FLOPs (matmuls only, 3 x forward) over its median time
gives GFLOP/s, reported against a 2048^3 float32 matmul timed before and after it.

What it shows on a CPU: the dense parts run near the matmul rate, while the attention core moves several
[B, H, L, L] float32 tensors through memory per pass (scores, skewed relative terms, probabilities,
dropout mask and their gradients), so its rate is set by memory bandwidth, not by the matmul units.
`projection` is the layer's rate if attention ran at the dense parts' rate, i.e. the ceiling of what
restructuring the XLA program can give before a fused attention kernel is needed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from midibert_jax.model import encoder
from matmul_rate import Matmul  # benchmarks/ is on sys.path when a benchmark runs as a script
from results_io import write_results

# size -> (batch, length, hidden, heads, mlp): the shapes bench_pretrain.py times, and a seconds-long one
# for the test that this script runs.
CASES = {"tiny": (8, 512, 256, 4, 1024), "base": (2, 1024, 768, 12, 3072), "smoke": (2, 64, 32, 2, 64)}


def _spec(hidden: int, heads: int, mlp: int, length: int, **overrides) -> encoder.EncoderSpec:
    return encoder.EncoderSpec(
        num_layers=1, hidden_size=hidden, num_heads=heads, mlp_dim=mlp, max_len=length, **overrides
    )


def _train_step(module, x: jnp.ndarray, mask: jnp.ndarray, **kwargs) -> Callable:
    """A jitted forward + backward of `module` (w.r.t. its parameters and x) with dropout on."""
    variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, mask, **kwargs)

    def loss(params, x, key):
        out = module.apply({"params": params}, x, mask, rngs={"dropout": key}, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return jnp.sum(out * out)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: grad(variables["params"], x, jax.random.key(2))


class Part:
    """One jitted computation with its analytic FLOPs; `measure()` times it between two matmul timings."""

    def __init__(self, name: str, fn: Callable, flops: float):
        self.name, self.fn, self.flops = name, fn, flops
        t = time.perf_counter()
        jax.block_until_ready(fn())  # compile + warm-up
        self.compile_s = time.perf_counter() - t
        self.times: list[float] = []
        self.matmul_rates: list[float] = []

    def measure(self, matmul: Matmul) -> None:
        before = matmul.gflops()[0]
        t = time.perf_counter()
        jax.block_until_ready(self.fn())
        self.times.append(time.perf_counter() - t)
        self.matmul_rates.append((before + matmul.gflops()[0]) / 2)

    def result(self) -> dict[str, Any]:
        seconds = float(np.median(self.times))
        ratios = [self.flops / t / 1e9 / m for t, m in zip(self.times, self.matmul_rates)]
        return {
            "name": self.name,
            "ms": seconds * 1e3,
            "gflop": self.flops / 1e9,
            "gflops": self.flops / seconds / 1e9,
            "fraction_of_matmul": float(np.median(ratios)),
            "compile_s": self.compile_s,
        }


def bench_size(size: str, steps: int, matmul: Matmul) -> dict[str, Any]:
    batch, length, hidden, heads, mlp = CASES[size]
    tokens = batch * length
    x = jax.random.normal(jax.random.key(3), (batch, length, hidden), jnp.float32)
    mask = jnp.arange(length)[None, :] < length - length // 8  # the last eighth padded, as bench_pretrain
    mask = jnp.broadcast_to(mask, (batch, length))

    # Matmul FLOPs of forward + backward (3 x forward), per part.
    projections = 3 * 2 * tokens * 4 * hidden * hidden
    core = 3 * 2 * 2 * batch * length * length * hidden  # q.k and p.v
    relative = core  # q.E[l-r] and k.E[l-r]: one d-long product per (query, key) pair each, like q.k
    feed_forward = 3 * 2 * 2 * tokens * hidden * mlp

    relative_spec = _spec(hidden, heads, mlp, length)
    absolute_spec = _spec(hidden, heads, mlp, length, position_embedding="absolute")
    no_dropout_spec = _spec(hidden, heads, mlp, length, attention_dropout_rate=0.0)

    def attention_part(name: str, spec: encoder.EncoderSpec, flops: float) -> Part:
        return Part(name, _train_step(encoder.self_attention(spec), x, mask, deterministic=False), flops)

    parts = [
        Part("layer", _train_step(encoder.EncoderLayer(relative_spec, deterministic=False), x, mask),
             projections + core + relative + feed_forward),
        attention_part("attention", relative_spec, projections + core + relative),
        attention_part("attention_absolute", absolute_spec, projections + core),
        attention_part("attention_no_dropout", no_dropout_spec, projections + core + relative),
    ]
    scores = jnp.ones((batch, heads, length, length), jnp.float32)
    double = jax.jit(lambda s: s * 2)
    parts.append(Part("scores_copy", lambda: double(scores), 0.0))
    for _ in range(steps):  # round robin: load changes hit all parts alike
        for part in parts:
            part.measure(matmul)
    results = {p.name: p.result() for p in parts}

    layer, attn = results["layer"], results["attention"]
    rest_ms = layer["ms"] - attn["ms"]
    rest_rate = feed_forward / (rest_ms / 1e3) / 1e9
    matmul_rate = float(np.median(parts[0].matmul_rates))
    results["dense_rest"] = {
        "name": "dense_rest", "ms": rest_ms, "gflop": feed_forward / 1e9, "gflops": rest_rate,
        "fraction_of_matmul": rest_rate / matmul_rate,
    }
    copy = results.pop("scores_copy")
    scores_bytes = 2 * scores.size * 4  # read + write
    # The layer's rate if its attention ran at the dense parts' rate (same FLOPs, dense-rest speed).
    attention_at_dense_rate_ms = attn["gflop"] / rest_rate * 1e3
    projected = layer["gflop"] / ((rest_ms + attention_at_dense_rate_ms) / 1e3) / matmul_rate
    return {
        "size": size, "batch": batch, "length": length, "hidden": hidden, "heads": heads, "mlp": mlp,
        "matmul_gflops": matmul_rate,
        "parts": list(results.values()),
        "attention_share_of_layer_time": attn["ms"] / layer["ms"],
        "attention_share_of_layer_flops": attn["gflop"] / layer["gflop"],
        "scores_copy": {"ms": copy["ms"], "bytes": scores_bytes, "gb_per_s": scores_bytes / copy["ms"] / 1e6},
        "projection_layer_fraction_if_attention_at_dense_rate": projected,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated sizes from " + ",".join(CASES))
    parser.add_argument("--steps", type=int, default=5, help="timed runs per part (after one warm-up)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "attention.json"))
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    matmul = Matmul()
    result: dict[str, Any] = {
        "device": f"{device.platform}:{device.device_kind}",
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "jax": jax.__version__,
        "sizes": [],
    }
    for size in [s for s in args.sizes.split(",") if s]:
        r = bench_size(size, args.steps, matmul)
        result["sizes"].append(r)
        print(f"\n{size}: B={r['batch']} L={r['length']} E={r['hidden']} H={r['heads']}, "
              f"matmul {r['matmul_gflops']:.0f} GFLOP/s (forward + backward, dropout on)")
        print(f"  {'part':22s} {'ms':>8s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'/matmul':>8s}")
        for p in r["parts"]:
            print(f"  {p['name']:22s} {p['ms']:8.1f} {p['gflop']:7.2f} {p['gflops']:8.1f} {p['fraction_of_matmul']:8.1%}")
        c = r["scores_copy"]
        print(f"  attention: {r['attention_share_of_layer_time']:.0%} of the layer's time for "
              f"{r['attention_share_of_layer_flops']:.0%} of its FLOPs; one [B, H, L, L] float32 pass "
              f"(x * 2): {c['ms']:.1f} ms, {c['gb_per_s']:.1f} GB/s")
        print(f"  layer at the dense parts' rate throughout: "
              f"{r['projection_layer_fraction_if_attention_at_dense_rate']:.1%} of the matmul rate")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
