r"""Our adversarial pre-training step beside the reference PyTorch step, in the same run; and where our time goes.

    python benchmarks/bench_pretrain.py                          # tiny (L=512, B=8) and base (L=1024, B=2), native + AVX2
    python benchmarks/bench_pretrain.py --sizes tiny --steps 5 --isa native --out /tmp/pretrain.json
    python benchmarks/bench_pretrain.py --sizes tiny --ablate    # + FLOP rates and variants of our step (in process)
    python benchmarks/bench_pretrain.py --sizes base --sequential base --isa native   # one side at a time

Same-run comparison (always): for each ISA setting and size, two child processes are started, one serving
our step (`midibert_jax.train.pretrain`'s train step, jitted as the Trainer jits it: masker forward on the
clean batch with dropout on -> adversarial top-k masking with a mask book (~10% frozen) -> recoverer forward
on the corrupted batch -> both losses -> gradients through both passes -> AdamW) and one serving the
reference's step (bench_reference.py: transformers' BertModel with relative key-query positions, Python
per-example loops, three AdamW optimisers). After each side's warm-up the parent alternates them step by
step (`--steps` each) and takes the medians, so a shared machine's load hits both alike (`--sequential SIZES`:
one child at a time, for shapes whose two children do not fit in memory together); the ratio is
reference s/step over ours. Peak memory is each child's resident high-water mark (ru_maxrss, measured
the same way for both; ours includes XLA's compilation), plus XLA's own estimate of our step's buffers.

`--isa avx2` (default: both native and avx2) caps both children as far as their libraries allow:
  ours        XLA_FLAGS=--xla_cpu_max_isa=AVX2 (XLA's generated code; the matmul library XLA calls may
              still dispatch on the real CPU: each child reports its float32 matmul GFLOP per CPU second
              under the cap, so the table shows whether the cap took effect)
  reference   ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2
The CPU model and its ISA flags (avx2, avx512f, avx512_bf16, amx_*) are printed and written with the figures.

`--ablate` then times, in this process on the first size, our step and variants of it round robin (no
dropout, absolute positions, the random policy, unrolled layers, unblocked relative terms), with
lowering / compile seconds, model FLOPs three ways (XLA's compiled count, which counts a scanned layer
loop once; XLA's count of the unrolled step; the analytic matmul count x 3 including the relative terms)
and achieved GFLOP/s as a fraction of a float32 2048^3 matmul timed before and after each step (a
reported number, not a target). bench_attention.py splits one layer into parts.

Target (issue 14): ours >= 2x the reference in the same run, at tiny and base, native and AVX2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # configs/ is importable as a package from the repository root

from configs.pretrain import get_config  # noqa: E402
from midibert_jax.model import positions  # noqa: E402
from midibert_jax.tokenizer import vocab  # noqa: E402
from midibert_jax.train import mask_book, masking, pretrain  # noqa: E402
from cpu_info import cpu_info, describe  # benchmarks/ is on sys.path when a benchmark runs as a script
from matmul_rate import Matmul
from results_io import write_results
from step_server import CASES, Worker, max_rss_bytes, serve
TARGET_SPEEDUP = 2.0
# --isa name -> environment of both children (XLA's flag is appended to XLA_FLAGS).
ISA_ENV = {
    "native": {},
    "avx2": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
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


@contextlib.contextmanager
def _relative_scores(function):
    """Temporarily swaps the model's relative-position function (only while tracing the step)."""
    original = positions.relative_key_query_scores
    positions.relative_key_query_scores = function or original
    try:
        yield
    finally:
        positions.relative_key_query_scores = original


@dataclasses.dataclass
class StepParts:
    """What the benchmark needs of the trainer: the jitted step, a state, a batch and a book, its sharding context."""

    train_step: Any  # jitted (state, arrays, book) -> (state, metrics)
    state: Any
    abstract_state: Any
    arrays: Any
    book: Any
    context: Any  # a context manager that activates the trainer's mesh and rules


