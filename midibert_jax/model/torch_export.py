"""Our parameters -> the reference's PyTorch state dict, and the folder `midibert-jax export` writes.

    DIR/model.safetensors    the state dict under the reference's module names (or pytorch_model.bin)
    DIR/config.json          {"format", "kind", "architecture", "bert": transformers.BertConfig kwargs,
                              "emb_size", "head_hidden", "sequence_pooling", "task", "num_classes",
                              "max_len", "fields", "vocab_sizes", "dtype", "weights", "not_exported",
                              "left_out", "source", "model": our model config}
    DIR/vocab.json           the Octuple vocabulary: field -> token names in id order (the published
                             dictionary's spelling), fields in column order
    DIR/README.md            a model card (midibert_jax/export.py writes it)

The state dict is torch_import's table (`layout`) read backwards, so a name changes in one place for
both directions. Tensors the reference's modules hold but never compute with (BERT's word table, its
position table under relative positions, the pooler, MidiBert.attention_linear) are not written: load
with `strict=False` and expect exactly those among the missing keys (config.json "not_exported").
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from midibert_jax import paths
from midibert_jax.errors import UserError
from midibert_jax.model import config_io, torch_import
from midibert_jax.tokenizer import vocab
from midibert_jax.torch_layouts import EXPORT_DTYPES, EXPORT_FORMATS

FORMAT = "midibert-jax export"  # config.json's "format": how import-torch recognises the folder
FORMATS, DTYPES = EXPORT_FORMATS, EXPORT_DTYPES
# The class of the reference's model.py (Adversarial-MidiBERT) that holds each group of ours.
REFERENCE_CLASSES = {"encoder": "MidiBert", "recoverer": "MidiBertLM", "masker": "Masker",
                     "token_head": "TokenClassification", "sequence_head": "SequenceClassification"}
_POSITIONS = ("relative_key_query", "absolute")  # those transformers' BERT has


class ExportError(UserError, ValueError):
    """A run that cannot be exported, or a folder that is not an export; the message names it."""


def layout_of(groups: Iterable[str]) -> tuple[str, tuple[str, ...], list[str]]:
    """(the layout kind, its heads, groups it has no place for) of a run holding param `groups`.

    A separate masker encoder ('masker_encoder') has no counterpart in the reference: it is left out,
    and so is the masker head that reads it (beside the main encoder it would compute something else).
    """
    groups = set(groups)
    if "encoder" not in groups:
        raise ExportError(f"no encoder among the parameter groups {sorted(groups)}")
    heads = {g for g in groups if g in torch_import.HEADS}
    if "masker_encoder" in groups:
        heads.discard("masker")
    for kind, required in torch_import.KIND_HEADS.items():
        optional = torch_import.OPTIONAL_HEADS.get(kind, ())
        if set(required) <= heads <= set(required) | set(optional):
            return kind, required + tuple(h for h in optional if h in heads), sorted(groups - heads - {"encoder"})
    raise ExportError(f"no reference layout holds the heads {sorted(heads)} together")


def _paths_of(tree: Mapping[str, Any]) -> set[tuple[str, ...]]:
    return {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def to_state_dict(
    params: Mapping[str, Any], kind: str, config: ml_collections.ConfigDict, heads: Iterable[str],
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """{torch name: C-contiguous numpy in `dtype`} of the encoder and `heads` of `params` (numpy or jax).

    Raises:
      ExportError: a position scheme the reference lacks (rope), or a parameter the table has no
        place for, or one it expects and `params` lacks.
    """
    if config.position_embedding not in _POSITIONS:
        raise ExportError(f"position_embedding {config.position_embedding!r} has no counterpart in the reference's "
                          f"BERT (it has {_POSITIONS}): this model cannot be exported")
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    heads = tuple(heads)
    tree = {"encoder": torch_import.unstack_layers(params["encoder"]), **{h: params[h] for h in heads}}
    entries = torch_import.layout(kind, config, heads)
    wanted, have = {e.ours for e in entries}, _paths_of(tree)
    for what, names in (("has no place in", have - wanted), ("is missing for", wanted - have)):
        if names:
            raise ExportError(f"parameter {'/'.join(min(names))} {what} the reference's '{kind}' layout "
                              f"({len(names)} in all); the model config and the parameters differ")
    out_dtype = np.dtype(jax.numpy.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)
    state = {}
    for e in entries:
        value = e.transform.to_torch(np.asarray(torch_import.get_path(tree, e.ours), np.float32))
        state[e.torch] = np.ascontiguousarray(value.astype(out_dtype))
    return state


def bert_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """transformers.BertConfig keyword arguments of the encoder (the reference builds its BertModel from one)."""
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "hidden_act": "gelu",
        "max_position_embeddings": config.max_len,
        "position_embedding_type": config.position_embedding,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.attention_dropout_rate,
        "initializer_range": config.initializer_range,
        "type_vocab_size": torch_import.TOKEN_TYPE_ROWS,
        "vocab_size": 1,  # BERT's word table: never used (the model passes inputs_embeds), not exported
    }


def export_config(
    *, kind: str, heads: tuple[str, ...], config: ml_collections.ConfigDict, fmt: str, dtype: str,
    task: Mapping[str, Any] | None, num_classes: int | None, source: Mapping[str, Any], left_out: list[str],
) -> dict[str, Any]:
    """The JSON written as DIR/config.json (see the module doc)."""
    return {
        "format": FORMAT,
        "kind": kind,
        "architecture": [REFERENCE_CLASSES[h] for h in heads] or [REFERENCE_CLASSES["encoder"]],
        "heads": list(heads),
        "bert": bert_config(config),
        "emb_size": config.field_embed_dim,
        "head_hidden": config.head_hidden,
        "sequence_pooling": {"da": config.sequence_pooling.attention_hidden, "r": config.sequence_pooling.attention_heads,
                             "include_pads": config.sequence_pooling.include_pads},
        "task": dict(task) if task else None,
        "num_classes": num_classes,
        "max_len": config.max_len,
        "fields": list(vocab.FIELDS),
        "vocab_sizes": dict(zip(vocab.FIELDS, vocab.VOCAB_SIZES)),
        "dtype": dtype,
        "weights": paths.EXPORT_WEIGHTS[fmt],
        "not_exported": torch_import.unused_modules(kind, config),
        "left_out": left_out,
        "source": dict(source),
        "model": config_io.to_json_dict(config),
    }


def vocab_json() -> dict[str, Any]:
    """The Octuple vocabulary as DIR/vocab.json: e2w is {field: {token: i for i, token in enumerate(tokens[field])}}."""
    return {"fields": list(vocab.FIELDS), "specials": list(vocab.SPECIALS), "tokens": vocab.token_names()}


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ExportError(f"{module.split('.')[0]} is not installed: pip install 'midibert-jax[export]'") from e


def weights_bytes(state: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """The state dict as a safetensors file or a torch.save file (bytes, so any filesystem takes them)."""
    if fmt == "safetensors":
        return _optional("safetensors.numpy").save(dict(state), metadata={"format": "pt"})
    if fmt != "torch":
        raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
    torch = _optional("torch")

    def tensor(x: np.ndarray):
        if x.dtype == np.dtype(jax.numpy.bfloat16):  # torch has no numpy bfloat16: same bits, reinterpreted
            return torch.from_numpy(x.view(np.uint16).copy()).view(torch.bfloat16)
        return torch.from_numpy(x.copy())

    buffer = io.BytesIO()
    torch.save({k: tensor(v) for k, v in state.items()}, buffer)
    return buffer.getvalue()


def is_export(path: str | os.PathLike) -> bool:
    """True for a folder whose config.json says it was written by `midibert-jax export`."""
    meta = paths.resolve(path) / paths.EXPORT_CONFIG
    return meta.exists() and paths.read_json(meta).get("format") == FORMAT


def read_export(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict as float32 numpy, config.json) of an export folder.

    Raises:
      ExportError: not an export folder, or its weights file is missing.
    """
    root = paths.resolve(path)
    if not is_export(root):
        raise ExportError(f"{os.fspath(path)}: not a folder written by `midibert-jax export` "
                          f"(no {paths.EXPORT_CONFIG} with \"format\": \"{FORMAT}\")")
    meta = paths.read_json(root / paths.EXPORT_CONFIG)
    weights = root / meta["weights"]
    if not weights.exists():
        raise ExportError(f"{os.fspath(path)}: the weights file {meta['weights']} named in config.json is missing")
    _optional("safetensors" if weights.name.endswith(".safetensors") else "torch")
    return torch_import.load_state_dict(os.fspath(weights)), meta


_CHECKED_FIELDS = ("num_layers", "hidden_size", "mlp_dim", "field_embed_dim", "max_len", "position_embedding")


def convert_export(state: Mapping[str, np.ndarray], meta: Mapping[str, Any], *, path: str = "the export",
                   scan_layers: bool | None = None) -> torch_import.Conversion:
    """An export's state dict converted under the model config its config.json records (which keeps
    what a state dict cannot say: the head count, the variant's other settings); `scan_layers` overrides.

    Raises:
      ExportError: config.json and the weights disagree on a size.
    """
    kind = meta["kind"]
    config = config_io.from_json_dict(meta["model"])
    if scan_layers is not None:
        config.scan_layers = scan_layers
    inferred = torch_import.infer_config(state, kind, config, config.num_heads)
    for name in _CHECKED_FIELDS:
        if inferred[name] != config[name]:
            raise ExportError(f"{path}: config.json says {name} = {config[name]!r}, the weights {inferred[name]!r}")
    params, ignored = torch_import.convert_state_dict(state, kind, config)
    return torch_import.Conversion(params, config, kind, torch_import.num_classes_of(params), ignored)
