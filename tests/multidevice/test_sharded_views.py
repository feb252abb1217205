"""Evaluation views on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices: the per-row probabilities that
`FinetuneTrainer.note_probabilities` gathers from sharded batches (the last one padded) are those of one device,
in the windows' order."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from midibert_jax import sharding
from midibert_jax.config_loading import load_config
from midibert_jax.tokenizer import vocab
from midibert_jax.train import finetune
from midibert_jax.train.task_info import TaskInfo

pytestmark = pytest.mark.multidevice

L = 16
TASK = TaskInfo("melody", "note", ("MELODY", "BRIDGE", "PIANO"))


def _config():
    config = load_config("configs/finetune.py:melody,scratch")
    config.unlock()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = 1, 32, 2, 64
    m.field_embed_dim, m.head_hidden, m.max_len = 8, 16, L
    config.data.max_len = L
    config.data.batch_size = config.data.eval_batch_size = 8
    config.data.read_threads = config.data.prefetch = 1
    return config


def test_note_probabilities_on_a_mesh_equal_one_device(devices):
    config = _config()
    sharded = finetune.FinetuneTrainer(config, TASK, mesh=sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2}, devices))
    single = finetune.FinetuneTrainer(config, TASK, mesh=sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                                          devices[:1]))
    params = sharded.init_state().params
    params_one = jax.device_put(jax.device_get(params), single.state_shardings.params)
    rng = np.random.default_rng(0)
    windows = (rng.random((11, L, 8)) * np.asarray(vocab.VOCAB.num_regular)).astype(np.int32)  # 11: a padded batch
    windows[:, :, vocab.BAR] = np.sort(windows[:, :, vocab.BAR], axis=1)
    windows[3, 9:] = vocab.PAD_ROW
    got = sharded.note_probabilities(params, windows)
    want = single.note_probabilities(params_one, windows)
    assert got.shape == (11, L, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
