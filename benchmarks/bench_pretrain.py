r"""Benchmark the full adversarial pre-training step: speed, compile time, FLOPs, FLOP/s vs a matmul.

    python benchmarks/bench_pretrain.py                          # tiny (L=512, B=8) and base (L=1024, B=2)
    python benchmarks/bench_pretrain.py --sizes tiny --steps 5 --out /tmp/pretrain.json
    python benchmarks/bench_pretrain.py --sizes tiny --ablate    # + where the time goes (variants of the step)

The step is `midibert_jax.train.pretrain.make_train_step`, jitted by the `Trainer` exactly as in training:
masker forward on the clean batch (dropout on) -> adversarial top-k masking (mask book with ~10% frozen
notes) -> recoverer forward on the corrupted batch -> recoverer + masker losses -> gradients through both
passes -> AdamW update, on random token batches (no dataset) over all available devices.

For each size it reports lowering and compile seconds, the median step time over `--steps` timed steps
(after one warm-up), tokens/s, model FLOPs per step three ways, achieved GFLOP/s and its ratio to a
float32 2048^3 matmul timed just before and after each step (the median ratio is what survives a shared
machine's load; compare that, not raw times, across runs), and the same ratio per CPU second of this
process (what other processes' load hardly changes) with the cores a step keeps busy:
  flops_xla_compiled   cost_analysis() of the compiled step; XLA counts a while loop's body once, so with
                       scanned layers it misses (num_layers - 1) / num_layers of the encoder work;
  flops_xla_unrolled   cost_analysis() of the same step lowered with unrolled layers (not compiled): XLA's
                       count of every operation;
  flops_analytic       matmul FLOPs x 3 (forward + backward) of both passes: the 6 N tokens rule per pass,
                       plus attention scores, probabilities x values and the relative-position terms (one
                       d-long dot product per query-key pair and term: the model's FLOPs, not the
                       implementation's, so that a faster formulation shows as a higher rate).

`--ablate` also times variants of the step on the first size (each compiled separately, all timed round
robin with the real step): no dropout, absolute positions (no relative key-query terms), the random policy
(no masker pass), unrolled layers (no scan: no stacked residual buffers, one compile per layer), the
relative key-query terms computed unblocked (every query times all 2L - 1 distance
rows; the same values), and the masking (top-k) alone, to show which part dominates.

Targets (GitHub issue #4): tiny >= 2 x the reference PyTorch's ~430 tokens/s on this machine, and >= 60%
of the measured matmul rate. bench_attention.py splits one layer into parts to show where a CPU loses it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # configs/ is importable as a package from the repository root

from configs.pretrain import get_config  # noqa: E402
from midibert_jax import sharding  # noqa: E402
from midibert_jax.model import positions  # noqa: E402
from midibert_jax.tokenizer import vocab  # noqa: E402
from midibert_jax.train import mask_book, masking, pretrain  # noqa: E402
from matmul_rate import Matmul  # benchmarks/ is on sys.path when a benchmark runs as a script
from results_io import write_results

CASES = {"tiny": (8, 512), "base": (2, 1024)}  # size -> (global batch, length)
REFERENCE_TOKENS_PER_S = 430.0  # the reference PyTorch implementation, tiny, on this machine (issue #4)
TARGET_SPEEDUP = 2.0
TARGET_MATMUL_FRACTION = 0.6
# Variants of the step timed by --ablate: name -> config overrides.
ABLATIONS = {  # (the unblocked one swaps a model function)
    "no_dropout": (("model.dropout_rate", 0.0), ("model.attention_dropout_rate", 0.0), ("model.head_dropout", 0.0)),
    "absolute_positions": (("model.position_embedding", "absolute"),),
    "random_policy": (("masking.policy", "random"),),
    "unblocked_relative": (),
    "unrolled_layers": (("model.scan_layers", False),),
}


_RELATIVE_SCORES = positions.relative_key_query_scores


def unblocked_relative_key_query_scores(query, key, table, max_len: int):
    """The relative key-query terms in one block: every row times all 2L - 1 distances (the pre-blocking form)."""
    return _RELATIVE_SCORES(query, key, table, max_len, block=query.shape[1])


def make_config(size: str, batch: int, length: int, overrides=()):
    config = get_config(size)
    config.data.max_len = length  # model.max_len follows
    config.data.batch_size = batch
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    for key, value in overrides:
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def analytic_flops(config, batch: int, length: int) -> dict[str, float]:
    """Matmul FLOPs of one adversarial step: (forward + backward = 3 x forward) of the masker and recoverer passes."""
    m = config.model
    e, f, n = m.hidden_size, m.mlp_dim, m.num_layers
    tokens = batch * length
    encoder_params = 8 * m.field_embed_dim * e + n * (4 * e * e + 2 * e * f)  # input projection, q k v o, mlp
    attention = n * 2 * 2 * length * e  # per token: q.k and p.v over L keys
    if m.position_embedding == "relative_key_query":
        # q.E[l-r] and k.E[l-r]: one dot product per (query, key) pair each, like q.k. (Implementations
        # that multiply every row by all 2L - 1 distance rows do up to twice this; it is not counted.)
        attention += n * 2 * 2 * length * e
    recoverer = e * sum(vocab.VOCAB_SIZES)
    masker = e * m.head_hidden + m.head_hidden
    per_token_recover = 2 * (encoder_params + recoverer) + attention
    per_token_masker = 2 * (encoder_params + masker) + attention
    adversarial = config.masking.policy == "adversarial"
    forward = tokens * (per_token_recover + (per_token_masker if adversarial else 0))
    return {
        "total": 3.0 * forward,
        "six_n_tokens": 6.0 * tokens * (encoder_params + recoverer + (encoder_params + masker if adversarial else 0)),
        "attention_share": attention * tokens * (2 if adversarial else 1) / forward,
    }


def _flops(cost) -> float | None:
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def random_batch(trainer, batch: int, length: int, num_windows: int):
    """Random regular tokens, the last eighth of every window padded; a book with ~10% of the notes frozen."""
    rng = np.random.default_rng(0)
    tokens = (rng.random((batch, length, vocab.NUM_FIELDS)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)
    tokens[:, length - length // 8:] = vocab.PAD_ROW
    arrays = trainer.put_batch({"tokens": tokens, "index": np.arange(batch)})
    book = trainer.put_book(mask_book.pack(rng.random((num_windows, length)) < 0.1))
    return arrays, book


@contextlib.contextmanager
def _relative_scores(function):
    """Temporarily swaps the model's relative-position function (only while tracing the step)."""
    original = positions.relative_key_query_scores
    positions.relative_key_query_scores = function or original
    try:
        yield
    finally:
        positions.relative_key_query_scores = original


