"""Train states born sharded (train/trainer.py builds every run's state with it).

    abstract, shardings, init_state = abstract_train_state(config, model, tx, mesh, rules)
    state = jax.jit(init_state, static_argnums=0, out_shardings=shardings)(config.seed)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from midibert_jax import sharding
from midibert_jax.tokenizer import vocab
from midibert_jax.train.state import TrainState


def abstract_train_state(config, model, tx, mesh, rules, create: Callable[..., Any] | None = None):
    """(abstract train state with a sharding on every leaf, their shardings, init function).

    The state is traced once with boxed (logically annotated) parameters: optax builds its
    moments with the same boxes, so every parameter-shaped leaf gets its parameter's sharding
    and the rest (step, counts, rng, extras) is replicated.

    Args:
      config: the run config (reads `seed`, `model.max_len`).
      model: a Flax module whose `init(rngs, tokens [1, L, 8], deterministic=True)` gives its params.
      tx: the optax transformation.
      mesh, rules: the device mesh and logical axis rules.
      create: `create(params=..., tx=..., seed=...)` -> state; default `TrainState.create` (no extras).
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
