"""The generic YAML loader for typed configuration dataclasses: fails at load time, not mid-run.

Every config is a dataclass whose ``__post_init__`` validates its values; each lives beside the code
that uses it (``vit_policy/model/configuration.py``, ``vit_policy/data/configuration.py``, the top of
``train.py``, ``runtime.py``, ``safety.py`` and ``replay.py``, ``ros_nodes/configuration.py``,
``sim_tests/configuration.py``). ``from_dict`` builds nested dataclasses recursively and rejects an
unknown key with the nearest valid key, so a typo in a YAML file is reported with its path and fix
before anything is built. A field's description is written once, as its ``metadata["help"]``:
``config_fields`` / ``config_table`` turn the fields into the reference tables of docs/configuration.md
(``reference_markdown``) and, through ros_nodes/policy_node.py, docs/parameters.md.
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
        raise ConfigError(f"{_culprit(cls, path, overrides, exc)}: {exc}") from None


def _culprit(cls: type, path: str | Path, overrides: list[str] | None, exc: ConfigError) -> str:
    """What a load error is blamed on: the override it names when the file alone loads, else the file."""
    if overrides:
        try:
            from_dict(cls, read_yaml(path))
        except ConfigError:
            return str(path)
        named = [o for o in overrides if o.split("=", 1)[0].strip() in str(exc)]
        return f"override {named[0]!r}" if len(named) == 1 else f"{path} with the overrides {overrides}"
    return str(path)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (``load_config`` reads it back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# Reference tables: each field's type, default and metadata["help"], flattened to dotted keys
# --------------------------------------------------------------------------------------------------


def _optional_dataclass(hint: Any) -> type | None:
    """The dataclass of an ``X | None`` hint whose X is a dataclass (an optional sub-config), else None."""
    if get_origin(hint) not in (Union, types.UnionType) or type(None) not in get_args(hint):
        return None
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def config_fields(cls: type, prefix: str = "", defaults: Any = None) -> dict[str, tuple[Any, Any, str]]:
    """Flat dotted keys -> (type hint, default, description) of config dataclass ``cls``, nested ones flattened.

    The description is the field's ``metadata["help"]`` (empty when it has none). A nested dataclass gives its
    fields (``runtime.max_age_s``), at the defaults its parent's factory sets (``SimConfig.runtime`` runs at
    25 Hz); an optional one (``points: PointTokenConfig | None``) gives a row of its own, then its fields.
    ``defaults``: an instance whose values are the defaults (used for the recursion).
    """
    hints = get_type_hints(cls)
    out: dict[str, tuple[Any, Any, str]] = {}
    for f in dataclasses.fields(cls):
        if defaults is not None:
            value = getattr(defaults, f.name)
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        hint, name, text = hints[f.name], f"{prefix}{f.name}", f.metadata.get("help", "")
        if dataclasses.is_dataclass(hint):
            # a factory other than the class itself (a lambda with arguments) sets the nested defaults
            custom = defaults is not None or (f.default_factory is not dataclasses.MISSING and f.default_factory is not hint)
            out.update(config_fields(hint, f"{name}.", value if custom else None))
            continue
        out[name] = (hint, value, text)
        nested = _optional_dataclass(hint)
        if nested is not None:
            out.update(config_fields(nested, f"{name}.", value))
    return out


def type_name(hint: Any) -> str:
    """A type hint as the reference tables show it (string, bool, integer, double, string: `a`, `b`, double[], ...)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    origin = get_origin(hint)
    if origin is Literal:
        return "string: " + ", ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        if get_origin(args[0]) is Literal:  # a list of choices
            return "string[]: " + ", ".join(f"`{a}`" for a in get_args(args[0]))
        return type_name(args[0]) + "[]"
    if origin is dict:
        return f"mapping of {type_name(args[1])}"
    if len(args) > 1:  # a union of several types
        return " or ".join(type_name(a) for a in args)
    if args:  # Optional[X]
        return type_name(args[0])
    if dataclasses.is_dataclass(hint):
        return f"mapping ({hint.__name__})"
    return {str: "string", bool: "bool", int: "integer", float: "double"}[hint]


def shown(value: Any) -> str:
    """A default value as the reference tables show it (YAML spelling: `true`, `null`, `''`)."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value is None:
        return "`null`"
    if value == "":
        return "`''`"
    return f"`{value}`"


def markdown_table(fields: dict[str, tuple[Any, Any, str]], header: str = "key", show: Any = shown) -> str:
    """A Markdown table (| key | type | default | meaning |) of ``config_fields``-style rows."""
    rows = [f"| {header} | type | default | meaning |", "|---|---|---|---|"]
    for name, (hint, default, description) in fields.items():
        description = description.replace("|", "\\|").replace("<", "&lt;")  # a bar would end the cell, <name> read as HTML
        rows.append(f"| `{name}` | {type_name(hint)} | {show(default)} | {description} |")
    return "\n".join(rows)


def config_table(cls: type, prefix: str = "", exclude: tuple[str, ...] = ()) -> str:
    """The Markdown reference table of config dataclass ``cls``; keys under ``exclude`` (dotted, after prefix) left out."""
    fields = {name: row for name, row in config_fields(cls, prefix).items()
              if not any(name == prefix + e or name.startswith(f"{prefix}{e}.") for e in exclude)}
    return markdown_table(fields)


REFERENCE_INTRO = """\
# Configuration reference

