"""Fine-tuning: token and sequence classifiers on the shared encoder; one jitted, sharded step; the loop.

    train_and_evaluate(config, workdir)                 # configs/finetune.py
    evaluate_workdir(workdir, split="test")             # eval_<split>.json + confusion PNG

Resume order (written where it happens, in `_initial_state`): the newest readable checkpoint in the
workdir, else `config.train.init_from` (the encoder of a pre-training workdir or of an imported
PyTorch checkpoint, `warm_start`), else scratch (only with `train.from_scratch`, the 'scratch'
modifier). A checkpoint holds the state, the data position and the early-stopping record, so a
resumed run continues exactly; a run that stopped early stays stopped (one that used up its step
budget continues when given a larger one).

The step (`make_train_step`), for a global batch of windows:
  velocity blanking (velocity task) -> pitch shift -> mask fine-tuning (augment.py, per example)
  -> classifier on the transformed input (attention mask of the clean input) -> cross-entropy ->
  one AdamW update. Note tasks score every labelled (label >= 0) note not selected by mask
  fine-tuning; sequence tasks score each window with its piece's label. A non-finite loss or gradient
  leaves the state unchanged and stops the loop naming the step and the examples.

Evaluation (`FinetuneTrainer.evaluate`) is clean and deterministic by default (the reference's
masking / pitch shift at evaluation are `augment.eval_*` switches, with a fixed key). Note tasks
cover every note of every window; sequence tasks classify every window and average the window
probabilities per piece: `accuracy` is per window, `piece_accuracy` per piece. Every evaluation
saves a checkpoint; orbax keeps the best by validation accuracy besides the last few. Early stopping
after `train.patience` evaluations without improvement.

Batches: {"tokens" int32 [B, L, 8], "index" int [B], "labels" int32 [B, L] (note tasks, -1 = ignore)
or "label" int32 [B] (sequence tasks), "piece_id" int32 [B], "valid" bool [B]}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import struct

from midibert_jax import sharding
from midibert_jax.config_loading import ConfigError
from midibert_jax.data import pipeline
from midibert_jax.model import models
from midibert_jax.train import augment, checkpointing, classification_metrics, masking, metrics, optim, sharded_state
from midibert_jax.train import nonfinite, warm_start
from midibert_jax.train.nonfinite import NonFiniteLossError, check_finite  # noqa: F401 (re-exported)
from midibert_jax.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)

LEVELS = ("note", "sequence")
TARGET_KEY = {"note": "labels", "sequence": "label"}
BEST_METRIC = "eval/accuracy"
IMPROVEMENTS = ("accuracy", "accuracy_or_loss")


# ----------------------------------------------------------------------------- task and state


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What the trainer needs to know about a task: its name, level and class names (class id order)."""

    name: str
    level: str
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"task {self.name!r}: level must be one of {LEVELS}, got {self.level!r}")
        if len(self.class_names) < 2:
            raise ValueError(f"task {self.name!r}: needs at least two classes, got {list(self.class_names)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def target_key(self) -> str:
        return TARGET_KEY[self.level]

    @classmethod
    def from_config(cls, task_config) -> "TaskInfo | None":
        """From a config's `task` block when it records level and class names (a saved run), else None."""
        level = task_config.get("level", "")
        names = tuple(task_config.get("class_names", ()) or ())
        return cls(task_config["name"], level, names) if level and names else None


def task_info(config: ml_collections.ConfigDict, dataset_dir: str = "") -> TaskInfo:
    """The task of a config: recorded in `config.task` (saved runs), else from the built dataset
    (`tasks.dataset_task`, the class names it was built with), else from the task registry."""
    recorded = TaskInfo.from_config(config.task)
    if recorded is not None:
        return recorded
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel

    task = tasks.dataset_task(dataset_dir) if dataset_dir else tasks.get_task(config.task.name, config.data)
    return TaskInfo(config.task.name, task.level, tuple(task.class_names))


@struct.dataclass
class FinetuneState:
    """Everything the fine-tuning step reads and writes.

    Attributes:
      step: int32 scalar, optimiser updates applied.
      params: {"encoder": ..., "token_head" | "sequence_head": ...}.
      opt_state: the optax state of `tx`.
      rng: uint32 [2] raw key data; `step_key()` folds in the step.
      tx: the optax transformation (static, not saved).
    """

    step: jax.Array
    params: dict[str, Any]
    opt_state: optax.OptState
    rng: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, params: dict[str, Any], tx: optax.GradientTransformation, seed: int) -> "FinetuneState":
        return cls(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed)), tx=tx,
        )

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def apply_gradients(self, grads: dict[str, Any]) -> "FinetuneState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state)


