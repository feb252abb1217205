"""Unit tests of the model: position maths, masking, layer stacking, heads, dtypes, config.

A micro config keeps compilation cheap; parameters are random numpy values filled into the
eval_shape tree (a real init compiles one RNG kernel per parameter, which is slow on CPU).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from midibert_jax.model import attention, config_io, heads, layers, models, positions
from midibert_jax.model.attention import SelfAttention
from midibert_jax.model.embedding import OctupleEmbedding
from midibert_jax.tokenizer import vocab


def micro_config(**overrides):
    c = config_io.default_model_config("tiny", masker="shared")
    c.num_layers, c.hidden_size, c.num_heads, c.mlp_dim = 2, 32, 4, 64
    c.field_embed_dim, c.max_len, c.head_hidden = 16, 16, 16
    c.masker.num_layers, c.masker.hidden_size, c.masker.num_heads, c.masker.mlp_dim = 1, 16, 2, 32
    c.sequence_pooling.attention_hidden = 8
    for key, value in overrides.items():
        target = c
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return c


def random_params(model, tokens, seed=0, method=None):
    """Random values (N(0, 0.3)) in the shape of model's params, without compiling an init."""
    abstract = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, tokens, deterministic=True, method=method)["params"]
    )
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), nn.unbox(abstract)
    )


def random_tokens(batch, length, seed=0, n_real=None):
    rng = np.random.default_rng(seed)
    tokens = (rng.random((batch, length, 8)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)
    if n_real is not None:
        tokens[:, n_real:] = vocab.PAD_ROW
    return jnp.asarray(tokens)


def run(model, params, tokens, mask=None, *, deterministic=True, rng=None, method=None):
    rngs = None if rng is None else {"dropout": rng}
    return model.apply({"params": params}, tokens, mask, deterministic=deterministic, rngs=rngs, method=method)


run_jit = jax.jit(run, static_argnums=(0,), static_argnames=("deterministic", "method"))


# ----------------------------------------------------------------------------- position maths


@pytest.mark.parametrize("length", [1, 2, 5])
def test_skew_is_the_row_shift(length):
    x = np.arange(length * (2 * length - 1), dtype=np.float32).reshape(length, 2 * length - 1)
    expected = np.array([[x[l, r + length - 1 - l] for r in range(length)] for l in range(length)])
    np.testing.assert_array_equal(positions.skew(jnp.asarray(x)), expected)


def _reference_relative_scores(q, k, table, max_len):
    """The reference: an [L, L, d] tensor of distance rows, contracted with q and with k."""
    length = q.shape[1]
    distance = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    pe = table[distance + max_len - 1]
    return jnp.einsum("blhd,lrd->bhlr", q, pe) + jnp.einsum("brhd,lrd->bhlr", k, pe)


@pytest.mark.parametrize("length,block", [(1, 128), (5, 128), (8, 128), (8, 2), (8, 4), (12, 8), (7, 4)])
def test_relative_scores_match_the_reference_formula(length, block):
    max_len, b, h, d = 12, 2, 3, 4
    rng = np.random.default_rng(length)
    q, k = jnp.asarray(rng.standard_normal((2, b, length, h, d)), jnp.float32)
    table = jnp.asarray(rng.standard_normal((2 * max_len - 1, d)), jnp.float32)
    _grads_agree(
        lambda q_, k_, t: positions.relative_key_query_scores(q_, k_, t, max_len, block=block),
        lambda q_, k_, t: _reference_relative_scores(q_, k_, t, max_len),
        q,
        k,
        table,
    )


def test_relative_blocks_divide_the_length():
    assert positions.block_size(1024) == 128 and positions.block_size(12, 8) == 6
    assert positions.block_size(7, 4) == 7  # no divisor >= 1: one block, the unblocked form
    assert positions.block_size(5) == 5


def test_sequence_longer_than_the_table_is_an_error():
    q = jnp.zeros((1, 9, 1, 2))
    with pytest.raises(ValueError, match="exceeds"):
        positions.relative_key_query_scores(q, q, jnp.zeros((15, 2)), max_len=8)


# ----------------------------------------------------------------------------- hand-written backward passes


def _grads_agree(ours, reference, *args):
    """Values and gradients (of a random projection of the output) of ours == reference."""
    rng = np.random.default_rng(0)
    out = reference(*args)
    w = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    np.testing.assert_allclose(ours(*args), out, rtol=1e-5, atol=1e-6)
    n = len(args)
    g_ours = jax.grad(lambda *a: jnp.sum(ours(*a) * w), argnums=tuple(range(n)))(*args)
    g_ref = jax.grad(lambda *a: jnp.sum(reference(*a) * w), argnums=tuple(range(n)))(*args)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_custom_vjps_match_autodiff():
    rng = np.random.default_rng(1)
    x = jnp.asarray(3 * rng.standard_normal((2, 3, 7)), jnp.float32)
    x = x.at[..., -2:].add(jnp.finfo(jnp.float32).min)  # masked entries, as attention has them
    _grads_agree(layers.softmax, lambda a: jax.nn.softmax(a, axis=-1), x)
    _grads_agree(layers.gelu, lambda a: jax.nn.gelu(a, approximate=False), jnp.linspace(-6.0, 6.0, 61))

    keep = jnp.asarray(rng.random((2, 3, 5, 5)) > 0.3)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((2, 3, 5, 5)), jnp.float32), axis=-1)
    v = jnp.asarray(rng.standard_normal((2, 5, 3, 4)), jnp.float32)
    scale = 1 / 0.7
    _grads_agree(
        lambda p, v_: attention.dropout_attend(p, keep, v_, scale),
        lambda p, v_: jnp.einsum("bhlr,brhd->blhd", jnp.where(keep, p * scale, 0.0), v_),
        probs,
        v,
    )
    _grads_agree(
        lambda a: layers._apply_keep(a, keep[0, 0, 0], jnp.float32(scale)),
        lambda a: jnp.where(keep[0, 0, 0], a * scale, 0.0),
        v[0, 0, 0, :].repeat(2)[:5],
    )


