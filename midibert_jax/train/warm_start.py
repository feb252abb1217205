"""Warm starts: parameters from a training workdir or an imported PyTorch checkpoint into a fresh state.

    state = warm_start.load_into(state, init_from, abstract_state)          # the trainers' init_from

`init_from` is anything `run.Run.open` reads: a pre-training or fine-tuning workdir (or its
`checkpoints/` folder), where the best step by validation accuracy is used (else the latest;
`which='latest'` or a step number picks another), or an imported checkpoint (`midibert-jax
import-torch` output).

What is copied: the parameter groups present in both the source and the target among
COPIED_GROUPS, so a classifier gets 'encoder' and a pre-training state also gets 'recoverer',
'masker' (and 'masker_encoder'). Task heads are never copied (their classes differ). Each array is
restored straight onto the target's sharding (the source's optimizer state is never read). Shapes
are checked first; a mismatch names the parameter and both shapes.

Everything here only reads (through `Run`): workdirs of running jobs can be used.
"""

from __future__ import annotations

import logging
from typing import Any

from midibert_jax import run as run_lib
from midibert_jax.config_loading import ConfigError

log = logging.getLogger(__name__)

COPIED_GROUPS = ("encoder", "recoverer", "masker", "masker_encoder")

# Model-config fields that decide the encoder's parameters (taken from the source by fine-tuning).
ARCHITECTURE_FIELDS = (
    "size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "field_embed_dim", "max_len",
    "position_embedding", "rope_max_wavelength", "layer_norm_eps", "scan_layers", "param_dtype",
)


class WarmStartError(ConfigError):
    """The source does not fit the target (missing groups, other shapes)."""


def groups_to_copy(run: run_lib.Run, target_params: Any, which: str | int = "best") -> list[str]:
    """The groups copied from `run` into a params tree with `target_params`' top-level keys."""
    available = set(run.param_shapes(which))
    groups = [g for g in COPIED_GROUPS if g in target_params and g in available]
    if "encoder" not in groups:
        raise WarmStartError(f"{run.path}: the source has no 'encoder' parameters (it has {sorted(available)})")
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
    with run_lib.Run.open(path) as run:
        step = None if run.is_imported else run.step(which)
        groups = groups_to_copy(run, state.params, step if step is not None else which)
        try:
            loaded = run.params(groups, abstract_state.params, which=step if step is not None else which)
        except run_lib.ParamsMismatchError as e:
            raise WarmStartError(str(e)) from e
    log.info("warm start: %s from %s%s", ", ".join(groups), path, f" step {step}" if step is not None else "")
    return state.replace(params={**state.params, **loaded})


def source_model_config(path: str, which: str | int = "best") -> dict[str, Any]:
    """The model config (a dict) of the run or import at `path`."""
    with run_lib.Run.open(path) as run:
        try:
            return run.model_config(which).to_dict()
        except run_lib.ParamsMismatchError as e:
            raise WarmStartError(str(e)) from e
