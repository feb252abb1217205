"""Convert the published PyTorch (Adversarial-MidiBERT) state dicts into our parameter trees.

Supported module layouts (`kind`), each optionally under a DataParallel `module.` prefix:

  encoder    MidiBert: bert.* (a transformers 4.x BertModel), word_emb.{i}.lut.weight, in_linear.*
  pretrain   midibert.* + mask_lm.proj.{i}.{weight,bias}               -> encoder, recoverer
             [+ linear.1.*, linear.3.*                                 -> masker, when present]
  masker     midibert.* + linear.1.*, linear.3.*                       -> encoder, masker
  token      midibert.* + classifier.1.*, classifier.3.*               -> encoder, token_head
  sequence   midibert.* + attention.ws{1,2}.weight, classifier.{0,2}.* -> encoder, sequence_head

Field i of word_emb / proj is column i of the token row (Bar, Position, Instrument, Pitch, Duration,
Velocity, TimeSig, Tempo). PyTorch Linear weights are [out, in]; ours are [in, out] (q/k/v split into
[embed, heads, head_dim], the attention output into [heads, head_dim, embed]). Entries the model never
uses (attention_linear.*, BERT's word and position tables, the pooler, buffers) are dropped and listed
in `Conversion.ignored`; any other unexpected entry is an error, and so is a missing one.

`layout(kind, config, heads)` is the one table of names: each tensor of the reference's state dict,
its place in our tree and its reshaping, both ways (`Transform`). Importing reads it forwards;
model/torch_export.py reads the same table backwards. The pretrain layout may carry the masker beside
the MLM because a pre-training run of ours holds both on one encoder, and its export writes both.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from midibert_jax.model.embedding import FIELD_KEYS
from midibert_jax.tokenizer import vocab
from midibert_jax.torch_layouts import KINDS

# The heads, per group of our params: (torch Linear, our submodule, has a bias).
HEADS = {
    "recoverer": tuple((f"mask_lm.proj.{i}", key, True) for i, key in enumerate(FIELD_KEYS)),
    "masker": (("linear.1", "hidden", True), ("linear.3", "score", True)),
    "token_head": (("classifier.1", "hidden", True), ("classifier.3", "logits", True)),
    "sequence_head": (
        ("attention.ws1", "pool_hidden", False),
        ("attention.ws2", "pool_scores", False),
        ("classifier.0", "hidden", True),
        ("classifier.2", "logits", True),
    ),
}
# The heads each layout holds, and those it may hold besides.
KIND_HEADS = {"encoder": (), "pretrain": ("recoverer",), "masker": ("masker",), "token": ("token_head",),
              "sequence": ("sequence_head",)}
OPTIONAL_HEADS = {"pretrain": ("masker",)}
TOKEN_TYPE_ROWS = 2  # BERT's type_vocab_size; the model feeds type 0 only
# Modules of the reference the model never computes with: dropped on import (named in `ignored`), not
# written on export. BERT's position table joins them unless positions are absolute (`unused_modules`).
_UNUSED_MODULES = (
    "attention_linear",  # the reference's dead gate
    "bert.embeddings.word_embeddings",  # inputs_embeds are given
    "bert.pooler",
)
_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")  # of older transformers


@dataclasses.dataclass
class Conversion:
    """A converted checkpoint: our params (numpy, float32), the model config, notes on dropped entries."""

    params: dict[str, Any]
    config: ml_collections.ConfigDict
    kind: str
    num_classes: int | None
    ignored: list[str]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A .pth / .bin / .safetensors file -> {name: float32 numpy}; a torch file may hold a bare state
    dict or {'state_dict': ...} / {'model': ...}."""
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.numpy import load_file  # optional dependency: the `export` extra

        return {k: _to_numpy(v) for k, v in load_file(os.fspath(path)).items()}
    import torch  # optional dependency: only the importer needs it

    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, np.float32)


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state as float32 numpy, without a DataParallel `module.` prefix."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: _to_numpy(v) for k, v in state.items()}


def _encoder_prefix(kind: str) -> str:
    return "" if kind == "encoder" else "midibert."