def build_model(model_config: ml_collections.ConfigDict, task: TaskInfo):
    """TokenClassifier (note tasks) or SequenceClassifier (sequence tasks) with task.num_classes outputs."""
    if task.level == "note":
        return models.build_token_classifier(model_config, task.num_classes)
    return models.build_sequence_classifier(model_config, task.num_classes)


# ----------------------------------------------------------------------------- the steps


def score_weights(level: str, targets: jax.Array, selected: jax.Array | None, cfg: augment.AugmentConfig,
                  valid: jax.Array | None = None) -> jax.Array:
    """bool [B, L] (note) or [B] (sequence): what the loss and the metrics count."""
    if level == "note":
        weights = augment.loss_weights(targets, selected, cfg)
        return weights if valid is None else weights & valid[:, None]
    weights = targets >= 0
    return weights if valid is None else weights & valid


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Sums over the weighted items: {"loss", "correct", "count"} (float32 scalars). logits [..., C]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    t = jnp.maximum(targets, 0)
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    return {
        "loss": jnp.sum(nll * w),
        "correct": jnp.sum((jnp.argmax(logits, -1) == t) * w),
        "count": jnp.sum(w),
    }


def make_train_step(model, level: str, aug_cfg: augment.AugmentConfig, inject_nonfinite_at: int = -1):
    """(state, batch) -> (state, metrics). Pure; jit it with shardings and donation."""
    target_key = TARGET_KEY[level]

    def train_step(state: FinetuneState, batch: dict[str, jax.Array]):
        tokens, index, targets = batch["tokens"], batch["index"], batch[target_key]
        nonpad = masking.non_pad(tokens)
        k_aug, k_dropout = jax.random.split(state.step_key())
        x = augment.transform(k_aug, tokens, index, aug_cfg, train=True)
        weights = score_weights(level, targets, x.selected, aug_cfg)

        def loss_fn(params):
            logits = model.apply({"params": params}, x.tokens, nonpad, deterministic=False, rngs={"dropout": k_dropout})
            sums = cross_entropy_sums(logits, targets, weights)
            loss = sums["loss"] / jnp.maximum(sums["count"], 1.0)
            if inject_nonfinite_at >= 0:
                loss = loss * jnp.where(state.step == inject_nonfinite_at, jnp.nan, 1.0)
            return loss, sums

        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, grad_norm, finite = nonfinite.guarded_update(state, loss, grads)
        out = {
            "loss": loss,
            "acc": sums["correct"] / jnp.maximum(sums["count"], 1.0),
            "scored": sums["count"],
            "norm/grad": grad_norm,
            "norm/param": optax.tree.norm(new_state.params),
            "finite": finite,
        }
        if x.selected is not None:
            out["mask/selected_fraction"] = x.selected.sum() / jnp.maximum(nonpad.sum(), 1)
        return new_state, out

    return train_step


