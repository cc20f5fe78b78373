"""The generic YAML loader for typed configuration dataclasses: fails at load time, not mid-run.

Every config is a dataclass whose ``__post_init__`` validates its values; each lives beside the code
that uses it (``vit_policy/model/configuration.py``, ``vit_policy/data/configuration.py``, the top of
``train.py``, ``runtime.py``, ``safety.py`` and ``replay.py``, ``ros_nodes/configuration.py``,
``sim_tests/configuration.py``). ``from_dict`` builds nested dataclasses recursively and rejects an
unknown key with the nearest valid key, so a typo in a YAML file is reported with its path and fix
before anything is built. A field's description is written once, as its ``metadata["help"]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and the fix."""


# --------------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------------


def _check_choice(where: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, recursing into dataclasses, lists and dicts."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise ConfigError(f"{where}: must not be null")
        last: Exception | None = None
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:  # try the next member of the union
                last = exc
        raise last if last else ConfigError(f"{where}: cannot interpret {value!r}")
    if origin is Literal:
        _check_choice(where, value, get_args(tp))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as a string; YAML 1.2 and users read a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys fail with the nearest valid key.

    A class with a ``upgrade(data) -> data`` static method gets the mapping through it first: it rewrites
    the keys of an older layout, so that files written before a rename (checkpoints) still load.
    """
    upgrade = getattr(cls, "upgrade", None)
    if upgrade is not None:
        try:
            data = upgrade(dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {sorted(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain-YAML-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:  # absent or null (an optional sub-config switched off): the override creates it
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a mapping")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example train.epochs=5)")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def default_config(relative: str) -> Path:
    """A shipped file under configs/: the source tree, or share/vit_policy/configs of an installed package."""
    import sys

    for root in (CONFIG_ROOT, Path(sys.prefix) / "share" / "vit_policy" / "configs"):
        if (root / relative).is_file():
            return root / relative
    raise FileNotFoundError(f"config {relative!r} not found under {CONFIG_ROOT} or the installed share/vit_policy/configs")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load a YAML file into config dataclass ``cls``; errors name the file and the key."""
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (``load_config`` reads it back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
