"""Every config field is described once, as its ``metadata["help"]``: the node's parameter reference (README table,
shipped parameter file, parameter descriptors) and the configuration reference (docs/configuration.md) are made from it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from ros_nodes.configuration import NodeConfig
from ros_nodes.policy_node import parameter_defaults, parameter_descriptions, parameter_file, parameter_table, read_parameter_file
from sim_tests.configuration import SimConfig, sim_reference
from vit_policy.config import config_table, reference_markdown
from vit_policy.data.configuration import AugmentConfig, DataConfig
from vit_policy.model.configuration import PolicyConfig
from vit_policy.replay.configuration import ReplayConfig
from vit_policy.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "configs" / "ros" / "policy_node.yaml"


def test_the_parameter_reference_is_the_generated_one() -> None:
    readme = (ROOT / "docs" / "parameters.md").read_text()
    assert parameter_table() in readme, "docs/parameters.md is stale: paste ros_nodes.policy_node.parameter_table()"


def test_every_parameter_is_described_and_the_shipped_file_sets_each_one() -> None:
    names = set(parameter_defaults())
    undescribed = sorted(n for n, text in parameter_descriptions().items() if not text.strip())
    assert undescribed == [], f"give these fields a metadata help (ros_nodes/configuration.py, runtime.py, safety.py): {undescribed}"
    shipped = set(read_parameter_file(SHIPPED)) - {"autostart"}
    assert shipped == names, f"missing from configs/ros/policy_node.yaml: {names - shipped}; unknown there: {shipped - names}"


def test_the_shipped_parameter_file_is_the_generated_one() -> None:
    """Its values are the defaults and its comments the field descriptions: nothing there is written by hand."""
    assert SHIPPED.read_text() == parameter_file(), (
        "configs/ros/policy_node.yaml is stale: python -c \"from ros_nodes.policy_node import parameter_file; "
        "print(parameter_file(), end='')\" > configs/ros/policy_node.yaml")
    comments = [line.strip().removeprefix("# ") for line in SHIPPED.read_text().splitlines()
                if line.startswith("    ") and line.strip().startswith("#")]
    assert comments == list(parameter_descriptions().values())


REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "python -m sim_tests.configuration > docs/configuration.md"
ROOT_CONFIGS = [TrainConfig, ReplayConfig, SimConfig, NodeConfig]  # with every config dataclass they hold


def config_classes(cls: type, seen: dict[str, type] | None = None) -> dict[str, type]:
    """``cls`` and every dataclass its fields' types name, however nested (X | None, list[X], dict[str, str | X])."""
    seen = {} if seen is None else seen
    seen[cls.__qualname__] = cls

    def walk(hint: typing.Any) -> None:
        if dataclasses.is_dataclass(hint) and hint.__qualname__ not in seen:
            config_classes(hint, seen)
        for arg in typing.get_args(hint):
            walk(arg)

    for hint in typing.get_type_hints(cls).values():
        walk(hint)
    return seen


def test_the_walk_finds_every_config_class() -> None:
    names = set().union(*(config_classes(c) for c in ROOT_CONFIGS))
    assert names == {"TrainConfig", "PolicyConfig", "EncoderConfig", "LanguageConfig", "PoseConfig", "PointTokenConfig",
                     "DataConfig", "GripperConfig", "AugmentConfig", "ReplayConfig", "RuntimeConfig", "SafetyConfig",
                     "SimConfig", "FreeCameraConfig", "NodeConfig", "NodeTopicsConfig"}


def undescribed(cls: type) -> list[str]:
    return [f"{c.__module__}.{name}.{f.name}" for name, c in config_classes(cls).items()
            for f in dataclasses.fields(c) if not str(f.metadata.get("help", "")).strip()]


@pytest.mark.parametrize("cls", ROOT_CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_help(cls: type) -> None:
    missing = undescribed(cls)
    assert missing == [], f"give these fields a field(..., metadata={{'help': '...'}}) (what, unit, allowed values): {missing}"


@dataclasses.dataclass
class _Inner:
    a: int = dataclasses.field(default=1, metadata={"help": "described"})
    b: int = 2


@dataclasses.dataclass
class _Outer:
    inner: dict[str, str | _Inner] | None = dataclasses.field(default=None, metadata={"help": "described"})


def test_a_field_without_help_is_found() -> None:
    assert undescribed(_Outer) == [f"{__name__}._Inner.b"]


def test_the_configuration_reference_is_the_generated_one() -> None:
    text = REFERENCE.read_text()
    tables = [config_table(TrainConfig, exclude=("policy", "data", "augment")), config_table(PolicyConfig), config_table(DataConfig),
              config_table(AugmentConfig), config_table(ReplayConfig, exclude=("data",)), config_table(SimConfig)]
    stale = [table.splitlines()[2] for table in tables if table not in text]
    assert not stale and text == reference_markdown(sim_reference()), (
        f"docs/configuration.md is stale (tables starting {stale}): regenerate it with  {REGENERATE}")


def test_an_optional_sub_config_is_a_row_and_its_fields() -> None:
    rows = [line.split(" | ")[0].removeprefix("| ") for line in config_table(PolicyConfig).splitlines()]
    assert rows[rows.index("`points`"):][:4] == ["`points`", "`points.count`", "`points.frame`", "`points.image_tokens`"]
    sim = config_table(SimConfig)
    assert "| `runtime.control_rate_hz` | double | `25.0` |" in sim  # the defaults its parent's factory sets
    assert "| `safety.workspace_min` | double[] | `[0.3, -0.5, 0.38]` |" in sim