def trainer_parts(config, batch: int, length: int, init: bool = True) -> StepParts:
    """The only place this benchmark reaches into `pretrain.Trainer`: builds the step exactly as training does."""
    trainer = pretrain.Trainer(config)
    rng = np.random.default_rng(0)
    tokens = (rng.random((batch, length, vocab.NUM_FIELDS)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)
    tokens[:, length - length // 8:] = vocab.PAD_ROW  # the last eighth of every window padded
    arrays = trainer.put_batch({"tokens": tokens, "index": np.arange(batch)})
    book = trainer.put_book(mask_book.pack(rng.random((4 * batch, length)) < 0.1))  # ~10% of the notes frozen
    return StepParts(trainer.train_step, trainer.init_state() if init else None, trainer.abstract_state, arrays, book,
                     trainer.activate)


class Case:
    """One compiled train step on random data, ready to be timed step by step."""

    def __init__(self, name: str, size: str, batch: int, length: int, overrides=(), relative_fn=None,
                 count_unrolled: bool = True):
        self.name, self.size, self.batch, self.length = name, size, batch, length
        self.overrides = tuple(overrides)
        config = make_config(size, batch, length, overrides)
        parts = trainer_parts(config, batch, length)
        self.state, self.arrays, self.book = parts.state, parts.arrays, parts.book
        self.params = sum(int(x.size) for x in jax.tree_util.tree_leaves(self.state.params))
        with parts.context(), _relative_scores(relative_fn):
            t = time.perf_counter()
            lowered = parts.train_step.lower(self.state, self.arrays, self.book)
            self.lower_s = time.perf_counter() - t
            t = time.perf_counter()
            self.compiled = lowered.compile()
            self.compile_s = time.perf_counter() - t
        self.flops_unrolled = None
        if count_unrolled:  # XLA's count of every operation: lower (not compile) the step with unrolled layers
            unrolled_config = make_config(size, batch, length, self.overrides + (("model.scan_layers", False),))
            unrolled = trainer_parts(unrolled_config, batch, length, init=False)
            with unrolled.context(), _relative_scores(relative_fn):
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
        peak = xla_peak_bytes(self.compiled)
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


def xla_peak_bytes(compiled) -> int | None:
    """XLA's estimate of the step's device buffers: arguments + outputs + temporaries - donated aliases."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes


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


# --- the same-run comparison with the reference -------------------------------------------------------------


def serve_setup(case: str, dtype: str):
    """Child side of the comparison: our compiled step on the case's batch, with what the table reports."""
    size, batch, length = CASES[case]
    overrides = (("model.dtype", dtype),)
    step = Case(case, size, batch, length, overrides, count_unrolled=False)
    matmul = Matmul(1024)

    def run():
        step.state, step.metrics = step.compiled(step.state, step.arrays, step.book)
        jax.block_until_ready((step.state, step.metrics))

    info = {"implementation": "ours (JAX)", "jax": jax.__version__, "dtype": dtype, "params": step.params,
            "compile_s": step.lower_s + step.compile_s, "xla_peak_bytes": xla_peak_bytes(step.compiled),
            "max_rss_after_compile_bytes": max_rss_bytes(), "matmul_gflops_per_cpu_s": matmul.gflops()[1],
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    return run, info


def _child_env(isa: str) -> dict[str, str]:
    env = dict(ISA_ENV[isa])
    if "XLA_FLAGS" in env:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + env["XLA_FLAGS"]).strip()
    return env


def compare(case: str, isa: str, steps: int, dtype: str, sequential: bool = False) -> dict[str, Any]:
    """Reference and ours in two children under `isa`, warmed up, then `steps` steps each alternated; medians.

    sequential: one child at a time (the reference's steps, then ours), for shapes where both children do not
    fit in memory together (base on a 24 GB machine); still one run on one machine, but load changes between
    the two halves are not shared, so the load average is recorded for each."""
    env = {**_child_env(isa), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    here = pathlib.Path(__file__).resolve().parent
    commands = {"reference": [sys.executable, str(here / "bench_reference.py"), "--serve", "--size", case],
                "ours": [sys.executable, str(here / "bench_pretrain.py"), "--serve", case, "--dtype", dtype]}
    workers, ready, rss, loads = {}, {}, {}, {}
    if sequential:
        for name, command in commands.items():
            worker = workers[name] = Worker(name, command, env)
            ready[name] = worker.wait_ready()
            print(f"  {case} {isa}: {name} ready; timing {steps} steps", flush=True)
            for i in range(steps):
                print(f"    step {i + 1}/{steps}: {name} {worker.step()['step_s']:.2f} s", flush=True)
            loads[name] = os.getloadavg()
            rss[name] = worker.quit()["max_rss_bytes"]
    else:
        workers = {name: Worker(name, command, env) for name, command in commands.items()}
        ready = {name: worker.wait_ready() for name, worker in workers.items()}
        print(f"  {case} {isa}: both sides ready (ours compiled in {ready['ours']['compile_s']:.0f} s); "
              f"timing {steps} alternated steps each", flush=True)
        for i in range(steps):
            ref_s, ours_s = workers["reference"].step()["step_s"], workers["ours"].step()["step_s"]
            print(f"    step {i + 1}/{steps}: reference {ref_s:.2f} s, ours {ours_s:.2f} s", flush=True)
        rss = {name: worker.quit()["max_rss_bytes"] for name, worker in workers.items()}
    _, batch, length = CASES[case]
    out: dict[str, Any] = {"size": case, "isa": isa, "batch": batch, "length": length, "env": ISA_ENV[isa],
                           "mode": "sequential" if sequential else "alternated", "load_average": os.getloadavg()}
    if sequential:
        out["load_average_after"] = loads
    for name, worker in workers.items():
        times = [s["step_s"] for s in worker.steps]
        out[name] = {**ready[name], "step_s": statistics.median(times), "step_times_s": times,
                     "cpu_s_per_step": statistics.median(s["cpu_s"] for s in worker.steps),
                     "tokens_per_s": batch * length / statistics.median(times), "max_rss_bytes": rss[name]}
    out["speedup"] = out["reference"]["step_s"] / out["ours"]["step_s"]
    out["target_met"] = bool(out["speedup"] >= TARGET_SPEEDUP)
    return out


def _gb(x) -> str:
    return "    n/a" if x is None else f"{x / 1e9:7.2f}"


COMPARE_HEADER = (f"{'size':5s} {'isa':6s} {'ref s/step':>10s} {'ours s/step':>11s} {'ratio':>6s} "
                  f"{'ref cpu-s':>9s} {'our cpu-s':>9s} "
                  f"{'ref RSS GB':>10s} {'our RSS GB':>10s} {'our XLA GB':>10s} {'ref mm GF/cpu-s':>15s} "
                  f"{'our mm GF/cpu-s':>15s}")


def _compare_row(r: dict[str, Any]) -> str:
    ref, ours = r["reference"], r["ours"]
    return (f"{r['size']:5s} {r['isa']:6s} {ref['step_s']:10.2f} {ours['step_s']:11.2f} {r['speedup']:5.2f}x "
            f"{ref['cpu_s_per_step']:9.1f} {ours['cpu_s_per_step']:9.1f} "
            f"{_gb(ref['max_rss_bytes']):>10s} {_gb(ours['max_rss_bytes']):>10s} {_gb(ours['xla_peak_bytes']):>10s} "
            f"{ref['matmul_gflops_per_cpu_s']:15.1f} {ours['matmul_gflops_per_cpu_s']:15.1f}")


def ablate(size: str, steps: int, result: dict[str, Any]) -> None:
    """Our step and its variants in this process, round robin, with FLOP counts and rates (first size only)."""
    model_size, batch, length = CASES[size]
    matmul = Matmul()
    cases = [Case(size, model_size, batch, length)]
    for name, overrides in ABLATIONS.items():
        function = unblocked_relative_key_query_scores if name == "unblocked_relative" else None
        cases.append(Case(f"{size} {name}", model_size, batch, length, overrides, function, count_unrolled=False))
    print(f"{size}: compiled {len(cases)} step(s) in {sum(c.compile_s for c in cases):.0f} s; timing", flush=True)
    time_round_robin(cases, steps, matmul)
    runs = [c.result() for c in cases]
    result["ablations"] = runs
    result["masking_only_s"] = bench_masking(batch, length)
    wall, cpu = matmul.gflops()
    result["matmul"] = {"n": matmul.n, "dtype": "float32", "gflops_end": wall, "gflops_per_cpu_second_end": cpu}
    print(HEADER)
    for run in runs:
        print(_row(run))
    print("(GF: GFLOP per step, analytic / XLA on the unrolled step / XLA on the compiled scanned step, which "
          "counts the layer loop once; GFLOP/s from the analytic count; /matmul: median over the steps of "
          "GFLOP/s over a 2048^3 float32 matmul timed just before and after each step; /mm cpu: the same per "
          "CPU second of this process, which other processes' load hardly changes; cores: CPU s / wall s of a step)")
    print(f"masking (top-k + corruption) alone: {result['masking_only_s'] * 1e3:.1f} ms per step")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated sizes from " + ",".join(CASES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and case (after one warm-up)")
    parser.add_argument("--isa", default="native,avx2", help="comma-separated ISA settings from " + ",".join(ISA_ENV))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="our compute dtype")
    parser.add_argument("--ablate", action="store_true", help="also time variants of our step on the first size")
    parser.add_argument("--sequential", default="",
                        help="comma-separated sizes compared one side at a time (the reference's steps, then ours) "
                             "instead of alternated: for shapes whose two children do not fit in memory together")
    parser.add_argument("--serve", metavar="SIZE", help=argparse.SUPPRESS)  # child mode of the comparison
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pretrain.json"))
    args = parser.parse_args(argv)
    if args.serve:
        return serve(lambda: serve_setup(args.serve, args.dtype))

    cpu = cpu_info()
    result: dict[str, Any] = {
        "cpu": cpu,
        "host": {"machine": platform.machine(), "load_average_start": os.getloadavg()},
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "dtype": args.dtype,
        "comparisons": [],
    }
    print(f"CPU: {describe(cpu)}; load {os.getloadavg()[0]:.1f}", flush=True)
    sizes = [s for s in args.sizes.split(",") if s]
    for isa in [i for i in args.isa.split(",") if i]:
        for size in sizes:
            row = compare(size, isa, args.steps, args.dtype, sequential=size in args.sequential.split(","))
            result["comparisons"].append(row)
            print(_compare_row(row), flush=True)
            write_results(args.out, result)  # after every row, so that a killed run keeps what it measured
    if args.ablate:
        ablate(sizes[0], args.steps, result)
    result["host"]["load_average_end"] = os.getloadavg()

    print()
    print(f"CPU: {describe(cpu)}")
    print(COMPARE_HEADER)
    for row in result["comparisons"]:
        print(_compare_row(row))
    print(f"(ratio: reference s/step / ours, medians of {args.steps} alternated steps each; cpu-s: CPU seconds of a "
          "step (median; threads that spin-wait while other processes hold the cores inflate it); RSS: each child's "
          "ru_maxrss; our XLA GB: XLA's buffer estimate of the step; mm GF/cpu-s: each child's float32 1024^3 "
          "matmul per CPU second, showing whether the ISA cap reached its matmul library; target >= "
          f"{TARGET_SPEEDUP:g}x)")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
