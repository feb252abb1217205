"""The yardstick of every FLOP/s figure in benchmarks/: a jitted n x n x n matmul timed in the same run."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


class Matmul:
    """A jitted n x n x n matmul (float32 unless told); `gflops()` times `reps` of them (median).

    Timed next to each measurement, so that a ratio to it survives a shared machine's changing load.
    """

    def __init__(self, n: int = 2048, dtype=jnp.float32):
        self.n, self.dtype = n, jnp.dtype(dtype)
        self.a = jax.random.normal(jax.random.key(0), (n, n), self.dtype)
        self.b = jax.random.normal(jax.random.key(1), (n, n), self.dtype)
        self.f = jax.jit(jnp.dot)
        self.f(self.a, self.b).block_until_ready()

    def gflops(self, reps: int = 5) -> tuple[float, float]:
        """(GFLOP per wall second, GFLOP per CPU second of this process), medians over `reps` matmuls."""
        wall, cpu = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            self.f(self.a, self.b).block_until_ready()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        flops = 2 * self.n**3 / 1e9
        return flops / float(np.median(wall)), flops / float(np.median(cpu))
