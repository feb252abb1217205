"""Masking policies and masker targets (midibert_jax.train.masking, losses.masker_targets)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from masking_cases import BASE, NUM_REGULAR, B, L, make_tokens, random_batch
from midibert_jax.tokenizer import vocab
from midibert_jax.train import losses, masking

MASK_ROW = np.asarray(vocab.MASK_ROW)

LOSS = losses.LossConfig(
    field_weights="inverse_accuracy",
    masker_target_fraction=0.3,
    full_sequence_weight=0.0,
    reference_sign_flip=False,
    reference_full_sequence_includes_pads=False,
)


@functools.partial(jax.jit, static_argnames="cfg")
def _adversarial(rng, tokens, index, scores, frozen, cfg):
    return masking.adversarial_mask(rng, tokens, index, scores, frozen, cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _random(rng, tokens, index, cfg):
    return masking.random_mask(rng, tokens, index, cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _eval(tokens, index, cfg):
    return masking.eval_mask(tokens, index, cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _targets(weighted, replaced, k, cfg):
    return losses.masker_targets(weighted, replaced, k, cfg)


def test_adversarial_k_bounds_and_only_eligible_top_scores():
    tokens, nonpad, scores, frozen, index = random_batch()
    out = jax.device_get(_adversarial(jax.random.key(1), tokens, index, scores, frozen, BASE))
    eligible = nonpad & ~frozen
    np.testing.assert_array_equal(out.eligible, eligible)
    n = eligible.sum(-1)
    assert np.all(out.k == out.selected.sum(-1))
    assert np.all(out.k >= np.floor(0.1 * n))
    assert np.all(out.k <= np.minimum(np.floor(0.3 * n), int(0.15 * L)))
    assert not np.any(out.selected & ~eligible), "only non-pad, unfrozen notes are candidates"
    for b in range(B):  # the k_b highest-scoring eligible notes
        sel, rest = scores[b][out.selected[b]], scores[b][eligible[b] & ~out.selected[b]]
        if sel.size and rest.size:
            assert sel.min() >= rest.max()
    # Pads and unselected notes are never changed.
    np.testing.assert_array_equal(out.tokens[~out.selected], tokens[~out.selected])
    assert not np.any(out.replaced & ~out.selected)


def test_adversarial_cap_binds():
    tokens, nonpad, scores, _, index = random_batch(1)
    cfg = dataclasses.replace(BASE, ratio_min=0.5, ratio_max=0.6, cap=0.05)
    out = jax.device_get(_adversarial(jax.random.key(2), tokens, index, scores, None, cfg))
    cap = int(0.05 * L)
    assert out.k.max() <= cap and out.k[0] == cap  # example 0 is a full window: 0.5 · 128 > 6


def test_reference_pads_as_candidates():
    tokens, nonpad, scores, _, index = random_batch(2)
    scores = np.where(nonpad, scores * 0.5, 1.0).astype(np.float32)  # pads score highest
    cfg = dataclasses.replace(BASE, reference_pads_as_candidates=True)
    out = jax.device_get(_adversarial(jax.random.key(3), tokens, index, scores, None, cfg))
    assert out.eligible.all()
    assert np.any(out.selected & ~nonpad), "the quirk lets pads be masked"
    assert np.all(out.k >= np.floor(0.1 * L))  # counts include pads


def test_corruption_split_80_10_10_in_expectation_and_random_rows_regular():
    tokens, _ = make_tokens(3, b=64, length=L, min_len=L)
    cfg = dataclasses.replace(BASE, policy="random", random_ratio=0.5)
    out = jax.device_get(_random(jax.random.key(4), tokens, np.arange(64), cfg))
    sel = out.selected
    masked = np.all(out.tokens == MASK_ROW, -1) & sel
    unchanged = np.all(out.tokens == tokens, -1) & sel
    randomized = sel & ~masked & ~unchanged
    n = sel.sum()
    assert n == 64 * L // 2
    split = [masked.sum() / n, randomized.sum() / n, unchanged.sum() / n]
    np.testing.assert_allclose(split, [0.8, 0.1, 0.1], atol=0.02)
    np.testing.assert_array_equal(out.replaced, masked | randomized)
    rows = out.tokens[randomized]
    assert np.all(rows < NUM_REGULAR) and np.all(rows >= 0), "random rows use regular values only"


def test_reference_random_rows_may_be_specials():
    tokens, _ = make_tokens(4, b=64, length=L, min_len=L)
    cfg = dataclasses.replace(
        BASE, policy="random", random_ratio=0.5, mask_prob=0.0, random_prob=1.0, reference_random_any_token=True
    )
    out = jax.device_get(_random(jax.random.key(5), tokens, np.arange(64), cfg))
    rows = out.tokens[out.selected]
    assert np.all(rows < np.asarray(vocab.VOCAB_SIZES))
    assert np.any(rows >= NUM_REGULAR), "the quirk draws from the whole vocabulary"


def test_random_policy_count_and_pads():
    tokens, nonpad, _, _, index = random_batch(5)
    cfg = dataclasses.replace(BASE, policy="random")
    out = jax.device_get(_random(jax.random.key(6), tokens, index, cfg))
    np.testing.assert_array_equal(out.k, np.floor(0.15 * nonpad.sum(-1) + 0.5))
    assert not np.any(out.selected & ~nonpad)


def test_eval_mask_is_deterministic_and_independent_of_batch_composition():
    tokens, _, _, _, index = random_batch(6)
    a = jax.device_get(_eval(tokens, index, BASE))
    b = jax.device_get(_eval(tokens, index, BASE))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    perm = np.random.RandomState(0).permutation(B)  # same windows, other order and neighbours
    c = jax.device_get(_eval(tokens[perm], index[perm], BASE))
    np.testing.assert_array_equal(c.selected, a.selected[perm])
    np.testing.assert_array_equal(c.tokens, a.tokens[perm])
    other = jax.device_get(_eval(tokens, index + 1, BASE))
    assert not np.array_equal(other.selected, a.selected)


def test_mask_batch_dispatch():
    tokens, _, scores, frozen, index = random_batch(7)
    with pytest.raises(ValueError):
        masking.mask_batch(jax.random.key(0), tokens, index, BASE)
    with pytest.raises(ValueError):
        dataclasses.replace(BASE, policy="bogus")


def _target_invariant_holds(weighted, replaced, k, positive, negative, b):
    """Per example: |pos| = |neg| = t_b, both ⊆ replaced, pos = the t_b highest, neg = the t_b lowest losses."""
    t = min(int(np.floor(0.3 * k[b] + 1e-4)), replaced[b].sum() // 2)
    pos, neg, rep, s = positive[b], negative[b], replaced[b], weighted[b]
    if pos.sum() != t or neg.sum() != t or np.any((pos | neg) & ~rep) or np.any(pos & neg):
        return False
    if t and (s[pos].min() < s[rep & ~pos].max() or s[neg].max() > s[rep & ~neg].min()):
        return False
    return True


def test_masker_targets_per_example():
    rs = np.random.RandomState(8)
    weighted = rs.exponential(size=(B, L)).astype(np.float32)
    replaced = rs.uniform(size=(B, L)) < 0.2
    k = (replaced.sum(-1) * 1.1).astype(np.int32)
    k[1] = 2  # floor(0.6) = 0 targets
    _, positive, negative = jax.device_get(_targets(weighted, replaced, k, LOSS))
    assert all(_target_invariant_holds(weighted, replaced, k, positive, negative, b) for b in range(B))
    assert positive[1].sum() == 0 and positive[0].sum() > 0


def test_masker_targets_ties_are_disjoint():
    weighted = np.ones((2, 16), np.float32)
    replaced = np.zeros((2, 16), bool)
    replaced[:, :5] = True
    _, positive, negative = jax.device_get(_targets(weighted, replaced, np.array([10, 10], np.int32), LOSS))
    assert positive.sum(-1).tolist() == [2, 2] and not np.any(positive & negative)


def test_reference_sign_flip_breaks_the_per_example_invariant():
    rs = np.random.RandomState(9)
    weighted = rs.exponential(size=(B, L)).astype(np.float32)
    replaced = rs.uniform(size=(B, L)) < 0.2
    k = replaced.sum(-1).astype(np.int32)
    cfg = dataclasses.replace(LOSS, reference_sign_flip=True)
    _, positive, negative = jax.device_get(_targets(weighted, replaced, k, cfg))
    holds = [_target_invariant_holds(weighted, replaced, k, positive, negative, b) for b in range(B)]
    assert all(holds[0::2]), "even examples follow the intended rule"
    assert not any(holds[1::2]), "odd examples get inverted targets under the reference bug"
    assert np.any(positive[1] & ~replaced[1])
