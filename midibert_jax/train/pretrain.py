"""Adversarial-MidiBERT pre-training: one jitted, sharded step; the loop around it.

    train_and_evaluate(config, workdir)

Resume order (written where it happens, in `_initial_state`): the newest readable checkpoint
in the workdir, else `config.train.init_from` (a pre-training workdir or an imported PyTorch
checkpoint), else scratch. A checkpoint holds the train state, the mask book and the data
position, so a resumed run continues with exactly the batches, masks and updates of an
uninterrupted one, on any device count.

The step (`make_train_step`) does, for a global batch:
  masker scores of the clean input -> masking policy (adversarial top-k or random) ->
  recoverer on the corrupted input -> recoverer + masker losses -> one AdamW update.
A step whose loss or gradients are not finite leaves the state unchanged; the loop then stops
naming the step and the batch's example indices, so nothing broken is ever saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from midibert_jax import sharding
from midibert_jax.data import pipeline
from midibert_jax.model import models
from midibert_jax.tokenizer import vocab
from midibert_jax.train import checkpointing, losses, mask_book, masking, metrics, nonfinite, optim, sharded_state
from midibert_jax.train.nonfinite import NonFiniteLossError, check_finite  # noqa: F401 (re-exported)
from midibert_jax.train.preemption import PreemptionGuard
from midibert_jax.train.sharded_state import abstract_train_state  # shared with fine-tuning
from midibert_jax.train.sharded_state import replicated as _replicated
from midibert_jax.train.state import TrainState

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the steps


def make_train_step(model, masking_cfg: masking.MaskingConfig, loss_cfg: losses.LossConfig, inject_nonfinite_at: int = -1):
    """(state, batch, book) -> (state, metrics). Pure; jit it with shardings and donation.

    batch: {"tokens": int32 [B, L, 8], "index": int [B]} (global arrays); book: uint8 [N, L/8] or None.
    """
    adversarial = masking_cfg.policy == "adversarial"

    def train_step(state: TrainState, batch: dict[str, jax.Array], book: jax.Array | None):
        tokens, index = batch["tokens"], batch["index"]
        k_masker, k_mask, k_recover = jax.random.split(state.step_key(), 3)
        nonpad = masking.non_pad(tokens)
        frozen = None if book is None else mask_book.gather(book, index)

        def loss_fn(params):
            variables = {"params": params}
            scores = None
            if adversarial:
                scores = model.apply(
                    variables, tokens, nonpad, deterministic=False, method="mask_scores", rngs={"dropout": k_masker}
                )
            masked = masking.mask_batch(k_mask, tokens, index, masking_cfg, scores=scores, frozen=frozen)
            logits = model.apply(
                variables, masked.tokens, nonpad, deterministic=False, method="recover", rngs={"dropout": k_recover}
            )
            total, aux = losses.pretraining_loss(logits, tokens, masked, scores, state.field_weights, loss_cfg)
            if inject_nonfinite_at >= 0:
                total = total * jnp.where(state.step == inject_nonfinite_at, jnp.nan, 1.0)
            return total, aux

        (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, grad_norm, finite = nonfinite.guarded_update(state, total, grads)
        aux = dict(aux)
        aux["loss/total"] = total
        aux["norm/grad"] = grad_norm
        aux["norm/param"] = optax.tree.norm(new_state.params)
        aux["finite"] = finite
        if frozen is not None:
            aux["mask/frozen_fraction_batch"] = mask_book.batch_frozen_fraction(frozen, nonpad)
        return new_state, aux

    return train_step


def make_eval_step(model, masking_cfg: masking.MaskingConfig):
    """(params, batch) -> per-field sums {correct [8], loss [8], count} under the fixed evaluation masking."""

    def eval_step(params, batch):
        tokens, index = batch["tokens"], batch["index"]
        nonpad = masking.non_pad(tokens)
        masked = masking.eval_mask(tokens, index, masking_cfg)
        logits = model.apply({"params": params}, masked.tokens, nonpad, deterministic=True, method="recover")
        return losses.field_sums(logits, tokens, masked.selected)

    return eval_step


def make_book_step(model, book_cfg: mask_book.MaskBookConfig):
    """(params, book, batch, key) -> book with this batch's windows refreshed (masker in eval mode)."""

    def book_step(params, book, batch, key):
        tokens, index, valid = batch["tokens"], batch["index"], batch["valid"]
        nonpad = masking.non_pad(tokens)
        scores = model.apply({"params": params}, tokens, nonpad, deterministic=True, method="mask_scores")
        return mask_book.refresh(book, key, index, scores, nonpad, book_cfg, valid=valid)

    return book_step


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Data:
    train: Any  # data source of the training windows
    valid: Any
    dataset_dir: str
    num_train_notes: int


