"""Fine-tuning: metrics, the trainer (early stopping, resume, best checkpoint), evaluation, warm starts.

Tiny model (hidden 32, 2 layers, windows of 32 rows, batches of 8) on in-memory data sources; the
three training runs (a note task in two phases, a sequence task) compile once each.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from pretrain_helpers import nonfinite_at

from midibert_jax import config_loading
from midibert_jax import evaluate as evaluation
from midibert_jax.config_loading import ConfigError
from midibert_jax.data import windows as windows_lib
from midibert_jax.tokenizer import vocab
from midibert_jax.train import classification_metrics as cm_lib
from midibert_jax.run import Run
from midibert_jax.train import finetune, nonfinite, warm_start
from midibert_jax.train.task_info import TaskInfo

L = 32
NOTE_TASK = TaskInfo("melody", "note", ("MELODY", "BRIDGE", "PIANO"))
SEQ_TASK = TaskInfo("composer", "sequence", ("a", "b", "c"))


def tiny_model(model: ml_collections.ConfigDict) -> None:
    model.num_layers, model.hidden_size, model.num_heads, model.mlp_dim = 2, 32, 2, 64
    model.field_embed_dim, model.head_hidden, model.max_len = 8, 16, L
    model.sequence_pooling.attention_hidden = 8
    model.masker.num_layers, model.masker.hidden_size, model.masker.num_heads, model.masker.mlp_dim = 1, 16, 2, 32


def tiny_config(arg: str, **train) -> ml_collections.ConfigDict:
    config = config_loading.load_config("configs/finetune.py:" + arg)
    config.unlock()
    tiny_model(config.model)
    config.data.max_len = L
    config.data.batch_size = config.data.eval_batch_size = 8
    config.data.read_threads = config.data.prefetch = 1
    config.train.log_every = 1
    config.train.update(train)
    return config


def make_source(n: int, level: str, seed: int = 0, windows_per_piece: int = 1) -> list[dict]:
    """n windows of random notes; note labels follow the pitch, sequence labels the piece."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(L // 2, L + 1))
        rows = np.broadcast_to(vocab.PAD_ROW, (L, 8)).astype(np.int32).copy()
        rows[:k, vocab.BAR] = np.sort(rng.integers(0, 8, k))
        rows[:k, vocab.POSITION] = rng.integers(0, 64, k)
        rows[:k, vocab.INSTRUMENT] = 0
        rows[:k, vocab.PITCH] = rng.integers(40, 90, k)
        rows[:k, vocab.DURATION] = rng.integers(0, 30, k)
        rows[:k, vocab.VELOCITY] = rng.integers(5, 30, k)
        rows[:k, vocab.TIMESIG], rows[:k, vocab.TEMPO] = 9, 35
        piece = i // windows_per_piece
        example = {"tokens": rows, "index": np.int64(i), "piece_id": np.int32(piece), "window": np.int32(i % windows_per_piece)}
        if level == "note":
            labels = np.full(L, -1, np.int32)
            labels[:k] = (rows[:k, vocab.PITCH] >= 60).astype(np.int32) + (rows[:k, vocab.PITCH] >= 75)
            example["labels"] = labels
        else:
            example["label"] = np.int32(piece % 3)
        out.append(example)
    return out


def random_state(abstract, seed: int = 0):
    """A train state shaped and sharded like `abstract`, random floats and zero integers, made on the host."""
    rng = np.random.default_rng(seed)

    def leaf(a):
        value = rng.standard_normal(a.shape) if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape)
        return jax.device_put(value.astype(a.dtype), a.sharding)

    return jax.tree_util.tree_map(leaf, abstract)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- metrics (numpy)


