"""BERT self-attention with selectable position handling and key padding mask.

    x [B, L, E] -> q, k, v [B, L, H, D]
    scores = q.k  (+ relative key-query terms, before the scaling) ; / sqrt(D)
    + float32 min on PAD keys ; softmax (float32) ; dropout ; . v -> out projection [B, L, E]

Queries at PAD rows are computed like any other row (as HF BERT does); only keys are masked.
'relative_key_query' uses a per-layer [2 * max_len - 1, D] distance table and the skewed matmuls of
`positions.py`. 'rope' rotates q and k; 'absolute' adds nothing here (the embedding adds positions).
For 'absolute' / 'rope' with no attention dropout in effect, `fused=True` calls
jax.nn.dot_product_attention, which lowers to cuDNN flash attention on GPU.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from midibert_jax.model import layers, positions

POSITION_TYPES = ("relative_key_query", "absolute", "rope")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def dropout_attend(probs: jnp.ndarray, keep: jnp.ndarray, v: jnp.ndarray, scale: float) -> jnp.ndarray:
    """(probs * keep * scale) . v: probs [B, H, L, R] float32, keep bool like probs, v [B, R, H, D].

    The backward pass recomputes the dropped probabilities from probs (kept anyway for the softmax
    gradient) and the bool mask, so the only [B, H, L, R] residuals per layer are probs and keep.
    """
    dropped = jnp.where(keep, probs * scale, 0.0).astype(v.dtype)
    return jnp.einsum("bhlr,brhd->blhd", dropped, v)


def _dropout_attend_fwd(probs, keep, v, scale):
    return dropout_attend(probs, keep, v, scale), (probs, keep, v)


def _dropout_attend_bwd(scale, res, g):
    probs, keep, v = res
    dropped = jnp.where(keep, probs * scale, 0.0).astype(v.dtype)
    d_v = jnp.einsum("bhlr,blhd->brhd", dropped, g.astype(v.dtype))
    d_dropped = jnp.einsum("blhd,brhd->bhlr", g, v, preferred_element_type=jnp.float32)
    d_probs = jnp.where(keep, d_dropped * scale, 0.0).astype(probs.dtype)
    return d_probs, None, d_v.astype(v.dtype)


dropout_attend.defvjp(_dropout_attend_fwd, _dropout_attend_bwd)


class SelfAttention(nn.Module):
    """x [batch, length, embed], mask [batch, length] bool (True = attend) -> [batch, length, embed]."""

    num_heads: int
    max_len: int
    position_embedding: str = "relative_key_query"
    rope_max_wavelength: float = 10000.0
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    fused: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        if self.position_embedding not in POSITION_TYPES:
            raise ValueError(f"position_embedding must be one of {POSITION_TYPES}, got {self.position_embedding!r}")
        embed = x.shape[-1]
        if embed % self.num_heads:
            raise ValueError(f"hidden size {embed} is not divisible by {self.num_heads} heads")
        head_dim = embed // self.num_heads

        def projection(name):
            return layers.dense(
                (self.num_heads, head_dim),
                ("embed", "heads", "kv"),
                stddev=self.initializer_range,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        qkv_names = ("batch", "length", "heads", "kv")
        q = layers.constrain(projection("query")(x), qkv_names)
        k = layers.constrain(projection("key")(x), qkv_names)
        v = layers.constrain(projection("value")(x), qkv_names)

        if self.position_embedding == "rope":
            q = positions.rotary(q, self.rope_max_wavelength)
            k = positions.rotary(k, self.rope_max_wavelength)

        use_dropout = not deterministic and self.attention_dropout_rate > 0
        if self.position_embedding != "relative_key_query" and self.fused and not use_dropout:
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask[:, None, None, :], scale=1.0 / math.sqrt(head_dim)
            )
        else:
            scores = jnp.einsum("blhd,brhd->bhlr", q, k, preferred_element_type=jnp.float32)
            if self.position_embedding == "relative_key_query":
                table = self.param(
                    "distance",
                    layers.boxed(nn.initializers.normal(self.initializer_range), ("relpos", "kv")),
                    (2 * self.max_len - 1, head_dim),
                    self.param_dtype,
                )
                scores = scores + positions.relative_key_query_scores(q, k, table, self.max_len)
            scores = scores / math.sqrt(head_dim)
            # Additive key mask (as BERT's extended mask): unlike a select, it leaves no [B, H, L, L] residual.
            bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
            probs = layers.softmax(scores + bias[:, None, None, :])
            if use_dropout:
                keep = layers.dropout_keep(self.make_rng("dropout"), self.attention_dropout_rate, probs.shape)
                out = dropout_attend(probs, keep, v, 1.0 / (1.0 - self.attention_dropout_rate))
            else:
                out = jnp.einsum("bhlr,brhd->blhd", probs.astype(v.dtype), v)
        out = layers.constrain(out, qkv_names)
        out = layers.dense(
            embed,
            ("heads", "kv", "embed"),
            n_in=2,
            stddev=self.initializer_range,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)
        return layers.constrain(out, ("batch", "length", "embed"))
