"""Config files (`PATH[:ARG]` -> ConfigDict) and command-line overrides, with clear errors.

Config files are plain Python with `get_config(arg)` (big_vision style). They may import one
another as `configs.<name>`: the folder holding `configs/` is put on sys.path while loading.
Overrides use ml_collections' syntax, `--config.train.steps=100`, and are type-checked against
the field they replace; an unknown key or a value of the wrong type is a `ConfigError` naming
the key, before anything is built or compiled.

A config file may also say which of its fields the chosen variant leaves unread: a module-level
`unread_fields(config) -> {dotted key: what reads it}`, evaluated on the config after the overrides.
Overriding such a field is a `ConfigError` naming the variant to use (`refuse_unread`), so a setting
never silently does nothing (`--config.folder=DIR` with the demo corpus would build the demo corpus).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import sys
import types
from typing import Any, Sequence

import ml_collections

from midibert_jax.errors import UserError

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


class ConfigError(UserError, ValueError):
    """A config file, argument, key or value that cannot be used."""


def resolve_path(path: str) -> pathlib.Path:
    """A config path as given, else relative to the repository's configs/ (`pretrain.py`)."""
    p = pathlib.Path(os.path.expanduser(path))
    if p.exists():
        return p
    for candidate in (REPO_CONFIGS / p, REPO_CONFIGS / p.name):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file {path} not found (also looked in {REPO_CONFIGS})")


def _load(spec: str) -> tuple[ml_collections.ConfigDict, types.ModuleType]:
    """`PATH[:ARG]` -> (PATH's get_config(ARG), locked; the config module)."""
    path_text, _, arg = spec.partition(":")
    path = resolve_path(path_text)
    root = str(path.resolve().parent.parent)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        module_spec = importlib.util.spec_from_file_location(f"_midibert_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}:{arg}: {e}") from e
    finally:
        if added:
            sys.path.remove(root)
    config.lock()
    return config, module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`PATH[:ARG]` -> PATH's get_config(ARG), locked (no new keys), as a ConfigDict."""
    return _load(spec)[0]


def parse_value(text: str, current: Any, key: str) -> Any:
    """Text -> a value of `current`'s type (bool/int/float/str/tuple), or ConfigError."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise ConfigError(f"{key}: expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"{key}: cannot parse {text!r} as {type(current).__name__}") from e
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(f"{key}: expected {type(current).__name__}, got {text!r}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets dotted `key` (e.g. 'train.steps') from text; the key must exist."""
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} (in {key!r})")
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
        raise ConfigError(f"unknown config key {key!r}; known here: {known}")
    value = parse_value(text, node[leaf], key)
    with node.unlocked():
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"{key}: {e}") from e


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.KEY=VALUE` (or `--config.KEY VALUE`) items from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--config."):
            body = item[len("--config."):]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(argv):
                key, value = body, argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{item}: missing a value")
            overrides.append((key, value))
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def refuse_unread(config: ml_collections.ConfigDict, keys: Sequence[str], spec: str,
                  module: types.ModuleType | None = None, flag: str = "--config.") -> None:
    """ConfigError for the first of the overridden `keys` that `spec`'s variant does not read.

    The config file's `unread_fields(config)` says which (see the module docstring); `module` is the
    loaded config file (loaded from `spec` when not given). `flag` prefixes the key in the message.
    """
    if not keys:
        return
    module = module or _load(spec)[1]
    rules = getattr(module, "unread_fields", None)
    if rules is None:
        return
    unread = rules(config)
    for key in keys:
        for name, reader in unread.items():
            if key == name or key.startswith(name + "."):
                raise ConfigError(f"{flag}{key} is not read by {spec}: {reader}")


def load_with_overrides(spec: str, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    """load_config(spec), then the `(key, text)` overrides, type-checked and read by the variant."""
    config, module = _load(spec)
    for key, value in overrides:
        apply_override(config, key, value)
    refuse_unread(config, [key for key, _ in overrides], spec, module)
    return config
