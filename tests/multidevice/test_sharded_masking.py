"""Adversarial masking and the mask-book refresh with the batch and the book sharded over 4 devices
give bit-identical results to one device (midibert_jax.train.{masking,mask_book})."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from masking_cases import BASE, random_batch
from midibert_jax.train import mask_book, masking

pytestmark = pytest.mark.multidevice


def test_sharded_batch_and_book_match_single_device(devices):
    tokens, _, scores, frozen, index = random_batch(11)
    book = mask_book.scatter(np.zeros((2048, 16), np.uint8), index, frozen)
    cfg = mask_book.MaskBookConfig(every=1, unit="step", freeze_min=0.1, freeze_max=0.3, unfreeze_max=0.1,
                                   reference_pads_as_candidates=False)

    def step(rng, book, tokens, index, scores):
        out = masking.adversarial_mask(rng, tokens, index, scores, mask_book.gather(book, index), BASE)
        new_book = mask_book.refresh(book, rng, index, scores, masking.non_pad(tokens), cfg)
        return out, new_book

    ref_out, ref_book = jax.jit(step)(jax.random.key(3), book, tokens, index, scores)
    batch = NamedSharding(Mesh(np.array(devices[:4]), ("data",)), P("data"))
    args = (jax.random.key(3), *(jax.device_put(x, batch) for x in (book, tokens, index, scores)))
    out, new_book = jax.jit(step, donate_argnums=1)(*args)
    assert len(out.tokens.sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves(ref_out), jax.tree.leaves(out)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ref_book), np.asarray(new_book))