Every key of the YAML files under `configs/`, with its type, default and meaning. Each config is a
dataclass that validates its values when the file loads: an unknown key fails with the nearest valid one,
and any key can be overridden on the command line as `key.sub=value` (values read as YAML). Nested
sections are written as dotted keys here (`encoder.name` is `encoder: {name: ...}` in YAML).

| file | section | dataclass |
|---|---|---|
| `configs/train/*.yaml` | the whole file: `policy:`, `data:`, `augment:` and the run's own keys | `TrainConfig` |
| `configs/policy/*.yaml`, `configs/sim/policy.yaml` | the whole file: a training YAML's `policy:` | `PolicyConfig` |
| a replay `--data-config` YAML | a training YAML's `data:`, plus `runtime:`, `safety:` and the scoring keys | `ReplayConfig` |
| `configs/sim/fetch_*.yaml` | the whole file: a simulated task, its cameras, `runtime:` and `safety:` | `SimConfig` |
| `configs/ros/policy_node.yaml` | the node's parameters: [`parameters.md`](parameters.md) | `NodeConfig` |
| `configs/sim/recipes/*.yaml` | a task's demo / benchmark budget (not tabled here) | `TaskPlan` (`sim_tests/demo.py`) |

Generated from the fields' descriptions (each written once, as its `metadata["help"]`) by
`python -m sim_tests.configuration > docs/configuration.md`; `tests/test_docs.py` checks that it is current,
so change a description in the code, not here.
"""


def reference_markdown(*more: str) -> str:
    """docs/configuration.md: every YAML section's table, made from the config dataclasses' field descriptions.

    ``more``: Markdown sections appended, for configs of the packages above the core (the simulator's:
    ``sim_tests.configuration.sim_reference``); ``python -m sim_tests.configuration`` prints the whole document.
    """
    from vit_policy.data.configuration import AugmentConfig, DataConfig
    from vit_policy.model.configuration import PolicyConfig
    from vit_policy.replay.configuration import ReplayConfig
    from vit_policy.train import TrainConfig

    parts = [
        REFERENCE_INTRO,
        "## Training: `configs/train/*.yaml` (`TrainConfig`, `vit_policy/train.py`)\n\n"
        "`vit-policy train --config FILE [key.sub=value ...]`. The sections `policy:`, `data:` and `augment:` are "
        "tabled below; the run's own keys sit at the top level:",
        config_table(TrainConfig, exclude=("policy", "data", "augment")),
        "### `policy:` (`PolicyConfig`, `vit_policy/model/configuration.py`)\n\n"
        "The model, saved with every checkpoint (`config.yaml`). The same keys make up the top level of "
        "`configs/policy/*.yaml` and `configs/sim/policy.yaml` (`vit-policy policy-demo --config`, the node's "
        "`policy_config`, the simulator's training). `points: null` disables the point tokens; a mapping sets the `points.*` below:",
        config_table(PolicyConfig),
        "### `data:` (`DataConfig`, `vit_policy/data/configuration.py`)\n\n"
        "How a rosbag2 recording becomes episodes: the topic map, the gripper source and the timing rule (the live "
        "node's `runtime.*` rule, so training sees what the robot sees). `vit-policy replay`, `inspect`, "
        "`export-dataset` and `fit-ood` read it with `--data-config` from a training YAML or a file holding only these keys:",
        config_table(DataConfig),
        "### `augment:` (`AugmentConfig`, `vit_policy/data/configuration.py`)\n\n"
        "Applied on the fly to training samples, never to validation; every default is off:",
        config_table(AugmentConfig),
        "## Replay (`ReplayConfig`, `vit_policy/replay/configuration.py`)\n\n"
        "`vit-policy replay --data-config FILE`: a training YAML (its `data:` and any of the keys below; other sections "
        "are ignored) or a `data:`-only YAML; without it, the `data:` recorded with the checkpoint. `data:` is the "
        "training section above; unless set, `runtime.control_rate_hz` and the timing rule follow it. `runtime.*` and "
        "`safety.*` are the node's parameters ([`parameters.md`](parameters.md)), except that a null "
        "`runtime.inference_latency_s` uses the latency measured during the replay:",
        config_table(ReplayConfig, exclude=("data",)),
        *more,
    ]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"

