"""Flat frozen dataclass configs: loaded from YAML, overridden by `key=value` strings, validated, written resolved.

Each stage defines its own `@dataclass(frozen=True)` with typed fields and defaults, and optionally a `validate()`
method that raises ConfigError. No nesting, no class names in YAML. A config with a `PASSTHROUGH` field (the training
configs: `trl`) also takes, flat in the same section, every key of the library config it wraps (`route_keys`); those
keys are kept in that field, coerced to the library's own types, and written back flat.

    cfg = load_config(SFTConfig, "recipes/quickstart.yaml", overrides=["lr=1e-5"], section="sft")
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medr1.errors import ConfigError
from medr1.io import atomic_write_text

T = TypeVar("T")

# the top-level sections of a recipe (`medr1 run`); a file with none of them is one stage's flat config
SECTIONS = ("run", "data", "index", "rollout", "eval", "sft", "grpo")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key {name!r}: cannot read {value!r} as {hint}")
    if origin in (list, tuple):
        if isinstance(value, str):  # an override: "a,b" or YAML's "[a, b]"
            text = value.strip()
            text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(name, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key {name!r}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key {name!r}: expected a number, got {value!r}")
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(float(value)) if hint is int and isinstance(value, str) and "e" in value.lower() else hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {name!r}: expected {hint.__name__}, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {name!r}: expected a string, got {value!r}")
        return str(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {value!r}")
        return value
    return value


def parse_overrides(overrides: list[str] | None) -> dict[str, str]:
    """`["lr=1e-5", "model=x"]` -> {"lr": "1e-5", "model": "x"}; a string without '=' is an error."""
    out: dict[str, str] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def coerce_values(values: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """Each value converted to its declared type (`hints`: field name -> type), or ConfigError naming the key."""
    return {k: _coerce(k, v, hints.get(k, Any)) for k, v in values.items()}


def build_config(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Instantiate `cls` from a flat mapping: unknown keys are errors listing the valid ones; types are coerced.
    A config with a `PASSTHROUGH` field first moves the keys it does not declare into that field (`route_keys`)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    passthrough = getattr(cls, "PASSTHROUGH", None)
    if passthrough:
        values = cls.route_keys(values, where)
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(fields)}")
    kwargs = coerce_values(values, typing.get_type_hints(cls))
    try:
        cfg = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def is_flat(data: dict[str, Any]) -> bool:
    """True for one stage's flat config (the `config.yaml` that `medr1 sft`, `grpo` and `eval` write, keys at the top
    level), False for a recipe (a mapping under any of SECTIONS; a flat config's `index:` is a path)."""
    return bool(data) and not any(isinstance(data[k], dict) for k in SECTIONS if k in data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Load `cls` from YAML (`file_values`), then apply overrides."""
    values, where = file_values(cls, path, section) if path is not None else ({}, "config")
    values.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return build_config(cls, values, where)


def file_values(cls: type, path: str | Path, section: str | None) -> tuple[dict[str, Any], str]:
    """(values, where) that a YAML file gives `cls`: a recipe's shared section and its `section`, or a flat config
    (a stage's own `config.yaml`, or any file read without a section) whole."""
    data = read_yaml(path)
    if section is None or is_flat(data):
        return data, str(path)
    return {**shared_values(cls, data, path), **section_values(cls, data, section, path)}, f"{path} [{section}]"


def _section(data: dict[str, Any], name: str, path: str | Path) -> dict[str, Any]:
    found = data.get(name) or {}
    if not isinstance(found, dict):
        raise ConfigError(f"{path} [{name}]: section must be a mapping")
    return found


def shared_values(cls: type, data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The recipe's shared section for `cls` (its `SHARED_SECTION`, e.g. `rollout:` for every config holding the
    rollout budgets), checked against `SHARED_KEYS`; {} for other configs or when the recipe has none."""
    name = getattr(cls, "SHARED_SECTION", None)
    if name is None:
        return {}
    found = _section(data, name, path)
    unknown = sorted(set(found) - set(cls.SHARED_KEYS))
    if unknown:
        raise ConfigError(f"{path} [{name}]: unknown key(s) {unknown}; valid keys: {sorted(cls.SHARED_KEYS)}")
    return dict(found)


def section_values(cls: type, data: dict[str, Any], section: str, path: str | Path) -> dict[str, Any]:
    """One stage section; a key that belongs to the shared section is refused there, so it is stated once."""
    found = _section(data, section, path)
    shared = sorted(set(found) & set(getattr(cls, "SHARED_KEYS", ())))
    if shared:
        raise ConfigError(f"{path} [{section}]: {shared} belong in the {cls.SHARED_SECTION}: section, which every "
                          f"stage shares (one budget for SFT traces, GRPO and evaluation)")
    return found


def config_dict(cfg: Any) -> dict[str, Any]:
    """The config as a flat mapping (a `PASSTHROUGH` field's keys at the top level, as the recipe writes them)."""
    out = dataclasses.asdict(cfg)
    passthrough = getattr(type(cfg), "PASSTHROUGH", None)
    if passthrough:
        out.update(out.pop(passthrough))
    return out


def replace_values(cfg: T, **values: Any) -> T:
    """`cfg` with some keys changed, rebuilt (routed, coerced and validated) like a recipe section: the
    `dataclasses.replace` for configs whose keys may live in a `PASSTHROUGH` field."""
    return build_config(type(cfg), {**config_dict(cfg), **values}, type(cfg).__name__)


def config_hash(cfg: Any) -> str:
    """A short stable hash of a resolved config, used to decide whether a stage's outputs are current."""
    blob = json.dumps(config_dict(cfg), sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomic)."""
    atomic_write_text(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
