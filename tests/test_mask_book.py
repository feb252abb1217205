"""The bit-packed mask book (midibert_jax.train.mask_book)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from midibert_jax.train import mask_book

B, L, N = 8, 64, 32
CFG = mask_book.MaskBookConfig(
    every=5, unit="epoch", freeze_min=0.1, freeze_max=0.3, unfreeze_max=0.1, reference_pads_as_candidates=False
)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_pack_unpack_roundtrip_numpy(rows, bytes_per_row, seed):
    bits = np.random.RandomState(seed).uniform(size=(rows, 8 * bytes_per_row)) < 0.5
    packed = mask_book.pack(bits)
    assert packed.dtype == np.uint8 and packed.shape == (rows, bytes_per_row)
    np.testing.assert_array_equal(mask_book.unpack(packed), bits)
    assert mask_book.count_frozen(packed) == bits.sum()


def test_bit_order_and_jax_matches_numpy():
    bits = np.zeros((2, 16), bool)
    bits[0, 0] = bits[0, 9] = bits[1, 15] = True
    packed = mask_book.pack(bits)
    np.testing.assert_array_equal(packed, [[1, 2], [0, 128]])
    np.testing.assert_array_equal(np.asarray(mask_book.pack(jnp.asarray(bits))), packed)
    np.testing.assert_array_equal(np.asarray(mask_book.unpack(jnp.asarray(packed))), bits)
    assert int(mask_book.count_frozen(jnp.asarray(packed))) == 3


def test_gather_scatter_numpy_in_place_and_jax_in_jit():
    rs = np.random.RandomState(0)
    index = rs.choice(N, B, replace=False)
    rows = rs.uniform(size=(B, L)) < 0.3
    book = mask_book.create(N, L)
    out = mask_book.scatter(book, index, rows)
    assert out is book  # numpy: in place
    np.testing.assert_array_equal(mask_book.gather(book, index), rows)
    assert mask_book.count_frozen(book) == rows.sum()

    @jax.jit
    def roundtrip(jbook, idx, r):
        jbook = mask_book.scatter(jbook, idx, r)
        return jbook, mask_book.gather(jbook, idx)

    jbook = jnp.zeros((N, L // 8), jnp.uint8)
    jbook, gathered = roundtrip(jbook, index, rows)
    np.testing.assert_array_equal(np.asarray(gathered), rows)
    np.testing.assert_array_equal(np.asarray(jbook), book)
    other = np.setdiff1d(np.arange(N), index)
    assert not np.asarray(jbook)[other].any()


@functools.partial(jax.jit, static_argnames="cfg")
def _update(rng, index, frozen, scores, nonpad, cfg):
    return mask_book.update_frozen(rng, index, frozen, scores, nonpad, cfg)


def _inputs(seed):
    rs = np.random.RandomState(seed)
    lengths = rs.randint(L // 2, L + 1, size=B)
    nonpad = np.arange(L)[None] < lengths[:, None]
    frozen = (rs.uniform(size=(B, L)) < 0.2) & nonpad
    scores = rs.uniform(size=(B, L)).astype(np.float32)
    return np.arange(B, dtype=np.int32), frozen, scores, nonpad


def test_freeze_top_candidates_without_unfreezing():
    index, frozen, scores, nonpad = _inputs(1)
    cfg = dataclasses.replace(CFG, unfreeze_max=0.0)
    new = np.asarray(_update(jax.random.key(0), index, frozen, scores, nonpad, cfg))
    assert np.all(new >= frozen), "nothing unfreezes with unfreeze_max = 0"
    assert not np.any(new & ~nonpad), "pads are never frozen"
    added = new & ~frozen
    candidates = nonpad & ~frozen
    n = candidates.sum(-1)
    assert np.all(added.sum(-1) >= np.floor(0.1 * n)) and np.all(added.sum(-1) <= np.floor(0.3 * n))
    for b in range(B):  # the highest-scoring candidates are frozen
        rest = scores[b][candidates[b] & ~added[b]]
        if added[b].any() and rest.size:
            assert scores[b][added[b]].min() >= rest.max()


def test_unfreeze_only_removes_frozen_bits_and_pads_stay_free():
    index, frozen, scores, nonpad = _inputs(2)
    frozen_pads = frozen | ~nonpad  # a book that (wrongly) froze pads is cleaned
    cfg = dataclasses.replace(CFG, unfreeze_max=1.0)
    keep_all = dataclasses.replace(CFG, unfreeze_max=0.0)
    no_unfreeze = np.asarray(_update(jax.random.key(0), index, frozen_pads, scores, nonpad, keep_all))
    new = np.asarray(_update(jax.random.key(0), index, frozen_pads, scores, nonpad, cfg))
    assert not np.any(new & ~no_unfreeze), "unfreezing only clears bits"
    assert not np.any(new & ~nonpad)
    assert new.sum() < no_unfreeze.sum()


def test_reference_pads_can_be_frozen_and_refresh():
    index, _, scores, nonpad = _inputs(3)
    scores = np.where(nonpad, 0.1, 0.9).astype(np.float32)  # pads score highest
    cfg = dataclasses.replace(CFG, reference_pads_as_candidates=True, unfreeze_max=0.0)
    book = jnp.zeros((N, L // 8), jnp.uint8)
    refresh = jax.jit(mask_book.refresh, static_argnames="cfg")
    book = refresh(book, jax.random.key(1), jnp.asarray(index + 3), scores, nonpad, cfg)
    frozen = np.asarray(mask_book.gather(book, index + 3))
    assert np.any(frozen & ~nonpad)
    assert int(mask_book.count_frozen(book)) == frozen.sum()
    np.testing.assert_allclose(float(mask_book.frozen_fraction(book, N * L)), frozen.sum() / (N * L))


def test_update_is_independent_of_batch_composition():
    index, frozen, scores, nonpad = _inputs(4)
    a = np.asarray(_update(jax.random.key(5), index, frozen, scores, nonpad, CFG))
    perm = np.arange(B)[::-1]
    b = np.asarray(_update(jax.random.key(5), index[perm], frozen[perm], scores[perm], nonpad[perm], CFG))
    np.testing.assert_array_equal(b, a[perm])


def test_fraction_and_schedule():
    frozen = np.zeros((2, 16), bool)
    frozen[0, :4] = True
    nonpad = np.ones((2, 16), bool)
    assert float(mask_book.batch_frozen_fraction(frozen, nonpad)) == 4 / 32
    assert mask_book.frozen_fraction(mask_book.pack(frozen), 32) == 4 / 32
    epochs = dataclasses.replace(CFG, unit="epoch")
    assert [mask_book.update_due(e, 1, epochs) for e in range(11)] == [e // 5 if e in (5, 10) else None for e in range(11)]
    # 3 steps per epoch: refreshed after epochs 5 and 10 (steps 15, 30), numbered 1 and 2.
    assert {s: mask_book.update_due(s, 3, epochs) for s in range(1, 31) if mask_book.update_due(s, 3, epochs)} == {15: 1, 30: 2}
    steps = dataclasses.replace(CFG, unit="step", every=2)
    assert [mask_book.update_due(s, 3, steps) for s in range(1, 7)] == [None, 1, None, 2, None, 3]
    assert mask_book.update_due(5, 1, dataclasses.replace(epochs, every=0)) is None


def test_scatter_skips_invalid_rows():
    rows = np.ones((3, 16), bool)
    index = np.array([0, 1, 0])  # a padded last batch repeats window 0
    valid = np.array([True, True, False])
    book = mask_book.scatter(mask_book.create(4, 16), index, rows, valid)
    jbook = mask_book.scatter(jnp.zeros((4, 2), jnp.uint8), jnp.asarray(index), jnp.asarray(rows), jnp.asarray(valid))
    np.testing.assert_array_equal(np.asarray(jbook), book)
    assert mask_book.count_frozen(book) == 32
    rows[2] = False  # an invalid duplicate must not overwrite window 0
    jbook = mask_book.scatter(jnp.zeros((4, 2), jnp.uint8), jnp.asarray(index), jnp.asarray(rows), jnp.asarray(valid))
    assert int(mask_book.count_frozen(jbook)) == 32