class Case:
    """One compiled train step on random data, ready to be timed step by step."""

    def __init__(self, name: str, size: str, batch: int, length: int, overrides=(), relative_fn=None,
                 count_unrolled: bool = True):
        self.name, self.size, self.batch, self.length = name, size, batch, length
        self.overrides = tuple(overrides)
        config = make_config(size, batch, length, overrides)
        with tempfile.TemporaryDirectory() as workdir:
            trainer = pretrain.Trainer(config)
        self.state = trainer.init_state()
        self.params = sum(int(x.size) for x in jax.tree_util.tree_leaves(self.state.params))
        self.arrays, self.book = random_batch(trainer, batch, length, 4 * batch)
        with sharding.activate(trainer.mesh, trainer.rules), _relative_scores(relative_fn):
            t = time.perf_counter()
            lowered = trainer.train_step.lower(self.state, self.arrays, self.book)
            self.lower_s = time.perf_counter() - t
            t = time.perf_counter()
            self.compiled = lowered.compile()
            self.compile_s = time.perf_counter() - t
        self.flops_unrolled = None
        if count_unrolled:  # XLA's count of every operation: lower (not compile) the step with unrolled layers
            unrolled_config = make_config(size, batch, length, self.overrides + (("model.scan_layers", False),))
            with tempfile.TemporaryDirectory() as workdir:
                unrolled = pretrain.Trainer(unrolled_config)
            with sharding.activate(unrolled.mesh, unrolled.rules), _relative_scores(relative_fn):
                lowered = unrolled.train_step.lower(unrolled.abstract_state, self.arrays, self.book)
                self.flops_unrolled = _flops(lowered.cost_analysis())
        self.analytic = analytic_flops(config, batch, length)
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.ratios: list[float] = []  # achieved analytic GFLOP/s / matmul GFLOP/s (wall clock), per timed step
        self.cpu_ratios: list[float] = []  # the same per CPU second: insensitive to other processes' load
        self.step()  # warm-up

    def step(self) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        self.state, self.metrics = self.compiled(self.state, self.arrays, self.book)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - t, time.process_time() - c

    def timed_step(self, matmul: Matmul) -> None:
        """A step between two matmul measurements: their ratio is what survives a shared machine's load."""
        before = matmul.gflops()
        seconds, cpu_seconds = self.step()
        after = matmul.gflops()
        gflop = self.analytic["total"] / 1e9
        self.times.append(seconds)
        self.cpu_times.append(cpu_seconds)
        self.ratios.append(gflop / seconds / ((before[0] + after[0]) / 2))
        self.cpu_ratios.append(gflop / cpu_seconds / ((before[1] + after[1]) / 2))

    def result(self) -> dict[str, Any]:
        metrics = {k: float(v) for k, v in jax.device_get(self.metrics).items()}
        if not metrics["train/finite"]:
            raise RuntimeError(f"{self.name}: the benchmark step produced a non-finite loss")
        step_s = float(np.median(self.times))
        mem = self.compiled.memory_analysis()
        peak = None
        if mem is not None:
            peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                    - mem.alias_size_in_bytes)
        return {
            "name": self.name,
            "size": self.size,
            "batch": self.batch,
            "length": self.length,
            "overrides": [list(kv) for kv in self.overrides],
            "params": self.params,
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            "step_s": step_s,
            "step_times_s": self.times,
            "tokens_per_s": self.batch * self.length / step_s,
            "peak_bytes": peak,
            "flops_xla_compiled": _flops(self.compiled.cost_analysis()),
            "flops_xla_unrolled": self.flops_unrolled,
            "flops_analytic": self.analytic["total"],
            "flops_six_n_tokens": self.analytic["six_n_tokens"],
            "attention_share_of_analytic": self.analytic["attention_share"],
            "gflops_analytic": self.analytic["total"] / step_s / 1e9,
            "gflops_xla_unrolled": None if self.flops_unrolled is None else self.flops_unrolled / step_s / 1e9,
            "fraction_of_matmul": float(np.median(self.ratios)),
            "fraction_of_matmul_per_step": self.ratios,
            "fraction_of_matmul_per_cpu_second": float(np.median(self.cpu_ratios)),
            "cores_busy": float(np.median(np.asarray(self.cpu_times) / np.asarray(self.times))),
            "loss": metrics["train/loss"],
            "selected_fraction": metrics["train/mask/selected_fraction"],
        }


