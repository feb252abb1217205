"""Warm starts: parameters from a training workdir or an imported PyTorch checkpoint into a fresh state.

    state = warm_start.load_into(state, init_from, abstract_state)          # the trainers' init_from

`init_from` is one of
  * a pre-training or fine-tuning workdir (or its `checkpoints/` folder): the best step by its
    evaluation accuracy ('eval/accuracy' of fine-tuning, 'eval/acc/mean' of pre-training), else the
    latest; `which='latest'` or a step number picks another;
  * an imported checkpoint (`midibert-jax import-torch` output: `config.json` + `params/`).

What is copied: the parameter groups present in both the source and the target among
COPIED_GROUPS, so a classifier gets 'encoder' and a pre-training state also gets 'recoverer',
'masker' (and 'masker_encoder'). Task heads are never copied (their classes differ). Each array is
restored straight onto the target's sharding (orbax partial restore: the source's optimizer state is
never read). Shapes are checked first; a mismatch names the parameter and both shapes.

Everything here only reads: workdirs of running jobs can be used (orbax read-only manager).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from midibert_jax.config_loading import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_ITEM = "state"
# Evaluation metrics that rank checkpoints (fine-tuning, pre-training), highest best.
BEST_METRICS = ("eval/accuracy", "eval/acc/mean")
COPIED_GROUPS = ("encoder", "recoverer", "masker", "masker_encoder")
IMPORTED_CONFIG, IMPORTED_PARAMS = "config.json", "params"


class NoCheckpointError(FileNotFoundError):
    """The path holds no (complete) checkpoint."""


class WarmStartError(ConfigError):
    """The source does not fit the target (missing groups, other shapes)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A readable parameter source.

    Attributes:
      path: as given.
      kind: 'workdir' (a training run's checkpoints) or 'imported'.
      params_dir: the orbax tree holding the parameters (`<step>/state`, under key 'params'; or `params/`).
      step: the checkpoint step (workdir) or None.
      config: the run config as a dict (workdir), or {'model': ..., 'kind': ...} (imported).
    """

    path: str
    kind: str
    params_dir: epath.Path
    step: int | None
    config: dict[str, Any]

    @property
    def prefix(self) -> tuple[str, ...]:
        """Keys in front of the parameter groups inside params_dir's tree."""
        return ("params",) if self.kind == "workdir" else ()


def _path(path: str | epath.PathLike) -> epath.Path:
    """An absolute path for local folders (orbax needs them), cloud paths as they are."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def is_imported(path: str | epath.PathLike) -> bool:
    p = _path(path)
    return (p / IMPORTED_CONFIG).exists() and (p / IMPORTED_PARAMS).exists()


def checkpoint_dir(path: str | epath.PathLike) -> epath.Path:
    """The folder of step directories: `path/checkpoints` when it exists, else `path`."""
    p = _path(path)
    return p / CHECKPOINTS if (p / CHECKPOINTS).is_dir() else p


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


def open_manager(directory: epath.Path) -> ocp.CheckpointManager:
    """A read-only orbax manager over step directories (never writes, never cleans up)."""
    with _quiet_orbax():
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False),
            item_handlers={"config": ocp.JsonCheckpointHandler()},
        )


def _best_step(manager: ocp.CheckpointManager, steps: list[int]) -> int | None:
    best, best_value = None, None
    for step in steps:
        try:
            metrics = manager.metrics(step) or {}
        except Exception:  # pylint: disable=broad-except  # a step saved without metrics
            continue
        for name in BEST_METRICS:
            if name in metrics:
                value = float(metrics[name])
                if best_value is None or value > best_value:  # ties: the earliest step
                    best, best_value = step, value
                break
    return best


def find_step(path: str | epath.PathLike, which: str | int = "best") -> tuple[epath.Path, int]:
    """(checkpoint folder, step) of a workdir: `which` = 'best' (falls back to the latest), 'latest' or a step.

    Raises:
      NoCheckpointError: no folder, or no complete step in it.
    """
    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise NoCheckpointError(f"{path}: no checkpoint found ({directory} does not exist); train first")
    manager = open_manager(directory)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise NoCheckpointError(f"{path}: no checkpoint found (no complete step in {directory}); train first")
        if isinstance(which, int) or str(which).isdigit():
            step = int(which)
            if step not in steps:
                raise NoCheckpointError(f"{path}: no checkpoint step {step}; steps present: {steps}")
        elif which == "latest":
            step = steps[-1]
        elif which == "best":
            step = _best_step(manager, steps)
            step = steps[-1] if step is None else step
        else:
            raise ValueError(f"which must be 'best', 'latest' or a step number, got {which!r}")
    finally:
        manager.close()
    return directory, step


def read_run_config(directory: epath.Path, step: int) -> dict[str, Any]:
    """The run config saved with checkpoint `step` (a dict)."""
    manager = open_manager(directory)
    try:
        with _quiet_orbax():
            return dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    finally:
        manager.close()


def describe(path: str | epath.PathLike, which: str | int = "best") -> Source:
    """The parameter source at `path` (see the module docstring)."""
    if is_imported(path):
        p = _path(path)
        meta = json.loads((p / IMPORTED_CONFIG).read_text())
        return Source(str(path), "imported", p / IMPORTED_PARAMS, None, meta)
    directory, step = find_step(path, which)
    return Source(str(path), "workdir", directory / str(step) / STATE_ITEM, step, read_run_config(directory, step))


def param_shapes(source: Source) -> dict[str, Any]:
    """{group: tree of ShapeDtypeStructs} of the source's parameters (read from metadata, no arrays)."""
    with _quiet_orbax():
        metadata = ocp.PyTreeCheckpointer().metadata(source.params_dir).item_metadata
    tree = getattr(metadata, "tree", metadata)
    for key in source.prefix:
        tree = tree[key]
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(tree))