def make_eval_step(model, level: str, aug_cfg: augment.AugmentConfig, num_classes: int):
    """(params, batch) -> sums {"loss", "correct", "count"} and, per level, "confusion" int32 [C, C]
    (note) or per-window "probs" [B, C], "label", "piece_id", "valid" (sequence)."""
    target_key = TARGET_KEY[level]

    def eval_step(params, batch):
        tokens, index, targets, valid = batch["tokens"], batch["index"], batch[target_key], batch["valid"]
        nonpad = masking.non_pad(tokens)
        x = augment.transform(jax.random.key(aug_cfg.eval_seed), tokens, index, aug_cfg, train=False)
        logits = model.apply({"params": params}, x.tokens, nonpad, deterministic=True)
        weights = score_weights(level, targets, x.selected, aug_cfg, valid)
        out = cross_entropy_sums(logits, targets, weights)
        if level == "note":
            true = jax.nn.one_hot(jnp.maximum(targets, 0), num_classes, dtype=jnp.int32) * weights[..., None]
            pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
            out["confusion"] = jnp.einsum("blc,bld->cd", true, pred)
        else:
            out["probs"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            out["label"] = targets
            out["piece_id"] = batch["piece_id"]
            out["valid"] = weights
        return out

    return eval_step


# ----------------------------------------------------------------------------- the trainer


@dataclasses.dataclass
class Data:
    train: Any  # data sources of windows with labels
    valid: Any
    test: Any = None
    dataset_dir: str = ""


def load_data(config: ml_collections.ConfigDict, splits: Sequence[str] = ("train", "validation", "test")) -> Data:
    """Builds the task's dataset on first use (midibert_jax.data.prepare) and opens its splits."""
    from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel

    dataset_dir = prepare.prepare(config.data)
    sources = {}
    for split in splits:
        try:
            sources[split] = pipeline.load_split(dataset_dir, split)
        except KeyError:
            if split == "train" or split == "validation":
                raise
            sources[split] = None
    return Data(sources.get("train"), sources.get("validation"), sources.get("test"), os.fspath(dataset_dir))


@dataclasses.dataclass
class FinetuneTrainer:
    """Everything built once for a run: mesh, model, compiled steps. `total_steps` sizes the schedule."""

    config: ml_collections.ConfigDict
    task: TaskInfo
    total_steps: int = 0
    mesh: Any = None
    rules: Any = None

    def __post_init__(self):
        cfg = self.config
        self.aug_cfg = augment.AugmentConfig.from_config(cfg.augment)
        if self.task.name == "velocity" and not self.aug_cfg.blank_velocity:
            log.warning("velocity task: blanking the input's velocity field although augment.blank_velocity is off")
            self.aug_cfg = dataclasses.replace(self.aug_cfg, blank_velocity=True)
        self.mesh = self.mesh or sharding.make_mesh(cfg.mesh)
        self.rules = self.rules or sharding.logical_rules(cfg.model)
        self.model = build_model(cfg.model, self.task)
        optim_cfg = ml_collections.ConfigDict(cfg.optim.to_dict())
        optim_cfg.total_steps = cfg.optim.total_steps or max(self.total_steps, cfg.optim.warmup_steps + 1)
        self.tx, self.schedule = optim.make_optimizer(optim_cfg)
        self.abstract_state, self.state_shardings, self._init_state = sharded_state.abstract_train_state(
            cfg, self.model, self.tx, self.mesh, self.rules, create=FinetuneState.create
        )
        level, target = self.task.level, self.task.target_key
        one_d = sharding.batch_sharding(self.mesh, self.rules, 1)
        self.batch_shardings = {
            "tokens": sharding.batch_sharding(self.mesh, self.rules, 3),
            "index": one_d,
            "piece_id": one_d,
            "valid": one_d,
            target: sharding.batch_sharding(self.mesh, self.rules, 2 if level == "note" else 1),
        }
        self.train_keys = ("tokens", "index", target)
        self.eval_keys = ("tokens", "index", target, "piece_id", "valid")
        replicated = sharded_state.replicated(self.mesh)
        self.train_step = jax.jit(
            make_train_step(self.model, level, self.aug_cfg, cfg.train.inject_nonfinite_at_step),
            in_shardings=(self.state_shardings, {k: self.batch_shardings[k] for k in self.train_keys}),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            make_eval_step(self.model, level, self.aug_cfg, self.task.num_classes),
            in_shardings=(self.state_shardings.params, {k: self.batch_shardings[k] for k in self.eval_keys}),
            out_shardings=replicated,
        )

    def init_state(self) -> FinetuneState:
        """A fresh state (random encoder and head), born sharded."""
        if not hasattr(self, "_jit_init"):
            self._jit_init = jax.jit(self._init_state, static_argnums=0, out_shardings=self.state_shardings)
        with sharding.activate(self.mesh, self.rules):
            return self._jit_init(self.config.seed)

    def put_batch(self, batch: dict[str, np.ndarray], keys: Sequence[str]) -> dict[str, jax.Array]:
        """This process' rows -> global arrays sharded over the batch axes."""
        if self.task.target_key not in batch:
            raise KeyError(
                f"the batches have no '{self.task.target_key}' (keys {sorted(batch)}): is this a "
                f"{self.task.level}-level dataset of task {self.task.name!r}?"
            )
        arrays = {}
        for k in keys:
            if k == "valid":
                arrays[k] = np.asarray(batch[k], bool) if k in batch else np.ones(len(batch["tokens"]), bool)
            else:
                arrays[k] = np.asarray(batch[k], np.int32)
        return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], arrays[k]) for k in keys}

    def compile_train_step(self) -> tuple[Any, dict[str, Any]]:
        """AOT-compiles the train step: (the compiled step, {compile seconds, FLOPs, memory per device})."""
        B, L = self.config.data.batch_size, self.config.data.max_len
        shapes = {"tokens": (B, L, 8), "index": (B,), self.task.target_key: (B, L) if self.task.level == "note" else (B,)}
        batch = {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=self.batch_shardings[k]) for k, s in shapes.items()}
        t0 = time.perf_counter()
        with sharding.activate(self.mesh, self.rules):
            compiled = self.train_step.lower(self.abstract_state, batch).compile()
        return compiled, {"compile_seconds": time.perf_counter() - t0, **sharded_state.compile_stats(compiled)}

    def evaluate(self, params, source, max_batches: int = 0) -> dict[str, Any]:
        """Metrics over `source` (every window, in order): see `summarize_eval`."""
        data_cfg = self.config.data
        it = pipeline.eval_iterator(
            source, global_batch_size=data_cfg.eval_batch_size, num_threads=data_cfg.read_threads,
            prefetch=data_cfg.prefetch,
        )
        outputs = []
        with sharding.activate(self.mesh, self.rules):
            for i, batch in enumerate(it):
                if max_batches and i >= max_batches:
                    break
                outputs.append(self.eval_step(params, self.put_batch(batch, self.eval_keys)))
        return summarize_eval(jax.device_get(outputs), self.task)