def load_data(data_config: ml_collections.ConfigDict) -> Data:
    """Builds the dataset on first use (every process builds or waits for the same files) and opens it."""
    from midibert_jax.data import manifest, prepare  # pylint: disable=import-outside-toplevel

    dataset_dir = prepare.prepare(data_config)
    train = pipeline.load_split(dataset_dir, "train")
    valid = pipeline.load_split(dataset_dir, "validation")
    notes = manifest.split_notes(dataset_dir, "train")
    return Data(train, valid, os.fspath(dataset_dir), notes)


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Trainer:
    """Everything built once for a run: mesh, model, compiled steps, data, checkpointer."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any = None
    rules: Any = None

    def __post_init__(self):
        cfg = self.config
        self.masking_cfg = masking.MaskingConfig.from_config(cfg.masking)
        self.loss_cfg = losses.LossConfig.from_config(cfg.loss)
        self.book_cfg = mask_book.MaskBookConfig.from_config(cfg.mask_book)
        if self.masking_cfg.policy != "adversarial" and self.book_cfg.every:
            # Only the adversarial policy reads the book; refreshing it would be a wasted masker pass.
            log.warning("masking.policy=%s ignores the mask book: mask_book.every=%d treated as 0",
                        self.masking_cfg.policy, self.book_cfg.every)
            self.book_cfg = dataclasses.replace(self.book_cfg, every=0)
        self.mesh = self.mesh or sharding.make_mesh(cfg.mesh)
        self.rules = self.rules or sharding.logical_rules(cfg.model)
        self.model = models.build_pretrain_model(cfg.model)
        self.tx, self.schedule = optim.make_optimizer(cfg.optim)
        self.abstract_state, self.state_shardings, self._init_state = abstract_train_state(
            cfg, self.model, self.tx, self.mesh, self.rules
        )
        batch_shardings = {
            "tokens": sharding.batch_sharding(self.mesh, self.rules, 3),
            "index": sharding.batch_sharding(self.mesh, self.rules, 1),
        }
        self.batch_shardings = batch_shardings
        book_sharding = _replicated(self.mesh) if self.book_cfg.every else None
        metric_sharding = _replicated(self.mesh)
        step = make_train_step(self.model, self.masking_cfg, self.loss_cfg, cfg.train.inject_nonfinite_at_step)
        self.train_step = jax.jit(
            step,
            in_shardings=(self.state_shardings, batch_shardings, book_sharding),
            out_shardings=(self.state_shardings, metric_sharding),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            make_eval_step(self.model, self.masking_cfg),
            in_shardings=(self.state_shardings.params, batch_shardings),
            out_shardings=metric_sharding,
        )
        eval_batch_shardings = dict(batch_shardings, valid=sharding.batch_sharding(self.mesh, self.rules, 1))
        self.book_step = jax.jit(
            make_book_step(self.model, self.book_cfg),
            in_shardings=(self.state_shardings.params, book_sharding, eval_batch_shardings, None),
            out_shardings=book_sharding,
            donate_argnums=(1,),
        )

    # -- state -----------------------------------------------------------------------------

    def init_state(self) -> TrainState:
        with sharding.activate(self.mesh, self.rules):
            return jax.jit(self._init_state, static_argnums=0, out_shardings=self.state_shardings)(self.config.seed)

    def put_batch(self, batch: dict[str, np.ndarray], keys=("tokens", "index")) -> dict[str, jax.Array]:
        """This process' rows -> global arrays sharded over the batch axes (int32 indices)."""
        shardings = dict(self.batch_shardings, valid=sharding.batch_sharding(self.mesh, self.rules, 1))
        arrays = {"tokens": np.asarray(batch["tokens"], np.int32), "index": np.asarray(batch["index"], np.int32)}
        if "valid" in keys:
            arrays["valid"] = np.asarray(batch["valid"], bool)
        return {k: jax.make_array_from_process_local_data(shardings[k], arrays[k]) for k in keys}

    def put_book(self, book: np.ndarray) -> jax.Array | None:
        if not self.book_cfg.every:
            return None
        return jax.make_array_from_callback(book.shape, _replicated(self.mesh), lambda idx: book[idx])

    def compile_report(self, num_windows: int) -> dict[str, Any]:
        """AOT-compiles the train step; returns compile seconds, FLOPs and memory per device."""
        state = self.abstract_state
        B, L = self.config.data.batch_size, self.config.model.max_len
        batch = {
            "tokens": jax.ShapeDtypeStruct((B, L, vocab.NUM_FIELDS), jnp.int32, sharding=self.batch_shardings["tokens"]),
            "index": jax.ShapeDtypeStruct((B,), jnp.int32, sharding=self.batch_shardings["index"]),
        }
        book = None
        if self.book_cfg.every:
            book = jax.ShapeDtypeStruct((num_windows, L // 8), jnp.uint8, sharding=_replicated(self.mesh))
        t0 = time.perf_counter()
        with sharding.activate(self.mesh, self.rules):
            compiled = self.train_step.lower(state, batch, book).compile()
        seconds = time.perf_counter() - t0
        report = {"compile_seconds": seconds, **sharded_state.compile_stats(compiled)}
        if self.config.model.scan_layers:
            report["flops_note"] = ("XLA counts a while loop's body once: with scanned layers flops_per_step misses "
                                    "most of the encoder's work (benchmarks/bench_pretrain.py counts it unrolled)")
        return report

    # -- evaluation and the mask book ------------------------------------------------------

    def evaluate(self, params, source, max_batches: int = 0) -> dict[str, float]:
        """Per-field accuracy and loss on the fixed evaluation masking (same notes every call)."""
        it = pipeline.eval_iterator(
            source, global_batch_size=self.config.data.eval_batch_size,
            num_threads=self.config.data.read_threads, prefetch=self.config.data.prefetch,
        )
        totals = None
        with sharding.activate(self.mesh, self.rules):
            for i, batch in enumerate(it):
                if max_batches and i >= max_batches:
                    break
                sums = self.eval_step(params, self.put_batch(batch))
                totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = max(float(totals["count"]), 1.0)
        acc = np.asarray(totals["correct"], np.float64) / count
        loss = np.asarray(totals["loss"], np.float64) / count
        out = {"eval/acc/mean": float(acc.mean()), "eval/loss/mean": float(loss.mean()), "eval/notes": count}
        for f, name in enumerate(vocab.FIELDS):
            out[f"eval/acc/{name}"] = float(acc[f])
            out[f"eval/loss/{name}"] = float(loss[f])
        return out

    def refresh_book(self, params, book, source, update_number: int):
        """One pass over the training windows: freeze/unfreeze notes by the masker's scores."""
        key = jax.random.fold_in(jax.random.key(self.config.seed), 1_000_000 + update_number)
        it = pipeline.eval_iterator(
            source, global_batch_size=self.config.data.eval_batch_size,
            num_threads=self.config.data.read_threads, prefetch=self.config.data.prefetch,
        )
        with sharding.activate(self.mesh, self.rules):
            for batch in it:
                book = self.book_step(params, book, self.put_batch(batch, ("tokens", "index", "valid")), key)
        return book


def _book_due(step: int, steps_per_epoch: int, cfg: mask_book.MaskBookConfig) -> int | None:
    """The update number if the mask book is refreshed after global step `step` (1-based count), else None."""
    if not cfg.every:
        return None
    if cfg.unit == "step":
        return step // cfg.every if step % cfg.every == 0 else None
    if step % steps_per_epoch:
        return None
    epoch = step // steps_per_epoch
    return epoch // cfg.every if epoch % cfg.every == 0 else None


def _initial_state(trainer: Trainer, ckpt: checkpointing.Checkpointer, num_windows: int):
    """Resume order: workdir checkpoint, else config.train.init_from, else scratch."""
    book_target = np.zeros((num_windows, trainer.config.model.max_len // 8), np.uint8)
    restored = ckpt.restore(trainer.abstract_state, mask_book_target=book_target)
    if restored is not None:
        log.info("resuming from %s at step %d", ckpt.directory, restored.step)
        return restored.state, np.asarray(restored.mask_book), restored.data, "resumed"
    state = trainer.init_state()
    if trainer.config.train.init_from:
        from midibert_jax.train import warm_start  # pylint: disable=import-outside-toplevel

        state = warm_start.load_into(state, trainer.config.train.init_from, trainer.abstract_state)
        log.info("warm start from %s", trainer.config.train.init_from)
        return state, mask_book.create(num_windows, trainer.config.model.max_len), None, "init_from"
    return state, mask_book.create(num_windows, trainer.config.model.max_len), None, "scratch"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains per `config`, writing checkpoints and metrics to `workdir`; returns the last eval."""
    cfg = config
    if "://" not in workdir:  # orbax needs absolute local paths (`--workdir runs/tiny` is relative)
        workdir = os.path.abspath(os.path.expanduser(workdir))
        os.makedirs(workdir, exist_ok=True)
    data = load_data(cfg.data)
    trainer = Trainer(cfg, workdir)
    primary = jax.process_index() == 0
    num_windows = len(data.train)
    plan = pipeline.train_plan(
        data.train, global_batch_size=cfg.data.batch_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    writer = metrics.MetricsWriter(workdir)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=cfg.train.checkpoint_every,
        keep_last=cfg.train.keep_checkpoints, best_metric="eval/acc/mean", best_mode="max",
    )
    state, book_np, data_state, origin = _initial_state(trainer, ckpt, num_windows)
    start = int(jax.device_get(state.step))
    if primary:
        report = trainer.compile_report(num_windows)
        print(f"[pretrain] {origin} at step {start}; {jax.device_count()} devices, mesh {dict(trainer.mesh.shape)}; "
              f"{num_windows} training windows, {plan.steps_per_epoch} steps/epoch; "
              f"compiled in {report['compile_seconds']:.1f} s, {report.get('peak_bytes_estimate', 0) / 2**20:.0f} MiB/device")
        with open(os.path.join(workdir, "compile_report.json"), "w") as f:
            json.dump(report, f, indent=2)
    book = trainer.put_book(book_np)
    it = pipeline.train_iterator(
        data.train, global_batch_size=cfg.data.batch_size, seed=cfg.seed, start_step=start,
        num_threads=cfg.data.read_threads, prefetch=cfg.data.prefetch,
    )
    if data_state is not None and data_state.get("next_index") != start:
        raise RuntimeError(f"checkpoint data position {data_state} does not match the train step {start}")

    guard = PreemptionGuard().install()
    tokens_per_step = cfg.data.batch_size * cfg.model.max_len
    rate = metrics.RateMeter(cfg.train.steps, initial=start)
    bar = metrics.progress_bar(cfg.train.steps, initial=start, desc="pretrain")
    last_eval: dict[str, float] = {}
    pending = None  # (step, batch indices, metrics) of the step dispatched last: checked one step late
    t_last, t_last_step = time.perf_counter(), start

    def save(step_done: int, force: bool = False, eval_metrics=None):
        items = dict(state=state, mask_book=jax.device_get(book) if book is not None else book_np,
                     data={"next_index": step_done}, config=cfg.to_dict())
        if force:
            ckpt.save_now(step_done, metrics=eval_metrics, **items)
        else:
            ckpt.save(step_done, metrics=eval_metrics, **items)
        writer.flush()  # the metrics up to a checkpoint survive a crash after it

    try:
        with sharding.activate(trainer.mesh, trainer.rules):
            for step in range(start, cfg.train.steps):
                batch = next(it)
                state, step_metrics = trainer.train_step(state, trainer.put_batch(batch), book)
                if pending is not None:
                    check_finite(*pending)
                pending = (step, np.asarray(batch["index"]), step_metrics)
                done = step + 1
                eval_metrics = None
                is_log = done % cfg.train.log_every == 0 or done == cfg.train.steps
                if is_log or done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                    check_finite(*pending)
                    pending = None
                if is_log:
                    scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                    now = time.perf_counter()
                    step_time = (now - t_last) / max(done - t_last_step, 1)
                    scalars.update({
                        "perf/tokens_per_s": tokens_per_step / step_time,
                        "perf/step_time_s": step_time,
                        "perf/eta_s": rate.update(done)["eta_sec"],
                        "optim/learning_rate": float(trainer.schedule(done)),
                        "epoch": done / plan.steps_per_epoch,
                    })
                    t_last, t_last_step = now, done
                    if book is not None:
                        scalars["mask/frozen_fraction"] = float(mask_book.frozen_fraction(
                            jax.device_get(book), data.num_train_notes))
                    writer.write(done, scalars)
                    bar.set_postfix(loss=f"{scalars['loss/total']:.3f}", acc=f"{scalars['acc/mean']:.3f}", refresh=False)
                if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                    last_eval = trainer.evaluate(state.params, data.valid, cfg.train.eval_batches)
                    writer.write(done, last_eval)
                    eval_metrics = {"eval/acc/mean": last_eval["eval/acc/mean"]}
                    acc = np.array([last_eval[f"eval/acc/{n}"] for n in vocab.FIELDS])
                    weights = losses.field_weights_from_accuracy(jnp.asarray(acc), trainer.loss_cfg.field_weights)
                    state = state.replace(field_weights=jax.device_put(weights, trainer.state_shardings.field_weights))
                    if primary:
                        bar.write(f"[pretrain] step {done}: eval acc {last_eval['eval/acc/mean']:.4f} "
                                  + " ".join(f"{n}={last_eval[f'eval/acc/{n}']:.3f}" for n in vocab.FIELDS))
                update_number = _book_due(done, plan.steps_per_epoch, trainer.book_cfg)
                if update_number is not None:
                    book = trainer.refresh_book(state.params, book, data.train, update_number)
                    frac = float(mask_book.frozen_fraction(jax.device_get(book), data.num_train_notes))
                    writer.write(done, {"mask/frozen_fraction": frac, "mask/book_updates": update_number})
                bar.update(1)
                if guard.should_stop(done):
                    if pending is not None:
                        check_finite(*pending)
                    save(done, force=True)
                    if primary:
                        bar.write(f"[pretrain] preemption signal: saved step {done}, exiting; rerun to resume")
                    return {"preempted_at": done, **last_eval}
                if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
                    if pending is not None:
                        check_finite(*pending)
                        pending = None
                    save(done, force=done == cfg.train.steps, eval_metrics=eval_metrics)
            if pending is not None:
                check_finite(*pending)
    finally:
        bar.close()
        guard.uninstall()
        ckpt.wait()
        ckpt.close()
        writer.close()
    return last_eval
