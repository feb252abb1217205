"""Heads on the encoder's last hidden state h [B, L, E] (REFERENCE.md §5.1).

All use PyTorch's default Linear init, as the reference's custom modules do, and return float32.

* Recoverer (MLM): 8 x Linear(E -> vocab_f), no transform, no tying -> tuple of 8 [B, L, vocab_f].
* MaskerHead: Dropout -> Linear(E, 256) -> ReLU -> Linear(256, 1) -> sigmoid -> [B, L] in (0, 1).
* TokenHead: Dropout -> Linear(E, 256) -> ReLU -> Linear(256, C) -> [B, L, C].
* SequenceHead: structured self-attention pooling (Lin et al. 2017): A = softmax_L(W2 tanh(W1 h)),
  [B, L, r]; M = A^T h, [B, r, E], flattened row-major to [B, r * E]; then Linear(r * E, 256) -> ReLU
  -> Linear(256, C) -> [B, C]. No dropout (as the reference). PAD rows are excluded from the softmax
  unless `include_pads` (the reference's behaviour).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from midibert_jax.model import layers
from midibert_jax.model.embedding import FIELD_KEYS


def _linear(features: int, names, fan_in: int, dtype: Any, name: str, use_bias: bool = True) -> nn.DenseGeneral:
    return layers.dense(features, names, torch_fan_in=fan_in, use_bias=use_bias, dtype=dtype, name=name)


class Recoverer(nn.Module):
    """h [B, L, E] -> tuple of 8 logits [B, L, vocab_f] float32, fields in column order."""

    vocab_sizes: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
        fan_in = h.shape[-1]
        return tuple(
            layers.constrain(
                _linear(size, ("embed", "vocab"), fan_in, self.dtype, key)(h).astype(jnp.float32),
                ("batch", "length", "vocab"),
            )
            for key, size in zip(FIELD_KEYS, self.vocab_sizes)
        )


class MaskerHead(nn.Module):
    """h [B, L, E] -> masking scores [B, L] float32 in (0, 1)."""

    hidden: int = 256
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        h = layers.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = nn.relu(_linear(self.hidden, ("embed", "head_mlp"), h.shape[-1], self.dtype, "hidden")(h))
        logit = _linear(1, ("head_mlp", None), self.hidden, self.dtype, "score")(h)[..., 0]
        return jax.nn.sigmoid(logit.astype(jnp.float32))


class TokenHead(nn.Module):
    """h [B, L, E] -> per-note class logits [B, L, num_classes] float32."""

    num_classes: int
    hidden: int = 256
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        h = layers.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = nn.relu(_linear(self.hidden, ("embed", "head_mlp"), h.shape[-1], self.dtype, "hidden")(h))
        logits = _linear(self.num_classes, ("head_mlp", "classes"), self.hidden, self.dtype, "logits")(h)
        return logits.astype(jnp.float32)


class SequenceHead(nn.Module):
    """h [B, L, E], mask [B, L] bool -> sequence class logits [B, num_classes] float32."""

    num_classes: int
    attention_hidden: int = 128
    attention_heads: int = 4
    hidden: int = 256
    include_pads: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        embed = h.shape[-1]
        ws1 = _linear(self.attention_hidden, ("embed", "pool_hidden"), embed, self.dtype, "pool_hidden", False)
        ws2 = _linear(
            self.attention_heads, ("pool_hidden", "pool_heads"), self.attention_hidden, self.dtype, "pool_scores", False
        )
        a = ws2(jnp.tanh(ws1(h)))
        a = a.astype(jnp.float32)  # [B, L, r]
        if not self.include_pads:
            a = jnp.where(mask[..., None], a, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(a, axis=1)  # over positions
        pooled = jnp.einsum("blr,ble->bre", weights, h.astype(jnp.float32))
        flat = self.attention_heads * embed  # row-major [r, E] -> r * E, as torch's view(B, -1)
        pooled = pooled.reshape(pooled.shape[0], flat).astype(self.dtype)
        x = nn.relu(_linear(self.hidden, ("pool_flat", "head_mlp"), flat, self.dtype, "hidden")(pooled))
        logits = _linear(self.num_classes, ("head_mlp", "classes"), self.hidden, self.dtype, "logits")(x)
        return logits.astype(jnp.float32)