def time_round_robin(cases: list[Case], steps: int, matmul: Matmul) -> None:
    """`steps` timed steps of every case, interleaved, so that load changes hit all cases alike."""
    for _ in range(steps):
        for case in cases:
            case.timed_step(matmul)


def bench_masking(batch: int, length: int, reps: int = 20) -> float:
    """Seconds of the adversarial masking alone (per-example k, two argsorts, 80/10/10 corruption)."""
    cfg = masking.MaskingConfig.from_config(get_config("tiny").masking)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray((rng.random((batch, length, 8)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32))
    scores = jnp.asarray(rng.random((batch, length)), jnp.float32)
    frozen = jnp.asarray(rng.random((batch, length)) < 0.1)
    f = jax.jit(lambda k, t, s, fr: masking.adversarial_mask(k, t, jnp.arange(batch), s, fr, cfg).tokens)
    jax.block_until_ready(f(jax.random.key(0), tokens, scores, frozen))
    times = []
    for i in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(jax.random.key(i), tokens, scores, frozen))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _row(r: dict[str, Any]) -> str:
    xla = r["flops_xla_unrolled"]
    return (f"{r['name']:24s} {r['length']:5d} {r['batch']:3d} {r['compile_s']:8.1f} {r['step_s']:8.2f} "
            f"{r['tokens_per_s']:9.0f} {r['flops_analytic'] / 1e9:9.1f} "
            f"{(xla or float('nan')) / 1e9:9.1f} {(r['flops_xla_compiled'] or float('nan')) / 1e9:9.1f} "
            f"{r['gflops_analytic']:8.1f} {r['fraction_of_matmul']:7.1%} {r['fraction_of_matmul_per_cpu_second']:7.1%} "
            f"{r['cores_busy']:5.2f}")