def test_dropout_rate_and_scale():
    module = layers.Dropout(0.25)
    x = jnp.ones((200, 200))
    y = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.01 and np.allclose(np.asarray(y)[kept], 1 / 0.75)
    assert module.apply({}, x, deterministic=True) is x


@pytest.mark.parametrize("shape", [(64, 4096), (64, 4095)])  # 16-bit draws; an odd last axis takes 32 bits
def test_dropout_keep_rate(shape):
    keep = np.asarray(layers.dropout_keep(jax.random.key(1), 0.1, shape))
    assert keep.shape == shape and abs(keep.mean() - 0.9) < 0.003
    # Neighbouring elements come from the two halves of one draw: they must not be correlated.
    pairs = keep[:, 0::2][:, : shape[1] // 2], keep[:, 1::2][:, : shape[1] // 2]
    assert abs((~pairs[0] & ~pairs[1]).mean() - 0.01) < 0.002


# ----------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("position", ["relative_key_query", "absolute", "rope"])
def test_masked_rows_do_not_change_real_notes(position):
    """What sits in the masked (PAD) rows never reaches a real note's hidden state."""
    model = models.build_encoder(micro_config(position_embedding=position))
    padded = random_tokens(2, 12, n_real=8)
    garbage = padded.at[:, 8:].set(random_tokens(2, 4, seed=1))
    mask = models.default_attention_mask(padded)
    params = random_params(model, padded)
    h_padded = run_jit(model, params, padded, mask)
    h_garbage = run_jit(model, params, garbage, mask)
    assert h_padded.shape == (2, 12, 32) and h_padded.dtype == jnp.float32
    np.testing.assert_allclose(h_garbage[:, :8], h_padded[:, :8], atol=1e-5)
    if position != "relative_key_query":  # the fused kernel equals the explicit softmax path
        explicit = models.build_encoder(micro_config(position_embedding=position, fused_attention=False))
        np.testing.assert_allclose(run_jit(explicit, params, padded, mask), h_padded, atol=1e-5)


def test_explicit_mask_overrides_the_default():
    model = models.build_encoder(micro_config())
    tokens = random_tokens(1, 8)
    params = random_params(model, tokens)
    mask = jnp.arange(8)[None] < 5
    with_mask = run_jit(model, params, tokens, mask)
    truncated = run_jit(model, params, tokens[:, :5])
    np.testing.assert_allclose(with_mask[:, :5], truncated, atol=1e-5)


def test_scanned_and_unrolled_layers_agree():
    scanned = models.build_encoder(micro_config())
    unrolled = models.build_encoder(micro_config(scan_layers=False))
    tokens = random_tokens(2, 8, n_real=6)
    params = random_params(scanned, tokens)
    per_layer = {
        f"layer_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], params["layers"]) for i in range(2)
    }
    out_unrolled = run(unrolled, {"embed": params["embed"], **per_layer}, tokens)
    np.testing.assert_allclose(run_jit(scanned, params, tokens), out_unrolled, atol=1e-5)


def test_remat_keeps_values_and_gradients():
    tokens = random_tokens(2, 8, n_real=6)
    plain = models.build_encoder(micro_config())
    remat = models.build_encoder(micro_config(remat="full"))
    params = random_params(plain, tokens)

    def loss(model):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(run(model, p, tokens) ** 2)))(params)

    (v1, g1), (v2, g2) = loss(plain), loss(remat)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def test_bfloat16_compute_is_close_to_float32():
    tokens = random_tokens(2, 8, n_real=6)
    model32 = models.build_encoder(micro_config())
    model16 = models.build_encoder(micro_config(dtype="bfloat16"))
    params = random_params(model32, tokens)
    h16 = run_jit(model16, params, tokens)
    assert h16.dtype == jnp.bfloat16
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32  # params stay float32
    np.testing.assert_allclose(np.asarray(h16, np.float32), run_jit(model32, params, tokens), atol=0.15)


