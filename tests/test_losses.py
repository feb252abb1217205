"""Losses and metrics of pre-training (midibert_jax.train.losses)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from midibert_jax.tokenizer import vocab
from midibert_jax.train import losses, masking

B, L = 4, 16
SIZES = vocab.VOCAB_SIZES
CFG = losses.LossConfig(
    field_weights="inverse_accuracy",
    masker_target_fraction=0.3,
    full_sequence_weight=0.0,
    reference_sign_flip=False,
    reference_full_sequence_includes_pads=False,
)


def _logits(seed):
    rs = np.random.RandomState(seed)
    return tuple(rs.normal(size=(B, L, v)).astype(np.float32) for v in SIZES)


def _tokens(seed):
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, vocab.VOCAB.num_regular, size=(B, L, 8)).astype(np.int32)
    tokens[:, L - 3 :] = vocab.PAD_ROW  # 3 pads per example
    return tokens


def _np_ce(logits, tokens):
    out = []
    for f, lg in enumerate(logits):
        lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        out.append(lse - np.take_along_axis(lg, tokens[..., f : f + 1], -1)[..., 0])
    return np.stack(out, -1)


def test_per_field_cross_entropy_and_correct():
    logits, tokens = _logits(0), _tokens(0)
    ce = np.asarray(losses.per_field_cross_entropy(logits, tokens))
    assert ce.shape == (B, L, 8)
    np.testing.assert_allclose(ce, _np_ce(logits, tokens), rtol=1e-5, atol=1e-5)
    perfect = tuple(np.eye(v, dtype=np.float32)[tokens[..., f]] * 10 for f, v in enumerate(SIZES))
    assert np.asarray(losses.per_field_correct(perfect, tokens)).all()


def test_field_weights():
    np.testing.assert_allclose(losses.field_weights_from_accuracy(np.ones(8), "uniform"), np.full(8, 1 / 8))
    acc = np.array([0.5, 0.25, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0])
    w = np.asarray(losses.field_weights_from_accuracy(acc, "inverse_accuracy"))
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[1] / w[0], 2.0, rtol=1e-6)
    assert np.isfinite(w).all() and w.argmax() == 7  # zero accuracy is clamped, not infinite
    with pytest.raises(ValueError):
        losses.field_weights_from_accuracy(acc, "bogus")


def test_recoverer_loss_selected_mean_and_full_sequence_term():
    logits, tokens = _logits(1), _tokens(1)
    ce = losses.per_field_cross_entropy(logits, tokens)
    rs = np.random.RandomState(1)
    selected = rs.uniform(size=(B, L)) < 0.3
    nonpad = masking.non_pad(jnp.asarray(tokens))
    w = np.arange(1, 9, dtype=np.float32) / 36
    npce = _np_ce(logits, tokens)
    loss, per_field = losses.recoverer_loss(ce, selected, nonpad, w, CFG)
    np.testing.assert_allclose(per_field, npce[selected].mean(0), rtol=1e-5)
    np.testing.assert_allclose(loss, npce[selected].mean(0) @ w, rtol=1e-5)

    full = dataclasses.replace(CFG, full_sequence_weight=0.5)
    loss_full, _ = losses.recoverer_loss(ce, selected, nonpad, w, full)
    np.testing.assert_allclose(loss_full - loss, 0.5 * npce[np.asarray(nonpad)].mean(0) @ w, rtol=1e-4)
    ref = dataclasses.replace(full, reference_full_sequence_includes_pads=True)
    loss_ref, _ = losses.recoverer_loss(ce, selected, nonpad, w, ref)
    np.testing.assert_allclose(loss_ref - loss, 0.5 * npce.reshape(-1, 8).mean(0) @ w, rtol=1e-4)


def test_masker_loss_and_statistics():
    p = np.full((2, 4), 0.5, np.float32)
    positive = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    negative = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], bool)
    p[0, 0], p[0, 1], p[0, 2] = 0.9, 0.2, 0.4
    # Example 0: (0.1)² + mean(0.2², 0.4²); example 1 has no targets and is left out.
    np.testing.assert_allclose(losses.masker_loss(p, positive, negative), 0.01 + 0.1, rtol=1e-5)
    assert float(losses.masker_loss(p, positive & False, negative & False)) == 0.0
    stats = losses.masker_statistics(np.full((2, 4), 0.5, np.float32), np.ones((2, 4), bool))
    np.testing.assert_allclose(stats["entropy"], np.log(2), rtol=1e-5)
    np.testing.assert_allclose(stats["mean_score"], 0.5)


def test_field_sums():
    logits, tokens = _logits(2), _tokens(2)
    mask = np.zeros((B, L), bool)
    mask[:, :5] = True
    sums = jax.device_get(losses.field_sums(logits, tokens, mask))
    assert sums["count"] == B * 5
    np.testing.assert_allclose(sums["loss"], _np_ce(logits, tokens)[mask].sum(0), rtol=1e-5)
    pred = np.stack([lg.argmax(-1) for lg in logits], -1)
    np.testing.assert_array_equal(sums["correct"], (pred == tokens)[mask].sum(0))


def test_pretraining_loss_gradients():
    """One jitted loss: the masker gets gradient only through its scores, targets and weights get none."""
    tokens = _tokens(3)
    rs = np.random.RandomState(3)
    selected = np.zeros((B, L), bool)
    selected[:, :10] = True
    masked = masking.MaskedBatch(
        tokens=tokens, selected=selected, replaced=selected, k=selected.sum(-1).astype(np.int32), eligible=selected
    )
    scores = rs.uniform(0.1, 0.9, size=(B, L)).astype(np.float32)
    w = np.full(8, 1 / 8, np.float32)

    @jax.jit
    def grads(logits, scores, w):
        def f(logits, scores, w):
            return losses.pretraining_loss(logits, tokens, masked, scores, w, CFG)

        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(logits, scores, w)

    (total, metrics), (g_logits, g_scores, g_w) = grads(_logits(3), scores, w)
    np.testing.assert_allclose(total, metrics["loss/recoverer"] + metrics["loss/masker"], rtol=1e-6)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert metrics["masker/targets_per_example"] == 2 * 3  # floor(0.3 · 10) per side
    np.testing.assert_array_equal(np.asarray(g_w), 0.0)
    g_scores = np.asarray(g_scores)
    assert np.all(g_scores[:, 10:] == 0) and np.any(g_scores != 0)
    assert np.all(np.asarray(g_logits[0])[:, 10:] == 0)  # unselected notes carry no recoverer loss

    no_masker, m = losses.pretraining_loss(_logits(3), tokens, masked, None, w, CFG)
    np.testing.assert_allclose(no_masker, m["loss/recoverer"], rtol=1e-6)
    assert "loss/masker" not in m