def summarize_eval(outputs: list[dict[str, np.ndarray]], task: TaskInfo) -> dict[str, Any]:
    """Per-batch evaluation outputs -> JSON-ready metrics.

    Keys: accuracy, macro_f1, per_class, confusion_matrix, count, loss; sequence tasks add
    piece_accuracy, piece_macro_f1, piece_per_class, piece_confusion_matrix, num_pieces (windows
    averaged per piece) and window_accuracy (= accuracy).
    """
    loss = sum(float(o["loss"]) for o in outputs)
    count = sum(float(o["count"]) for o in outputs)
    if task.level == "note":
        cm = sum((np.asarray(o["confusion"], np.int64) for o in outputs), np.zeros((task.num_classes,) * 2, np.int64))
        result = classification_metrics.summarize(cm, task.class_names)
    else:
        valid = np.concatenate([np.asarray(o["valid"], bool) for o in outputs]) if outputs else np.zeros(0, bool)
        probs = np.concatenate([o["probs"] for o in outputs])[valid] if outputs else np.zeros((0, task.num_classes))
        labels = np.concatenate([o["label"] for o in outputs])[valid] if outputs else np.zeros(0, np.int64)
        pieces = np.concatenate([o["piece_id"] for o in outputs])[valid] if outputs else np.zeros(0, np.int64)
        cm = classification_metrics.confusion_matrix(labels, probs.argmax(-1), task.num_classes)
        result = classification_metrics.summarize(cm, task.class_names)
        result["window_accuracy"] = result["accuracy"]
        _, piece_probs, piece_labels = classification_metrics.aggregate_pieces(probs, pieces, labels)
        piece = classification_metrics.summarize(
            classification_metrics.confusion_matrix(piece_labels, piece_probs.argmax(-1), task.num_classes),
            task.class_names,
        )
        result.update({
            "piece_accuracy": piece["accuracy"], "piece_macro_f1": piece["macro_f1"],
            "piece_per_class": piece["per_class"], "piece_confusion_matrix": piece["confusion_matrix"],
            "num_pieces": piece["count"],
        })
    result["loss"] = loss / count if count else float("nan")
    return result