def _check_shapes(group: str, source_shapes: Any, target: Any, path: str) -> None:
    src = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(source_shapes)}
    tgt = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(target)}
    missing = sorted(set(tgt) - set(src))
    if missing:
        raise WarmStartError(
            f"{path}: parameter {group}{missing[0]} (and {len(missing) - 1} more) not in the source; "
            "the model configs differ (layer count, scan_layers, position_embedding?)"
        )
    for name, shape in tgt.items():
        if src[name] != shape:
            raise WarmStartError(
                f"{path}: parameter {group}{name} has shape {src[name]} in the source, {shape} in this model; "
                "the model configs differ (set the model size to the source's, or let it be taken from init_from)"
            )


def load_groups(source: Source, targets: dict[str, Any]) -> dict[str, Any]:
    """Restores {group: abstract tree (ShapeDtypeStructs with shardings)} from the source, shapes checked."""
    shapes = param_shapes(source)
    for group, target in targets.items():
        if group not in shapes:
            raise WarmStartError(f"{source.path}: the source has no '{group}' parameters (it has {sorted(shapes)})")
        _check_shapes(group, shapes[group], target, source.path)
    item: Any = dict(targets)
    for key in reversed(source.prefix):
        item = {key: item}
    with _quiet_orbax():
        restored = ocp.PyTreeCheckpointer().restore(
            source.params_dir,
            args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            ),
        )
    for key in source.prefix:
        restored = restored[key]
    return {group: restored[group] for group in targets}


def groups_to_copy(source: Source, target_params: Any) -> list[str]:
    """The groups copied from `source` into a params tree with `target_params`' top-level keys."""
    available = set(param_shapes(source))
    groups = [g for g in COPIED_GROUPS if g in target_params and g in available]
    if "encoder" not in groups:
        raise WarmStartError(f"{source.path}: the source has no 'encoder' parameters (it has {sorted(available)})")
    return groups


def load_into(state: Any, path: str, abstract_state: Any, *, which: str | int = "best") -> Any:
    """`state` with its encoder (and, for pre-training states, recoverer/masker) taken from `path`.

    Args:
      state: a fresh train state (any dataclass with `params` and `replace`).
      path: a workdir, its checkpoints folder or an imported checkpoint.
      abstract_state: the state's abstract tree; its `params` leaves carry the target shardings.
      which: the workdir step ('best', 'latest' or a number).
    Raises:
      NoCheckpointError, WarmStartError: with the path and the problem.
    """
    source = describe(path, which)
    groups = groups_to_copy(source, state.params)
    loaded = load_groups(source, {g: abstract_state.params[g] for g in groups})
    log.info("warm start: %s from %s%s", ", ".join(groups), path, f" step {source.step}" if source.step else "")
    return state.replace(params={**state.params, **loaded})


# Model-config fields that decide the encoder's parameters (taken from the source by fine-tuning).
ARCHITECTURE_FIELDS = (
    "size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "field_embed_dim", "max_len",
    "position_embedding", "rope_max_wavelength", "layer_norm_eps", "scan_layers", "param_dtype",
)


def source_model_config(path: str, which: str | int = "best") -> dict[str, Any]:
    """The model config (a dict) of the run or import at `path`."""
    source = describe(path, which)
    model = source.config.get("model")
    if not isinstance(model, dict):
        raise WarmStartError(f"{path}: no model config recorded with the checkpoint")
    return model
