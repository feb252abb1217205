"""The one reader of a finished or running training workdir, and of an imported PyTorch checkpoint.

    with Run.open("runs/melody") as run:          # a pre-training / fine-tuning workdir, or an import
        run.kind                                   # 'pretrain' | 'finetune' | 'imported'
        run.config                                 # ConfigDict: the run config of the latest step
        run.steps, run.latest_step, run.best_step  # best: by the recorded validation accuracy
        params = run.params(["encoder"], abstract_params)   # onto abstract's shardings
        book = run.restore({"mask_book": None})["mask_book"]  # any item, numpy without a target

Everything here only reads. The orbax manager is read-only (no `create`, no clean-up of temporary
folders), so a Run opened on a live run never deletes the temporary folder of a save in progress;
incomplete steps are simply not listed. Item names are discovered from each step folder, so a Run
reads whatever items a run kind declares. A step's `version` item, when present, is checked against
this code's vocabulary (train/checkpointing.py's check) before anything is returned.

Metric names changed once (`eval/acc/mean` -> `eval/accuracy`, ...); `canonical_metric` maps the
old names to the new ones, so old runs rank their steps and plot like new ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from midibert_jax import paths
from midibert_jax.config_loading import ConfigError
from midibert_jax.model import config_io
from midibert_jax.train import checkpointing

log = logging.getLogger(__name__)

STATE_ITEM = "state"
VERSION_ITEM = "version"
CONFIG_ITEM = "config"
PARAMS_KEY = "params"  # the parameters' key inside the state item
_RESERVED = ("metrics",)  # orbax's own per-step folder, not an item
BEST_METRIC = "eval/accuracy"  # validation accuracy of either run kind, highest best

# Old metric name -> new; then old prefixes -> new prefixes (`eval/acc/pitch` -> `eval/accuracy/pitch`).
METRIC_ALIASES = {
    "eval/acc/mean": "eval/accuracy",
    "eval/loss/mean": "eval/loss",
    "loss/total": "train/loss",
    "acc/mean": "train/accuracy",
    "train/acc": "train/accuracy",
    "finite": "train/finite",
}
METRIC_PREFIX_ALIASES = (("eval/acc/", "eval/accuracy/"), ("acc/", "train/accuracy/"), ("loss/", "train/loss/"),
                         ("mask/", "train/mask/"), ("masker/", "train/masker/"), ("norm/", "train/norm/"))


def canonical_metric(name: str) -> str:
    """The current name of a metric recorded under `name` (old or new)."""
    if name in METRIC_ALIASES:
        return METRIC_ALIASES[name]
    for old, new in METRIC_PREFIX_ALIASES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


class NoCheckpointError(FileNotFoundError):
    """The path holds no (complete) checkpoint, or not the step asked for."""


class ParamsMismatchError(ConfigError):
    """The stored parameters do not fit the target (a missing group or parameter, another shape)."""


@contextlib.contextmanager
def _quiet_orbax():
    """Silences orbax's warnings about read-only managers and per-item metadata (absl logger)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_only_manager(directory: epath.Path, handlers: Mapping[str, Any] | None = None) -> ocp.CheckpointManager:
    with _quiet_orbax():
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False),
            item_handlers=dict(handlers or {}),
        )


