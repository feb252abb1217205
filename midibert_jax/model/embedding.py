"""The Octuple input embedding: 8 field lookups -> one hidden vector per note (REFERENCE.md §5.1).

    tokens [B, L, 8] int32
      -> field f: table_f[tokens[..., f]] * sqrt(field_embed_dim)       8 x [B, L, 256]
      -> concatenate (column order Bar..Tempo)                          [B, L, 2048]
      -> in_proj (PyTorch Linear init)                                  [B, L, hidden]
      -> + token_type (BERT's token_type_embeddings[0]; + absolute_position[:L] only for 'absolute')
      -> LayerNorm(eps) -> dropout                                      [B, L, hidden]

The reference feeds the projection to HF BertModel as `inputs_embeds`, so BERT's embedding block
(token-type row 0, LayerNorm, dropout) applies on top; its word table is never used.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from midibert_jax.model import layers
from midibert_jax.tokenizer import vocab

# Parameter names of the per-field tables (and of the recoverer's per-field projections).
FIELD_KEYS = tuple(field.lower() for field in vocab.FIELDS)


class OctupleEmbedding(nn.Module):
    """tokens [batch, length, 8] int32 -> embeddings [batch, length, hidden_size] in `dtype`."""

    vocab_sizes: tuple[int, ...]
    field_embed_dim: int
    hidden_size: int
    max_len: int
    absolute_positions: bool
    dropout_rate: float
    layer_norm_eps: float
    initializer_range: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        if tokens.shape[-1] != len(self.vocab_sizes):
            raise ValueError(f"expected [..., {len(self.vocab_sizes)}] tokens, got {tokens.shape}")
        scale = math.sqrt(self.field_embed_dim)
        pieces = []
        for f, (key, size) in enumerate(zip(FIELD_KEYS, self.vocab_sizes)):
            table = self.param(
                key,
                layers.boxed(nn.initializers.normal(1.0), ("vocab", "field_embed")),  # PyTorch Embedding init
                (size, self.field_embed_dim),
                self.param_dtype,
            )
            pieces.append(jnp.take(table, tokens[..., f], axis=0).astype(self.dtype) * scale)
        x = jnp.concatenate(pieces, axis=-1)  # [B, L, 8 * field_embed_dim]
        x = layers.dense(
            self.hidden_size,
            ("field_embed", "embed"),
            torch_fan_in=x.shape[-1],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="in_proj",
        )(x)
        normal = nn.initializers.normal(self.initializer_range)
        token_type = self.param(
            "token_type", layers.boxed(normal, ("embed",)), (self.hidden_size,), self.param_dtype
        )
        x = x + token_type.astype(self.dtype)
        if self.absolute_positions:
            length = tokens.shape[-2]
            if length > self.max_len:
                raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
            table = self.param(
                "absolute_position",
                layers.boxed(normal, ("length", "embed")),
                (self.max_len, self.hidden_size),
                self.param_dtype,
            )
            x = x + table[:length].astype(self.dtype)
        x = layers.layer_norm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        x = layers.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return layers.constrain(x, ("batch", "length", "embed"))
