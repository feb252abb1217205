"""run.Run: one read-only reader of training workdirs (either run kind, old or new items and metric
names) and imported checkpoints. The workdirs are written here directly with orbax (tiny trees), so
these tests need no trainer."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from midibert_jax import analysis, paths, run
from midibert_jax.model import config_io, imported
from midibert_jax.run import NoCheckpointError, ParamsMismatchError, Run
from midibert_jax.train import checkpointing


def _params(scale: float = 1.0) -> dict:
    return {
        "encoder": {"dense": {"kernel": np.full((3, 4), scale, np.float32)}, "norm": {"scale": np.ones(4, np.float32)}},
        "masker": {"out": {"kernel": np.full((4, 1), -scale, np.float32)}},
        "recoverer": {"out": {"kernel": np.arange(8, dtype=np.float32).reshape(4, 2) * scale}},
    }


def _state(scale: float = 1.0) -> dict:
    return {"params": _params(scale), "opt_state": {"mu": np.zeros(5, np.float32)}, "step": np.int32(0)}


def pretrain_workdir(path, metrics: dict[int, float], metric_name: str = "eval/acc/mean") -> str:
    """A pre-training workdir in the current Checkpointer's layout (state, mask_book, data, config, version)."""
    with checkpointing.Checkpointer(os.fspath(path / paths.CHECKPOINTS), save_every=1, keep_last=10,
                                    best_metric=metric_name) as ckpt:
        for step, value in metrics.items():
            ckpt.save_now(step, state=_state(step), mask_book=np.full((6, 2), step, np.uint8),
                          data={"next_index": step}, config={"model": {"hidden_size": 4}, "seed": step},
                          metrics={metric_name: value})
    return os.fspath(path)


def finetune_workdir(path, version: dict | None = None) -> str:
    """A fine-tuning workdir in another item layout (state, early_stopping, config, version), new metric names."""
    handlers = {"state": ocp.StandardCheckpointHandler(), "early_stopping": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(), "version": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(path / paths.CHECKPOINTS, item_handlers=handlers,
                                    options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False,
                                                                              best_fn=lambda m: m["eval/accuracy"]))
    for step, accuracy in ((2, 0.6), (4, 0.7), (6, 0.7)):
        params = {"encoder": _params(step)["encoder"], "token_head": {"kernel": np.ones((4, 3), np.float32)}}
        manager.save(step, metrics={"eval/accuracy": accuracy}, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "step": np.int32(step)}),
            early_stopping=ocp.args.JsonSave({"best_step": 4, "bad_evals": step // 6}),
            config=ocp.args.JsonSave({"model": {"hidden_size": 4}, "task": {"name": "melody", "level": "note"}}),
            version=ocp.args.JsonSave(version or checkpointing.version_info()),
        ))
    manager.close()
    return os.fspath(path)


def _abstract(tree, sharding=None):
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype, sharding=sharding), tree)


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def test_a_pretraining_workdir_with_the_old_metric_name(tmp_path):
    path = pretrain_workdir(tmp_path, {10: 0.2, 20: 0.5, 30: 0.4})
    for opened in (path, tmp_path / paths.CHECKPOINTS):  # the workdir or its checkpoints folder
        with Run.open(opened) as r:
            assert r.kind == "pretrain" and not r.is_imported
            assert (r.steps, r.latest_step, r.best_step) == ([10, 20, 30], 30, 20)
            assert r.step("best") == 20 and r.step("latest") == 30 and r.step("10") == 10
            assert r.config.seed == 30 and r.config_at(10).seed == 10 and r.model_config("best").hidden_size == 4
            assert r.items(10) == {"state": "tree", "mask_book": "tree", "data": "json", "config": "json", "version": "json"}


def test_params_by_group_numpy_or_onto_a_sharding(tmp_path):
    path = pretrain_workdir(tmp_path, {10: 0.2, 20: 0.5})
    with Run.open(path) as r:
        host = r.params(["encoder"])  # best step: 20
        assert set(host) == {"encoder"} and isinstance(host["encoder"]["dense"]["kernel"], np.ndarray)
        assert _equal(host["encoder"], _params(20)["encoder"])
        abstract = _abstract(_params())
        placed = r.params(["encoder", "masker"], abstract, which=10)
        assert set(placed) == {"encoder", "masker"}
        assert _equal(placed["masker"], _params(10)["masker"])
        leaf = placed["encoder"]["dense"]["kernel"]
        assert isinstance(leaf, jax.Array) and leaf.sharding == abstract["encoder"]["dense"]["kernel"].sharding
        assert set(r.params(abstract=abstract)) == {"encoder", "masker", "recoverer"}  # groups: abstract's keys
        assert set(r.param_shapes()) == {"encoder", "masker", "recoverer"}


def test_params_that_do_not_fit_are_named(tmp_path):
    path = pretrain_workdir(tmp_path, {10: 0.2})
    abstract = _abstract(_params())
    with Run.open(path) as r:
        wrong = dict(abstract, encoder={**abstract["encoder"], "dense": {"kernel": jax.ShapeDtypeStruct((3, 5), np.float32)}})
        with pytest.raises(ParamsMismatchError, match=r"encoder\['dense'\]\['kernel'\] has shape \(3, 4\) in the source, \(3, 5\)"):
            r.params(["encoder"], wrong)
        extra = dict(abstract, encoder={**abstract["encoder"], "extra": jax.ShapeDtypeStruct((2,), np.float32)})
        with pytest.raises(ParamsMismatchError, match=r"encoder\['extra'\].*not in the source"):
            r.params(["encoder"], extra)
        with pytest.raises(ParamsMismatchError, match="has no 'token_head' parameters"):
            r.params(["token_head"])