def eval_scalars(result: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The scalar entries of an evaluation result, for the metrics writer."""
    keys = ("accuracy", "macro_f1", "loss", "piece_accuracy", "piece_macro_f1")
    return {prefix + k: float(result[k]) for k in keys if k in result}


# ----------------------------------------------------------------------------- set-up


def _has_checkpoint(workdir: str) -> bool:
    try:
        warm_start.find_step(workdir, "latest")
        return True
    except FileNotFoundError:
        return False


def resolve_config(config: ml_collections.ConfigDict, task: TaskInfo, workdir: str) -> ml_collections.ConfigDict:
    """A locked copy of `config` with the task recorded and the encoder architecture settled.

    The architecture comes from the workdir's own checkpoint when resuming, else (with
    train.model_from_init) from train.init_from's recorded model config.
    """
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.task.level = task.level
    cfg.task.class_names = tuple(task.class_names)
    source = None
    if _has_checkpoint(workdir):
        source = workdir
    elif cfg.train.init_from and cfg.train.model_from_init:
        source = cfg.train.init_from
    if source is not None:
        model = warm_start.source_model_config(source, "latest" if source == workdir else cfg.train.init_step)
        changed = {}
        for name in warm_start.ARCHITECTURE_FIELDS:
            if name in model and name in cfg.model and model[name] != cfg.model[name]:
                changed[name] = (cfg.model[name], model[name])
                cfg.model[name] = model[name]
        if changed:
            log.info("model architecture from %s: %s", source, {k: v[1] for k, v in changed.items()})
    if cfg.data.max_len > cfg.model.max_len:
        raise ConfigError(f"data.max_len {cfg.data.max_len} exceeds the model's max_len {cfg.model.max_len}")
    if cfg.train.improvement not in IMPROVEMENTS:
        raise ConfigError(f"train.improvement must be one of {IMPROVEMENTS}, got {cfg.train.improvement!r}")
    cfg.lock()
    return cfg


def _new_record(start: int = 0) -> dict[str, Any]:
    """The early-stopping record saved with every checkpoint (JSON)."""
    return {"next_index": start, "best_accuracy": None, "best_loss": None, "best_step": None, "bad_evals": 0,
            "stopped": ""}


def _initial_state(trainer: FinetuneTrainer, ckpt: checkpointing.Checkpointer):
    """Resume order: workdir checkpoint, else config.train.init_from, else scratch (checked by the caller)."""
    cfg = trainer.config
    restored = ckpt.restore(trainer.abstract_state)
    if restored is not None:
        log.info("resuming from %s at step %d", ckpt.directory, restored.step)
        return restored.state, {**_new_record(), **dict(restored.data)}, "resumed"
    state = trainer.init_state()
    if cfg.train.init_from:
        state = warm_start.load_into(state, cfg.train.init_from, trainer.abstract_state, which=cfg.train.init_step)
        return state, _new_record(), f"encoder from {cfg.train.init_from}"
    return state, _new_record(), "scratch"


def _update_record(record: dict[str, Any], result: dict[str, Any], step: int, improvement: str) -> bool:
    """Updates best values and the bad-evaluation count; returns whether accuracy reached a new best."""
    acc, loss = float(result["accuracy"]), float(result["loss"])
    better_acc = record["best_accuracy"] is None or acc > record["best_accuracy"]
    better_loss = record["best_loss"] is None or (math.isfinite(loss) and loss < record["best_loss"])
    if better_acc:
        record["best_accuracy"], record["best_step"] = acc, step
    if better_loss and math.isfinite(loss):
        record["best_loss"] = loss
    improved = better_acc or (improvement == "accuracy_or_loss" and better_loss)
    record["bad_evals"] = 0 if improved else record["bad_evals"] + 1
    return better_acc


def write_run_files(workdir: str, config: ml_collections.ConfigDict) -> None:
    """config.json (the resolved config, task recorded) in the workdir, for people and tools."""
    if jax.process_index() == 0:
        folder = epath.Path(workdir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(config.to_json(indent=2) + "\n")


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, data: Data | None = None, task: TaskInfo | None = None
) -> dict[str, Any]:
    """Fine-tunes per `config`, writing checkpoints and metrics to `workdir`.

    Args:
      config: configs/finetune.py's config.
      workdir: the run folder (created; resumed when it holds checkpoints).
      data: the training and validation data sources (default: the task's dataset, built on first use).
      task: name, level and class names (default: recorded in config.task, else midibert_jax.data.tasks).
    Returns:
      {"best_step", "best_accuracy", "stopped" ('' | 'early' | 'preempted' | 'done'), "last_eval", "origin"}.
    """
    if "://" not in workdir:  # orbax needs absolute local paths
        workdir = os.path.abspath(os.path.expanduser(workdir))
    if not config.train.init_from and not config.train.from_scratch and not _has_checkpoint(workdir):
        raise ConfigError(
            "no pre-trained weights: set --config.train.init_from=<pre-training workdir or imported checkpoint>, "
            "or add the 'scratch' modifier (e.g. configs/finetune.py:melody,scratch) to train from scratch"
        )
    if data is None:
        data = load_data(config, splits=("train", "validation"))
    task = task or task_info(config, data.dataset_dir)
    cfg = resolve_config(config, task, workdir)
    primary = jax.process_index() == 0
    plan = pipeline.train_plan(
        data.train, global_batch_size=cfg.data.batch_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    total_steps = cfg.train.steps or cfg.train.epochs * plan.steps_per_epoch
    eval_every = cfg.train.eval_every or plan.steps_per_epoch
    trainer = FinetuneTrainer(cfg, task, total_steps=total_steps)
    write_run_files(workdir, cfg)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=eval_every, keep_last=cfg.train.keep_checkpoints,
        best_metric=BEST_METRIC, best_mode="max",
    )
    writer = metrics.MetricsWriter(workdir)
    guard = PreemptionGuard().install()
    bar = None
    try:
        state, record, origin = _initial_state(trainer, ckpt)
        start = int(jax.device_get(state.step))
        if record.get("next_index", start) != start:
            raise RuntimeError(f"checkpoint data position {record['next_index']} does not match the train step {start}")
        summary = {"origin": origin, "last_eval": {}}
        if record["stopped"] == "done" and start < total_steps:
            record["stopped"] = ""  # finished an earlier, shorter budget: continue
        if record["stopped"] == "early" or start >= total_steps:
            if primary:
                print(f"[finetune] {workdir}: already finished at step {start} ({record['stopped'] or 'done'}); "
                      f"best validation accuracy {record['best_accuracy']} at step {record['best_step']}")
            return {**summary, **_result(record)}
        train_step, report = trainer.compile_train_step()
        if primary:
            print(f"[finetune] {task.name} ({task.level}, {task.num_classes} classes) {origin} at step {start}; "
                  f"{jax.device_count()} devices; {len(data.train)} training windows, {plan.steps_per_epoch} steps/epoch, "
                  f"at most {total_steps} steps, evaluation every {eval_every}; compiled in "
                  f"{report['compile_seconds']:.1f} s, {report.get('peak_bytes_estimate', 0) / 2**20:.0f} MiB/device")
        it = pipeline.train_iterator(
            data.train, global_batch_size=cfg.data.batch_size, seed=cfg.seed, start_step=start,
            num_threads=cfg.data.read_threads, prefetch=cfg.data.prefetch,
        )
        bar = metrics.progress_bar(total_steps, initial=start, desc=f"finetune {task.name}")
        pending = None
        t_last, t_last_step = time.perf_counter(), start

        def save(step_done: int, eval_metrics=None, now: bool = False):
            record["next_index"] = step_done
            items = dict(state=state, mask_book=np.zeros((1, 1), np.uint8), data=dict(record), config=cfg.to_dict())
            if now:
                ckpt.save_now(step_done, metrics=eval_metrics, **items)
            else:
                ckpt.save(step_done, metrics=eval_metrics, force=True, **items)

        with sharding.activate(trainer.mesh, trainer.rules):
            for step in range(start, total_steps):
                batch = next(it)
                state, step_metrics = train_step(state, trainer.put_batch(batch, trainer.train_keys))
                if pending is not None:
                    check_finite(*pending)
                pending = (step, np.asarray(batch["index"]), step_metrics)
                done = step + 1
                is_log = done % cfg.train.log_every == 0 or done == total_steps
                is_eval = done % eval_every == 0 or done == total_steps
                if is_log or is_eval:
                    check_finite(*pending)
                    pending = None
                if is_log:
                    scalars = {f"train/{k}": float(v) for k, v in jax.device_get(step_metrics).items()}
                    now = time.perf_counter()
                    scalars.update({
                        "perf/step_time_s": (now - t_last) / max(done - t_last_step, 1),
                        "optim/learning_rate": float(trainer.schedule(done)),
                        "epoch": done / plan.steps_per_epoch,
                    })
                    t_last, t_last_step = now, done
                    writer.write(done, scalars)
                    bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", acc=f"{scalars['train/acc']:.3f}", refresh=False)
                bar.update(1)
                if is_eval:
                    result = trainer.evaluate(state.params, data.valid, cfg.train.eval_batches)
                    summary["last_eval"] = result
                    best = _update_record(record, result, done, cfg.train.improvement)
                    if cfg.train.patience and record["bad_evals"] >= cfg.train.patience:
                        record["stopped"] = "early"
                    elif done == total_steps:
                        record["stopped"] = "done"
                    writer.write(done, eval_scalars(result) | {"eval/bad_evals": record["bad_evals"]})
                    save(done, eval_metrics={BEST_METRIC: result["accuracy"]})
                    if primary:
                        extra = f", piece accuracy {result['piece_accuracy']:.4f}" if "piece_accuracy" in result else ""
                        bar.write(f"[finetune] step {done}: validation accuracy {result['accuracy']:.4f}{extra}, "
                                  f"macro-F1 {result['macro_f1']:.4f}, loss {result['loss']:.4f}"
                                  + (" (best)" if best else f" ({record['bad_evals']} without improvement)"))
                    if record["stopped"] == "early":
                        if primary:
                            bar.write(f"[finetune] early stop: {record['bad_evals']} evaluations without improvement")
                        break
                if guard.should_stop(done):
                    if pending is not None:
                        check_finite(*pending)
                    save(done, now=True)
                    if primary:
                        bar.write(f"[finetune] preemption signal: saved step {done}, exiting; rerun to resume")
                    return {**summary, **_result(record), "stopped": "preempted"}
            if pending is not None:
                check_finite(*pending)
        return {**summary, **_result(record)}
    finally:
        if bar is not None:
            bar.close()
        guard.uninstall()
        ckpt.wait()
        ckpt.close()
        writer.close()


def _result(record: dict[str, Any]) -> dict[str, Any]:
    return {"best_step": record["best_step"], "best_accuracy": record["best_accuracy"], "stopped": record["stopped"]}


# ----------------------------------------------------------------------------- evaluation of a workdir


def load_run_config(workdir: str, which: str | int = "best") -> tuple[ml_collections.ConfigDict, int]:
    """(the run's config as saved with checkpoint `which`, that step). Raises NoCheckpointError."""
    directory, step = warm_start.find_step(workdir, which)
    return ml_collections.ConfigDict(warm_start.read_run_config(directory, step)), step


def _single_process_mesh(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The saved config with a data-parallel mesh over the devices at hand (the run's mesh may not fit)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return config


def restore_params(workdir: str, step: int, abstract_params: Any) -> Any:
    """The params of checkpoint `step` of `workdir`, restored onto abstract_params' shardings."""
    directory, step = warm_start.find_step(workdir, step)
    source = warm_start.Source(workdir, "workdir", directory / str(step) / warm_start.STATE_ITEM, step, {})
    return warm_start.load_groups(source, dict(abstract_params))


def evaluate_workdir(
    workdir: str, split: str | None = None, *, which: str | int = "best", source: Any = None, max_batches: int = 0,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluates a fine-tuning or pre-training workdir; writes eval_<split>.json (and a confusion PNG).

    Fine-tuning: accuracy, macro-F1, per-class P/R/F1, confusion matrix (and piece-level metrics for
    sequence tasks) on `split` (default 'test'). Pre-training: per-field masked-token accuracy on the
    validation split (pretrain.Trainer.evaluate).

    Args:
      workdir: the run folder.
      split: 'train', 'validation' or 'test'.
      which: checkpoint step: 'best' (by validation accuracy), 'latest' or a number.
      source: the data source to evaluate (default: the split of the run's dataset).
      max_batches: at most this many batches (0: all).
      write: write the JSON and PNG files into the workdir.
    Raises:
      warm_start.NoCheckpointError: the workdir holds no checkpoint.
    """
    config, step = load_run_config(workdir, which)
    config = _single_process_mesh(config)
    if "task" not in config:
        return _evaluate_pretrain_workdir(workdir, config, step, split, source, max_batches, write)
    task = task_info(config)
    split = split or "test"
    if source is None:
        from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel

        dataset_dir = prepare.prepare(config.data)
        try:
            source = pipeline.load_split(dataset_dir, split)
        except KeyError as e:
            raise ConfigError(f"the dataset of {workdir} has no {split!r} split ({dataset_dir})") from e
    trainer = FinetuneTrainer(config, task)
    params = restore_params(workdir, step, trainer.abstract_state.params)
    result = trainer.evaluate(params, source, max_batches)
    result = {"task": task.name, "split": split, "step": step, "class_names": list(task.class_names), **result}
    if write and jax.process_index() == 0:
        folder = epath.Path(workdir)
        (folder / f"eval_{split}.json").write_text(json.dumps(result, indent=2) + "\n")
        classification_metrics.plot_confusion(
            np.asarray(result["confusion_matrix"]), task.class_names, folder / f"eval_{split}_confusion.png",
            title=f"{task.name} {split}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}",
        )
        if "piece_confusion_matrix" in result:
            classification_metrics.plot_confusion(
                np.asarray(result["piece_confusion_matrix"]), task.class_names,
                folder / f"eval_{split}_piece_confusion.png",
                title=f"{task.name} {split} pieces: accuracy {result['piece_accuracy']:.3f}",
            )
    return result


def _evaluate_pretrain_workdir(workdir, config, step, split, source, max_batches, write) -> dict[str, Any]:
    from midibert_jax.train import pretrain  # pylint: disable=import-outside-toplevel

    if split not in (None, "validation"):
        log.warning("pre-training workdirs are evaluated on the validation split (asked for %s)", split)
    split = "validation"
    if source is None:
        source = pretrain.load_data(config.data).valid
    trainer = pretrain.Trainer(config, workdir)
    params = restore_params(workdir, step, trainer.abstract_state.params)
    result = {"kind": "pretrain", "split": split, "step": step,
              **trainer.evaluate(params, source, max_batches)}
    if write and jax.process_index() == 0:
        (epath.Path(workdir) / f"eval_{split}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
