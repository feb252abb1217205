"""Adversarial-MidiBERT pre-training, the objective: its steps, its set-up and its hooks on the shared loop.

    train_and_evaluate(config, workdir)

The step (`make_train_step`) does, for a global batch:
  masker scores of the clean input -> masking policy (adversarial top-k or random) ->
  recoverer on the corrupted input -> recoverer + masker losses -> one AdamW update.
Hooks (train/loop.py): log, evaluate (which also sets the recoverer's per-field loss weights in
`state.extras`), mask-book refresh, progress, preemption, checkpoint. A checkpoint holds the
train state, the mask book and the data position, so a resumed run continues with exactly the
batches, masks and updates of an uninterrupted one, on any device count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from midibert_jax import config_validation, console, paths
from midibert_jax.data import pipeline
from midibert_jax.model import models
from midibert_jax.tokenizer import vocab
from midibert_jax.train import checkpointing, hooks, loop, losses, mask_book, masking, metrics, nonfinite, optim
from midibert_jax.train import run_lock
from midibert_jax.train import trainer as trainer_lib
from midibert_jax.train.preemption import PreemptionGuard
from midibert_jax.train.state import TrainState

log = logging.getLogger(__name__)

PARAM_GROUPS = ("encoder", "recoverer", "masker")
BEST_METRIC = "eval/accuracy"
ITEMS = checkpointing.PRETRAIN_ITEMS


def train_metric_name(key: str) -> str:
    """losses.pretraining_loss's key -> the logged name: 'loss/total' -> 'train/loss', 'acc/x' -> 'train/accuracy/x'."""
    if key == "loss/total":
        return "train/loss"
    if key == "acc/mean":
        return "train/accuracy"
    if key.startswith("acc/"):
        return "train/accuracy/" + key[len("acc/"):]
    return "train/" + key


# ----------------------------------------------------------------------------- the steps