def test_any_items_of_any_layout(tmp_path):
    pre = pretrain_workdir(tmp_path / "pre", {10: 0.2})
    with Run.open(pre) as r:
        out = r.restore({"mask_book": None, "data": None, "state": _abstract(_state(10))})
        np.testing.assert_array_equal(out["mask_book"]["bits"], np.full((6, 2), 10, np.uint8))
        assert out["data"] == {"next_index": 10} and _equal(out["state"], _state(10))
        with pytest.raises(KeyError, match=r"step 10 has no item 'early_stopping' \(it has \['config', 'data'"):
            r.restore({"early_stopping": None})

    ft = finetune_workdir(tmp_path / "ft")
    with Run.open(ft) as r:
        assert r.kind == "finetune" and r.config.task.name == "melody"
        assert r.best_step == 4  # new metric name; ties: the earliest
        assert set(r.items()) == {"state", "early_stopping", "config", "version"}
        assert r.restore({"early_stopping": None})["early_stopping"] == {"best_step": 4, "bad_evals": 1}
        assert set(r.params()) == {"encoder", "token_head"}
        assert _equal(r.params(["encoder"])["encoder"], _params(4)["encoder"])


def test_another_vocabulary_is_refused(tmp_path):
    other = {**checkpointing.version_info(), "vocab_sizes": [1, 2, 3]}
    with Run.open(finetune_workdir(tmp_path, version=other)) as r:
        with pytest.raises(ValueError, match=r"checkpoint step 6 has vocab_sizes=\[1, 2, 3\]"):
            r.restore({"early_stopping": None})
        with pytest.raises(ValueError, match="vocab_sizes"):
            r.params(["encoder"])


def test_a_live_runs_save_in_progress_survives_reading(tmp_path):
    """Reading never cleans up: the temporary folder of a save in progress stays, and is not a step."""
    path = pretrain_workdir(tmp_path, {10: 0.2})
    tmp_save = tmp_path / paths.CHECKPOINTS / "20.orbax-checkpoint-tmp-1234567"
    (tmp_save / "state").mkdir(parents=True)
    (tmp_save / "state" / "partial").write_bytes(b"half written")
    with Run.open(path) as r:
        assert r.steps == [10] and r.step("best") == 10
        r.config, r.params(["encoder"]), r.restore({"mask_book": None, "data": None})
    assert (tmp_save / "state" / "partial").read_bytes() == b"half written"
    # A writing manager (what analysis used to open) removes it in the background (awaited by a save).
    with checkpointing.Checkpointer(os.fspath(tmp_path / paths.CHECKPOINTS), save_every=1, keep_last=10) as ckpt:
        ckpt.save_now(11, state=_state(), mask_book=np.zeros((1, 1), np.uint8), data={}, config={})
    assert not tmp_save.exists()


def test_an_imported_checkpoint(tmp_path):
    config = config_io.default_model_config("tiny")
    out = imported.save_imported(tmp_path / "imp", {"encoder": _params()["encoder"]}, config, kind="encoder")
    with Run.open(out) as r:
        assert r.kind == "imported" and r.is_imported and r.config.kind == "encoder"
        assert r.config.model.hidden_size == config.hidden_size and r.model_config().num_layers == config.num_layers
        assert isinstance(r.config.model.logical_axis_rules, tuple)
        assert (r.steps, r.latest_step, r.best_step) == ([], None, None)
        assert _equal(r.params(["encoder"])["encoder"], _params()["encoder"])
    assert json.loads((tmp_path / "imp" / paths.IMPORTED_CONFIG).read_text())["kind"] == "encoder"


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(NoCheckpointError, match=r"missing: no checkpoint found \(.*missing does not exist\)"):
        Run.open(tmp_path / "missing")
    (tmp_path / "empty" / paths.CHECKPOINTS).mkdir(parents=True)
    with Run.open(tmp_path / "empty") as r:
        assert r.steps == [] and r.latest_step is None and r.best_step is None
        with pytest.raises(NoCheckpointError, match="empty: no checkpoint found .no complete step"):
            r.config
    path = pretrain_workdir(tmp_path / "pre", {10: 0.2})
    with Run.open(path) as r:
        with pytest.raises(NoCheckpointError, match=r"no checkpoint step 11; steps present: \[10\]"):
            r.step(11)
        with pytest.raises(ValueError, match="which must be"):
            r.step("first")


def test_old_and_new_metric_names_read_alike(tmp_path):
    assert run.canonical_metric("eval/acc/mean") == "eval/accuracy"
    assert run.canonical_metric("eval/acc/pitch") == "eval/accuracy/pitch"
    assert run.canonical_metric("loss/total") == "train/loss" and run.canonical_metric("acc/mean") == "train/accuracy"
    assert run.canonical_metric("acc/bar") == "train/accuracy/bar"
    assert run.canonical_metric("mask/selected_fraction") == "train/mask/selected_fraction"
    for name in ("eval/accuracy", "train/loss", "train/mask/selected_fraction", "eval/loss/pitch"):
        assert run.canonical_metric(name) == name
    # A run resumed across the rename: one series per metric.
    lines = [{"step": 1, "loss/total": 2.0, "eval/acc/mean": 0.1, "eval/acc/pitch": 0.2},
             {"step": 2, "train/loss": 1.5, "eval/accuracy": 0.3, "eval/accuracy/pitch": 0.4}]
    (tmp_path / paths.METRICS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics = analysis.read_metrics(tmp_path)
    assert set(metrics) == {"train/loss", "eval/accuracy", "eval/accuracy/pitch"}
    steps, values = metrics["eval/accuracy"]
    assert steps.tolist() == [1, 2] and values.tolist() == [0.1, 0.3]
