r"""Model configuration: the Octuple BERT encoder, its heads and how it is sharded.

Run (inspect a variant):
  python -c "from configs.model import get_model_config; print(get_model_config('base'))"
With ml_collections' config flags:
  --config=configs/model.py:base  (or tiny, large; `base,masker=separate` for a masker with its own tiny encoder)

`base` is the published Adversarial-MidiBERT model (BERT-base, relative key-query positions, L = 1024);
its released PyTorch weights load into it (`midibert-jax import-torch`). Every field is plain data;
the code that reads it is `midibert_jax.model.models.build_*` and `midibert_jax.sharding`.
"""

from __future__ import annotations

import ml_collections

# (num_layers, hidden_size, num_heads, mlp_dim) of each variant.
SIZES = {
    "mini": (4, 128, 4, 512),  # the demo's: a few minutes of pre-training on 2 CPU cores teach it something
    "tiny": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),  # the paper's
    "large": (24, 1024, 16, 4096),
}


def _encoder_sizes(config: ml_collections.ConfigDict, size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    config.num_layers, config.hidden_size, config.num_heads, config.mlp_dim = SIZES[size]


def get_model_config(
    size: str = "base", masker: str = "shared", masker_size: str = "tiny"
) -> ml_collections.ConfigDict:
    """The model config of one variant: `size` in tiny|base|large; `masker` in shared|separate."""
    config = ml_collections.ConfigDict()
    # Name of the size variant (informational; the numbers below are what the model reads).
    config.size = size
    # Encoder depth, width, attention heads and feed-forward width (set from SIZES[size]).
    config.num_layers = 0
    config.hidden_size = 0
    config.num_heads = 0
    config.mlp_dim = 0
    _encoder_sizes(config, size)
    # Width of each of the 8 per-field embedding tables (the reference's emb_size); lookups are scaled by its sqrt.
    config.field_embed_dim = 64 if size == "mini" else 256
    # Longest sequence (octuples); sets the relative distance table to 2*max_len-1 rows, or the absolute table.
    config.max_len = 1024
    # Position handling: 'relative_key_query' (the reference's, BERT's relative key-query scheme),
    # 'absolute' (a learned table added to the embeddings) or 'rope' (rotary, lets fused attention kernels run).
    config.position_embedding = "relative_key_query"
    # Longest wavelength of the rotary embedding (only for 'rope').
    config.rope_max_wavelength = 10000.0
    # Dropout on the embeddings and after each attention / feed-forward block (BERT's hidden_dropout_prob).
    config.dropout_rate = 0.1
    # Dropout on the attention probabilities (BERT's attention_probs_dropout_prob).
    config.attention_dropout_rate = 0.1
    # LayerNorm epsilon; BERT's 1e-12 is needed for parity with the published weights.
    config.layer_norm_eps = 1e-12
    # Std of the normal init of BERT's own weights (custom modules use PyTorch's default init, as the reference).
    config.initializer_range = 0.02
    # Compute dtype of activations and matmuls: 'float32' or 'bfloat16' (softmax and LayerNorm stats stay float32).
    config.dtype = "float32"
    # Storage dtype of the parameters.
    config.param_dtype = "float32"
    # Rematerialization of each encoder layer: 'none', 'full' (save nothing), 'dots' (save matmul outputs)
    # or 'dots_no_batch' (save only weight-like matmul outputs).
    config.remat = "none"
    # Run the layers as one nn.scan (stacked parameters with a leading 'layers' axis): compiles once per model.
    config.scan_layers = True
    # With 'absolute' or 'rope' and no attention dropout in effect, call jax.nn.dot_product_attention
    # (cuDNN flash attention on GPU); otherwise attention is computed explicitly.
    config.fused_attention = True

    # Width of the hidden layer of the masker, token and sequence heads.
    config.head_hidden = 256
    # Dropout in front of the masker and token heads.
    config.head_dropout = 0.1

    # The masker (one score in (0, 1) per note).
    config.masker = ml_collections.ConfigDict()
    # 'shared': it runs on the recoverer's encoder (the reference); 'separate': it has its own encoder, sized below.
    config.masker.mode = masker
    # Sizes of the separate masker encoder (ignored when shared); other settings follow the main encoder.
    config.masker.num_layers, config.masker.hidden_size, config.masker.num_heads, config.masker.mlp_dim = SIZES[
        masker_size
    ]

    # The sequence classifier's structured self-attention pooling.
    config.sequence_pooling = ml_collections.ConfigDict()
    # Hidden units (da) and attention heads (r) of the pooling; the pooled vector has r*hidden_size entries.
    config.sequence_pooling.attention_hidden = 128
    config.sequence_pooling.attention_heads = 4
    # Reference switch: True lets PAD rows take part in the pooling softmax (as the reference does).
    config.sequence_pooling.include_pads = False

    # Logical axis name -> mesh axis (or axes, or None), in priority order: a mesh axis is used at most once per
    # array, so activations ('batch', 'length', 'embed') shard the batch over data+fsdp and leave 'embed' whole,
    # while parameters shard 'embed' over fsdp (ZeRO-3 style) and heads / mlp over tensor (Megatron style).
    config.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("head_mlp", "tensor"),
        ("length", None),
        ("kv", None),
        ("layers", None),
        ("vocab", None),  # the 8 tables are small and have odd sizes (135, 55): replicate them
        ("field_embed", None),
        ("relpos", None),
        ("pool_hidden", None),
        ("pool_heads", None),
        ("pool_flat", None),
        ("classes", None),
    )
    # Default device mesh: size of each axis, -1 meaning "all remaining devices".
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ml_collections config-flag entry: `size[,masker=shared|separate][,masker_size=tiny]`."""
    parts = (arg or "base").split(",")
    kwargs = dict(p.split("=", 1) for p in parts[1:])
    return get_model_config(parts[0], **kwargs)
