"""The Octuple BERT model: encoder, heads and the composed models (see models.py for the API)."""

from midibert_jax.model.encoder import EncoderSpec, OctupleEncoder, default_attention_mask
from midibert_jax.model.models import (
    PretrainModel,
    SequenceClassifier,
    TokenClassifier,
    build_encoder,
    build_pretrain_model,
    build_sequence_classifier,
    build_token_classifier,
    encoder_spec,
    example_tokens,
)

__all__ = [
    "EncoderSpec",
    "OctupleEncoder",
    "PretrainModel",
    "SequenceClassifier",
    "TokenClassifier",
    "build_encoder",
    "build_pretrain_model",
    "build_sequence_classifier",
    "build_token_classifier",
    "default_attention_mask",
    "encoder_spec",
    "example_tokens",
]