# ----------------------------------------------------------------------------- composed models


@pytest.mark.parametrize("mode", ["shared", "separate"])
def test_pretrain_model_outputs(mode):
    model = models.build_pretrain_model(micro_config(**{"masker.mode": mode}))
    tokens = random_tokens(2, 8, n_real=6)
    params = random_params(model, tokens)
    expected_keys = {"encoder", "recoverer", "masker"} | ({"masker_encoder"} if mode == "separate" else set())
    assert set(params) == expected_keys
    if mode == "separate":
        assert params["masker_encoder"]["embed"]["in_proj"]["kernel"].shape == (8 * 16, 16)
    logits, scores = run_jit(model, params, tokens)
    assert [l.shape for l in logits] == [(2, 8, v) for v in vocab.VOCAB_SIZES]
    assert all(l.dtype == jnp.float32 for l in logits)
    assert scores.shape == (2, 8) and bool(jnp.all((scores > 0) & (scores < 1)))
    # Dropout: on when not deterministic, driven by the 'dropout' rng.
    a = run_jit(model, params, tokens, deterministic=False, rng=jax.random.key(1), method="recover")
    b = run_jit(model, params, tokens, deterministic=False, rng=jax.random.key(2), method="recover")
    assert not np.allclose(a[0], b[0]) and not np.allclose(a[0], logits[0])


