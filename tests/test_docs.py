"""The node's parameter reference is written once: README table, shipped parameter file and node agree."""

from __future__ import annotations

from pathlib import Path

from ros_nodes.policy_node import DESCRIPTIONS, parameter_defaults, parameter_table, read_parameter_file

ROOT = Path(__file__).resolve().parent.parent


def test_the_parameter_reference_is_the_generated_one() -> None:
    readme = (ROOT / "docs" / "parameters.md").read_text()
    assert parameter_table() in readme, "docs/parameters.md is stale: paste ros_nodes.policy_node.parameter_table()"


def test_every_parameter_is_described_and_the_shipped_file_sets_each_one() -> None:
    names = set(parameter_defaults())
    assert names == set(DESCRIPTIONS), f"described but not parameters: {set(DESCRIPTIONS) - names}; undescribed: {names - set(DESCRIPTIONS)}"
    shipped = set(read_parameter_file(ROOT / "configs" / "ros" / "policy_node.yaml")) - {"autostart"}
    assert shipped == names, f"missing from configs/ros/policy_node.yaml: {names - shipped}; unknown there: {shipped - names}"

