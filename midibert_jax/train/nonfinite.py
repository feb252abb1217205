"""The NaN/Inf guard of the training loop (train/loop.py) and both train steps.

The jitted step returns a finite flag (metric `FLAG`) and leaves its state unchanged when the loss or the
gradients are not finite; the loop checks the flag (one step late, or before a save) with
`check_finite` and stops naming the step and the batch's examples.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax


FLAG = "train/finite"  # the train steps' metric: 1.0 when the step's loss and gradients were finite


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/Inf; the message names the step and the examples."""


def guarded_update(state, loss: jax.Array, grads) -> tuple[Any, jax.Array, jax.Array]:
    """(new state, gradient norm, finite): `state.apply_gradients(grads)`, or `state` itself when the loss
    or the gradients are not finite (inside the jitted step, so a bad batch changes nothing)."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads)
    new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), updated, state)
    return new_state, grad_norm, finite


def check_finite(step: int, indices: np.ndarray, step_metrics: Mapping[str, Any]) -> None:
    """Raises NonFiniteLossError when the step's `FLAG` is False."""
    if not bool(jax.device_get(step_metrics[FLAG])):
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} (batch of examples {np.asarray(indices).tolist()}); "
            "the state was not updated and nothing was saved from this step"
        )
