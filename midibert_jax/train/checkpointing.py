"""Checkpoints: an orbax CheckpointManager with the named items an objective declares, plus `version`.

Pre-training (`PRETRAIN_ITEMS`, the default):
  state      the TrainState pytree (params of encoder, recoverer and masker; optimiser state; rng;
             extras: field weights), saved sharded, restored onto the shardings of an abstract target
  mask_book  {"bits": uint8 [num_windows, L / 8]} (numpy or jax array)
  data       the data-iterator state (JSON), so a resumed run sees the same batches
  config     the run's config (JSON), for the record
Fine-tuning (train/finetune.ITEMS): state, early_stopping (its record, JSON), config.
Always:
  version    vocabulary sizes, field order, checkpoint format and code version (JSON), checked on restore

Format 1 (before TrainState.extras) stored the state as {step, params, opt_state, rng, <extras...>}
(pre-training's field weights beside the parameters, fine-tuning had none): it is restored into the
current TrainState; the old items (a fine-tuning step's dummy mask book, its early-stopping record in
`data`) are read as they are, for the objective to migrate. A newer format is refused
(`CheckpointFormatError`, naming the step and folder).

Saving is asynchronous (`save` returns once the arrays are copied off the device); `save_now` forces a
save and waits, for SIGTERM. Every process must call `save`, `save_now` and `restore` (orbax
synchronises them); only the primary process writes the JSON items.

Kept: the last `keep_last` steps, plus the best step by `best_metric` among saves given metrics.

`restore()` without a step takes the newest step; when it is unreadable (a truncated or deleted file) it
logs a warning and falls back to the previous step, and so on. Incomplete (temporary) step directories
are never listed by orbax, so an interrupted save is skipped without a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import logging
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from midibert_jax.tokenizer import vocab

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
ARRAYS, JSON = "arrays", "json"
PRETRAIN_ITEMS = {"state": ARRAYS, "mask_book": ARRAYS, "data": JSON, "config": JSON}
# Items older checkpoints may hold besides the declared ones; restored when present, for migrations.
LEGACY_ITEMS = {"mask_book": ARRAYS, "data": JSON}


class CheckpointFormatError(ValueError):
    """A checkpoint step was written in a format this code cannot read; the message names it."""


# Metric names steps of format 1 were ranked by (pre-training's 'eval/accuracy' was 'eval/acc/mean').
LEGACY_METRICS = {"eval/accuracy": ("eval/acc/mean",)}


def _metric(metrics: Mapping[str, Any], name: str) -> float:
    """metrics[name], or its format-1 name for steps saved before the rename."""
    for key in (name, *LEGACY_METRICS.get(name, ())):
        if key in metrics:
            return float(metrics[key])
    raise KeyError(f"checkpoint metrics {sorted(metrics)} lack {name!r}")


def _format1_state(abstract_state: Any) -> dict[str, Any]:
    """The restore target of a format-1 state: TrainState's fields with the extras beside them."""
    fields = ("step", "params", "opt_state", "rng")
    return {**{f: getattr(abstract_state, f) for f in fields}, **abstract_state.extras}


def version_info() -> dict[str, Any]:
    """JSON: what a checkpoint's arrays mean (vocabulary, field order) and which code wrote it."""
    try:
        code = importlib.metadata.version("midibert-jax")
    except importlib.metadata.PackageNotFoundError:
        code = "unknown"
    return {
        "format": FORMAT_VERSION,
        "code_version": code,
        "fields": list(vocab.FIELDS),
        "vocab_sizes": list(vocab.VOCAB_SIZES),
        "num_regular": list(vocab.VOCAB.num_regular),
    }


def _jsonable(obj: Any) -> Any:
    """A JSON-compatible copy of a dict, a ConfigDict (`to_dict`), or JSON text / bytes."""
    if isinstance(obj, (bytes, bytearray)):
        obj = obj.decode("utf-8")
    if isinstance(obj, str):
        return json.loads(obj)
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    return json.loads(json.dumps(obj, default=str))