def make_train_step(model, masking_cfg: masking.MaskingConfig, loss_cfg: losses.LossConfig):
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
            return losses.pretraining_loss(logits, tokens, masked, scores, state.extras["field_weights"], loss_cfg)

        (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, grad_norm, finite = nonfinite.guarded_update(state, total, grads)
        out = {train_metric_name(k): v for k, v in aux.items()}
        out["train/norm/grad"] = grad_norm
        out["train/norm/param"] = optax.tree.norm(new_state.params)
        out[nonfinite.FLAG] = finite
        if frozen is not None:
            out["train/mask/frozen_fraction_batch"] = mask_book.batch_frozen_fraction(frozen, nonpad)
        return new_state, out

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


def eval_metrics(totals: dict[str, Any]) -> dict[str, float]:
    """Summed per-field eval outputs -> eval/accuracy, eval/loss, eval/notes and per field."""
    count = max(float(totals["count"]), 1.0)
    acc = np.asarray(totals["correct"], np.float64) / count
    loss = np.asarray(totals["loss"], np.float64) / count
    out = {"eval/accuracy": float(acc.mean()), "eval/loss": float(loss.mean()), "eval/notes": count}
    for f, name in enumerate(vocab.FIELDS):
        out[f"eval/accuracy/{name}"] = float(acc[f])
        out[f"eval/loss/{name}"] = float(loss[f])
    return out


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


class Trainer(trainer_lib.Trainer):
    """The pre-training model, its jitted train, eval and mask-book steps on the run's mesh.

    `wrap_step` (tests) wraps the pure train step before it is jitted.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh=None, rules=None,
                 wrap_step: Callable[[Callable], Callable] | None = None):
        self.masking_cfg = masking.MaskingConfig.from_config(config.masking)
        self.loss_cfg = losses.LossConfig.from_config(config.loss)
        self.book_cfg = mask_book.MaskBookConfig.from_config(config.mask_book)
        if self.masking_cfg.policy != "adversarial" and self.book_cfg.every:
            # Only the adversarial policy reads the book; refreshing it would be a wasted masker pass.
            log.warning("masking.policy=%s ignores the mask book: mask_book.every=%d treated as 0",
                        self.masking_cfg.policy, self.book_cfg.every)
            self.book_cfg = dataclasses.replace(self.book_cfg, every=0)
        tx, self.schedule = optim.make_optimizer(config.optim)
        super().__init__(
            config, models.build_pretrain_model(config.model), tx, batch_ranks={"tokens": 3, "index": 1, "valid": 1},
            extras=lambda: {"field_weights": jnp.full((vocab.NUM_FIELDS,), 1.0 / vocab.NUM_FIELDS, jnp.float32)},
            groups=PARAM_GROUPS, mesh=mesh, rules=rules,
        )
        self.book_sharding = self.replicated if self.book_cfg.every else None
        step = make_train_step(self.model, self.masking_cfg, self.loss_cfg)
        self.train_step = self.jit_train_step(wrap_step(step) if wrap_step else step, ("tokens", "index"),
                                              (self.book_sharding,))
        self.eval_step = self.jit_eval_step(make_eval_step(self.model, self.masking_cfg), ("tokens", "index"))
        self.book_step = jax.jit(
            make_book_step(self.model, self.book_cfg),
            in_shardings=(self.state_shardings.params, self.book_sharding,
                          {k: self.batch_shardings[k] for k in ("tokens", "index", "valid")}, None),
            out_shardings=self.book_sharding,
            donate_argnums=(1,),
        )

    def put_batch(self, batch: dict[str, np.ndarray], keys=("tokens", "index")) -> dict[str, jax.Array]:
        return super().put_batch(batch, keys)

    def put_book(self, book: np.ndarray) -> jax.Array | None:
        if not self.book_cfg.every:
            return None
        return jax.make_array_from_callback(book.shape, self.replicated, lambda idx: book[idx])

    def compile_report(self, num_windows: int) -> dict[str, Any]:
        """AOT-compiles the train step; returns compile seconds, FLOPs and memory per device."""
        B, L = self.config.data.batch_size, self.config.model.max_len
        batch = self.abstract_batch({"tokens": (B, L, vocab.NUM_FIELDS), "index": (B,)})
        book = None
        if self.book_cfg.every:
            book = jax.ShapeDtypeStruct((num_windows, L // 8), jnp.uint8, sharding=self.replicated)
        _, report = self.compile(self.train_step, self.abstract_state, batch, book)
        if self.config.model.scan_layers:
            report["flops_note"] = ("XLA counts a while loop's body once: with scanned layers flops_per_step misses "
                                    "most of the encoder's work (benchmarks/bench_pretrain.py counts it unrolled)")
        return report

    def _eval_batches(self, source):
        data = self.config.data
        return pipeline.eval_iterator(source, global_batch_size=data.eval_batch_size, num_threads=data.read_threads,
                                      prefetch=data.prefetch)

    def evaluate(self, params, source, max_batches: int = 0) -> dict[str, float]:
        """Per-field accuracy and loss on the fixed evaluation masking (same notes every call)."""
        totals = None
        with self.activate():
            for i, batch in enumerate(self._eval_batches(source)):
                if max_batches and i >= max_batches:
                    break
                sums = self.eval_step(params, self.put_batch(batch))
                totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        return eval_metrics(jax.device_get(totals))

    def refresh_book(self, params, book, source, update_number: int):
        """One pass over the training windows: freeze/unfreeze notes by the masker's scores."""
        key = jax.random.fold_in(jax.random.key(self.config.seed), 1_000_000 + update_number)
        with self.activate():
            for batch in self._eval_batches(source):
                book = self.book_step(params, book, self.put_batch(batch, ("tokens", "index", "valid")), key)
        return book


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       wrap_step: Callable[[Callable], Callable] | None = None,
                       wrap_batches: Callable[[Any, int], Any] | None = None) -> dict[str, Any]:
    """Pre-trains per `config`, writing checkpoints and metrics to `workdir`; returns the last eval.

    `wrap_step(step)` and `wrap_batches(batches, start_step)` let tests change the pure train step
    and the host batches the loop sees.
    """
    config_validation.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    root = paths.resolve(workdir)  # absolute for local folders (orbax needs them), URLs as they are
    root.mkdir(parents=True, exist_ok=True)
    with run_lock.held_run(root, "pretrain") as (lock, guard):
        return _train(config, root, lock, guard, wrap_step, wrap_batches)