HEADER = (f"{'case':24s} {'L':>5s} {'B':>3s} {'compile':>8s} {'step s':>8s} {'tokens/s':>9s} "
          f"{'GF anal.':>9s} {'GF xla':>9s} {'GF xla*':>9s} {'GFLOP/s':>8s} {'/matmul':>7s} {'/mm cpu':>7s} {'cores':>5s}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated sizes from " + ",".join(CASES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up)")
    parser.add_argument("--ablate", action="store_true", help="also time variants of the step on the first size")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pretrain.json"))
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    matmul = Matmul()
    result: dict[str, Any] = {
        "device": f"{device.platform}:{device.device_kind}",
        "num_devices": jax.device_count(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_average_start": os.getloadavg()},
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "runs": [],
        "ablations": [],
    }
    print(f"device {result['device']} x {result['num_devices']}, load {os.getloadavg()[0]:.1f}, "
          f"matmul {matmul.gflops()[0]:.1f} GFLOP/s", flush=True)
    sizes = [s for s in args.sizes.split(",") if s]
    for i, size in enumerate(sizes):
        batch, length = CASES[size]
        cases = [Case(size, size, batch, length)]
        if args.ablate and i == 0:
            for name, overrides in ABLATIONS.items():
                function = unblocked_relative_key_query_scores if name == "unblocked_relative" else None
                cases.append(Case(f"{size} {name}", size, batch, length, overrides, function, count_unrolled=False))
        print(f"{size}: compiled {len(cases)} step(s) in {sum(c.compile_s for c in cases):.0f} s; timing", flush=True)
        time_round_robin(cases, args.steps, matmul)
        runs = [c.result() for c in cases]
        result["runs"].append(runs[0])
        result["ablations"] += runs[1:]
        for run in runs:
            print(f"  {run['name']}: {run['step_s']:.2f} s/step, {run['tokens_per_s']:.0f} tokens/s, "
                  f"{run['fraction_of_matmul']:.1%} of the matmul rate ({run['fraction_of_matmul_per_cpu_second']:.1%} "
                  f"per CPU second, {run['cores_busy']:.2f} cores busy)", flush=True)
        if args.ablate and i == 0:
            result["masking_only_s"] = bench_masking(batch, length)
        del cases
    wall, cpu = matmul.gflops()
    result["matmul"] = {"n": matmul.n, "dtype": "float32", "gflops_end": wall, "gflops_per_cpu_second_end": cpu}
    result["host"]["load_average_end"] = os.getloadavg()

    print()
    print(HEADER)
    for run in result["runs"] + result["ablations"]:
        print(_row(run))
    print("(GF: GFLOP per step, analytic / XLA on the unrolled step / XLA on the compiled scanned step, which "
          "counts the layer loop once; GFLOP/s from the analytic count; /matmul: median over the steps of "
          "GFLOP/s over a 2048^3 float32 matmul timed just before and after each step; /mm cpu: the same per "
          "CPU second of this process, which other processes' load hardly changes; cores: CPU s / wall s of a step)")
    if "masking_only_s" in result:
        print(f"masking (top-k + corruption) alone: {result['masking_only_s'] * 1e3:.1f} ms per step")
    targets = {}
    for run in result["runs"]:
        if run["size"] == "tiny":
            targets["tiny_tokens_per_s"] = run["tokens_per_s"]
            targets["tiny_speedup_vs_reference"] = run["tokens_per_s"] / REFERENCE_TOKENS_PER_S
            targets["tiny_speedup_met"] = bool(run["tokens_per_s"] >= TARGET_SPEEDUP * REFERENCE_TOKENS_PER_S)
        targets[f"{run['size']}_fraction_of_matmul"] = run["fraction_of_matmul"]
        targets[f"{run['size']}_fraction_of_matmul_per_cpu_second"] = run["fraction_of_matmul_per_cpu_second"]
        targets[f"{run['size']}_matmul_fraction_met"] = bool(run["fraction_of_matmul"] >= TARGET_MATMUL_FRACTION)
    result["targets"] = targets
    for key, value in targets.items():
        print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