def check_version(saved: Mapping[str, Any], step: int) -> None:
    """Raises ValueError when checkpoint `step`'s vocabulary or field order differs from this code's."""
    ours = version_info()
    for key in ("fields", "vocab_sizes", "num_regular"):
        if saved.get(key) != ours[key]:
            raise ValueError(f"checkpoint step {step} has {key}={saved.get(key)}, this code {ours[key]}")
    if saved.get("code_version") != ours["code_version"]:
        log.warning("checkpoint step %d was written by code version %s, this is %s",
                    step, saved.get("code_version"), ours["code_version"])


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore` returns: every item found in the step, by name, in `items`."""

    step: int
    items: dict[str, Any]

    @property
    def state(self) -> Any:
        return self.items["state"]

    @property
    def mask_book(self) -> Any:
        """uint8 [num_windows, L / 8], numpy or jax depending on the target (None when not saved)."""
        return self.items.get("mask_book")

    @property
    def data(self) -> dict[str, Any]:
        return self.items.get("data", {})

    @property
    def config(self) -> dict[str, Any]:
        return self.items.get("config", {})

    @property
    def version(self) -> dict[str, Any]:
        return self.items.get("version", {})


class Checkpointer:
    """Saves and restores the training checkpoint items under `directory` (local path or gs://)."""

    def __init__(
        self,
        directory: str,
        *,
        save_every: int,
        keep_last: int,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
        items: Mapping[str, str] | None = None,
        before_save: Callable[[], None] | None = None,
    ):
        """
        Args:
          items: name -> ARRAYS (a pytree saved sharded) or JSON, the items `save` takes (default
            PRETRAIN_ITEMS); `version` is added.
          save_every: `save` (not forced) writes only at steps that are multiples of this.
          keep_last: number of most recent steps kept.
          best_metric: key of the `metrics` dict passed to `save` that ranks steps; the best one is kept too.
          best_mode: "max" or "min" for best_metric.
          async_save: write in a background thread.
          before_save: called by `save` first, on every process (the run lock's `verify`: it raises
            instead of a save into a folder this run no longer holds).
        """
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.best_metric = best_metric
        self.before_save = before_save
        policies: list[ocp.checkpoint_managers.PreservationPolicy] = [ocp.checkpoint_managers.LatestN(n=keep_last)]
        best_fn = None
        if best_metric is not None:
            best_fn = functools.partial(_metric, name=best_metric)
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=best_fn,
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.items = dict(PRETRAIN_ITEMS if items is None else items)
        if "state" not in self.items or "version" in self.items:
            raise ValueError(f"checkpoint items need 'state' and must not name 'version': {sorted(self.items)}")
        self._kinds = {**LEGACY_ITEMS, **self.items, "version": JSON}
        handlers = {
            name: ocp.StandardCheckpointHandler() if kind == ARRAYS else ocp.JsonCheckpointHandler()
            for name, kind in self._kinds.items()
        }
        self._manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
        self.directory = self._manager.directory

    # -- queries ---------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Steps present on disk (complete saves only), ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The best step by `best_metric` among the kept steps saved with metrics (None if there is none)."""
        if self.best_metric is None:
            return None
        return self._manager.best_step()

    # -- saving ----------------------------------------------------------------------------------------
    def save(self, step: int, *, metrics: Mapping[str, Any] | None = None, force: bool = False, **items: Any) -> bool:
        """Starts saving `step` if it is due (or `force`); returns whether a save started. All processes call it.

        Args:
          items: exactly the declared items, e.g. for pre-training
            state: the TrainState (jax arrays, possibly sharded); mask_book: uint8 [num_windows, L / 8],
            numpy or jax; data: the data-iterator state, a JSON-able dict or JSON text / bytes;
            config: a ConfigDict or dict.
          metrics: scalars for best-checkpoint tracking (needs `best_metric` among them).
        """
        if set(items) != set(self.items):
            raise ValueError(f"save({step}) got items {sorted(items)}, this checkpointer saves {sorted(self.items)}")
        if self.before_save is not None:
            self.before_save()
        if step in self._manager.all_steps():
            return False
        args = {name: self._save_arg(name, value) for name, value in items.items()}
        args["version"] = ocp.args.JsonSave(version_info())
        if metrics is not None:
            metrics = {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
        return self._manager.save(int(step), args=ocp.args.Composite(**args), metrics=metrics, force=force)

    def _save_arg(self, name: str, value: Any):
        if self._kinds[name] == JSON:
            return ocp.args.JsonSave(_jsonable(value))
        return ocp.args.StandardSave({"bits": value} if name == "mask_book" else value)

    def save_now(self, step: int, **items: Any) -> None:
        """Forces a save of `step` (same keyword items as `save`) and waits until it is on disk (SIGTERM)."""
        self.save(step, force=True, **items)
        self.wait()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are complete; raises if one failed."""
        self._manager.wait_until_finished()
        self._manager.check_for_errors()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restoring -------------------------------------------------------------------------------------
    def _items_on_disk(self, step: int) -> set[str]:
        folder = epath.Path(self.directory) / str(step)
        return {p.name for p in folder.iterdir() if p.name in self._kinds} if folder.exists() else set()

    def _restore_step(self, step: int, abstract_state: Any, mask_book_target: Any) -> Restored:
        version = self._manager.restore(step, args=ocp.args.Composite(version=ocp.args.JsonRestore()))["version"]
        fmt = version.get("format", 1)
        if fmt > FORMAT_VERSION:
            raise CheckpointFormatError(f"checkpoint step {step} in {self.directory} has format {fmt}, newer than this "
                                        f"code's {FORMAT_VERSION}: update midibert-jax to resume it")
        legacy = fmt < 2 and hasattr(abstract_state, "extras")
        present = self._items_on_disk(step)
        args = {"state": ocp.args.StandardRestore(_format1_state(abstract_state) if legacy else abstract_state)}
        for name in present - {"state", "version"}:
            if self._kinds[name] == JSON:
                args[name] = ocp.args.JsonRestore()
            elif name == "mask_book" and "mask_book" in self.items:
                args[name] = ocp.args.StandardRestore(None if mask_book_target is None else {"bits": mask_book_target})
        out = dict(self._manager.restore(step, args=ocp.args.Composite(**args)))
        out["version"] = version
        if legacy:
            old = out["state"]
            out["state"] = abstract_state.replace(step=old["step"], params=old["params"], opt_state=old["opt_state"],
                                                  rng=old["rng"], extras={k: old[k] for k in abstract_state.extras})
        if "mask_book" in out:
            book = out["mask_book"]["bits"]
            if mask_book_target is None or isinstance(mask_book_target, np.ndarray):
                book = np.asarray(book, np.uint8)
            out["mask_book"] = book
        return Restored(step, out)

    def restore(self, abstract_state: Any, mask_book_target: Any = None, step: int | None = None) -> Restored | None:
        """Restores a step onto the given target shardings; None when there is no checkpoint.

        Args:
          abstract_state: the TrainState pytree of `jax.ShapeDtypeStruct`s whose `sharding`s say where each
            leaf goes (e.g. from `jax.eval_shape` of the jitted init): the checkpoint may come from another
            mesh or device count.
          mask_book_target: None or an np.ndarray (restore the book on the host as numpy), or a
            `jax.ShapeDtypeStruct` with a sharding (restore it as a jax array there).
          step: a given step (no fallback), or None for the newest readable one.
        Raises:
          ValueError: the checkpoint was written with another vocabulary.
          CheckpointFormatError: the step's format is newer than this code's (not a fall-back case).
          RuntimeError: no step could be read.
        """
        self._manager.reload()
        if step is not None:
            restored = self._restore_step(step, abstract_state, mask_book_target)
        else:
            steps = self.all_steps()[::-1]
            if not steps:
                return None
            restored = None
            for i, candidate in enumerate(steps):
                try:
                    restored = self._restore_step(candidate, abstract_state, mask_book_target)
                    break
                except CheckpointFormatError:
                    raise
                except Exception as e:  # pylint: disable=broad-except  # any unreadable step: try the previous
                    nxt = steps[i + 1] if i + 1 < len(steps) else None
                    reason = str(e).splitlines()[0][:300] if str(e) else ""
                    log.warning(
                        "checkpoint step %d in %s is unreadable (%s: %s); %s",
                        candidate,
                        self.directory,
                        type(e).__name__,
                        reason,
                        f"falling back to step {nxt}" if nxt is not None else "no older step to fall back to",
                    )
            if restored is None:
                raise RuntimeError(f"no readable checkpoint in {self.directory} (steps {steps[::-1]})")
        check_version(restored.version, restored.step)
        log.info("restored checkpoint step %d from %s", restored.step, self.directory)
        return restored