def infer_config(
    state: Mapping[str, np.ndarray], kind: str, base: ml_collections.ConfigDict, num_heads: int | None = None
) -> ml_collections.ConfigDict:
    """`base` with the encoder's sizes read from the state dict (heads: given, else hidden // 64)."""
    state = strip_module_prefix(state)
    p = _encoder_prefix(kind)
    config = ml_collections.ConfigDict(base.to_dict())
    layer_re = re.compile(rf"{re.escape(p)}bert\.encoder\.layer\.(\d+)\.")
    layer_ids = {int(m.group(1)) for k in state if (m := layer_re.match(k))}
    if not layer_ids:
        raise ValueError(f"no {p}bert.encoder.layer.* entries: is this a '{kind}' checkpoint?")
    config.num_layers = max(layer_ids) + 1
    config.hidden_size = int(state[f"{p}in_linear.weight"].shape[0])
    config.field_embed_dim = int(state[f"{p}word_emb.0.lut.weight"].shape[1])
    config.mlp_dim = int(state[f"{p}bert.encoder.layer.0.intermediate.dense.weight"].shape[0])
    config.num_heads = int(num_heads) if num_heads else config.hidden_size // 64
    distance = state.get(f"{p}bert.encoder.layer.0.attention.self.distance_embedding.weight")
    if distance is not None:
        config.position_embedding = "relative_key_query"
        config.max_len = (int(distance.shape[0]) + 1) // 2
    else:  # transformers BERT without distance tables adds absolute positions
        config.position_embedding = "absolute"
        config.max_len = int(state[f"{p}bert.embeddings.position_embeddings.weight"].shape[0])
    config.masker.mode = "shared"  # the reference's masker always shares the encoder
    if any(config[n] != base[n] for n in _SIZE_FIELDS):
        config.size = "custom"
    return config


_SIZE_FIELDS = ("num_layers", "hidden_size", "num_heads", "mlp_dim")


# ----------------------------------------------------------------------------- the table of names


@dataclasses.dataclass(frozen=True)
class Transform:
    """How one tensor is reshaped between the reference's layout and ours; the two are exact inverses."""

    to_ours: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Transform(lambda x: x, lambda x: x)
TRANSPOSED = Transform(lambda w: w.T, lambda k: k.T)  # Linear weight [out, in] <-> kernel [in, out]
# token_type_embeddings [2, E] <-> our one row (type 0); the other row is written as zeros.
FIRST_ROW = Transform(
    lambda t: t[0], lambda r: np.concatenate([r[None], np.zeros((TOKEN_TYPE_ROWS - 1, r.shape[-1]), r.dtype)])
)


def _split_heads(heads: int) -> Transform:
    """q/k/v weight [heads * head_dim, embed] <-> kernel [embed, heads, head_dim]."""
    return Transform(lambda w: w.T.reshape(w.shape[1], heads, -1), lambda k: k.reshape(k.shape[0], -1).T)


def _split_bias(heads: int) -> Transform:
    return Transform(lambda b: b.reshape(heads, -1), lambda b: b.reshape(-1))


def _merge_heads(heads: int) -> Transform:
    """Attention output weight [embed, heads * head_dim] <-> kernel [heads, head_dim, embed]."""
    return Transform(lambda w: w.T.reshape(heads, -1, w.shape[0]), lambda k: k.reshape(-1, k.shape[-1]).T)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: its name in the reference's state dict, its key path in our (unstacked) params."""

    torch: str
    ours: tuple[str, ...]
    transform: Transform = SAME


def _linear(name: str, ours: tuple[str, ...], bias: bool = True) -> list[Entry]:
    out = [Entry(f"{name}.weight", ours + ("kernel",), TRANSPOSED)]
    return out + [Entry(f"{name}.bias", ours + ("bias",))] if bias else out


def _layer_norm(name: str, ours: tuple[str, ...]) -> list[Entry]:
    return [Entry(f"{name}.weight", ours + ("scale",)), Entry(f"{name}.bias", ours + ("bias",))]


def _layer(p: str, ours: tuple[str, ...], heads: int, relative: bool) -> list[Entry]:
    attn = ours + ("attention",)
    entries = []
    for name in ("query", "key", "value"):
        entries += [Entry(f"{p}attention.self.{name}.weight", attn + (name, "kernel"), _split_heads(heads)),
                    Entry(f"{p}attention.self.{name}.bias", attn + (name, "bias"), _split_bias(heads))]
    entries += [Entry(f"{p}attention.output.dense.weight", attn + ("out", "kernel"), _merge_heads(heads)),
                Entry(f"{p}attention.output.dense.bias", attn + ("out", "bias"))]
    if relative:
        entries.append(Entry(f"{p}attention.self.distance_embedding.weight", attn + ("distance",)))
    return (entries + _layer_norm(f"{p}attention.output.LayerNorm", ours + ("attention_norm",))
            + _linear(f"{p}intermediate.dense", ours + ("mlp_in",)) + _linear(f"{p}output.dense", ours + ("mlp_out",))
            + _layer_norm(f"{p}output.LayerNorm", ours + ("mlp_norm",)))