def _train(cfg: ml_collections.ConfigDict, root, lock: run_lock.RunLock, guard: PreemptionGuard, wrap_step,
           wrap_batches) -> dict[str, Any]:
    """train_and_evaluate's run, in the workdir `root` whose `lock` this process holds.

    `guard` stays installed through the teardown (the last checkpoint's wait, the lock's release): a SIGTERM
    then only sets its flag instead of killing the process halfway through.
    """
    workdir = os.fspath(root)
    data = load_data(cfg.data)
    trainer = Trainer(cfg, wrap_step=wrap_step)
    primary = jax.process_index() == 0
    num_windows = len(data.train)
    plan = pipeline.train_plan(
        data.train, global_batch_size=cfg.data.batch_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    writer = metrics.MetricsWriter(workdir)
    ckpt = checkpointing.Checkpointer(
        os.fspath(root / paths.CHECKPOINTS), save_every=cfg.train.checkpoint_every,
        keep_last=cfg.train.keep_checkpoints, best_metric=BEST_METRIC, best_mode="max", items=ITEMS,
        before_save=lock.verify,
    )
    book_target = np.zeros((num_windows, cfg.model.max_len // 8), np.uint8)

    def warm_start(state):
        from midibert_jax.train import warm_start as ws  # pylint: disable=import-outside-toplevel

        return ws.load_into(state, cfg.train.init_from, trainer.abstract_state)

    guard.install()
    bar = None
    try:
        state, restored, origin = loop.resume_or_init(ckpt, trainer.abstract_state, trainer.init_state,
                                                      cfg.train.init_from, warm_start, mask_book_target=book_target)
        book_np = np.asarray(restored.mask_book) if restored else mask_book.create(num_windows, cfg.model.max_len)
        start = int(jax.device_get(state.step))
        if restored is not None and restored.data.get("next_index") != start:
            raise RuntimeError(f"checkpoint data position {restored.data} does not match the train step {start}")
        if primary:
            report = trainer.compile_report(num_windows)
            print(f"[pretrain] {origin} at step {start}; {jax.device_count()} devices, mesh {dict(trainer.mesh.shape)}; "
                  f"{num_windows} training windows, {plan.steps_per_epoch} steps/epoch; "
                  f"compiled in {report['compile_seconds']:.1f} s, {report.get('peak_bytes_estimate', 0) / 2**20:.0f} MiB/device")
            paths.write_json(root / paths.COMPILE_REPORT, report)
        run = {"book": trainer.put_book(book_np)}
        batches = pipeline.plan_iterator(data.train, plan, start_step=start, num_threads=cfg.data.read_threads,
                                         prefetch=cfg.data.prefetch)
        if wrap_batches is not None:
            batches = wrap_batches(batches, start)

        bar = metrics.progress_bar(cfg.train.steps, initial=start, desc="pretrain")
        say = bar.write if primary else (lambda text: None)

        def frozen_fraction() -> float:
            return float(mask_book.frozen_fraction(jax.device_get(run["book"]), data.num_train_notes))

        def save(ctx: loop.Context, force: bool = False) -> None:
            book = jax.device_get(run["book"]) if run["book"] is not None else book_np
            best = {BEST_METRIC: ctx.eval[BEST_METRIC]} if ctx.eval else None
            items = dict(state=ctx.state, mask_book=book, data={"next_index": ctx.step}, config=cfg.to_dict())
            if force:
                ckpt.save_now(ctx.step, metrics=best, **items)
            else:
                ckpt.save(ctx.step, metrics=best, **items)
            writer.flush()  # the metrics up to a checkpoint survive a crash after it

        def evaluate(ctx: loop.Context) -> None:
            ctx.eval = ctx.last_eval = trainer.evaluate(ctx.state.params, data.valid, cfg.train.eval_batches)
            writer.write(ctx.step, ctx.eval)
            acc = np.array([ctx.eval[f"eval/accuracy/{n}"] for n in vocab.FIELDS])
            weights = losses.field_weights_from_accuracy(jnp.asarray(acc), trainer.loss_cfg.field_weights)
            weights = jax.device_put(weights, trainer.state_shardings.extras["field_weights"])
            ctx.state = ctx.state.replace(extras={**ctx.state.extras, "field_weights": weights})
            say(f"[pretrain] step {ctx.step}: eval acc {ctx.eval['eval/accuracy']:.4f} "
                + " ".join(f"{n}={ctx.eval[f'eval/accuracy/{n}']:.3f}" for n in vocab.FIELDS))

        def refresh_book(ctx: loop.Context) -> None:
            update_number = mask_book.update_due(ctx.step, plan.steps_per_epoch, trainer.book_cfg)
            run["book"] = trainer.refresh_book(ctx.state.params, run["book"], data.train, update_number)
            writer.write(ctx.step, {"train/mask/frozen_fraction": frozen_fraction(), "train/mask/book_updates": update_number})

        log_extra = (lambda ctx: {"train/mask/frozen_fraction": frozen_fraction()}) if run["book"] is not None else None
        schedule = [
            hooks.run_lock(lock),
            hooks.log_train(writer, cfg.train.log_every, schedule=trainer.schedule, steps_per_epoch=plan.steps_per_epoch,
                            start=start, bar=bar, tokens_per_step=cfg.data.batch_size * cfg.model.max_len,
                            rate=console.RateMeter(cfg.train.steps, initial=start), extra=log_extra),
            loop.Hook(evaluate, every=cfg.train.eval_every),
            loop.Hook(refresh_book, when=lambda step: mask_book.update_due(step, plan.steps_per_epoch, trainer.book_cfg)
                      is not None),
            hooks.progress(bar),
            hooks.preemption(guard, lambda ctx: save(ctx, force=True), say, "pretrain"),
            hooks.checkpoint(save, cfg.train.checkpoint_every),
        ]

        def step_fn(state, batch):
            return trainer.train_step(state, trainer.put_batch(batch), run["book"])

        with trainer.activate():
            ctx = loop.run(state, step_fn, batches, start=start, total=cfg.train.steps, hooks=schedule)
    finally:
        hooks.close_run(bar=bar, checkpointer=ckpt, writer=writer, lock=lock)
    if ctx.stop == "preempted":
        return {"preempted_at": ctx.step, **ctx.last_eval}
    return ctx.last_eval
