"""Checks a run's config against itself and the devices before any data is built or code compiled.

Each problem is a `ConfigError` naming the key and what would work, collected in one message,
so a pod job fails in seconds rather than after building a dataset and compiling for minutes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections

from midibert_jax.config_loading import ConfigError


class InvalidConfigError(ConfigError):
    """Every problem found in one config: `problems`, one per line of the message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n  " + "\n  ".join(self.problems))


def _positive_ints(config, keys: list[str], problems: list[str], *, minimum: int = 1) -> None:
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        if not isinstance(node, int) or isinstance(node, bool) or node < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            problems.append(f"{key} must be {kind}, got {node!r}")


def _mesh(config, num_devices: int, problems: list[str]) -> dict[str, int] | None:
    from midibert_jax import sharding  # pylint: disable=import-outside-toplevel

    unknown = set(config.mesh.keys()) - set(sharding.MESH_AXES)
    if unknown:
        problems.append(f"mesh has unknown axes {sorted(unknown)}; axes are {sharding.MESH_AXES}")
        return None
    try:
        return dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, num_devices)))
    except ValueError as e:
        problems.append(f"mesh {dict(config.mesh)} does not fit {num_devices} device(s): {e}")
        return None


def _model(model, problems: list[str]) -> None:
    from midibert_jax.model.attention import POSITION_TYPES  # pylint: disable=import-outside-toplevel
    from midibert_jax.model.encoder import REMAT_POLICIES  # pylint: disable=import-outside-toplevel

    if model.hidden_size % model.num_heads:
        problems.append(f"model.hidden_size {model.hidden_size} is not divisible by model.num_heads {model.num_heads}")
    if model.position_embedding not in POSITION_TYPES:
        problems.append(f"model.position_embedding must be one of {POSITION_TYPES}, got {model.position_embedding!r}")
    if model.remat not in REMAT_POLICIES:
        problems.append(f"model.remat must be one of {tuple(REMAT_POLICIES)}, got {model.remat!r}")
    for key in ("dtype", "param_dtype"):
        if model[key] not in ("float32", "bfloat16", "float16"):
            problems.append(f"model.{key} must be float32, bfloat16 or float16, got {model[key]!r}")
    if model.masker.mode not in ("shared", "separate"):
        problems.append(f"model.masker.mode must be 'shared' or 'separate', got {model.masker.mode!r}")


def _batches(config, mesh: dict[str, int] | None, num_processes: int, problems: list[str]) -> None:
    shards = mesh["data"] * mesh["fsdp"] if mesh else 1
    for key in ("batch_size", "eval_batch_size"):
        size = config.data[key]
        need = math.lcm(shards, num_processes)
        if isinstance(size, int) and size > 0 and size % need:
            problems.append(
                f"data.{key}={size} must be a multiple of {need} (data x fsdp = {shards} batch shards, "
                f"{num_processes} process(es)); e.g. {need * max(1, round(size / need))}"
            )


def _blocks(config: ml_collections.ConfigDict, builders: dict[str, Callable[[Any], Any]], problems: list[str]) -> None:
    """Builds each config block with its parser (which raises on a bad value), noting what fails."""
    for name, build in builders.items():
        try:
            build(config[name])
        except (ValueError, TypeError, KeyError) as e:
            problems.append(f"{name}: {e}")


def _model_mesh_batches_then_raise(config: ml_collections.ConfigDict, num_devices: int, num_processes: int,
                                   problems: list[str]) -> None:
    """The checks both kinds share (model, mesh, batch divisibility); then one ConfigError listing all problems."""
    _model(config.model, problems)
    mesh = _mesh(config, num_devices, problems)
    _batches(config, mesh, num_processes, problems)
    if problems:
        raise InvalidConfigError(problems)


def validate_pretrain(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1) -> None:
    """Raises ConfigError listing every problem of a pre-training config (configs/pretrain.py)."""
    from midibert_jax.train import losses, mask_book, masking, optim  # pylint: disable=import-outside-toplevel

    problems: list[str] = []
    _positive_ints(config, ["data.batch_size", "data.eval_batch_size", "data.max_len", "train.steps",
                            "train.log_every", "train.eval_every", "train.checkpoint_every",
                            "train.keep_checkpoints", "model.num_layers", "model.num_heads"], problems)
    if isinstance(config.data.max_len, int) and config.data.max_len % 8:
        problems.append(f"data.max_len={config.data.max_len} must be a multiple of 8 (the mask book packs 8 notes a byte)")
    if config.model.max_len != config.data.max_len:
        problems.append(f"model.max_len={config.model.max_len} differs from data.max_len={config.data.max_len}")
    _blocks(config, {"masking": masking.MaskingConfig.from_config, "loss": losses.LossConfig.from_config,
                     "mask_book": mask_book.MaskBookConfig.from_config, "optim": optim.make_optimizer}, problems)
    _model_mesh_batches_then_raise(config, num_devices, num_processes, problems)


def validate_finetune(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1) -> None:
    """Raises ConfigError listing every problem of a fine-tuning config (configs/finetune.py).

    The optimiser is checked by the trainer, once the step count (epochs x steps per epoch) is known.
    """
    from midibert_jax.train import augment  # pylint: disable=import-outside-toplevel

    problems: list[str] = []
    _positive_ints(config, ["data.batch_size", "data.eval_batch_size", "data.max_len", "train.log_every",
                            "train.keep_checkpoints", "model.num_layers", "model.num_heads"], problems)
    _positive_ints(config, ["train.steps", "train.epochs", "train.eval_every"], problems, minimum=0)
    if config.train.steps == 0 and config.train.epochs == 0:
        problems.append("train.steps and train.epochs are both 0: set one of them (steps, when set, win)")
    _blocks(config, {"augment": augment.AugmentConfig.from_config}, problems)
    fraction = config.train.get("piece_fraction", 1.0)
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        problems.append(f"train.piece_fraction={fraction!r} must be in (0, 1] (the fraction of training pieces used)")
    views = config.train.get("eval_views", 1)
    if not isinstance(views, int) or isinstance(views, bool) or not 1 <= views <= config.data.max_len:
        problems.append(f"train.eval_views={views!r} must be an integer in [1, data.max_len] (windows per note at "
                        "evaluation)")
    elif views > 1 and (config.augment.get("eval_mask", False) or config.augment.get("eval_pitch_shift", False)):
        problems.append(f"train.eval_views={views} averages clean predictions: it cannot be combined with "
                        "augment.eval_mask or augment.eval_pitch_shift (set eval_views=1)")
    _model_mesh_batches_then_raise(config, num_devices, num_processes, problems)


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1) -> None:
    """Checks a pre-training or a fine-tuning config (one with a `task` block); raises ConfigError."""
    check = validate_finetune if "task" in config else validate_pretrain
    check(config, num_devices=num_devices, num_processes=num_processes)
