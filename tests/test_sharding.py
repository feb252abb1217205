"""Mesh shapes (midibert_jax.sharding); the sharded model itself is tested in multidevice/."""

import pytest

from midibert_jax import sharding


def test_mesh_shape_resolves_the_rest():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 4) == (1, 4, 1)
    assert sharding.mesh_shape({"data": -1}, 3) == (3, 1, 1)
    with pytest.raises(ValueError):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError):
        sharding.mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
