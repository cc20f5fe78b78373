"""Dependencies point one way: ros_nodes, sim_tests and the CLI use the core; the core uses none of them.

docs/architecture.md states the rule; this file fails when a change breaks it, statically (every import
statement, lazy ones inside functions included) and at run time (what importing the core loads).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABOVE_CORE = ("ros_nodes", "sim_tests", "vit_policy.cli")
MIDDLEWARE = ("rclpy", "cyclonedds", "mujoco", "gymnasium", "gymnasium_robotics")


def imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names (relative imports resolved), with its line."""
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def offending(files: list[Path], forbidden: tuple[str, ...], package: str | None = None) -> list[str]:
    return [f"{p.name}:{line} imports {name}" for p in files for line, name in imports(p, package)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def library_files(package: str) -> list[Path]:
    """The package's modules, its tests and pytest fixtures left out."""
    return [p for p in sorted((ROOT / package).rglob("*.py")) if not p.name.startswith(("test_", "conftest"))]


def test_the_core_imports_nothing_above_it() -> None:
    core = [p for p in library_files("vit_policy") if p.name != "cli.py"]
    assert core, "no core modules found"
    assert offending(core, ABOVE_CORE + MIDDLEWARE) == []


def test_the_cli_registers_other_packages_through_entry_points() -> None:
    assert offending([ROOT / "vit_policy" / "cli.py"], ("ros_nodes", "sim_tests") + MIDDLEWARE) == []
    from vit_policy.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "demo", "sim-record", "sim-eval", "sim-pretrain", "train", "replay", "inspect"} <= set(commands)


@pytest.mark.parametrize("package, forbidden", [("ros_nodes", ("sim_tests", "vit_policy.cli")),
                                                ("sim_tests", ("vit_policy.cli",))])
def test_packages_above_the_core_do_not_import_the_cli(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(library_files(package), forbidden) == []


def test_the_model_module_only_computes() -> None:
    """The model builds and computes; file formats and weight-file readers belong to vit_policy/model/checkpoint.py
    (which policy.py imports only lazily, in its delegating conveniences from_config / save_pretrained / from_pretrained)."""
    files = [ROOT / "vit_policy" / "model" / name for name in ("policy.py", "pose_tokens.py")]
    readers = ("read_state_dict", "load_matching", "weights_error", "load_encoder_weights", "load_instruction_weights", "build_image_encoder")
    io = ("safetensors", "yaml", "json", "pickle", "vit_policy.config.read_yaml", "vit_policy.config.save_config",
          "vit_policy.config.load_policy_config", *(f"vit_policy.model.encoders.{name}" for name in readers))
    assert offending(files, io) == []
    top_level = [name for node in ast.parse(files[0].read_text()).body if isinstance(node, ast.ImportFrom) for name in [node.module]]
    assert "vit_policy.model.checkpoint" not in top_level


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"  # as if it were vit_policy/data/probe.py
    probe.write_text("import numpy\ndef f():\n    from ..cli import main\n    import sim_tests.fetch_env\n")
    assert offending([probe], ABOVE_CORE, package="vit_policy.data") == [
        "probe.py:3 imports vit_policy.cli",
        "probe.py:3 imports vit_policy.cli.main",
        "probe.py:4 imports sim_tests.fetch_env",
    ]


def test_importing_every_core_module_loads_no_ros_and_no_simulator() -> None:
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in library_files("vit_policy") if p.name != "cli.py"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {('ros_nodes', 'sim_tests') + MIDDLEWARE!r})\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
