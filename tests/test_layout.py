"""Dependencies point one way: ros_nodes, sim_tests and the CLI use the core; the core uses none of them; none use tests/.

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
# test helpers (tests/synthetic.py, tests/realtime_bags.py, ...) import as top-level modules once tests/ is on sys.path
TEST_HELPERS = ("tests", *sorted(p.stem for p in (ROOT / "tests").glob("*.py")))


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
          "vit_policy.model.configuration.load_policy_config", *(f"vit_policy.model.encoders.{name}" for name in readers))
    assert offending(files, io) == []
    top_level = [name for node in ast.parse(files[0].read_text()).body if isinstance(node, ast.ImportFrom) for name in [node.module]]
    assert "vit_policy.model.checkpoint" not in top_level


COMMAND_MODULES = {ROOT / "vit_policy" / "cli.py", ROOT / "ros_nodes" / "commands.py", ROOT / "sim_tests" / "commands.py"}


@pytest.mark.parametrize("package", ["vit_policy", "ros_nodes", "sim_tests"])
def test_only_the_command_modules_see_parsed_arguments(package: str) -> None:
    """The CLI layer turns arguments into typed library calls: argparse and cmd_<name> functions live in it alone."""
    found = []
    for path in library_files(package):
        if path in COMMAND_MODULES:
            continue
        found += [f"{path.name}:{line} imports {name}" for line, name in imports(path) if name.split(".")[0] == "argparse"]
        found += [f"{path.name}:{node.lineno} defines {node.name}" for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.FunctionDef) and node.name.startswith(("cmd_", "cli_"))]
    assert found == []


def test_every_command_runs_a_cmd_function() -> None:
    """One naming convention: each subcommand's ``func`` is a ``cmd_<name>`` of a command module."""
    from vit_policy.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    funcs = {name: p.get_default("func") for name, p in commands.items()}
    assert {n: f"{f.__module__}.{f.__name__}" for n, f in funcs.items() if not f.__name__.startswith("cmd_")} == {}
    assert {f.__module__ for f in funcs.values()} <= {"vit_policy.cli", "ros_nodes.commands", "sim_tests.commands"}


@pytest.mark.parametrize("package", ["vit_policy", "ros_nodes", "sim_tests"])
def test_product_modules_do_not_import_test_helpers(package: str, tmp_path: Path) -> None:
    """Test data generators live in tests/; the package, the nodes and the simulator code run without them."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from synthetic import render\n    import tests.realtime_bags\n")
    assert offending([probe], TEST_HELPERS, package=package) == [
        "probe.py:2 imports synthetic", "probe.py:2 imports synthetic.render", "probe.py:3 imports tests.realtime_bags"]
    files = library_files(package)
    assert files, f"no {package} modules found"
    assert offending(files, TEST_HELPERS) == []


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


def test_the_generic_loader_holds_no_domain_config() -> None:
    """vit_policy/config.py is the loader only; each config dataclass lives beside the code that uses it."""
    tree = ast.parse((ROOT / "vit_policy" / "config.py").read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["ConfigError"], f"move {[c for c in classes if c != 'ConfigError']} beside the code that uses them"
