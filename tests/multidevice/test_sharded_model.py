"""The model on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices, set up as the trainers do
(train.sharded_state.abstract_train_state): parameters and optimizer moments are born sharded, the
sharded forward computes what one device computes, a saved tree restores into its shards, and a
checkpoint of the sharded state exports whole."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from midibert_jax import export, sharding
from midibert_jax.model import config_io, imported, models, torch_export
from midibert_jax.run import Run
from midibert_jax.tokenizer import vocab
from midibert_jax.train import checkpointing
from midibert_jax.train.sharded_state import abstract_train_state

pytestmark = pytest.mark.multidevice

MESH = {"data": -1, "fsdp": 2, "tensor": 2}


def _spec(x) -> tuple:
    """The array's PartitionSpec padded with None to one entry per dimension."""
    return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))


@pytest.fixture(scope="module")
def setup(devices):
    """(run config, mesh, rules, model, abstract state, state shardings, state initialised sharded)."""
    model_config = config_io.default_model_config("tiny")
    model_config.max_len = 64
    config = ml_collections.ConfigDict({"seed": 0, "model": model_config})
    mesh = sharding.make_mesh(MESH, devices)
    rules = sharding.logical_rules(model_config)
    model = models.build_pretrain_model(model_config)
    abstract, shardings, init_state = abstract_train_state(config, model, optax.adam(1e-3), mesh, rules)
    with sharding.activate(mesh, rules):
        state = jax.jit(init_state, static_argnums=0, out_shardings=shardings)(config.seed)
    return config, mesh, rules, model, abstract, shardings, state


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    t = (rng.random((4, 16, 8)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)
    t[1, 10:] = vocab.PAD_ROW
    return t


def test_parameters_are_born_sharded(setup):
    _, mesh, _, _, _, shardings, state = setup
    params = state.params
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    layers = params["encoder"]["layers"]
    query = layers["attention"]["query"]["kernel"]
    # [layers, embed, heads, head_dim]: embed over fsdp, heads over tensor.
    assert _spec(query) == (None, "fsdp", "tensor", None)
    assert list(query.addressable_shards[0].data.shape) == [4, 128, 2, 64]
    assert _spec(layers["mlp_in"]["kernel"]) == (None, "fsdp", "tensor")
    assert _spec(layers["mlp_out"]["kernel"]) == (None, "tensor", "fsdp")
    assert _spec(layers["attention"]["out"]["kernel"]) == (None, "tensor", None, "fsdp")
    assert _spec(params["encoder"]["embed"]["bar"]) == (None, None)  # small per-field tables are replicated
    assert all(p.sharding == s for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings.params)))
    # Adam's moments take their parameter's sharding.
    moments = state.opt_state[0]
    assert moments.mu["encoder"]["layers"]["attention"]["query"]["kernel"].sharding == query.sharding


def test_sharded_forward_equals_single_device(setup, tokens):
    _, mesh, rules, model, _, _, state = setup

    def forward(p, t):
        return model.apply({"params": p}, t, deterministic=True)

    with sharding.activate(mesh, rules):
        batch = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, rules, tokens.ndim), tokens)
        sharded_out = jax.jit(forward)(state.params, batch)
    single = jax.jit(forward)(jax.device_get(state.params), jnp.asarray(tokens))
    assert _spec(batch)[0] == ("data", "fsdp")
    assert _spec(sharded_out[0][0])[0] == ("data", "fsdp")
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), sharded_out, single)
    assert max(jax.tree.leaves(diffs)) < 1e-5


def test_shardings_predicted_and_restored(setup, tmp_path):
    config, _, _, _, abstract, shardings, state = setup
    # The shardings computed without initializing are the ones the initialized state has.
    assert [a.sharding for a in jax.tree.leaves(abstract)] == [x.sharding for x in jax.tree.leaves(state)]
    query = state.params["encoder"]["layers"]["attention"]["query"]["kernel"]
    imported.save_imported(tmp_path, state.params, config.model, kind="pretrain")
    abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state.params)
    with Run.open(tmp_path) as run:
        config_back, restored = run.config.model, run.params(abstract=abstract_params)
    r_query = restored["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert _spec(r_query) == (None, "fsdp", "tensor", None)
    assert np.array_equal(np.asarray(r_query), np.asarray(query))
    assert config_back.hidden_size == config.model.hidden_size


def test_a_sharded_checkpoint_exports_whole(setup, tmp_path):
    """A pre-training checkpoint saved from the 8-device mesh: the export gathers it onto the host,
    and importing the export gives back every parameter bit for bit."""
    config, _, _, _, _, _, state = setup
    query = state.params["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert len({tuple((s.start, s.stop) for s in shard.index) for shard in query.addressable_shards}) == 4
    with checkpointing.Checkpointer(str(tmp_path / "run" / "checkpoints"), save_every=1, keep_last=1) as ckpt:
        ckpt.save_now(5, state=state, mask_book=np.zeros((1, 1), np.uint8), data={"next_index": 5},
                      config=config.to_dict())
    result = export.export_run(tmp_path / "run", tmp_path / "out")
    assert result.meta["source"]["step"] == 5 and result.meta["heads"] == ["recoverer", "masker"]
    state_dict, meta = torch_export.read_export(tmp_path / "out")
    back = torch_export.convert_export(state_dict, meta).params
    host = jax.device_get(state.params)
    assert jax.tree.structure(back) == jax.tree.structure(host)
    assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(host)))