def test_metrics_on_hand_made_confusion_cases():
    labels = np.array([0, 0, 0, 1, 1, 2, -1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2, 0, 2])
    cm = cm_lib.confusion_matrix(labels, preds, 4)
    np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    m = cm_lib.summarize(cm, ["x", "y", "z", "never"])
    assert m["accuracy"] == pytest.approx(5 / 7) and m["count"] == 7
    p = m["per_class"]
    assert (p["x"]["precision"], p["x"]["recall"]) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert p["x"]["f1"] == pytest.approx(0.8)
    assert (p["y"]["precision"], p["y"]["recall"], p["y"]["f1"]) == (0.5, 0.5, 0.5)
    assert p["z"]["precision"] == pytest.approx(2 / 3) and p["z"]["recall"] == 1.0 and p["z"]["f1"] == pytest.approx(0.8)
    assert p["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro-F1 over the classes present in labels or predictions ("never" is neither).
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 0.8) / 3)
    assert m["confusion_matrix"] == cm.tolist()

    # A class predicted but never true counts in the macro average with F1 0.
    m2 = cm_lib.summarize(cm_lib.confusion_matrix([0, 0, 1, 1], [0, 2, 1, 1], 3), ["a", "b", "c"])
    assert m2["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m2["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    # Perfect, weighted, and empty.
    assert cm_lib.summarize(cm_lib.confusion_matrix([1, 0, 1], [1, 0, 1], 2), ["a", "b"])["macro_f1"] == 1.0
    np.testing.assert_array_equal(cm_lib.confusion_matrix([1, 0, 1], [0, 0, 1], 2, weights=[0, 1, 1]), [[1, 0], [0, 1]])
    assert cm_lib.summarize(np.zeros((2, 2), int), ["a", "b"])["accuracy"] == 0.0
    with pytest.raises(ValueError, match="outside"):
        cm_lib.confusion_matrix([0, 3], [0, 0], 3)


def test_piece_aggregation_averages_window_probabilities(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    pieces = np.array([5, 5, 5, 2, 2])
    labels = np.array([0, 0, 0, 1, 1])
    ids, mean, piece_labels = cm_lib.aggregate_pieces(probs, pieces, labels)
    np.testing.assert_array_equal(ids, [2, 5])
    np.testing.assert_allclose(mean, [[0.35, 0.65], [1.4 / 3, 1.6 / 3]])
    np.testing.assert_array_equal(piece_labels, [1, 0])
    # Windows: 2 of 5 right; pieces: piece 2 right, piece 5 wrong (its mean favours class 1).
    assert (mean.argmax(-1) == piece_labels).tolist() == [True, False]
    with pytest.raises(ValueError, match="piece 5"):
        cm_lib.aggregate_pieces(probs, pieces, np.array([0, 1, 0, 1, 1]))
    path = tmp_path / "cm.png"
    cm_lib.plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], str(path), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- configs


def test_config_variants():
    for arg in ("melody", "velocity", "composer", "emotion", "folder", "folder_note", "demo_note", "demo_sequence",
                "melody,size=tiny,runlocal", "composer,reference,scratch"):
        config_loading.load_config("configs/finetune.py:" + arg)
    velocity = config_loading.load_config("configs/finetune.py:velocity")
    assert velocity.augment.blank_velocity and velocity.task.name == "velocity"
    folder = config_loading.load_with_overrides("configs/finetune.py:folder", [("data.root", "/data/mine")])
    assert folder.task.name == "folder_sequence" and folder.data.root == "/data/mine"
    ref = config_loading.load_config("configs/finetune.py:composer,reference")
    assert ref.augment.eval_mask and ref.augment.eval_pitch_shift and ref.augment.reference_last_example_only
    assert ref.model.sequence_pooling.include_pads and ref.train.improvement == "accuracy_or_loss"
    clean = config_loading.load_config("configs/finetune.py:melody")
    assert not clean.augment.eval_mask and not clean.augment.eval_pitch_shift and not clean.train.from_scratch
    local = config_loading.load_config("configs/finetune.py:demo_note,runlocal,scratch")
    assert local.model.size == "tiny" and local.model.max_len == local.data.max_len == 256 and local.train.from_scratch
    with pytest.raises(ConfigError, match="unknown task"):
        config_loading.load_config("configs/finetune.py:nope")
    with pytest.raises(ConfigError, match="modifier"):
        config_loading.load_config("configs/finetune.py:melody,bogus")


def test_training_without_weights_needs_scratch(tmp_path):
    config = tiny_config("melody")
    with pytest.raises(ConfigError, match="init_from.*scratch"):
        finetune.train_and_evaluate(config, str(tmp_path / "run"), data=finetune.Data([], []), task=NOTE_TASK)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- a note task


@pytest.fixture(scope="module")
def note_run(tmp_path_factory):
    """Phase 1: 4 steps learning (evaluations at 2, 4; no early stopping). Phase 2, resumed: learning
    rate 0, so the validation accuracy stays put and the run stops early (patience 1) at step 6 of 12."""
    workdir = str(tmp_path_factory.mktemp("note_run"))
    data = finetune.Data(make_source(32, "note"), make_source(12, "note", seed=1))
    first = finetune.train_and_evaluate(
        tiny_config("melody,scratch", steps=4, eval_every=2, patience=0), workdir, data=data, task=NOTE_TASK
    )
    config = tiny_config("melody,scratch", steps=12, eval_every=2, patience=1)
    config.optim.learning_rate = 0.0
    second = finetune.train_and_evaluate(config, workdir, data=data, task=NOTE_TASK)
    return workdir, data, first, second


def test_note_training_resumes_keeps_the_best_and_stops_early(note_run):
    workdir, data, first, second = note_run
    assert first["origin"] == "scratch" and first["stopped"] == "done"
    assert second["origin"] == "resumed" and second["stopped"] == "early"
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # resumed at 5, stopped after 6
    evals = {r["step"]: r["eval/accuracy"] for r in records if "eval/accuracy" in r}
    assert sorted(evals) == [2, 4, 6]
    assert evals[6] == evals[4]  # learning rate 0
    best_step = max(sorted(evals), key=lambda s: (evals[s], -s))
    assert second["best_step"] == best_step and second["best_accuracy"] == pytest.approx(evals[best_step])
    with Run.open(workdir) as run:
        assert run.best_step == best_step and run.latest_step == 6
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["task"]["level"] == "note" and saved["task"]["class_names"] == list(NOTE_TASK.class_names)
    # Stopped early: running again does nothing.
    again = finetune.train_and_evaluate(tiny_config("melody,scratch", steps=12, eval_every=2, patience=1), workdir,
                                        data=data, task=NOTE_TASK)
    assert again["stopped"] == "early" and again["best_step"] == best_step
    assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r] == train_steps


