"""Fine-tuning, the objective: token and sequence classifiers on the shared encoder, on the shared loop.

    train_and_evaluate(config, workdir)                 # configs/finetune.py

The step (`make_train_step`), for a global batch of windows:
  velocity blanking (velocity task) -> pitch shift -> mask fine-tuning (augment.py, per example)
  -> classifier on the transformed input (attention mask of the clean input) -> cross-entropy ->
  one AdamW update. Note tasks score every labelled (label >= 0) note not selected by mask
  fine-tuning; sequence tasks score each window with its piece's label.

Evaluation (`FinetuneTrainer.evaluate`) is clean and deterministic by default (the reference's
masking / pitch shift at evaluation are `augment.eval_*` switches, with a fixed key). Note tasks
cover every note of every window; sequence tasks classify every window and average the window
probabilities per piece. Every evaluation saves a checkpoint (items `ITEMS`: the state, the
early-stopping record, the config); orbax keeps the best by validation accuracy besides the last
few. Early stopping after `train.patience` evaluations without improvement; a run that stopped
early stays stopped, one that used up its step budget continues when given a larger one.

Batches: {"tokens" int32 [B, L, 8], "index" int [B], "labels" int32 [B, L] (note tasks, -1 = ignore)
or "label" int32 [B] (sequence tasks), "piece_id" int32 [B], "valid" bool [B]}.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from midibert_jax import config_validation, paths
from midibert_jax import run as run_lib
from midibert_jax.config_loading import ConfigError
from midibert_jax.data import pipeline
from midibert_jax.model import models
from midibert_jax.train import augment, checkpointing, classification_metrics, hooks, loop, masking, metrics
from midibert_jax.train import nonfinite, optim, run_lock, warm_start
from midibert_jax.train import trainer as trainer_lib
from midibert_jax.train.preemption import PreemptionGuard
from midibert_jax.train.state import TrainState
from midibert_jax.train.task_info import TARGET_KEY, TaskInfo, task_info

log = logging.getLogger(__name__)

BEST_METRIC = "eval/accuracy"
# Wall-clock seconds of the run at each evaluation (compilation, training and evaluation; summed over
# resumes): validation accuracy against it is the run's time-to-accuracy curve.
ELAPSED = "time/elapsed_s"
IMPROVEMENTS = ("accuracy", "accuracy_or_loss")
ITEMS = {"state": checkpointing.ARRAYS, "early_stopping": checkpointing.JSON, "config": checkpointing.JSON}


# ----------------------------------------------------------------------------- the steps


def score_weights(level: str, targets: jax.Array, selected: jax.Array | None, cfg: augment.AugmentConfig,
                  valid: jax.Array | None = None) -> jax.Array:
    """bool [B, L] (note) or [B] (sequence): what the loss and the metrics count."""
    if level == "note":
        weights = augment.loss_weights(targets, selected, cfg)
        return weights if valid is None else weights & valid[:, None]
    weights = targets >= 0
    return weights if valid is None else weights & valid


FROZEN_GROUP = "encoder"  # what train.freeze_encoder keeps fixed (the head trains)


def frozen_labels(params) -> dict[str, Any]:
    """'frozen' for the encoder's parameters, 'trained' for the head's (optax.multi_transform labels)."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    # A boxed (logically annotated) parameter is one leaf: its moments get the same box (sharded_state).
    return {name: jax.tree.map(lambda _, n=name: "frozen" if n == FROZEN_GROUP else "trained", group,
                               is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
            for name, group in params.items()}


def make_train_step(model, level: str, aug_cfg: augment.AugmentConfig, freeze_encoder: bool = False):
    """(state, batch) -> (state, metrics). Pure; jit it with shardings and donation.

    With `freeze_encoder` no gradient flows into the encoder (XLA then drops its backward pass) and the
    optimiser leaves it unchanged (see `FinetuneTrainer`): only the head learns, a probe of the encoder.
    """
    target_key = TARGET_KEY[level]

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        tokens, index, targets = batch["tokens"], batch["index"], batch[target_key]
        nonpad = masking.non_pad(tokens)
        k_aug, k_dropout = jax.random.split(state.step_key())
        x = augment.transform(k_aug, tokens, index, aug_cfg, train=True)
        weights = score_weights(level, targets, x.selected, aug_cfg)

        def loss_fn(params):
            if freeze_encoder:
                params = {**params, FROZEN_GROUP: jax.lax.stop_gradient(params[FROZEN_GROUP])}
            logits = model.apply({"params": params}, x.tokens, nonpad, deterministic=False, rngs={"dropout": k_dropout})
            sums = classification_metrics.cross_entropy_sums(logits, targets, weights)
            return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, grad_norm, finite = nonfinite.guarded_update(state, loss, grads)
        out = {
            "train/loss": loss,
            "train/accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
            "train/scored": sums["count"],
            "train/norm/grad": grad_norm,
            "train/norm/param": optax.tree.norm(new_state.params),
            nonfinite.FLAG: finite,
        }
        if x.selected is not None:
            out["train/mask/selected_fraction"] = x.selected.sum() / jnp.maximum(nonpad.sum(), 1)
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
        out = classification_metrics.cross_entropy_sums(logits, targets, weights)
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


def make_probs_step(model, aug_cfg: augment.AugmentConfig):
    """(params, batch of tokens/index) -> {"probs" float32 [B, L, C], "index" [B]}: clean note-level predictions
    (the evaluation input: velocity blanked when the task does; no masking, no transposition)."""

    def probs_step(params, batch):
        tokens, index = batch["tokens"], batch["index"]
        x = augment.transform(jax.random.key(aug_cfg.eval_seed), tokens, index, aug_cfg, train=False)
        logits = model.apply({"params": params}, x.tokens, masking.non_pad(tokens), deterministic=True)
        return {"probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1), "index": index}

    return probs_step


class _Windows:
    """A data source of bare windows (int32 [W, L, 8]); an example's index is its position."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {"tokens": self.windows[position], "index": position, "piece_id": -1, "window": -1}


# ----------------------------------------------------------------------------- set-up


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
            if split in ("train", "validation"):
                raise
            sources[split] = None
    return Data(sources.get("train"), sources.get("validation"), sources.get("test"), os.fspath(dataset_dir))


class FinetuneTrainer(trainer_lib.Trainer):
    """The classifier of `task` and its jitted steps on the run's mesh. `total_steps` sizes the schedule;
    `wrap_step` (tests) wraps the pure train step before it is jitted."""

    def __init__(self, config: ml_collections.ConfigDict, task: TaskInfo, total_steps: int = 0, mesh=None,
                 rules=None, wrap_step: Callable[[Callable], Callable] | None = None):
        self.task = task
        self.aug_cfg = augment.AugmentConfig.from_config(config.augment)
        if task.name == "velocity" and not self.aug_cfg.blank_velocity:
            log.warning("velocity task: blanking the input's velocity field although augment.blank_velocity is off")
            self.aug_cfg = dataclasses.replace(self.aug_cfg, blank_velocity=True)
        optim_cfg = ml_collections.ConfigDict(config.optim.to_dict())
        optim_cfg.total_steps = config.optim.total_steps or max(total_steps, config.optim.warmup_steps + 1)
        tx, self.schedule = optim.make_optimizer(optim_cfg)
        self.freeze_encoder = bool(config.train.get("freeze_encoder", False))
        if self.freeze_encoder:  # no updates, and no weight decay, for the encoder
            tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, frozen_labels)
        level, target = task.level, task.target_key
        ranks = {"tokens": 3, "index": 1, "piece_id": 1, "valid": 1, target: 2 if level == "note" else 1}
        super().__init__(config, models.build_classifier(config.model, task), tx, batch_ranks=ranks, mesh=mesh,
                         rules=rules)
        self.train_keys = ("tokens", "index", target)
        self.eval_keys = ("tokens", "index", target, "piece_id", "valid")
        step = make_train_step(self.model, level, self.aug_cfg, self.freeze_encoder)
        self.train_step = self.jit_train_step(wrap_step(step) if wrap_step else step, self.train_keys)
        self.eval_step = self.jit_eval_step(make_eval_step(self.model, level, self.aug_cfg, task.num_classes),
                                            self.eval_keys)
        self._probs_step = None  # jitted on first use (evaluation views)

    def put_batch(self, batch, keys: Sequence[str]) -> dict[str, jax.Array]:
        if self.task.target_key not in batch:
            raise KeyError(
                f"the batches have no '{self.task.target_key}' (keys {sorted(batch)}): is this a "
                f"{self.task.level}-level dataset of task {self.task.name!r}?"
            )
        return super().put_batch(batch, keys)

    def compile_train_step(self) -> tuple[Any, dict[str, Any]]:
        """AOT-compiles the train step: (the compiled step, {compile seconds, FLOPs, memory per device})."""
        B, L = self.config.data.batch_size, self.config.data.max_len
        target = (B, L) if self.task.level == "note" else (B,)
        batch = self.abstract_batch({"tokens": (B, L, 8), "index": (B,), self.task.target_key: target})
        return self.compile(self.train_step, self.abstract_state, batch)

    def evaluate(self, params, source, max_batches: int = 0) -> dict[str, Any]:
        """Metrics over `source` (every window, in order): see `classification_metrics.summarize_eval`."""
        data_cfg = self.config.data
        it = pipeline.eval_iterator(source, global_batch_size=data_cfg.eval_batch_size,
                                    num_threads=data_cfg.read_threads, prefetch=data_cfg.prefetch)
        outputs = []
        with self.activate():
            for i, batch in enumerate(it):
                if max_batches and i >= max_batches:
                    break
                outputs.append(self.eval_step(params, self.put_batch(batch, self.eval_keys)))
        return classification_metrics.summarize_eval(jax.device_get(outputs), self.task)

    def note_probabilities(self, params, windows) -> Any:
        """float32 [W, L, C]: the class probabilities of every row of `windows` (note-level tasks), batched and
        sharded like evaluation; every process gets all of them."""
        if self._probs_step is None:
            self._probs_step = self.jit_eval_step(make_probs_step(self.model, self.aug_cfg), ("tokens", "index"))
        data_cfg = self.config.data
        out = np.zeros(tuple(windows.shape[:2]) + (self.task.num_classes,), np.float32)
        it = pipeline.eval_iterator(_Windows(windows), global_batch_size=data_cfg.eval_batch_size,
                                    num_threads=data_cfg.read_threads, prefetch=data_cfg.prefetch)
        with self.activate():
            for batch in it:  # the base put_batch: these batches carry no labels
                arrays = trainer_lib.Trainer.put_batch(self, batch, ("tokens", "index"))
                got = jax.device_get(self._probs_step(params, arrays))
                index = np.asarray(got["index"])
                out[index[index >= 0]] = got["probs"][index >= 0]
        return out

    def evaluate_views(self, params, source, bars, views: int, where: str = "the dataset") -> dict[str, Any]:
        """Note-level metrics over `source` with every note predicted in `views` windows (`note_views`)."""
        from midibert_jax.train import note_views  # pylint: disable=import-outside-toplevel

        return note_views.evaluate_views(lambda w: self.note_probabilities(params, w), source, bars, self.task,
                                         max_len=self.config.data.max_len, views=views, where=where)


def _has_checkpoint(workdir: str) -> bool:
    try:
        with run_lib.Run.open(workdir) as run:
            return run.latest_step is not None
    except run_lib.NoCheckpointError:
        return False


def resolve_config(config: ml_collections.ConfigDict, task: TaskInfo, workdir: str, *,
                   resuming: bool | None = None) -> ml_collections.ConfigDict:
    """A locked copy of `config` with the task recorded and the encoder architecture settled.

    The architecture comes from the workdir's own checkpoint when resuming (`resuming`: whether the
    workdir holds one, looked up when not given), else (with train.model_from_init) from
    train.init_from's recorded model config.
    """
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.task.level = task.level
    cfg.task.class_names = tuple(task.class_names)
    source = None
    if _has_checkpoint(workdir) if resuming is None else resuming:
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


# ----------------------------------------------------------------------------- early stopping


def new_record() -> dict[str, Any]:
    """The early-stopping record saved with every checkpoint (item `early_stopping`, JSON)."""
    return {"best_accuracy": None, "best_loss": None, "best_step": None, "bad_evals": 0, "stopped": "",
            "elapsed_s": 0.0}


def restored_record(restored: checkpointing.Restored | None, step: int) -> dict[str, Any]:
    """The record of a restored checkpoint; a format-1 step kept it (with the data position) in `data`."""
    if restored is None:
        return new_record()
    if "early_stopping" in restored.items:
        return {**new_record(), **restored.items["early_stopping"]}
    legacy = dict(restored.data)
    if legacy.pop("next_index", step) != step:
        raise RuntimeError(f"checkpoint data position {restored.data} does not match the train step {step}")
    return {**new_record(), **legacy}


def update_record(record: dict[str, Any], result: dict[str, Any], step: int, improvement: str) -> bool:
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


def _result(record: dict[str, Any]) -> dict[str, Any]:
    return {"best_step": record["best_step"], "best_accuracy": record["best_accuracy"], "stopped": record["stopped"]}


def write_run_files(workdir: str, config: ml_collections.ConfigDict) -> None:
    """config.json (the resolved config, task recorded) in the workdir, for people and tools."""
    if jax.process_index() == 0:
        paths.write_text(paths.resolve(workdir) / paths.CONFIG_FILE, config.to_json(indent=2) + "\n")


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, data: Data | None = None, task: TaskInfo | None = None,
    wrap_step: Callable[[Callable], Callable] | None = None, verbose: bool = True,
) -> dict[str, Any]:
    """Fine-tunes per `config`, writing checkpoints and metrics to `workdir`.

    Args:
      config: configs/finetune.py's config.
      workdir: the run folder (created; resumed when it holds checkpoints).
      data: the training and validation data sources (default: the task's dataset, built on first use).
      task: name, level and class names (default: recorded in config.task, else midibert_jax.data.tasks).
      wrap_step: (tests) wraps the pure train step before it is jitted.
      verbose: print the run's header and every evaluation; False when the caller (an experiment of
        many runs) prints one line per run itself (the bar then vanishes when done; metrics are logged alike).
    Returns:
      {"best_step", "best_accuracy", "stopped" ('' | 'early' | 'preempted' | 'done'), "last_eval", "origin"}.
    """
    workdir = os.fspath(paths.resolve(workdir))  # absolute for local folders (orbax needs them)
    resuming = _has_checkpoint(workdir)
    if not config.train.init_from and not config.train.from_scratch and not resuming:
        raise ConfigError(
            "no pre-trained weights: set --config.train.init_from=<pre-training workdir or imported checkpoint>, "
            "or add the 'scratch' modifier (e.g. configs/finetune.py:melody,scratch) to train from scratch"
        )
    config_validation.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    with run_lock.held_run(workdir, "finetune") as (lock, guard):
        return _train(config, workdir, lock, guard, data=data, task=task, wrap_step=wrap_step, verbose=verbose)


def _train(config: ml_collections.ConfigDict, workdir: str, lock: run_lock.RunLock, guard: PreemptionGuard, *,
           data: Data | None, task: TaskInfo | None, wrap_step, verbose: bool) -> dict[str, Any]:
    """train_and_evaluate's run, in `workdir` whose `lock` this process holds.

    `guard` stays installed through the teardown (the last checkpoint's wait, the lock's release): a SIGTERM
    then only sets its flag instead of killing the process halfway through.
    """
    resuming = _has_checkpoint(workdir)  # again: another run may have saved before this one took the lock
    if data is None:
        data = load_data(config, splits=("train", "validation"))
    task = task or task_info(config, data.dataset_dir)
    cfg = resolve_config(config, task, workdir, resuming=resuming)
    primary = jax.process_index() == 0
    chatty = primary and verbose
    piece_fraction = cfg.train.get("piece_fraction", 1.0)
    if piece_fraction < 1.0:
        data = dataclasses.replace(data, train=pipeline.PieceSubset(data.train, piece_fraction, cfg.seed))
    plan = pipeline.train_plan(
        data.train, global_batch_size=cfg.data.batch_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    total_steps = cfg.train.steps or cfg.train.epochs * plan.steps_per_epoch
    eval_every = cfg.train.eval_every or plan.steps_per_epoch
    started = time.monotonic()  # the run's wall clock (compilation, training, evaluation), summed over resumes
    trainer = FinetuneTrainer(cfg, task, total_steps=total_steps, wrap_step=wrap_step)
    write_run_files(workdir, cfg)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, paths.CHECKPOINTS), save_every=eval_every, keep_last=cfg.train.keep_checkpoints,
        best_metric=BEST_METRIC, best_mode="max", items=ITEMS, before_save=lock.verify,
    )
    writer = metrics.MetricsWriter(workdir)
    guard.install()
    bar = None
    try:
        def warm(state):
            return warm_start.load_into(state, cfg.train.init_from, trainer.abstract_state, which=cfg.train.init_step)

        state, restored, origin = loop.resume_or_init(ckpt, trainer.abstract_state, trainer.init_state,
                                                      cfg.train.init_from, warm)
        origin = f"encoder from {cfg.train.init_from}" if origin == "init_from" else origin
        start = int(jax.device_get(state.step))
        record = restored_record(restored, start)
        elapsed_before = float(record["elapsed_s"])
        summary = {"origin": origin, "last_eval": {}}
        if record["stopped"] == "done" and start < total_steps:
            record["stopped"] = ""  # finished an earlier, shorter budget: continue
        if record["stopped"] == "early" or start >= total_steps:
            if chatty:
                print(f"[finetune] {workdir}: already finished at step {start} ({record['stopped'] or 'done'}); "
                      f"best validation accuracy {record['best_accuracy']} at step {record['best_step']}")
            return {**summary, **_result(record)}
        train_step, report = trainer.compile_train_step()
        subset = f" ({data.train.num_pieces} pieces: {piece_fraction:g} of the split's)" if piece_fraction < 1.0 else ""
        if chatty:
            print(f"[finetune] {task.name} ({task.level}, {task.num_classes} classes) {origin} at step {start}; "
                  f"{jax.device_count()} devices; {len(data.train)} training windows{subset}, "
                  f"{plan.steps_per_epoch} steps/epoch, at most {total_steps} steps, evaluation every {eval_every}; compiled in "
                  f"{report['compile_seconds']:.1f} s, {report.get('peak_bytes_estimate', 0) / 2**20:.0f} MiB/device")
        batches = pipeline.plan_iterator(data.train, plan, start_step=start, num_threads=cfg.data.read_threads,
                                         prefetch=cfg.data.prefetch)
        bar = metrics.progress_bar(total_steps, initial=start, desc=f"finetune {task.name}", leave=verbose)
        say = bar.write if primary else (lambda text: None)
        detail = say if verbose else (lambda text: None)

        def save(ctx: loop.Context, now: bool = False) -> None:
            items = dict(state=ctx.state, early_stopping=dict(record), config=cfg.to_dict())
            best = {BEST_METRIC: ctx.eval[BEST_METRIC]} if ctx.eval else None
            if now:
                ckpt.save_now(ctx.step, metrics=best, **items)
            else:
                ckpt.save(ctx.step, metrics=best, force=True, **items)

        def evaluate(ctx: loop.Context) -> None:
            result = ctx.last_eval = summary["last_eval"] = trainer.evaluate(ctx.state.params, data.valid,
                                                                              cfg.train.eval_batches)
            best = update_record(record, result, ctx.step, cfg.train.improvement)
            record["elapsed_s"] = round(elapsed_before + time.monotonic() - started, 3)
            if cfg.train.patience and record["bad_evals"] >= cfg.train.patience:
                record["stopped"] = "early"
            elif ctx.step == total_steps:
                record["stopped"] = "done"
            ctx.eval = classification_metrics.eval_scalars(result)
            writer.write(ctx.step, ctx.eval | {"eval/bad_evals": record["bad_evals"], ELAPSED: record["elapsed_s"]})
            save(ctx)
            extra = f", piece accuracy {result['piece_accuracy']:.4f}" if "piece_accuracy" in result else ""
            detail(f"[finetune] step {ctx.step}: validation accuracy {result['accuracy']:.4f}{extra}, "
                   f"macro-F1 {result['macro_f1']:.4f}, loss {result['loss']:.4f}"
                   + (" (best)" if best else f" ({record['bad_evals']} without improvement)"))
            if record["stopped"] == "early":
                detail(f"[finetune] early stop: {record['bad_evals']} evaluations without improvement")
                ctx.stop = "early"

        schedule = [
            hooks.run_lock(lock),
            hooks.log_train(writer, cfg.train.log_every, schedule=trainer.schedule,
                            steps_per_epoch=plan.steps_per_epoch, start=start, bar=bar),
            hooks.progress(bar),
            loop.Hook(evaluate, every=eval_every),
            hooks.preemption(guard, lambda ctx: save(ctx, now=True), say, "finetune"),
        ]

        def step_fn(state, batch):
            return train_step(state, trainer.put_batch(batch, trainer.train_keys))

        with trainer.activate():
            ctx = loop.run(state, step_fn, batches, start=start, total=total_steps, hooks=schedule)
        return {**summary, **_result(record), **({"stopped": "preempted"} if ctx.stop == "preempted" else {})}
    finally:
        hooks.close_run(bar=bar, checkpointer=ckpt, writer=writer, lock=lock)
