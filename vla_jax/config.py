"""Experiment configs as Python files: loading, dotted overrides, validation.

A config file defines ``get_config(arg: str | None = None) -> ConfigDict``. It is
loaded as ``path/to/file.py`` or ``path/to/file.py:arg``; overrides are
``key.sub=value`` strings (from ``--config.key.sub=value`` on the command line).
After loading and overriding, the config is locked: no field can be added.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
from typing import Any

import ml_collections

from vla_jax.errors import ConfigError

REQUIRED_TOP_LEVEL = ("num_steps", "batch_size", "seed")


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Loads ``file.py[:arg]``, applies ``key=value`` overrides, validates and locks."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise ConfigError(f"config file {path_str!r} does not exist (from --config {spec!r})")
    module_spec = importlib.util.spec_from_file_location(f"vla_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report where it broke
        raise ConfigError(f"config file {path_str} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path_str} defines no get_config(arg) function")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path_str}: get_config() returned {type(config).__name__}, expected ConfigDict")
    for override in overrides:
        apply_override(config, override)
    validate(config)
    config.lock()
    return config


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key in the config, nested ones included."""
    keys = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(all_keys(value, dotted + "."))
    return keys


def _unknown_key_error(config: ml_collections.ConfigDict, dotted: str) -> ConfigError:
    matches = difflib.get_close_matches(dotted, all_keys(config), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
    return ConfigError(f"unknown config key {dotted!r}{hint}")


def _parse_value(dotted: str, text: str, current: Any) -> Any:
    """Parses ``text`` into the type of the field's current value."""
    expected = type(current).__name__
    try:
        if isinstance(current, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                raise ValueError(text)
            return type(current)(value)
    except (ValueError, SyntaxError):
        raise ConfigError(f"config key {dotted!r} expects a {expected}, got {text!r}") from None
    if current is None:  # untyped field: Python literal if it parses, else string
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    raise ConfigError(f"config key {dotted!r} holds a {expected}; it cannot be set from the command line")


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one ``a.b.c=value`` override in place; unknown keys are errors."""
    dotted, sep, text = override.partition("=")
    if not sep or not dotted:
        raise ConfigError(f"config override {override!r} is not of the form key=value")
    *parents, leaf = dotted.split(".")
    node = config
    for depth, key in enumerate(parents):
        if key not in node or not isinstance(node[key], ml_collections.ConfigDict):
            raise _unknown_key_error(config, ".".join(parents[: depth + 1]))
        node = node[key]
    if leaf not in node:
        raise _unknown_key_error(config, dotted)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key {dotted!r} is a group; set one of its fields instead")
    value = _parse_value(dotted, text, current)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"config key {dotted!r}: {e}") from None


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the fields every training config must have."""
    for key in REQUIRED_TOP_LEVEL:
        if key not in config:
            raise ConfigError(f"config has no top-level {key!r}; every training config needs {REQUIRED_TOP_LEVEL}")
        if not isinstance(config[key], int) or isinstance(config[key], bool):
            raise ConfigError(f"config key {key!r} must be an int, got {config[key]!r}")
    if config.num_steps < 0:
        raise ConfigError(f"config key 'num_steps' must be >= 0, got {config.num_steps}")
    if config.batch_size <= 0:
        raise ConfigError(f"config key 'batch_size' must be > 0, got {config.batch_size}")


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