def test_token_classifier_shapes():
    model = models.build_token_classifier(micro_config(), num_classes=3)
    tokens = random_tokens(2, 8, n_real=6)
    params = random_params(model, tokens)
    assert set(params) == {"encoder", "token_head"}
    out = run_jit(model, params, tokens)
    assert out.shape == (2, 8, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("include_pads", [False, True])
def test_sequence_pooling_pad_switch(include_pads):
    model = models.build_sequence_classifier(micro_config(**{"sequence_pooling.include_pads": include_pads}), 4)
    short = random_tokens(2, 8)
    padded = jnp.concatenate([short, jnp.broadcast_to(jnp.asarray(vocab.PAD_ROW), (2, 4, 8))], axis=1)
    params = random_params(model, short)
    assert set(params) == {"encoder", "sequence_head"}
    out_short, out_padded = run_jit(model, params, short), run_jit(model, params, padded)
    assert out_padded.shape == (2, 4)
    # Pads excluded: the logits ignore how much padding follows; included (reference): they do not.
    assert np.allclose(out_short, out_padded, atol=1e-5) != include_pads


def test_every_parameter_has_logical_axis_names():
    config = micro_config(**{"masker.mode": "separate"})
    tokens = random_tokens(1, 4)
    for model in (
        models.build_pretrain_model(config),
        models.build_token_classifier(config, 3),
        models.build_sequence_classifier(config, 3),
        models.build_encoder(micro_config(position_embedding="absolute", scan_layers=False)),
    ):
        boxed = jax.eval_shape(lambda m=model: m.init({"params": jax.random.key(0)}, tokens, deterministic=True))
        leaves = jax.tree_util.tree_leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        for leaf in leaves:
            assert isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim, leaf


def test_initializers_follow_the_reference():
    """Custom modules use PyTorch's defaults, BERT's own weights N(0, 0.02)."""
    embed = OctupleEmbedding((300,), 64, 96, 16, False, 0.1, 1e-12, 0.02)  # one field keeps the init compile cheap
    init = jax.jit(embed.init, static_argnames="deterministic")
    p = nn.unbox(init(jax.random.key(0), jnp.zeros((1, 2, 1), jnp.int32), deterministic=True))["params"]
    assert abs(float(jnp.std(p["bar"])) - 1.0) < 0.05  # nn.Embedding ~ N(0, 1)
    bound = 1 / np.sqrt(64)
    assert float(jnp.max(jnp.abs(p["in_proj"]["kernel"]))) <= bound
    assert 0 < float(jnp.max(jnp.abs(p["in_proj"]["bias"]))) <= bound
    attn = SelfAttention(num_heads=4, max_len=16)
    init = jax.jit(attn.init, static_argnames="deterministic")
    p = nn.unbox(init(jax.random.key(0), jnp.zeros((1, 4, 96)), jnp.ones((1, 4), bool), deterministic=True))["params"]
    assert abs(float(jnp.std(p["query"]["kernel"])) - 0.02) < 0.002
    assert float(jnp.max(jnp.abs(p["query"]["bias"]))) == 0
    assert p["distance"].shape == (31, 24)


def test_masker_head_is_a_sigmoid_score():
    head = heads.MaskerHead(hidden=8)
    h = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5)), jnp.float32)
    v = head.init(jax.random.key(0), h, deterministic=True)
    s = head.apply(v, h, deterministic=True)
    assert s.shape == (2, 3) and bool(jnp.all((s > 0) & (s < 1)))


# ----------------------------------------------------------------------------- config


def test_config_variants_and_json_round_trip():
    sizes = {s: config_io.default_model_config(s) for s in ("tiny", "base", "large")}
    assert [(c.num_layers, c.hidden_size, c.num_heads, c.mlp_dim) for c in sizes.values()] == [
        (4, 256, 4, 1024),
        (12, 768, 12, 3072),
        (24, 1024, 16, 4096),
    ]
    base = sizes["base"]
    assert base.position_embedding == "relative_key_query" and base.max_len == 1024 and base.layer_norm_eps == 1e-12
    assert base.masker.mode == "shared" and not base.sequence_pooling.include_pads
    back = config_io.from_json_dict(config_io.to_json_dict(base))
    assert back == base and dict(back.logical_axis_rules)["batch"] == ("data", "fsdp")
    separate = config_io._config_module().get_config("base,masker=separate")
    assert separate.masker.mode == "separate" and separate.masker.hidden_size == 256
    with pytest.raises(ValueError, match="unknown model size"):
        config_io.default_model_config("huge")


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="remat"):
        models.build_encoder(micro_config(remat="sometimes"))
    with pytest.raises(ValueError, match="masker.mode"):
        models.build_pretrain_model(micro_config(**{"masker.mode": "both"}))
    model = models.build_encoder(micro_config(position_embedding="alibi"))
    with pytest.raises(ValueError, match="position_embedding"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), random_tokens(1, 4), deterministic=True))
