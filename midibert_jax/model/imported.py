"""On-disk format of an imported (or exported) model: what `midibert-jax import-torch` writes.

    DIR/params/       orbax StandardCheckpointer tree: {'encoder': ..., [head]: ...} (models.py layout)
    DIR/config.json   {"kind": ..., "num_classes": int | null, "model": <model config>, "ignored": [...],
                       "source": <original file>}

Reading is `midibert_jax.run.Run.open(DIR)`: `.config` (this JSON, model config as a ConfigDict)
and `.params(groups, abstract)` (each array restored onto its sharding, or numpy).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from midibert_jax import paths
from midibert_jax.model import config_io


def save_imported(
    out_dir: str | os.PathLike,
    params: Any,
    config: ml_collections.ConfigDict,
    *,
    kind: str,
    num_classes: int | None = None,
    ignored: list[str] | None = None,
    source: str | None = None,
) -> epath.Path:
    """Write params (orbax) and config.json into out_dir (local or a URL; params/ must not exist yet)."""
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = jax.tree_util.tree_map(np.asarray, params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / paths.IMPORTED_PARAMS, params)
    checkpointer.wait_until_finished()
    meta = {
        "kind": kind,
        "num_classes": num_classes,
        "model": config_io.to_json_dict(config),
        "ignored": list(ignored or []),
        "source": source,
    }
    paths.write_json(out / paths.IMPORTED_CONFIG, meta)
    return out
