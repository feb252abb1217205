"""Train states born sharded, shared by the pre-training and fine-tuning trainers.

    abstract, shardings, init_state = abstract_train_state(config, model, tx, mesh, rules)
    state = jax.jit(init_state, static_argnums=0, out_shardings=shardings)(config.seed)

(Moved out of train/pretrain.py unchanged; `create` lets a trainer use its own state type.)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from midibert_jax import sharding
from midibert_jax.tokenizer import vocab
from midibert_jax.train.state import TrainState


def replicated(mesh) -> jax.sharding.NamedSharding:
    """The fully replicated sharding over `mesh` (metrics, scalars, small tables)."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_train_state(config, model, tx, mesh, rules, create: Callable[..., Any] | None = None):
    """(abstract train state with a sharding on every leaf, their shardings, init function).

    The state is traced once with boxed (logically annotated) parameters: optax builds its
    moments with the same boxes, so every parameter-shaped leaf gets its parameter's sharding
    and the rest (step, counts, rng, field weights) is replicated.

    Args:
      config: the run config (reads `seed`, `model.max_len`).
      model: a Flax module whose `init(rngs, tokens [1, L, 8], deterministic=True)` gives its params.
      tx: the optax transformation.
      mesh, rules: the device mesh and logical axis rules.
      create: `create(params=..., tx=..., seed=...)` -> state; default `TrainState.create`.
    """
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    create = create or TrainState.create
    tokens = jnp.broadcast_to(jnp.asarray(vocab.PAD_ROW), (1, config.model.max_len, vocab.NUM_FIELDS))

    def init_state(seed: int, boxed: bool = False):
        params = model.init({"params": jax.random.fold_in(jax.random.key(seed), 1)}, tokens, deterministic=True)
        params = params["params"] if boxed else nn.unbox(params["params"])
        return create(params=params, tx=tx, seed=seed)

    with sharding.activate(mesh, rules):
        boxed = jax.eval_shape(lambda: init_state(config.seed, boxed=True))
        plain = jax.eval_shape(lambda: init_state(config.seed))
    shardings = sharding.shardings_of(boxed, mesh, rules)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), plain, shardings
    )
    return abstract, shardings, init_state


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
