r"""Optimizer configuration shared by pre-training and fine-tuning (read by midibert_jax/train/optim.py).

AdamW after global-norm clipping, with the reference's settings (eps 1e-6, weight decay 0.01 on every
parameter, clip 3.0); only the learning rate differs between the two (1e-4 and 2e-5 in the reference).
"""

from __future__ import annotations

import ml_collections


def get_optim_config(learning_rate: float, total_steps=0) -> ml_collections.ConfigDict:
    """The `optim` block; `total_steps` may be a FieldReference (pre-training ties it to train.steps)."""
    config = ml_collections.ConfigDict()
    config.learning_rate = learning_rate
    # 'constant' (the reference) or 'warmup_cosine' (warmup_steps linear, then cosine to end_learning_rate).
    config.schedule = "constant"
    config.warmup_steps = 0
    # Steps of the cosine schedule; 0 -> the run's step budget.
    config.total_steps = total_steps
    config.end_learning_rate = 0.0
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-6
    config.weight_decay = 0.01
    # Decay biases and LayerNorm scales too (True, like transformers.AdamW in the reference).
    config.decay_bias_and_norm = True
    config.grad_clip_norm = 3.0
    return config
