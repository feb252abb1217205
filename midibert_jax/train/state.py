"""The typed train state of both objectives: one pytree for parameters, optimiser, RNG and extras."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    Attributes:
      step: int32 scalar, the number of optimiser updates applied.
      params: the objective's parameter groups (pre-training {"encoder", "recoverer", "masker"},
        fine-tuning {"encoder", "token_head" | "sequence_head"}), Flax variable trees.
      opt_state: the optax state of `tx` for `params`.
      rng: uint32 [2] raw key data (checkpoint-friendly); use `step_key()` in the step.
      extras: the objective's other saved arrays (pre-training: {"field_weights": float32 [8]},
        the recoverer's per-field loss weights from the last evaluation; fine-tuning: {}).
      tx: the optax transformation (static, not a pytree leaf, not saved).
    """

    step: jax.Array
    params: dict[str, Any]
    opt_state: optax.OptState
    rng: jax.Array
    extras: dict[str, Any]
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, params: dict[str, Any], tx: optax.GradientTransformation, seed: int | jax.Array,
               extras: dict[str, Any] | None = None, groups: tuple[str, ...] = ()) -> "TrainState":
        """A fresh state: step 0, `tx.init(params)`, a key from `seed`, the given extras.

        Call it under `jax.jit` (or `jax.eval_shape` for the abstract state) so that the optimiser
        state is born with the parameters' shardings. `groups`: parameter groups `params` must have.
        """
        missing = set(groups) - set(params)
        if missing:
            raise ValueError(f"params lack the groups {sorted(missing)}")
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
            extras=dict(extras or {}),
            tx=tx,
        )

    def step_key(self) -> jax.Array:
        """A typed key for this step: fold_in(key(rng), step)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def apply_gradients(self, grads: dict[str, Any]) -> "TrainState":
        """One optimiser update with gradients shaped like `params`; returns the state with step + 1."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)
