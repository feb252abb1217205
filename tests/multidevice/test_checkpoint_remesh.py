"""A checkpoint saved sharded over 4 devices restores onto a 2-device mesh with another layout
(midibert_jax.train.checkpointing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from midibert_jax.train import checkpointing, state

pytestmark = pytest.mark.multidevice


def test_restore_onto_another_mesh(devices, tmp_path):
    mesh4 = Mesh(np.array(devices[:4]), ("data",))
    params = {"encoder": {"kernel": jnp.arange(32.0).reshape(8, 4)}, "recoverer": {}, "masker": {"k": jnp.ones(4)}}
    s = state.TrainState.create(params=params, tx=optax.sgd(0.1), seed=0)
    s = jax.device_put(s, NamedSharding(mesh4, P()))
    kernel = jax.device_put(s.params["encoder"]["kernel"], NamedSharding(mesh4, P("data")))
    s = s.replace(params={**s.params, "encoder": {"kernel": kernel}})
    book = jax.device_put(jnp.arange(16, dtype=jnp.uint8).reshape(8, 2), NamedSharding(mesh4, P("data")))
    ck = checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=1)
    ck.save_now(1, state=s, mask_book=book, data={}, config={})
    ck.close()

    mesh2 = Mesh(np.array(devices[:2]).reshape(1, 2), ("data", "model"))

    def target(x):
        spec = P(None, "model") if x.ndim == 2 else P()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh2, spec))

    abstract = jax.tree.map(target, jax.eval_shape(lambda: s))
    book_target = jax.ShapeDtypeStruct((8, 2), jnp.uint8, sharding=NamedSharding(mesh2, P("model")))
    reader = checkpointing.Checkpointer(str(tmp_path), save_every=1, keep_last=1)
    r = reader.restore(abstract, mask_book_target=book_target)
    reader.close()
    kernel = r.state.params["encoder"]["kernel"]
    assert kernel.sharding == NamedSharding(mesh2, P(None, "model")), kernel.sharding
    assert len(kernel.sharding.device_set) == 2
    np.testing.assert_array_equal(np.asarray(kernel), np.arange(32.0).reshape(8, 4))
    np.testing.assert_array_equal(np.asarray(r.mask_book), np.arange(16).reshape(8, 2))
    assert r.mask_book.sharding == book_target.sharding
