"""Sharding: the model is born sharded on a (data=2, fsdp=2, tensor=2) mesh of 8 simulated CPU devices
and computes what it computes on one device.

The 8-device check runs in a subprocess (XLA_FLAGS must be set before JAX starts), so the rest of
the test-suite keeps its single device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from midibert_jax import sharding

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from midibert_jax import sharding
    from midibert_jax.model import config_io, models
    from midibert_jax.tokenizer import vocab

    assert len(jax.devices()) == 8, jax.devices()
    config = config_io.default_model_config("tiny")
    config.max_len = 64
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 2, 2
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config)
    model = models.build_pretrain_model(config)

    rng = np.random.default_rng(0)
    tokens = (rng.random((4, 16, 8)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)
    tokens[1, 10:] = vocab.PAD_ROW
    params, shardings = sharding.init_params(model, jax.random.key(0), jnp.asarray(tokens), mesh=mesh, rules=rules)

    def spec(x):
        return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))

    layers = params["encoder"]["layers"]
    query = layers["attention"]["query"]["kernel"]
    result = {
        "mesh": dict(mesh.shape),
        "query_spec": spec(query),
        "query_shard": list(query.addressable_shards[0].data.shape),
        "mlp_in_spec": spec(layers["mlp_in"]["kernel"]),
        "mlp_out_spec": spec(layers["mlp_out"]["kernel"]),
        "out_spec": spec(layers["attention"]["out"]["kernel"]),
        "table_spec": spec(params["encoder"]["embed"]["bar"]),
        "shardings_match": all(
            p.sharding == s
            for p, s in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shardings))
        ),
    }

    def forward(p, t):
        return model.apply({"params": p}, t, deterministic=True)

    with sharding.activate(mesh, rules):
        batch = sharding.shard_batch(tokens, mesh, rules)
        result["batch_spec"] = spec(batch)
        sharded_out = jax.jit(forward)(params, batch)
    host_params = jax.device_get(params)
    single = jax.jit(forward)(host_params, jnp.asarray(tokens))
    diffs = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), sharded_out, single
    )
    result["max_diff"] = max(jax.tree_util.tree_leaves(diffs))
    result["logits_spec"] = spec(sharded_out[0][0])

    # The shardings a trainer computes without initializing agree; a saved tree restores sharded.
    predicted = sharding.param_shardings(model, jnp.asarray(tokens), mesh=mesh, rules=rules)
    result["predicted_match"] = jax.tree_util.tree_leaves(predicted) == jax.tree_util.tree_leaves(shardings)
    import tempfile
    from midibert_jax.model import imported
    from midibert_jax.run import Run
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, shardings)
    with tempfile.TemporaryDirectory() as tmp:
        imported.save_imported(tmp, params, config, kind="pretrain")
        with Run.open(tmp) as run:
            config_back, restored = run.config.model, run.params(abstract=abstract)
        r_query = restored["encoder"]["layers"]["attention"]["query"]["kernel"]
        result["restored_spec"] = spec(r_query)
        result["restored_equal"] = bool(np.array_equal(np.asarray(r_query), np.asarray(query)))
        result["config_back"] = config_back.hidden_size == config.hidden_size
    print("RESULT " + json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def eight_device_result():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_parameters_are_born_sharded(eight_device_result):
    r = eight_device_result
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # [layers, embed, heads, head_dim]: embed over fsdp, heads over tensor.
    assert r["query_spec"] == [None, "fsdp", "tensor", None]
    assert r["query_shard"] == [4, 128, 2, 64]
    assert r["mlp_in_spec"] == [None, "fsdp", "tensor"]
    assert r["mlp_out_spec"] == [None, "tensor", "fsdp"]
    assert r["out_spec"] == [None, "tensor", None, "fsdp"]
    assert r["table_spec"] == [None, None]  # small per-field tables are replicated
    assert r["shardings_match"]


def test_sharded_forward_equals_single_device(eight_device_result):
    r = eight_device_result
    assert r["batch_spec"][0] == ["data", "fsdp"]
    assert r["logits_spec"][0] == ["data", "fsdp"]
    assert r["max_diff"] < 1e-5


def test_shardings_predicted_and_restored(eight_device_result):
    r = eight_device_result
    assert r["predicted_match"]
    assert r["restored_spec"] == [None, "fsdp", "tensor", None] and r["restored_equal"] and r["config_back"]


def test_mesh_shape_resolves_the_rest():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 4) == (1, 4, 1)
    assert sharding.mesh_shape({"data": -1}, 3) == (3, 1, 1)
    with pytest.raises(ValueError):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError):
        sharding.mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