def with_local_mesh(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a saved run config with a data-parallel mesh over the devices at hand (the run's
    own mesh may not fit the machine that reads it)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return config


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _numpy_restore_args(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)


def _tree_metadata(directory: epath.Path) -> Any:
    """The stored tree of an orbax pytree folder, as ShapeDtypeStructs (no arrays read)."""
    with _quiet_orbax():
        metadata = ocp.PyTreeCheckpointer().metadata(directory).item_metadata
    tree = getattr(metadata, "tree", metadata)  # orbax wraps the tree of ArrayMetadata
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def check_version(version: Mapping[str, Any], step: int | None) -> None:
    """Raises ValueError when a checkpoint's vocabulary differs from this code's."""
    checkpointing.check_version(version, step if step is not None else -1)


@dataclasses.dataclass
class Run:
    """A readable run: a training workdir (its checkpoints) or an imported checkpoint. See the module doc."""

    path: str  # as given, for messages
    root: epath.Path
    checkpoint_dir: epath.Path | None  # None for imports
    _manager: ocp.CheckpointManager | None = dataclasses.field(default=None, repr=False)
    _configs: dict[int | None, ml_collections.ConfigDict] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        """A workdir, its checkpoints/ folder, or an `import-torch` output folder.

        Raises:
          NoCheckpointError: none of these is at `path`.
        """
        root = paths.resolve(path)
        if (root / paths.IMPORTED_CONFIG).exists() and (root / paths.IMPORTED_PARAMS).is_dir():
            return cls(os.fspath(path), root, None)
        directory = root / paths.CHECKPOINTS if (root / paths.CHECKPOINTS).is_dir() else root
        if directory == root and any((root / name).exists() for name in paths.EXPORT_WEIGHTS.values()):
            raise NoCheckpointError(f"{os.fspath(path)}: an export for PyTorch, not a run; "
                                    f"`midibert-jax import-torch --checkpoint {os.fspath(path)} --out DIR` reads it in")
        if not directory.is_dir():
            raise NoCheckpointError(f"{os.fspath(path)}: no checkpoint found ({directory} does not exist); train first")
        return cls(os.fspath(path), root, directory, _read_only_manager(directory))

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the run is -----------------------------------------------------------------------------
    @property
    def is_imported(self) -> bool:
        return self.checkpoint_dir is None

    @property
    def kind(self) -> str:
        """'imported', 'finetune' (the config records a task) or 'pretrain'."""
        if self.is_imported:
            return "imported"
        return "finetune" if "task" in self.config else "pretrain"

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The run config saved with the latest step; for an import its config.json (`model`, `kind`, ...)."""
        return self.config_at(None if self.is_imported else "latest")

    def config_at(self, which: str | int | None) -> ml_collections.ConfigDict:
        """The run config saved with checkpoint `which` ('best', 'latest' or a step)."""
        step = None if self.is_imported else self.step(which)
        if step not in self._configs:
            if step is None:
                meta = paths.read_json(self.root / paths.IMPORTED_CONFIG)
                self._configs[step] = ml_collections.ConfigDict({**meta, "model": config_io.from_json_dict(meta["model"])})
            else:
                self._configs[step] = ml_collections.ConfigDict(self.restore({CONFIG_ITEM: None}, step)[CONFIG_ITEM])
        return self._configs[step]

    def model_config(self, which: str | int = "best") -> ml_collections.ConfigDict:
        """The model config of the run (checkpoint `which`) or import."""
        config = self.config_at(None if self.is_imported else which)
        if "model" not in config:
            raise ParamsMismatchError(f"{self.path}: no model config recorded with the checkpoint")
        return config.model

    # -- steps ---------------------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        """The complete checkpoint steps, ascending (a save in progress is not listed)."""
        if self._manager is None:
            return []
        self._manager.reload()
        return sorted(self._manager.all_steps())

    @property
    def latest_step(self) -> int | None:
        steps = self.steps
        return steps[-1] if steps else None

    @property
    def best_step(self) -> int | None:
        """The step with the highest recorded validation accuracy (either metric name; ties: the
        earliest), None when no step was saved with it."""
        best, best_value = None, None
        for step in self.steps:
            try:
                recorded = self._manager.metrics(step) or {}
            except (FileNotFoundError, ValueError, KeyError):  # a step saved without metrics
                continue
            values = [float(v) for k, v in recorded.items() if canonical_metric(k) == BEST_METRIC]
            if values and (best_value is None or values[0] > best_value):
                best, best_value = step, values[0]
        return best

    def step(self, which: str | int | None = "best") -> int:
        """A step number: `which` = 'best' (the latest when no step has metrics), 'latest' or a number.

        Raises:
          NoCheckpointError: no complete step, or not that one.
        """
        if self.is_imported:
            raise NoCheckpointError(f"{self.path}: an imported checkpoint has no steps")
        steps = self.steps
        if not steps:
            raise NoCheckpointError(f"{self.path}: no checkpoint found (no complete step in {self.checkpoint_dir}); train first")
        if isinstance(which, (int, np.integer)) or str(which).isdigit():
            if int(which) not in steps:
                raise NoCheckpointError(f"{self.path}: no checkpoint step {int(which)}; steps present: {steps}")
            return int(which)
        if which == "latest":
            return steps[-1]
        if which == "best":
            best = self.best_step
            return steps[-1] if best is None else best
        raise ValueError(f"which must be 'best', 'latest' or a step number, got {which!r}")

    # -- items ---------------------------------------------------------------------------------------
    def items(self, which: str | int = "latest") -> dict[str, str]:
        """{item name: 'tree' | 'json'} of checkpoint `which`, read from its folder."""
        folder = self.checkpoint_dir / str(self.step(which))
        found = {}
        for item in folder.iterdir():
            if item.is_dir() and item.name not in _RESERVED:
                found[item.name] = "tree" if (item / "_METADATA").exists() else "json"
        return found

    def restore(self, items: Mapping[str, Any], which: str | int = "latest") -> dict[str, Any]:
        """{name: value} of the named items of checkpoint `which`.

        Args:
          items: {name: target}. A tree item's target is a pytree of `jax.ShapeDtypeStruct`s whose
            shardings say where each array goes, or None for numpy arrays on the host; JSON items
            take None.
        Raises:
          KeyError: the step has no such item (the message lists those it has).
          ValueError: the step was written with another vocabulary.
        """
        step = self.step(which)
        present = self.items(step)
        missing = sorted(set(items) - set(present))
        if missing:
            raise KeyError(f"{self.path}: checkpoint step {step} has no item {missing[0]!r} (it has {sorted(present)})")
        wanted = dict(items)
        if VERSION_ITEM in present:
            wanted.setdefault(VERSION_ITEM, None)
        handlers, args = {}, {}
        for name, target in wanted.items():
            if present[name] == "json":
                handlers[name], args[name] = ocp.JsonCheckpointHandler(), ocp.args.JsonRestore()
                continue
            if target is None:
                target = _tree_metadata(self.checkpoint_dir / str(step) / name)
                restore_args = _numpy_restore_args(target)
            else:
                restore_args = ocp.checkpoint_utils.construct_restore_args(target)
            handlers[name] = ocp.PyTreeCheckpointHandler()
            args[name] = ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
        manager = _read_only_manager(self.checkpoint_dir, handlers)
        try:
            with _quiet_orbax():
                out = manager.restore(step, args=ocp.args.Composite(**args))
        finally:
            manager.close()
        if VERSION_ITEM in out:
            check_version(out[VERSION_ITEM], step)
        return {name: out[name] for name in items}

    # -- parameters ----------------------------------------------------------------------------------
    def _params_location(self, which: str | int) -> tuple[epath.Path, tuple[str, ...], int | None]:
        """(orbax tree folder, keys in front of the groups, step) of the parameters."""
        if self.is_imported:
            return self.root / paths.IMPORTED_PARAMS, (), None
        step = self.step(which)
        return self.checkpoint_dir / str(step) / STATE_ITEM, (PARAMS_KEY,), step

    def param_shapes(self, which: str | int = "best") -> dict[str, Any]:
        """{group: tree of ShapeDtypeStructs} of the stored parameters (metadata only, no arrays)."""
        directory, prefix, _ = self._params_location(which)
        tree = _tree_metadata(directory)
        for key in prefix:
            tree = tree[key]
        return dict(tree)

    def params(self, groups: Iterable[str] | None = None, abstract: Mapping[str, Any] | None = None, *,
               which: str | int = "best") -> dict[str, Any]:
        """{group: params} of the asked groups only (the optimizer state is never read).

        Args:
          groups: e.g. ['encoder'] or ['encoder', 'recoverer', 'masker']; default: the keys of
            `abstract`, else every stored group.
          abstract: {group: tree of ShapeDtypeStructs with shardings} (more groups may be present):
            each array is restored straight onto its sharding, shapes checked first. None: numpy.
          which: the checkpoint ('best', 'latest' or a step); ignored for imports.
        Raises:
          ParamsMismatchError: a group or parameter is missing, or a shape differs (named).
          NoCheckpointError, ValueError (another vocabulary).
        """
        directory, prefix, step = self._params_location(which)
        shapes = self.param_shapes(step if step is not None else which)
        groups = list(groups if groups is not None else (abstract if abstract is not None else shapes))
        for group in groups:
            if group not in shapes:
                raise ParamsMismatchError(f"{self.path}: the source has no '{group}' parameters (it has {sorted(shapes)})")
            if abstract is not None:
                self._check_shapes(group, shapes[group], abstract[group])
        if abstract is None:
            target = {g: shapes[g] for g in groups}
            restore_args = _numpy_restore_args(target)
        else:
            target = {g: abstract[g] for g in groups}
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        for key in reversed(prefix):
            target, restore_args = {key: target}, {key: restore_args}
        if step is not None and VERSION_ITEM in self.items(step):
            self.restore({}, step)  # the version check
        with _quiet_orbax():
            restored = ocp.PyTreeCheckpointer().restore(
                directory, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
            )
        for key in prefix:
            restored = restored[key]
        return {group: restored[group] for group in groups}

    def _check_shapes(self, group: str, stored: Any, target: Any) -> None:
        src, tgt = _shapes(stored), _shapes(target)
        missing = sorted(set(tgt) - set(src))
        if missing:
            raise ParamsMismatchError(
                f"{self.path}: parameter {group}{missing[0]} (and {len(missing) - 1} more) not in the source; "
                "the model configs differ (layer count, scan_layers, position_embedding?)"
            )
        for name, shape in tgt.items():
            if src[name] != shape:
                raise ParamsMismatchError(
                    f"{self.path}: parameter {group}{name} has shape {src[name]} in the source, {shape} in this model; "
                    "the model configs differ (set the model size to the source's, or let it be taken from init_from)"
                )
