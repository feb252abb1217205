"""Model configs as files: the defaults of configs/model.py, and JSON for checkpoints.

`configs/` sits at the repository root (beside the package) and is not installed, so the defaults
are read from that file by path; commands run from a checkout find it whatever the working directory.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any

import ml_collections

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "model.py"


def _config_module():
    spec = importlib.util.spec_from_file_location("_midibert_model_config", CONFIG_FILE)
    if spec is None or not CONFIG_FILE.exists():
        raise FileNotFoundError(f"model config file not found at {CONFIG_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_model_config(size: str = "base", **kwargs: Any) -> ml_collections.ConfigDict:
    """configs/model.py's get_model_config(size, **kwargs)."""
    return _config_module().get_model_config(size, **kwargs)


def model_sizes() -> dict[str, tuple[int, int, int, int]]:
    """configs/model.py's SIZES: variant -> (num_layers, hidden_size, num_heads, mlp_dim)."""
    return dict(_config_module().SIZES)


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(config.to_json())


def from_json_dict(data: dict[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of to_json_dict; list-valued rules come back as tuples."""
    data = dict(data)
    if "logical_axis_rules" in data:
        data["logical_axis_rules"] = tuple(
            (name, tuple(t) if isinstance(t, list) else t) for name, t in data["logical_axis_rules"]
        )
    return ml_collections.ConfigDict(data)