def layout(kind: str, config: ml_collections.ConfigDict, heads: Iterable[str] | None = None) -> list[Entry]:
    """Every tensor of layout `kind` holding `heads` (default: the kind's own), in state-dict order.

    Our paths address the unstacked encoder ('layer_<i>'); `stack_layers` / `unstack_layers` move
    between that and the scanned layout.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    p = _encoder_prefix(kind)
    embed = ("encoder", "embed")
    entries = [Entry(f"{p}word_emb.{i}.lut.weight", embed + (key,)) for i, key in enumerate(FIELD_KEYS)]
    entries += _linear(f"{p}in_linear", embed + ("in_proj",))
    entries.append(Entry(f"{p}bert.embeddings.token_type_embeddings.weight", embed + ("token_type",), FIRST_ROW))
    entries += _layer_norm(f"{p}bert.embeddings.LayerNorm", embed + ("norm",))
    if config.position_embedding == "absolute":
        entries.append(Entry(f"{p}bert.embeddings.position_embeddings.weight", embed + ("absolute_position",)))
    relative = config.position_embedding == "relative_key_query"
    for i in range(config.num_layers):
        entries += _layer(f"{p}bert.encoder.layer.{i}.", ("encoder", f"layer_{i}"), config.num_heads, relative)
    for group in KIND_HEADS[kind] if heads is None else heads:
        for torch_name, sub, bias in HEADS[group]:
            entries += _linear(torch_name, (group, sub), bias)
    return entries


def unused_modules(kind: str, config: ml_collections.ConfigDict) -> list[str]:
    """The reference's modules in layout `kind` that the model never computes with (see _UNUSED_MODULES)."""
    names = list(_UNUSED_MODULES)
    if config.position_embedding != "absolute":
        names.append("bert.embeddings.position_embeddings")
    return sorted(_encoder_prefix(kind) + name for name in names)


def stack_layers(encoder: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """{'embed', 'layer_<i>'...} -> {'embed', 'layers'} with a leading layer axis (scan_layers)."""
    layers = [encoder[f"layer_{i}"] for i in range(num_layers)]
    return {"embed": encoder["embed"], "layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}


def unstack_layers(encoder: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of stack_layers; an unstacked encoder is returned as it is."""
    if "layers" not in encoder:
        return dict(encoder)
    n = len(jax.tree_util.tree_leaves(encoder["layers"])[0])
    layers = {f"layer_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], encoder["layers"]) for i in range(n)}
    return {"embed": encoder["embed"], **layers}


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ----------------------------------------------------------------------------- import


def _pop(state: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in state:
        raise KeyError(f"checkpoint lacks {name!r}")
    return np.asarray(state.pop(name), np.float32)


def heads_in_state(state: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """The kind's heads, and those of its optional heads whose entries the state holds."""
    optional = tuple(h for h in OPTIONAL_HEADS.get(kind, ()) if f"{HEADS[h][0][0]}.weight" in state)
    return KIND_HEADS[kind] + optional


def convert_state_dict(
    state: Mapping[str, np.ndarray], kind: str, config: ml_collections.ConfigDict
) -> tuple[dict[str, Any], list[str]]:
    """(params, ignored names) for `kind`; params follow models.py's trees ({'encoder': ..., head: ...})."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    state = strip_module_prefix(state)
    left = dict(state)
    params: dict[str, Any] = {}
    for entry in layout(kind, config, heads_in_state(state, kind)):
        _set_path(params, entry.ours, entry.transform.to_ours(_pop(left, entry.torch)))
    for i, (key, size) in enumerate(zip(FIELD_KEYS, vocab.VOCAB_SIZES)):
        rows = params["encoder"]["embed"][key].shape[0]
        if rows != size:
            raise ValueError(f"word_emb.{i} ({vocab.FIELDS[i]}) has {rows} rows, the vocabulary {size}")
    if config.scan_layers:
        params["encoder"] = stack_layers(params["encoder"], config.num_layers)

    p = _encoder_prefix(kind)
    unused = tuple(unused_modules(kind, config)) + tuple(p + b for b in _BUFFERS)
    ignored, unknown = [], []
    for name in sorted(left):
        (ignored if any(name == u or name.startswith(u + ".") for u in unused) else unknown).append(name)
    if unknown:
        raise ValueError(f"unexpected entries in a '{kind}' checkpoint: {unknown}")
    token_types = state.get(f"{p}bert.embeddings.token_type_embeddings.weight")
    if token_types is not None and len(token_types) > 1:
        ignored.append(f"{p}bert.embeddings.token_type_embeddings.weight[1:]")
    return params, ignored


def num_classes_of(params: Mapping[str, Any]) -> int | None:
    for head in ("token_head", "sequence_head"):
        if head in params:
            return int(params[head]["logits"]["kernel"].shape[-1])
    return None


def convert(
    state: Mapping[str, np.ndarray], kind: str, base: ml_collections.ConfigDict, num_heads: int | None = None
) -> Conversion:
    """Infer the config from `state` (on top of `base`) and convert it."""
    state = strip_module_prefix(state)  # once: later calls find float32 numpy and copy nothing
    config = infer_config(state, kind, base, num_heads)
    params, ignored = convert_state_dict(state, kind, config)
    return Conversion(params, config, kind, num_classes_of(params), ignored)
