"""The node's parameter reference is written once, as NodeConfig's field descriptions: README table, shipped
parameter file, parameter descriptors and node agree."""

from __future__ import annotations

from pathlib import Path

from ros_nodes.policy_node import parameter_defaults, parameter_descriptions, parameter_file, parameter_table, read_parameter_file

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
