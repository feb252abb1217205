"""Convert the published PyTorch (Adversarial-MidiBERT) state dicts into our parameter trees.

Supported module layouts (`kind`), each optionally under a DataParallel `module.` prefix:

  encoder    MidiBert: bert.* (a transformers 4.x BertModel), word_emb.{i}.lut.weight, in_linear.*
  pretrain   midibert.* + mask_lm.proj.{i}.{weight,bias}               -> encoder, recoverer
  masker     midibert.* + linear.1.*, linear.3.*                       -> encoder, masker
  token      midibert.* + classifier.1.*, classifier.3.*               -> encoder, token_head
  sequence   midibert.* + attention.ws{1,2}.weight, classifier.{0,2}.* -> encoder, sequence_head

Field i of word_emb / proj is column i of the token row (Bar, Position, Instrument, Pitch, Duration,
Velocity, TimeSig, Tempo). PyTorch Linear weights are [out, in]; ours are [in, out] (q/k/v split into
[embed, heads, head_dim], the attention output into [heads, head_dim, embed]). Entries the model never
uses (attention_linear.*, BERT's word and position tables, the pooler, buffers) are dropped and listed
in `Conversion.ignored`; any other unexpected entry is an error, and so is a missing one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from midibert_jax.model.embedding import FIELD_KEYS
from midibert_jax.tokenizer import vocab
from midibert_jax.torch_layouts import KINDS

# Head layouts: torch name -> (our top-level module, our submodule).
_HEAD_LINEARS = {
    "masker": {"linear.1": ("masker", "hidden"), "linear.3": ("masker", "score")},
    "token": {"classifier.1": ("token_head", "hidden"), "classifier.3": ("token_head", "logits")},
    "sequence": {
        "attention.ws1": ("sequence_head", "pool_hidden"),
        "attention.ws2": ("sequence_head", "pool_scores"),
        "classifier.0": ("sequence_head", "hidden"),
        "classifier.2": ("sequence_head", "logits"),
    },
}
_UNUSED = (
    re.compile(r"attention_linear\..*"),  # the reference's dead gate
    re.compile(r"bert\.embeddings\.word_embeddings\.weight"),  # inputs_embeds are given
    re.compile(r"bert\.embeddings\.(position_ids|token_type_ids)"),  # buffers of older transformers
    re.compile(r"bert\.pooler\..*"),
)


@dataclasses.dataclass
class Conversion:
    """A converted checkpoint: our params (numpy, float32), the model config, notes on dropped entries."""

    params: dict[str, Any]
    config: ml_collections.ConfigDict
    kind: str
    num_classes: int | None
    ignored: list[str]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A .pth file -> {name: float32 numpy}; accepts a bare state dict or {'state_dict': ...} / {'model': ...}."""
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


class _Reader:
    """Pops entries from a state dict, so leftovers can be reported."""

    def __init__(self, state: Mapping[str, np.ndarray]):
        self.state = dict(state)

    def pop(self, name: str) -> np.ndarray:
        if name not in self.state:
            raise KeyError(f"checkpoint lacks {name!r}")
        return np.asarray(self.state.pop(name), np.float32)

    def linear(self, name: str, bias: bool = True) -> dict[str, np.ndarray]:
        out = {"kernel": self.pop(f"{name}.weight").T}
        if bias:
            out["bias"] = self.pop(f"{name}.bias")
        return out

    def layer_norm(self, name: str) -> dict[str, np.ndarray]:
        return {"scale": self.pop(f"{name}.weight"), "bias": self.pop(f"{name}.bias")}


def _convert_layer(r: _Reader, p: str, heads: int, relative: bool) -> dict[str, Any]:
    def qkv(name):
        w = r.linear(f"{p}attention.self.{name}")
        embed = w["kernel"].shape[0]
        head_dim = w["kernel"].shape[1] // heads
        return {"kernel": w["kernel"].reshape(embed, heads, head_dim), "bias": w["bias"].reshape(heads, head_dim)}

    attention = {name: qkv(name) for name in ("query", "key", "value")}
    out = r.linear(f"{p}attention.output.dense")
    embed = out["kernel"].shape[1]
    attention["out"] = {"kernel": out["kernel"].reshape(heads, -1, embed), "bias": out["bias"]}
    if relative:
        attention["distance"] = r.pop(f"{p}attention.self.distance_embedding.weight")
    return {
        "attention": attention,
        "attention_norm": r.layer_norm(f"{p}attention.output.LayerNorm"),
        "mlp_in": r.linear(f"{p}intermediate.dense"),
        "mlp_out": r.linear(f"{p}output.dense"),
        "mlp_norm": r.layer_norm(f"{p}output.LayerNorm"),
    }


def _convert_encoder(r: _Reader, p: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    embed: dict[str, Any] = {}
    for i, (key, size) in enumerate(zip(FIELD_KEYS, vocab.VOCAB_SIZES)):
        table = r.pop(f"{p}word_emb.{i}.lut.weight")
        if table.shape[0] != size:
            raise ValueError(f"word_emb.{i} ({vocab.FIELDS[i]}) has {table.shape[0]} rows, the vocabulary {size}")
        embed[key] = table
    embed["in_proj"] = r.linear(f"{p}in_linear")
    embed["token_type"] = r.pop(f"{p}bert.embeddings.token_type_embeddings.weight")[0]  # inputs use type 0
    embed["norm"] = r.layer_norm(f"{p}bert.embeddings.LayerNorm")
    if config.position_embedding == "absolute":
        embed["absolute_position"] = r.pop(f"{p}bert.embeddings.position_embeddings.weight")
    relative = config.position_embedding == "relative_key_query"
    layers = [
        _convert_layer(r, f"{p}bert.encoder.layer.{i}.", config.num_heads, relative) for i in range(config.num_layers)
    ]
    if config.scan_layers:
        return {"embed": embed, "layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}
    return {"embed": embed, **{f"layer_{i}": layer for i, layer in enumerate(layers)}}


def convert_state_dict(
    state: Mapping[str, np.ndarray], kind: str, config: ml_collections.ConfigDict
) -> tuple[dict[str, Any], list[str]]:
    """(params, ignored names) for `kind`; params follow models.py's trees ({'encoder': ..., head: ...})."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    state = strip_module_prefix(state)
    r = _Reader(state)
    p = _encoder_prefix(kind)
    params: dict[str, Any] = {"encoder": _convert_encoder(r, p, config)}
    if kind == "pretrain":
        params["recoverer"] = {key: r.linear(f"mask_lm.proj.{i}") for i, key in enumerate(FIELD_KEYS)}
    for torch_name, (module, sub) in _HEAD_LINEARS.get(kind, {}).items():
        params.setdefault(module, {})[sub] = r.linear(torch_name, bias=not torch_name.startswith("attention.ws"))

    ignored, unknown = [], []
    for name in sorted(r.state):
        inner = name[len(p) :] if name.startswith(p) else None
        if inner is not None and (
            any(rx.fullmatch(inner) for rx in _UNUSED) or inner == "bert.embeddings.position_embeddings.weight"
        ):
            ignored.append(name)
        else:
            unknown.append(name)
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
