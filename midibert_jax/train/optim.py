"""The optimiser: AdamW with global-norm clipping and a constant or warmup + cosine schedule.

The reference (REFERENCE.md §5.2) steps three `transformers.AdamW` (eps 1e-6, weight decay 0.01 on every
parameter, lr 1e-4 constant) and clips the model and the masker separately at 3.0. Here one AdamW covers
the whole parameter tree (encoder, recoverer, masker) after one global-norm clip. optax applies the decay
inside the update (lr · (adam + wd · p)); HF applies it after the Adam step, a second-order difference.

Expected `config.optim` fields (ml_collections.ConfigDict):
  learning_rate (peak), schedule ("constant" | "warmup_cosine"), warmup_steps, total_steps,
  end_learning_rate, b1, b2, eps, weight_decay, grad_clip_norm (0 disables clipping),
  decay_bias_and_norm (True = decay every parameter, as the reference; False = only parameters with
  ndim >= 2).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

SCHEDULES = ("constant", "warmup_cosine")


def make_schedule(cfg: Any) -> optax.Schedule:
    """The learning-rate schedule: step (int) -> learning rate (float scalar)."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.learning_rate)
    if cfg.schedule == "warmup_cosine":
        if cfg.total_steps <= cfg.warmup_steps:
            raise ValueError(f"optim.total_steps ({cfg.total_steps}) must exceed warmup_steps ({cfg.warmup_steps})")
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=cfg.learning_rate,
            warmup_steps=cfg.warmup_steps,
            decay_steps=cfg.total_steps,
            end_value=cfg.end_learning_rate,
        )
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def decay_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True for parameters with ndim >= 2 (not biases or norm scales)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule) from `config.optim`: clip_by_global_norm → AdamW(schedule)."""
    schedule = make_schedule(cfg)
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=None if cfg.decay_bias_and_norm else decay_mask,
    )
    parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
    return optax.chain(*parts, adamw), schedule