def test_evaluation_is_deterministic_and_written(note_run):
    workdir, data, _, second = note_run
    a = evaluation.evaluate_workdir(workdir, "validation", source=data.valid)
    b = evaluation.evaluate_workdir(workdir, "validation", source=data.valid)
    assert a == b
    assert a["step"] == second["best_step"] and a["accuracy"] == pytest.approx(second["best_accuracy"])
    with open(os.path.join(workdir, "eval_validation.json"), encoding="utf-8") as f:
        written = json.load(f)
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert key in written
    assert set(written["per_class"]) == set(NOTE_TASK.class_names)
    notes = sum(int((np.asarray(e["labels"]) >= 0).sum()) for e in data.valid)
    assert np.asarray(written["confusion_matrix"]).sum() == notes == written["count"]  # every note, once
    with open(os.path.join(workdir, "eval_validation_confusion.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluation_views_run_the_model_on_each_cut_and_average(note_run):
    """One view is the plain evaluation; two views average, per note, the model's probabilities from two cuts."""
    from midibert_jax.train import note_views  # pylint: disable=import-outside-toplevel

    workdir, data, _, _ = note_run
    config, step = evaluation.read_run(workdir)
    trainer = finetune.FinetuneTrainer(config, NOTE_TASK)
    params = evaluation.restore_params(workdir, step, trainer.abstract_state.params)
    valid = []  # as a build stores them: one window a piece, its bars re-based to start at 0
    for e in data.valid:
        tokens = np.array(e["tokens"])
        real = tokens[:, vocab.BAR] != vocab.PAD_ROW[vocab.BAR]
        tokens[real, vocab.BAR] -= tokens[0, vocab.BAR]
        valid.append({**e, "tokens": tokens})
    bars = {int(e["piece_id"]): [0] for e in valid}
    plain = trainer.evaluate(params, valid)
    one = trainer.evaluate_views(params, valid, bars, 1)
    assert one["confusion_matrix"] == plain["confusion_matrix"] and one["count"] == plain["count"]
    assert one["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    two = trainer.evaluate_views(params, valid, bars, 2)
    assert two["count"] == plain["count"] and two["eval_views"] == 2
    piece = note_views.gather_pieces(valid[:1], bars)[0]  # by hand: its notes in windows [0, 16) and [16, n)
    n = len(piece.rows)
    assert 16 < n <= L

    def rebased(a, b):
        rows = piece.rows[a:b].copy()
        rows[:, vocab.BAR] -= rows[0, vocab.BAR]
        return windows_lib.pad_window(rows, L)

    cut = np.stack([rebased(0, 16), rebased(16, n)])
    halves = trainer.note_probabilities(params, cut)
    whole = trainer.note_probabilities(params, windows_lib.pad_window(piece.rows, L)[None])[0, :n]
    by_hand = (whole + np.concatenate([halves[0, :16], halves[1, : n - 16]])) / 2
    np.testing.assert_allclose(note_views.averaged_probabilities(
        lambda w: trainer.note_probabilities(params, w), [piece], L, 2)[0], by_hand, rtol=1e-5, atol=1e-6)


def test_reference_evaluation_is_repeatable(note_run):
    """The reference's masking and pitch shift at evaluation use a fixed key: two evaluations agree."""
    workdir, data, _, _ = note_run
    config, step = evaluation.read_run(workdir)
    config.augment.eval_mask = config.augment.eval_pitch_shift = True
    trainer = finetune.FinetuneTrainer(config, NOTE_TASK)
    params = evaluation.restore_params(workdir, step, trainer.abstract_state.params)
    a, b = trainer.evaluate(params, data.valid), trainer.evaluate(params, data.valid)
    assert a == b
    clean = evaluation.evaluate_workdir(workdir, "validation", source=data.valid, write=False)
    assert a["count"] < clean["count"]  # the masked notes are left out


# ----------------------------------------------------------------------------- a sequence task


def test_sequence_task_classifies_windows_and_pieces(tmp_path):
    data = finetune.Data(make_source(16, "sequence", windows_per_piece=2), make_source(12, "sequence", seed=2,
                                                                                      windows_per_piece=3))
    config = tiny_config("composer,scratch", steps=2, eval_every=2)
    result = finetune.train_and_evaluate(config, str(tmp_path), data=data, task=SEQ_TASK)
    last = result["last_eval"]
    assert last["count"] == 12 and last["num_pieces"] == 4
    for key in ("accuracy", "window_accuracy", "piece_accuracy", "macro_f1", "piece_confusion_matrix"):
        assert key in last
    evaluated = evaluation.evaluate_workdir(str(tmp_path), "test", source=data.valid)
    assert evaluated["piece_accuracy"] == last["piece_accuracy"] and evaluated["accuracy"] == last["accuracy"]
    assert os.path.exists(tmp_path / "eval_test.json") and os.path.exists(tmp_path / "eval_test_piece_confusion.png")


def test_a_nonfinite_loss_stops_fine_tuning_naming_the_step_and_saves_nothing_after_it(tmp_path):
    data = finetune.Data(make_source(32, "note"), make_source(8, "note", seed=1))
    config = tiny_config("melody,scratch", steps=8, eval_every=2, patience=0)
    with pytest.raises(nonfinite.NonFiniteLossError, match=r"at step 3 \(batch of examples \[") as raised:
        finetune.train_and_evaluate(config, str(tmp_path), data=data, task=NOTE_TASK, wrap_step=nonfinite_at(3))
    # The step's 8 examples are named; the only checkpoint is the evaluation's at step 2, before the bad step.
    assert len(raised.value.args[0].split("[")[1].split("]")[0].split(",")) == 8
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2]


# ----------------------------------------------------------------------------- warm starts


def _pretrain_workdir(path, metric=0.5):
    """A pre-training workdir with one checkpoint (step 7) of a tiny state with recognisable values."""
    from midibert_jax.train import checkpointing, pretrain

    config = config_loading.load_config("configs/pretrain.py:tiny")
    config.unlock()
    tiny_model(config.model)
    config.data.max_len = L
    trainer = pretrain.Trainer(config)
    # Random values (not what an init with any seed gives), built on the host: no compilation.
    state = random_state(trainer.abstract_state, seed=1)
    with checkpointing.Checkpointer(os.path.join(path, "checkpoints"), save_every=1, keep_last=2,
                                    best_metric="eval/acc/mean") as ckpt:
        ckpt.save_now(7, state=state, mask_book=np.zeros((1, 1), np.uint8), data={"next_index": 7},
                      config=config.to_dict(), metrics={"eval/acc/mean": metric})
    return config, trainer, state


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain_run")
    config, trainer, state = _pretrain_workdir(path)
    return str(path), config, trainer, state


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def test_init_from_a_pretrain_workdir_loads_the_encoder(pretrain_run, tmp_path):
    path, pre_config, pre_trainer, pre_state = pretrain_run
    config = tiny_config("melody", init_from=path)
    config.model.hidden_size = 48  # taken from init_from instead (model_from_init)
    resolved = finetune.resolve_config(config, NOTE_TASK, str(tmp_path / "new"))
    assert resolved.model.hidden_size == 32
    trainer = finetune.FinetuneTrainer(resolved, NOTE_TASK)
    fresh = trainer.init_state()
    head = jax.device_get(fresh.params["token_head"])
    state = warm_start.load_into(fresh, path, trainer.abstract_state)
    assert _leaves_equal(state.params["encoder"], pre_state.params["encoder"])
    assert _leaves_equal(state.params["token_head"], head)
    assert not _leaves_equal(pre_state.params["encoder"], fresh.params["encoder"])
    # Shardings are the target's.
    for leaf, abstract in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(trainer.abstract_state.params)):
        assert leaf.sharding == abstract.sharding

    # Pre-training from pre-training: encoder, recoverer and masker.
    other = pre_state.replace(params=jax.tree_util.tree_map(lambda x: x + 1.0, pre_state.params))
    loaded = warm_start.load_into(other, path, pre_trainer.abstract_state)
    for group in ("encoder", "recoverer", "masker"):
        assert _leaves_equal(loaded.params[group], pre_state.params[group])

    # The wrong size without model_from_init: a clear error naming a parameter and both shapes.
    config.train.model_from_init = False
    wrong = finetune.resolve_config(config, NOTE_TASK, str(tmp_path / "new"))
    wrong_trainer = finetune.FinetuneTrainer(wrong, NOTE_TASK)
    with pytest.raises(warm_start.WarmStartError, match=r"encoder.*shape \(.*32.*\) in the source, \(.*48.*\)"):
        warm_start.load_into(fresh, path, wrong_trainer.abstract_state)


def test_init_from_an_imported_checkpoint(pretrain_run, tmp_path):
    from midibert_jax.model import imported

    path, pre_config, _, pre_state = pretrain_run
    out = imported.save_imported(tmp_path / "imported", {"encoder": jax.device_get(pre_state.params["encoder"])},
                                 pre_config.model, kind="encoder")
    config = tiny_config("composer", init_from=str(out))
    resolved = finetune.resolve_config(config, SEQ_TASK, str(tmp_path / "new"))
    trainer = finetune.FinetuneTrainer(resolved, SEQ_TASK)
    state = warm_start.load_into(random_state(trainer.abstract_state), str(out), trainer.abstract_state)
    assert _leaves_equal(state.params["encoder"], pre_state.params["encoder"])


def test_pretrain_workdir_evaluation(pretrain_run):
    path, _, _, _ = pretrain_run
    source = [{k: v for k, v in e.items() if k != "labels"} for e in make_source(8, "note", seed=3)]
    result = evaluation.evaluate_workdir(path, source=source)
    assert result["kind"] == "pretrain" and result["step"] == 7
    for field in vocab.FIELDS:
        assert 0.0 <= result[f"eval/accuracy/{field}"] <= 1.0
    with open(os.path.join(path, "eval_validation.json"), encoding="utf-8") as f:
        assert json.load(f)["eval/accuracy"] == pytest.approx(result["eval/accuracy"])


def test_workdir_without_checkpoint_is_a_clear_error(tmp_path):
    from midibert_jax.commands import evaluate

    empty = tmp_path / "empty"
    empty.mkdir()
    for workdir in (empty, tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match=f"{workdir}: no checkpoint found"):
            evaluation.evaluate_workdir(str(workdir))
    (empty / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        evaluate.run(_namespace(workdir=str(empty), split=None, step="best", max_batches=0))
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        warm_start.load_into(None, str(empty), None)


def _namespace(**kwargs):
    import argparse

    return argparse.Namespace(config_overrides=[], **kwargs)


def test_probe_trains_only_the_head_on_a_subset_of_the_pieces(tmp_path, capsys):
    """train.freeze_encoder: the encoder's weights do not move (no update, no weight decay), the head's do;
    train.piece_fraction: the run sees whole pieces, a seeded fifth of them (4 of 20, 2 windows each)."""
    config = tiny_config("melody,scratch,probe", steps=2, eval_every=2, piece_fraction=0.2)
    assert config.train.freeze_encoder
    config.optim.weight_decay = 0.5
    data = finetune.Data(make_source(40, "note", windows_per_piece=2), make_source(8, "note", seed=1))
    workdir = str(tmp_path / "probe")
    finetune.train_and_evaluate(config, workdir, data=data, task=NOTE_TASK)
    assert "8 training windows (4 pieces: 0.2 of the split's)" in capsys.readouterr().out
    trainer = finetune.FinetuneTrainer(finetune.resolve_config(config, NOTE_TASK, workdir), NOTE_TASK)
    initial = trainer.init_state()
    trained = evaluation.restore_params(workdir, 2, trainer.abstract_state.params)
    assert _leaves_equal(trained["encoder"], initial.params["encoder"])
    assert not _leaves_equal(trained["token_head"], initial.params["token_head"])


def test_piece_fraction_is_validated():
    config = tiny_config("melody,scratch", piece_fraction=0.0)
    with pytest.raises(ConfigError, match=r"train.piece_fraction=0.0 must be in \(0, 1\]"):
        finetune.config_validation.validate(config, num_devices=1)
