"""On-disk format of an imported (or exported) model: what `midibert-jax import-torch` writes.

    DIR/params/       orbax StandardCheckpointer tree: {'encoder': ..., [head]: ...} (models.py layout)
    DIR/config.json   {"kind": ..., "num_classes": int | null, "model": <model config>, "ignored": [...],
                       "source": <original file>}

`load_imported(DIR)` gives back (model_config, params) as jax arrays on the first device; pass
`shardings` (a tree of the same structure, e.g. sharding.param_shardings(...) restricted to the
same top-level keys) to restore each array directly into its shards.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from midibert_jax.model import config_io

CONFIG_NAME = "config.json"
PARAMS_NAME = "params"


def save_imported(
    out_dir: str | pathlib.Path,
    params: Any,
    config: ml_collections.ConfigDict,
    *,
    kind: str,
    num_classes: int | None = None,
    ignored: list[str] | None = None,
    source: str | None = None,
) -> pathlib.Path:
    """Write params (orbax) and config.json into out_dir (created; params/ must not exist yet)."""
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = jax.tree_util.tree_map(np.asarray, params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / PARAMS_NAME, params)
    checkpointer.wait_until_finished()
    meta = {
        "kind": kind,
        "num_classes": num_classes,
        "model": config_io.to_json_dict(config),
        "ignored": list(ignored or []),
        "source": source,
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_meta(directory: str | pathlib.Path) -> dict[str, Any]:
    """config.json of an imported model (kind, num_classes, model config as a dict, notes)."""
    return json.loads((pathlib.Path(directory) / CONFIG_NAME).read_text())


def load_imported(directory: str | pathlib.Path, shardings: Any = None) -> tuple[ml_collections.ConfigDict, Any]:
    """(model config, params). Without `shardings` the arrays land on the default device."""
    directory = pathlib.Path(directory).resolve()
    meta = read_meta(directory)
    checkpointer = ocp.StandardCheckpointer()
    path = directory / PARAMS_NAME
    metadata = checkpointer.metadata(path).item_metadata
    metadata = getattr(metadata, "tree", metadata)  # orbax wraps the tree of ArrayMetadata
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, metadata)
    target = jax.tree_util.tree_map(
        lambda s, m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), shardings, metadata
    )
    params = checkpointer.restore(path, target)
    return config_io.from_json_dict(meta["model"]), params
