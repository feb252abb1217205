"""The composed models every trainer uses, and builders that read the model config.

Parameter trees (top-level keys are stable, so trainers can give each group its own optimizer
and fine-tuning can take 'encoder' from a pre-training or imported checkpoint):

  OctupleEncoder      {'embed', 'layers' | 'layer_<i>'}
  PretrainModel       {'encoder', 'recoverer', 'masker', ['masker_encoder']}
  TokenClassifier     {'encoder', 'token_head'}
  SequenceClassifier  {'encoder', 'sequence_head'}

Apply signatures (tokens [B, L, 8] int32; attention_mask [B, L] bool, None -> Bar != PAD, pass the
*clean* input's mask when tokens are corrupted; dropout needs rngs={'dropout': key} when
deterministic=False):

  PretrainModel.apply(v, tokens, attention_mask, deterministic=..., method='recover')
      -> tuple of 8 float32 logits [B, L, vocab_f] (column order Bar..Tempo)
  PretrainModel.apply(v, tokens, attention_mask, deterministic=..., method='mask_scores')
      -> float32 [B, L] in (0, 1), one masking score per note
  PretrainModel.apply(v, tokens, attention_mask, deterministic=...)          -> (logits, scores)
  TokenClassifier.apply(v, tokens, attention_mask, deterministic=...)        -> float32 [B, L, C]
  SequenceClassifier.apply(v, tokens, attention_mask, deterministic=...)     -> float32 [B, C]
  OctupleEncoder.apply(v, tokens, attention_mask, deterministic=...)         -> [B, L, hidden] (dtype)

With masker.mode == 'shared' (the reference) the masker runs on the recoverer's encoder (same
parameters, a second forward pass on the clean input); with 'separate' it has its own encoder.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from midibert_jax.model.encoder import EncoderSpec, OctupleEncoder, default_attention_mask
from midibert_jax.model.heads import MaskerHead, Recoverer, SequenceHead, TokenHead
from midibert_jax.tokenizer import vocab

MASKER_MODES = ("shared", "separate")


def _mask(tokens, attention_mask):
    return default_attention_mask(tokens) if attention_mask is None else attention_mask.astype(bool)


class PretrainModel(nn.Module):
    """Encoder + recoverer (8 MLM projections) + masker (shared encoder or its own)."""

    encoder_spec: EncoderSpec
    masker_spec: EncoderSpec | None = None  # None: the masker shares the encoder
    head_hidden: int = 256
    head_dropout: float = 0.1

    def setup(self):
        self.encoder = OctupleEncoder(self.encoder_spec)
        self.recoverer = Recoverer(tuple(self.encoder_spec.vocab_sizes), dtype=jnp.dtype(self.encoder_spec.dtype))
        masker_dtype = jnp.dtype((self.masker_spec or self.encoder_spec).dtype)
        self.masker = MaskerHead(self.head_hidden, self.head_dropout, dtype=masker_dtype)
        if self.masker_spec is not None:
            self.masker_encoder = OctupleEncoder(self.masker_spec)

    def recover(self, tokens, attention_mask=None, *, deterministic: bool) -> tuple[jnp.ndarray, ...]:
        """tokens [B, L, 8] -> 8 logits [B, L, vocab_f] float32."""
        h = self.encoder(tokens, _mask(tokens, attention_mask), deterministic=deterministic)
        return self.recoverer(h)

    def mask_scores(self, tokens, attention_mask=None, *, deterministic: bool) -> jnp.ndarray:
        """tokens [B, L, 8] -> scores [B, L] float32 in (0, 1)."""
        encoder = self.encoder if self.masker_spec is None else self.masker_encoder
        h = encoder(tokens, _mask(tokens, attention_mask), deterministic=deterministic)
        return self.masker(h, deterministic=deterministic)

    def __call__(self, tokens, attention_mask=None, *, deterministic: bool):
        """Both outputs on the same tokens: (logits tuple, scores). Used by init."""
        return (
            self.recover(tokens, attention_mask, deterministic=deterministic),
            self.mask_scores(tokens, attention_mask, deterministic=deterministic),
        )


class TokenClassifier(nn.Module):
    """Encoder + token head: tokens [B, L, 8] -> logits [B, L, num_classes] float32."""

    encoder_spec: EncoderSpec
    num_classes: int
    head_hidden: int = 256
    head_dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, attention_mask=None, *, deterministic: bool) -> jnp.ndarray:
        h = OctupleEncoder(self.encoder_spec, name="encoder")(
            tokens, _mask(tokens, attention_mask), deterministic=deterministic
        )
        dtype = jnp.dtype(self.encoder_spec.dtype)
        head = TokenHead(self.num_classes, self.head_hidden, self.head_dropout, dtype=dtype, name="token_head")
        return head(h, deterministic=deterministic)


class SequenceClassifier(nn.Module):
    """Encoder + self-attention pooling head: tokens [B, L, 8] -> logits [B, num_classes] float32."""

    encoder_spec: EncoderSpec
    num_classes: int
    attention_hidden: int = 128
    attention_heads: int = 4
    head_hidden: int = 256
    include_pads: bool = False

    @nn.compact
    def __call__(self, tokens, attention_mask=None, *, deterministic: bool) -> jnp.ndarray:
        mask = _mask(tokens, attention_mask)
        h = OctupleEncoder(self.encoder_spec, name="encoder")(tokens, mask, deterministic=deterministic)
        head = SequenceHead(
            self.num_classes,
            self.attention_hidden,
            self.attention_heads,
            self.head_hidden,
            self.include_pads,
            dtype=jnp.dtype(self.encoder_spec.dtype),
            name="sequence_head",
        )
        return head(h, mask)


# ----------------------------------------------------------------------------- builders from the config


def encoder_spec(config: ml_collections.ConfigDict, *, masker: bool = False) -> EncoderSpec:
    """The EncoderSpec of the main encoder, or (masker=True) of the separate masker encoder."""
    sizes = config.masker if masker else config
    return EncoderSpec(
        num_layers=sizes.num_layers,
        hidden_size=sizes.hidden_size,
        num_heads=sizes.num_heads,
        mlp_dim=sizes.mlp_dim,
        field_embed_dim=config.field_embed_dim,
        vocab_sizes=tuple(vocab.VOCAB_SIZES),
        max_len=config.max_len,
        position_embedding=config.position_embedding,
        rope_max_wavelength=config.rope_max_wavelength,
        dropout_rate=config.dropout_rate,
        attention_dropout_rate=config.attention_dropout_rate,
        layer_norm_eps=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        remat=config.remat,
        scan_layers=config.scan_layers,
        fused_attention=config.fused_attention,
    )


def build_encoder(config: ml_collections.ConfigDict) -> OctupleEncoder:
    return OctupleEncoder(encoder_spec(config))


def build_pretrain_model(config: ml_collections.ConfigDict) -> PretrainModel:
    mode = config.masker.mode
    if mode not in MASKER_MODES:
        raise ValueError(f"masker.mode must be one of {MASKER_MODES}, got {mode!r}")
    return PretrainModel(
        encoder_spec(config),
        encoder_spec(config, masker=True) if mode == "separate" else None,
        head_hidden=config.head_hidden,
        head_dropout=config.head_dropout,
    )


def build_token_classifier(config: ml_collections.ConfigDict, num_classes: int) -> TokenClassifier:
    return TokenClassifier(encoder_spec(config), num_classes, config.head_hidden, config.head_dropout)


def build_sequence_classifier(config: ml_collections.ConfigDict, num_classes: int) -> SequenceClassifier:
    p = config.sequence_pooling
    return SequenceClassifier(
        encoder_spec(config), num_classes, p.attention_hidden, p.attention_heads, config.head_hidden, p.include_pads
    )


def build_classifier(config: ml_collections.ConfigDict, task) -> TokenClassifier | SequenceClassifier:
    """TokenClassifier (`task.level` 'note') or SequenceClassifier ('sequence') with `task.num_classes` outputs."""
    if task.level == "note":
        return build_token_classifier(config, task.num_classes)
    return build_sequence_classifier(config, task.num_classes)


def example_tokens(batch: int, length: int) -> jnp.ndarray:
    """[batch, length, 8] int32 of EOS rows: a valid, fully attended input for init and eval_shape."""
    return jnp.broadcast_to(jnp.asarray(vocab.EOS_ROW, jnp.int32), (batch, length, vocab.NUM_FIELDS))
