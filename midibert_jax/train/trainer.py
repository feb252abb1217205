"""What both objectives build once per run: mesh, rules, the state born sharded, batch placement, jitted steps.

    trainer = Trainer(config, model, tx, batch_ranks={"tokens": 3, "index": 1}, extras=..., groups=...)
    state = trainer.init_state()
    step = trainer.jit_train_step(train_step, ("tokens", "index"))       # explicit shardings, state donated
    state, metrics = step(state, trainer.put_batch(batch, ("tokens", "index")))

An objective (train/pretrain.py, train/finetune.py) subclasses it with its model, steps and keys.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from midibert_jax import sharding
from midibert_jax.train import sharded_state
from midibert_jax.train.state import TrainState


def replicated(mesh) -> jax.sharding.NamedSharding:
    """The fully replicated sharding over `mesh` (metrics, scalars, small tables)."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def compile_stats(compiled) -> dict[str, Any]:
    """FLOPs and memory per device of an AOT-compiled step (`jit(...).lower(...).compile()`)."""
    report: dict[str, Any] = {}
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    report["flops_per_step"] = float((cost or {}).get("flops", float("nan")))
    mem = compiled.memory_analysis()
    if mem is not None:
        for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                     "generated_code_size_in_bytes", "alias_size_in_bytes"):
            report[name] = int(getattr(mem, name, 0))
        report["peak_bytes_estimate"] = (
            report["argument_size_in_bytes"] + report["output_size_in_bytes"]
            + report["temp_size_in_bytes"] - report["alias_size_in_bytes"]
        )
    return report


class Trainer:
    """Mesh, logical rules, model, optimiser, the abstract state with its shardings, batch shardings.

    Args:
      config: the run config (reads `mesh`, `model`, `seed`, `model.max_len`).
      model: the Flax module; tx: the optax transformation.
      batch_ranks: batch key -> rank of its array (tokens 3, labels 2 or 1, index 1, ...).
      extras: () -> the state's extras at step 0 (traced with the state).
      groups: the parameter groups the model must have.
      mesh, rules: default from the config.
    """

    def __init__(self, config, model, tx, *, batch_ranks: Mapping[str, int],
                 extras: Callable[[], dict[str, Any]] | None = None, groups: Sequence[str] = (), mesh=None, rules=None):
        self.config = config
        self.model, self.tx = model, tx
        self.mesh = mesh or sharding.make_mesh(config.mesh)
        self.rules = rules or sharding.logical_rules(config.model)

        def create(*, params, tx, seed):
            return TrainState.create(params=params, tx=tx, seed=seed, extras=extras() if extras else None,
                                     groups=tuple(groups))

        self.abstract_state, self.state_shardings, self._init_state = sharded_state.abstract_train_state(
            config, model, tx, self.mesh, self.rules, create=create
        )
        self.batch_shardings = {k: sharding.batch_sharding(self.mesh, self.rules, r) for k, r in batch_ranks.items()}
        self.replicated = replicated(self.mesh)

    def activate(self):
        """The context in which the steps run: this mesh and these logical rules."""
        return sharding.activate(self.mesh, self.rules)

    @functools.cached_property
    def _jit_init(self):
        return jax.jit(self._init_state, static_argnums=0, out_shardings=self.state_shardings)

    def init_state(self) -> TrainState:
        """A fresh state (random parameters from `config.seed`), born sharded."""
        with self.activate():
            return self._jit_init(self.config.seed)

    def jit_train_step(self, step: Callable, keys: Sequence[str], extra_shardings: Sequence[Any] = ()):
        """jit of `step(state, batch, *extra) -> (state, metrics)`: state sharded and donated, metrics replicated."""
        return jax.jit(
            step,
            in_shardings=(self.state_shardings, {k: self.batch_shardings[k] for k in keys}, *extra_shardings),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=(0,),
        )

    def jit_eval_step(self, step: Callable, keys: Sequence[str]):
        """jit of `step(params, batch) -> outputs`, outputs replicated."""
        return jax.jit(
            step,
            in_shardings=(self.state_shardings.params, {k: self.batch_shardings[k] for k in keys}),
            out_shardings=self.replicated,
        )

    def put_batch(self, batch: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict[str, jax.Array]:
        """This process' rows -> global arrays sharded over the batch axes (int32; `valid` bool, all true if absent)."""
        arrays = {}
        for k in keys:
            if k == "valid":
                arrays[k] = np.asarray(batch[k], bool) if k in batch else np.ones(len(batch["tokens"]), bool)
            else:
                arrays[k] = np.asarray(batch[k], np.int32)
        return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], arrays[k]) for k in keys}

    def abstract_batch(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, jax.ShapeDtypeStruct]:
        """int32 ShapeDtypeStructs with the batch shardings, for ahead-of-time compilation."""
        return {k: jax.ShapeDtypeStruct(s, np.int32, sharding=self.batch_shardings[k]) for k, s in shapes.items()}

    def compile(self, jitted, *args) -> tuple[Any, dict[str, Any]]:
        """AOT-compiles `jitted` for `args` (abstract): (compiled, {compile_seconds, FLOPs, memory per device})."""
        t0 = time.perf_counter()
        with self.activate():
            compiled = jitted.lower(*args).compile()
        return compiled, {"compile_seconds": time.perf_counter() - t0, **compile_stats(compiled)}
