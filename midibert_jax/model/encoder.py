"""The Octuple BERT encoder: embedding + post-LN BERT layers (REFERENCE.md §5.1).

    OctupleEncoder(spec).apply({'params': p}, tokens, attention_mask=None, deterministic=True,
                               rngs={'dropout': key})  -> hidden [B, L, hidden_size] in spec.dtype

tokens [B, L, 8] int32; attention_mask [B, L] bool (True = a real note), defaulting to Bar != PAD.
Pass the mask of the *unmasked* input when the tokens are corrupted (the reference does).

Layer (post-LN, as BERT): x = LN(x + drop(attn(x))); x = LN(x + drop(W2 gelu_erf(W1 x))).
With `scan_layers` the layers are one nn.scan: parameters under 'layers' have a leading
[num_layers] axis (logical name 'layers') and the step compiles once whatever the depth.
`remat` wraps each layer in jax.checkpoint with the named policy.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from midibert_jax.model import layers
from midibert_jax.model.attention import SelfAttention
from midibert_jax.model.embedding import OctupleEmbedding
from midibert_jax.tokenizer import vocab

# remat name -> jax.checkpoint policy (None: no rematerialization at all).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Hyper-parameters of one encoder (hashable, so modules can hold it). Built from the model config."""

    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    mlp_dim: int = 1024
    field_embed_dim: int = 256
    vocab_sizes: tuple[int, ...] = vocab.VOCAB_SIZES
    max_len: int = 1024
    position_embedding: str = "relative_key_query"
    rope_max_wavelength: float = 10000.0
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    fused_attention: bool = True

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")


def default_attention_mask(tokens: jnp.ndarray) -> jnp.ndarray:
    """[B, L] bool: True where the Bar column is not PAD (EOS rows are attended, as in the reference)."""
    return tokens[..., vocab.BAR] != int(vocab.PAD_ROW[vocab.BAR])


def self_attention(spec: EncoderSpec, name: str | None = None) -> SelfAttention:
    """The self-attention block of an encoder layer with these hyper-parameters."""
    return SelfAttention(
        num_heads=spec.num_heads,
        max_len=spec.max_len,
        position_embedding=spec.position_embedding,
        rope_max_wavelength=spec.rope_max_wavelength,
        attention_dropout_rate=spec.attention_dropout_rate,
        initializer_range=spec.initializer_range,
        fused=spec.fused_attention,
        dtype=jnp.dtype(spec.dtype),
        param_dtype=jnp.dtype(spec.param_dtype),
        name=name,
    )


class EncoderLayer(nn.Module):
    """One post-LN BERT layer: (x [B, L, E], mask [B, L]) -> (x [B, L, E], None) (scan carry form)."""

    spec: EncoderSpec
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray):
        s = self.spec
        dtype, param_dtype = jnp.dtype(s.dtype), jnp.dtype(s.param_dtype)
        h = self_attention(s, name="attention")(x, mask, deterministic=self.deterministic)
        h = layers.Dropout(s.dropout_rate)(h, deterministic=self.deterministic)
        x = layers.layer_norm(s.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="attention_norm")(x + h)
        init = dict(stddev=s.initializer_range, dtype=dtype, param_dtype=param_dtype)
        h = layers.dense(s.mlp_dim, ("embed", "mlp"), name="mlp_in", **init)(x)
        h = layers.constrain(layers.gelu(h), ("batch", "length", "mlp"))
        h = layers.dense(s.hidden_size, ("mlp", "embed"), name="mlp_out", **init)(h)
        h = layers.Dropout(s.dropout_rate)(h, deterministic=self.deterministic)
        x = layers.layer_norm(s.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="mlp_norm")(x + h)
        return layers.constrain(x, ("batch", "length", "embed")), None


class OctupleEncoder(nn.Module):
    """tokens [B, L, 8] int32 (+ attention_mask [B, L] bool) -> hidden states [B, L, hidden_size]."""

    spec: EncoderSpec

    @nn.compact
    def __call__(
        self, tokens: jnp.ndarray, attention_mask: jnp.ndarray | None = None, *, deterministic: bool
    ) -> jnp.ndarray:
        s = self.spec
        if attention_mask is None:
            attention_mask = default_attention_mask(tokens)
        attention_mask = attention_mask.astype(bool)
        x = OctupleEmbedding(
            vocab_sizes=tuple(s.vocab_sizes),
            field_embed_dim=s.field_embed_dim,
            hidden_size=s.hidden_size,
            max_len=s.max_len,
            absolute_positions=s.position_embedding == "absolute",
            dropout_rate=s.dropout_rate,
            layer_norm_eps=s.layer_norm_eps,
            initializer_range=s.initializer_range,
            dtype=jnp.dtype(s.dtype),
            param_dtype=jnp.dtype(s.param_dtype),
            name="embed",
        )(tokens, deterministic=deterministic)

        layer_cls = EncoderLayer
        policy = REMAT_POLICIES[s.remat]
        if s.remat != "none":
            layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not s.scan_layers)
        if s.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=s.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(s, deterministic=deterministic, name="layers")(x, attention_mask)
        else:
            for i in range(s.num_layers):
                x, _ = layer_cls(s, deterministic=deterministic, name=f"layer_{i}")(x, attention_mask)
        return x
