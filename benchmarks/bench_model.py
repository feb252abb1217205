r"""Benchmark the model's training step (forward + backward): speed, compile time, memory, FLOP/s.

    python benchmarks/bench_model.py                       # tiny (L=512, B=8) and base (L=1024, B=2)
    python benchmarks/bench_model.py --sizes base --remat full --out /tmp/model.json

The step is the pre-training recoverer pass with dropout on: encoder + 8 MLM projections, mean
cross-entropy over every position, gradients w.r.t. all parameters. For each case it reports
tokens/s, lowering and compile time, the compiled step's memory_analysis() (peak ~ arguments +
outputs + temporaries - aliased), FLOPs (XLA's cost_analysis and an analytic count) and the
achieved GFLOP/s next to a float32 matmul measured on the same machine in the same run.
The reference PyTorch model peaks at ~17.5 GB for base at L=1024, batch 2 on CPU (its relative
attention builds an L x L x d tensor per layer); the target is under a third of that.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from midibert_jax.model import config_io, models
from midibert_jax.tokenizer import vocab
from matmul_rate import Matmul  # benchmarks/ is on sys.path when a benchmark runs as a script
from results_io import write_results

CASES = {"tiny": (8, 512), "base": (2, 1024), "large": (1, 1024)}  # size -> (batch, length)
REFERENCE_BASE_PEAK_GB = 17.5
GB = 1e9


def analytic_flops(config, batch: int, length: int) -> float:
    """Matmul FLOPs of forward + backward (3x forward) of encoder + recoverer."""
    e, m, n_layers = config.hidden_size, config.mlp_dim, config.num_layers
    tokens = batch * length
    per_token = 2 * (8 * config.field_embed_dim * e)  # input projection
    per_token += n_layers * 2 * (4 * e * e + 2 * e * m)  # q, k, v, out, mlp
    per_token += 2 * e * sum(vocab.VOCAB_SIZES)  # recoverer
    attn = n_layers * 2 * 2 * batch * length * length * e  # q.k and p.v
    if config.position_embedding == "relative_key_query":
        # q.E[l-r] and k.E[l-r]: one d-long product per (query, key) pair each, as bench_pretrain.py counts them
        # (model FLOPs; multiplying every row by all 2L - 1 distance rows would count up to twice this).
        attn += n_layers * 2 * 2 * batch * length * length * e
    return 3.0 * (per_token * tokens + attn)


def _xla_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _memory(compiled) -> dict[str, float]:
    mem = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f: int(getattr(mem, f, 0) or 0) for f in fields}
    out["peak_bytes"] = (
        out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
        - out["alias_size_in_bytes"]
    )
    return out


def bench_case(size: str, batch: int, length: int, *, remat: str, dtype: str, steps: int) -> dict:
    config = config_io.default_model_config(size)
    config.remat, config.dtype, config.max_len = remat, dtype, max(config.max_len, length)
    model = models.build_pretrain_model(config)

    rng = np.random.default_rng(0)
    tokens = (rng.random((batch, length, 8)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)
    tokens[:, length - length // 8 :] = vocab.PAD_ROW  # some padding, as in real batches
    tokens = jnp.asarray(tokens)
    mask = models.default_attention_mask(tokens)
    targets = tokens

    params = jax.jit(
        lambda k: model.init({"params": k}, tokens, mask, deterministic=True, method="recover")["params"]
    )(jax.random.key(0))
    params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))

    def loss_fn(p, key):
        logits = model.apply(
            {"params": p}, tokens, mask, deterministic=False, rngs={"dropout": key}, method="recover"
        )
        losses = [
            optax.softmax_cross_entropy_with_integer_labels(l, targets[..., i]).mean() for i, l in enumerate(logits)
        ]
        return sum(losses) / len(losses)

    step = jax.jit(jax.value_and_grad(loss_fn))
    t = time.perf_counter()
    lowered = step.lower(params, jax.random.key(1))
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    memory = _memory(compiled)

    jax.block_until_ready(compiled(params, jax.random.key(1)))  # warm-up
    times = []
    for i in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, jax.random.key(2 + i)))
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    xla_flops = _xla_flops(compiled)
    model_flops = analytic_flops(config, batch, length)
    return {
        "size": size,
        "batch": batch,
        "length": length,
        "dtype": dtype,
        "remat": remat,
        "position_embedding": config.position_embedding,
        "params": int(n_params),
        "step_s": step_s,
        "step_times_s": times,
        "tokens_per_s": batch * length / step_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "memory": memory,
        "peak_gb": memory["peak_bytes"] / GB,
        "flops_per_step_xla": xla_flops,
        "flops_per_step_analytic": model_flops,
        "achieved_gflops_xla": None if xla_flops is None else xla_flops / step_s / 1e9,
        "achieved_gflops_analytic": model_flops / step_s / 1e9,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated sizes from " + ",".join(CASES))
    parser.add_argument("--remat", default="none", help="remat policy (none, full, dots, dots_no_batch)")
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "model.json"))
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    mm_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    result = {
        "device": f"{device.platform}:{device.device_kind}",
        "num_devices": jax.device_count(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "jax": jax.__version__,
        "matmul": {"n": 2048, "dtype": str(np.dtype(mm_dtype)), "gflops": Matmul(2048, mm_dtype).gflops()[0]},
        "runs": [],
    }
    print(f"device {result['device']}, matmul {result['matmul']['gflops']:.1f} GFLOP/s")
    for size in args.sizes.split(","):
        batch, length = CASES[size]
        run = bench_case(size, batch, length, remat=args.remat, dtype=args.dtype, steps=args.steps)
        run["fraction_of_matmul"] = run["achieved_gflops_analytic"] / result["matmul"]["gflops"]
        result["runs"].append(run)
        print(
            f"{size:5s} L={length} B={batch}: {run['tokens_per_s']:.0f} tokens/s ({run['step_s']:.2f} s/step), "
            f"compile {run['compile_s']:.1f} s (+ lower {run['lower_s']:.1f} s), peak {run['peak_gb']:.2f} GB, "
            f"{run['achieved_gflops_analytic']:.1f} GFLOP/s analytic"
            + (f" / {run['achieved_gflops_xla']:.1f} XLA-counted" if run["achieved_gflops_xla"] else "")
            + f" vs matmul {result['matmul']['gflops']:.1f}"
        )
        if size == "base":
            result["reference_base_peak_gb"] = REFERENCE_BASE_PEAK_GB
            result["base_peak_fraction_of_reference"] = run["peak_gb"] / REFERENCE_BASE_PEAK_GB
            print(f"      base peak is {run['peak_gb'] / REFERENCE_BASE_PEAK_GB:.1%} of the reference's ~17.5 GB")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
