"""Fine-tuning input transforms (midibert_jax/train/augment.py): mask fine-tuning, pitch shift, velocity blanking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from midibert_jax.tokenizer import vocab
from midibert_jax.train import augment

L = 32


def _window(rng, n_notes, *, drums=0, eos=False, low=20, high=100):
    """int32 [L, 8]: n_notes pitched notes (+ drums, + an EOS row), PAD after."""
    rows = np.broadcast_to(vocab.PAD_ROW, (L, 8)).astype(np.int32).copy()
    n = n_notes + drums
    rows[:n, vocab.BAR] = np.sort(rng.integers(0, 4, n))
    rows[:n, vocab.POSITION] = rng.integers(0, 64, n)
    rows[:n, vocab.INSTRUMENT] = 0
    rows[:n_notes, vocab.PITCH] = rng.integers(low, high + 1, n_notes)
    rows[n_notes:n, vocab.INSTRUMENT] = vocab.DRUM_PROGRAM
    rows[n_notes:n, vocab.PITCH] = vocab.DRUM_PITCH_OFFSET + rng.integers(35, 60, drums)
    rows[:n, vocab.DURATION] = rng.integers(0, 40, n)
    rows[:n, vocab.VELOCITY] = rng.integers(0, 32, n)
    rows[:n, vocab.TIMESIG] = 9
    rows[:n, vocab.TEMPO] = 35
    if eos:
        rows[n] = vocab.EOS_ROW
    return rows


def _batch(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.stack([_window(rng, n) for n in lengths]))


def _labels(tokens):
    nonpad = np.asarray(tokens[..., vocab.BAR]) != vocab.PAD_ROW[vocab.BAR]
    return jnp.asarray(np.where(nonpad, np.asarray(tokens[..., vocab.PITCH]) % 3, -1).astype(np.int32))


def test_mask_fine_tuning_masks_and_skips_each_examples_own_notes():
    lengths = [32, 20, 27, 13]
    tokens = _batch(lengths)
    index = jnp.arange(4)
    cfg = augment.AugmentConfig(mask_ratio=0.15, mask_prob=1.0)
    masked, selected = augment.mask_notes(jax.random.key(0), tokens, index, cfg)
    masked, selected = np.asarray(masked), np.asarray(selected)
    labels = _labels(tokens)
    weights = np.asarray(augment.loss_weights(labels, jnp.asarray(selected), cfg))
    for b, n in enumerate(lengths):
        k = int(np.floor(0.15 * n + 0.5))
        assert selected[b].sum() == k > 0
        assert not selected[b, n:].any()  # pads are never candidates
        np.testing.assert_array_equal(masked[b][selected[b]], np.broadcast_to(vocab.MASK_ROW, (k, 8)))
        np.testing.assert_array_equal(masked[b][~selected[b]], np.asarray(tokens)[b][~selected[b]])
        # Each example's own masked notes are out of its loss; all its other notes are in.
        assert not (weights[b] & selected[b]).any()
        np.testing.assert_array_equal(weights[b], (np.arange(L) < n) & ~selected[b])
    # The selections differ between examples, so excluding only one example's (the reference bug) is wrong ...
    assert any((selected[b][: min(lengths)] != selected[-1][: min(lengths)]).any() for b in range(3))
    # ... and the reference switch reproduces it: the first example's masked notes get scored.
    buggy = np.asarray(augment.loss_weights(labels, jnp.asarray(selected),
                                            augment.AugmentConfig(reference_last_example_only=True)))
    assert (buggy[0] & selected[0]).any()


def test_masking_depends_only_on_the_example():
    tokens = _batch([30, 22, 17, 9], seed=1)
    cfg = augment.AugmentConfig()
    key = jax.random.key(3)
    _, whole = augment.mask_notes(key, tokens, jnp.asarray([10, 11, 12, 13]), cfg)
    _, part = augment.mask_notes(key, tokens[2:][::-1], jnp.asarray([13, 12]), cfg)
    np.testing.assert_array_equal(np.asarray(whole)[2:][::-1], np.asarray(part))
    _, other_step = augment.mask_notes(jax.random.fold_in(key, 1), tokens, jnp.asarray([10, 11, 12, 13]), cfg)
    assert (np.asarray(other_step) != np.asarray(whole)).any()


def test_reference_masking_counts_all_positions_and_keeps_a_fifth():
    tokens = _batch([20, 32])
    cfg = augment.AugmentConfig(mask_ratio=0.15, mask_prob=0.8, reference_pads_as_candidates=True)
    masked, selected = augment.mask_notes(jax.random.key(1), tokens, jnp.arange(2), cfg)
    k = int(np.floor(0.15 * L + 0.5))  # 5 of 32 positions, pads included
    n_mask = int(np.floor(0.8 * k + 0.5))
    is_mask = np.all(np.asarray(masked) == vocab.MASK_ROW, axis=-1)
    for b in range(2):
        assert np.asarray(selected)[b].sum() == k
        assert is_mask[b].sum() == n_mask
        assert not (is_mask[b] & ~np.asarray(selected)[b]).any()


def test_pitch_shift_invariants():
    rng = np.random.default_rng(7)
    windows = []
    for i in range(64):
        low, high = [(0, 127), (3, 60), (70, 125), (40, 80), (60, 60)][i % 5]
        windows.append(_window(rng, int(rng.integers(1, 24)), drums=int(rng.integers(0, 4)), eos=i % 3 == 0,
                               low=low, high=high))
    windows.append(_window(rng, 0, drums=5, eos=True))  # drums only: nothing to shift
    tokens = jnp.asarray(np.stack(windows))
    index = jnp.arange(len(windows))
    shifted, shift = augment.pitch_shift(jax.random.key(0), tokens, index, 11)
    before, after, shift = np.asarray(tokens), np.asarray(shifted), np.asarray(shift)
    pitched = np.asarray(augment.pitched(tokens))
    other = [f for f in range(8) if f != vocab.PITCH]
    np.testing.assert_array_equal(after[..., other], before[..., other])  # only Pitch changes
    np.testing.assert_array_equal(after[~pitched], before[~pitched])  # drums, EOS, PAD untouched
    assert np.all(np.abs(shift) <= 11)
    for b in range(len(windows)):
        p = pitched[b]
        if not p.any():
            assert shift[b] == 0
            continue
        np.testing.assert_array_equal(after[b, p, vocab.PITCH], before[b, p, vocab.PITCH] + shift[b])  # one shift
        assert after[b, p, vocab.PITCH].min() >= 0 and after[b, p, vocab.PITCH].max() <= 127
        lo = -min(11, before[b, p, vocab.PITCH].min())
        hi = min(11, 127 - before[b, p, vocab.PITCH].max())
        assert lo <= shift[b] <= hi
    assert (shift > 0).any() and (shift < 0).any() and len(np.unique(shift)) > 8
    # Per example: the same example gets the same shift in another batch.
    again, shift2 = augment.pitch_shift(jax.random.key(0), tokens[5:9], index[5:9], 11)
    np.testing.assert_array_equal(np.asarray(shift2), shift[5:9])


def test_blank_velocity_and_clean_evaluation():
    tokens = _batch([25, 10])
    blanked = np.asarray(augment.blank_velocity(tokens))
    assert np.all(blanked[..., vocab.VELOCITY] == vocab.PAD_ROW[vocab.VELOCITY])
    other = [f for f in range(8) if f != vocab.VELOCITY]
    np.testing.assert_array_equal(blanked[..., other], np.asarray(tokens)[..., other])

    cfg = augment.AugmentConfig(blank_velocity=True)
    key, index = jax.random.key(0), jnp.arange(2)
    clean = augment.transform(key, tokens, index, cfg, train=False)
    assert clean.selected is None
    np.testing.assert_array_equal(np.asarray(clean.tokens), blanked)
    train = augment.transform(key, tokens, index, cfg, train=True)
    assert train.selected is not None and (np.asarray(train.tokens) != blanked).any()
    # Reference evaluation: masked and shifted too, but the same on every call.
    ref = augment.AugmentConfig(eval_mask=True, eval_pitch_shift=True)
    a = augment.transform(key, tokens, index, ref, train=False)
    b = augment.transform(key, tokens, index, ref, train=False)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert a.selected is not None and (np.asarray(a.tokens) != np.asarray(tokens)).any()


def test_config_validation():
    with pytest.raises(ValueError, match="mask_ratio"):
        augment.AugmentConfig(mask_ratio=1.5)
    with pytest.raises(ValueError, match="pitch_shift"):
        augment.AugmentConfig(pitch_shift=-1)
