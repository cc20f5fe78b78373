"""Message packages the ROS 2 pip wheels lack (tf2_msgs), built once from their definitions.

The pip wheels (``pip install -e .[ros]``: ros-rclpy, ros-*-msgs) ship each message package prebuilt:
Python classes backed by C type support libraries. ``tf2_msgs`` has no wheel. As the DDS backend
declares its types from the rosbags typestore's definitions, this module writes the IDL of such a
package from the same definitions, runs the rosidl generators that come with the wheels
(``rosidl_generator_c`` / ``_py``, ``rosidl_typesupport_c`` / ``_fastrtps_c`` / ``_introspection_c``,
the type hash) and compiles the generated C / C++ with the system compiler against the wheels'
headers and libraries: the same package, byte for byte on the wire and with the same type hash, as the
distribution's. The build takes a few seconds, once; it is cached under
``$XDG_CACHE_HOME/vit_policy/ros_msgs/`` (``~/.cache`` by default) and later processes import it at once.

Needs ``cc`` / ``c++`` (``CC`` / ``CXX`` honoured) and Python's headers. On a ROS install the package
comes from the distribution and nothing is built.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

from vit_policy.config import ConfigError

BUILD_VERSION = "1"  # bump when the build below changes: the cache key includes it
_LOCK = threading.Lock()

_IDL_BASE = {
    "bool": "boolean", "byte": "octet", "char": "uint8", "int8": "int8", "uint8": "uint8", "int16": "int16",
    "uint16": "uint16", "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
    "float32": "float", "float64": "double", "string": "string", "wstring": "wstring",
}


class MissingPackage(ConfigError):
    """A message package that is neither installed nor buildable here; the text says what to do."""


WHY = {"tf2_msgs": "pose_source: tf reads /tf and /tf_static with it; pose_source: pose, or --transport dds, needs neither"}


def _why(package: str) -> str:
    return f" ({WHY[package]})" if package in WHY else ""


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def wheel_prefix() -> Path | None:
    """The install prefix of the ROS 2 pip wheels (headers in include/, libraries in lib/), or None."""
    prefix = Path(sys.prefix)
    if (prefix / "include" / "rosidl_runtime_c").is_dir() and (prefix / "lib" / "librosidl_runtime_c.so").exists():
        return prefix
    return None


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vit_policy" / "ros_msgs"


def ensure(package: str, typestore: Any = None) -> None:
    """Make ``import <package>.msg`` work: installed already, cached, or built now. Raises MissingPackage."""
    if importable(f"{package}.msg"):
        return
    with _LOCK:
        if importable(f"{package}.msg"):
            return
        prefix = wheel_prefix()
        if prefix is None:
            raise MissingPackage(f"the ROS 2 message package {package!r} is not installed: install it with your ROS distribution "
                                 f"(apt install ros-$ROS_DISTRO-{package.replace('_', '-')}) and source it{_why(package)}")
        definitions = _definitions(package, typestore)
        key = _cache_key(package, definitions, prefix)
        root = cache_root() / key
        if not (root / package / "msg" / "__init__.py").exists():
            _build(package, definitions, prefix, root)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        try:
            importlib.import_module(f"{package}.msg")
        except ImportError as exc:
            raise MissingPackage(f"{package} built under {root} does not import ({exc}); delete that folder to rebuild") from None


# --------------------------------------------------------------------------------------------------
# Definitions -> IDL
# --------------------------------------------------------------------------------------------------


def _definitions(package: str, typestore: Any) -> dict[str, tuple[list, list]]:
    """``{Name: (constants, fields)}`` of every message of ``package`` in the rosbags typestore."""
    if typestore is None:
        from rosbags.typesys import Stores, get_typestore

        typestore = get_typestore(Stores.ROS2_HUMBLE)
    prefix = f"{package}/msg/"
    defs = {name[len(prefix):]: typestore.fielddefs[name] for name in sorted(typestore.fielddefs) if name.startswith(prefix)}
    if not defs:
        raise MissingPackage(f"the ROS 2 message package {package!r} is not installed and its definitions are unknown here")
    return defs


def _idl_type(node: tuple[Any, Any], typedefs: list[str], deps: set[str]) -> str:
    from rosbags.interfaces import Nodetype

    kind, detail = node
    if kind == Nodetype.BASE:
        name, bound = detail
        if name not in _IDL_BASE:
            raise MissingPackage(f"cannot declare a field of type {name!r}")
        return f"{_IDL_BASE[name]}<{bound}>" if bound and name in ("string", "wstring") else _IDL_BASE[name]
    if kind == Nodetype.NAME:
        deps.add(detail)
        return detail.replace("/", "::")
    inner, size = detail
    inner_t = _idl_type(inner, typedefs, deps)
    if kind == Nodetype.ARRAY:
        alias = inner_t.replace("::", "__").replace("<", "_").replace(">", "_") + f"__{size}"
        typedefs.append(f"typedef {inner_t} {alias}[{size}];")
        return alias
    return f"sequence<{inner_t}, {size}>" if size else f"sequence<{inner_t}>"


def _literal(kind: str, value: Any) -> str:
    if kind in ("string", "wstring"):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == "bool":
        return "TRUE" if value else "FALSE"
    return repr(value)


def message_idl(package: str, name: str, consts: list, fields: list) -> str:
    """The IDL of one message, as rosidl_adapter writes it from a .msg file (without the comments)."""
    typedefs: list[str] = []
    deps: set[str] = set()
    members = [f"      {_idl_type(node, typedefs, deps)} {field};" for field, node in fields]
    if not members:
        members = ["      uint8 structure_needs_at_least_one_member;"]
    lines = [f'#include "{dep}.idl"' for dep in sorted(deps)] + ["", f"module {package} {{", "  module msg {"]
    lines += [f"    {t}" for t in dict.fromkeys(typedefs)]
    if consts:
        lines.append(f"    module {name}_Constants {{")
        lines += [f"      const {_IDL_BASE[kind]} {cname} = {_literal(kind, value)};" for cname, kind, value in consts]
        lines.append("    };")
    lines += [f"    struct {name} {{", *members, "    };", "  };", "};", ""]
    return "\n".join(lines)


def _cache_key(package: str, definitions: dict[str, tuple[list, list]], prefix: Path) -> str:
    try:
        from importlib.metadata import version

        rclpy_version = version("ros-rclpy")
    except Exception:  # noqa: BLE001 - any install without that distribution name
        rclpy_version = "?"
    text = repr((BUILD_VERSION, package, sorted((k, repr(v)) for k, v in definitions.items()), str(prefix), rclpy_version,
                 sys.version_info[:2], sysconfig.get_config_var("SOABI")))
    return f"{package}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------------
# Generate and compile
# --------------------------------------------------------------------------------------------------


def _build(package: str, definitions: dict[str, tuple[list, list]], prefix: Path, root: Path) -> None:
    import logging

    log = logging.getLogger(__name__)
    cc, cxx = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"), os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    py_include = Path(sysconfig.get_paths()["include"])
    missing = [what for what, ok in (("a C compiler (cc)", cc), ("a C++ compiler (c++)", cxx), (f"Python's headers ({py_include}/Python.h)",
                                                                                                  (py_include / "Python.h").exists())) if not ok]
    if missing or not importable("rosidl_generator_py") or not importable("rosidl_typesupport_fastrtps_c"):
        why = ", ".join(missing) or "the rosidl generators of the pip wheels"
        raise MissingPackage(f"the ROS 2 message package {package!r} has no pip wheel and building it here needs {why}: "
                             f"install that, or source a ROS 2 install that has {package}{_why(package)}")
    log.info("building the ROS 2 message package %s for the pip wheels (once; cached in %s)", package, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=root.parent))
    try:
        _generate_and_compile(package, definitions, prefix, work, cc, cxx, py_include)  # type: ignore[arg-type]
        try:
            os.rename(work / "out", root)
        except OSError:  # another process finished first: use its build
            if not (root / package / "msg" / "__init__.py").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _generate_and_compile(package: str, definitions: dict[str, tuple[list, list]], prefix: Path, work: Path, cc: str, cxx: str,
                          py_include: Path) -> None:
    import numpy as np

    idl_dir = work / "idl"
    (idl_dir / "msg").mkdir(parents=True)
    deps: set[str] = set()
    for name, (consts, fields) in definitions.items():
        text = message_idl(package, name, consts, fields)
        deps.update(line.split('"')[1].split("/")[0] for line in text.splitlines() if line.startswith("#include"))
        (idl_dir / "msg" / f"{name}.idl").write_text(text)
    deps.discard(package)
    for dep in sorted(deps):
        if not (prefix / "share" / dep / "msg").is_dir():
            raise MissingPackage(f"{package} needs the ROS 2 message package {dep!r}: pip install ros-{dep.replace('_', '-')}")
    interface_files = [f"{idl_dir}:msg/{name}.idl" for name in definitions]
    include_paths = [str(prefix / "share" / dep) for dep in sorted(deps)]

    env_before = os.environ.get("AMENT_PREFIX_PATH")
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (str(prefix), env_before) if p)  # generators find their templates
    try:
        _generate(package, interface_files, include_paths, work / "gen")
    finally:
        if env_before is None:
            os.environ.pop("AMENT_PREFIX_PATH", None)
        else:
            os.environ["AMENT_PREFIX_PATH"] = env_before

    gen, out = work / "gen", work / "out" / package
    (out / "msg").mkdir(parents=True)
    (out / "__init__.py").write_text("")
    for f in (gen / "generator_py" / package / "msg").glob("*.py"):
        shutil.copy(f, out / "msg" / f.name)
    inc = [f"-I{gen / d}" for d in ("generator_c", "fastrtps_c", "introspection_c", "typesupport_c")]
    inc += [f"-I{prefix / 'include'}"] + [f"-I{d}" for d in sorted((prefix / "include").iterdir()) if d.is_dir()]
    inc += [f"-I{py_include}", f"-I{np.get_include()}"]
    link = [f"-L{prefix / 'lib'}", f"-L{out}", "-Wl,-rpath,$ORIGIN", f"-Wl,-rpath,{prefix / 'lib'}"]
    p = package

    def lib(name: str, compiler: str, sources: list[Path], libs: list[str], soname: bool = True) -> None:
        target = out / (f"lib{p}__{name}.so" if soname else f"{name}.so")
        cmd = [compiler, "-shared", "-fPIC", "-O2", "-w", *(["-std=c++17"] if compiler == cxx else []), *inc, *map(str, sources),
               "-o", str(target), *([f"-Wl,-soname,{target.name}"] if soname else []), *link, *[x if x.startswith("-") else f"-l{x}" for x in libs]]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise MissingPackage(f"building {p} failed at {target.name}: {run.stderr.strip()[-2000:]}")

    dep_libs = lambda kind: [f"{d}__{kind}" for d in sorted(deps)]  # noqa: E731
    runtime = ["rosidl_runtime_c", "rcutils"]
    lib("rosidl_generator_c", cc, sorted((gen / "generator_c" / p / "msg" / "detail").glob("*.c")), [*dep_libs("rosidl_generator_c"), *runtime])
    lib("rosidl_typesupport_fastrtps_c", cxx, sorted((gen / "fastrtps_c" / p / "msg" / "detail").glob("*.cpp")),
        [f"{p}__rosidl_generator_c", *dep_libs("rosidl_typesupport_fastrtps_c"), *dep_libs("rosidl_generator_c"),
         "rosidl_typesupport_fastrtps_c", "rosidl_typesupport_fastrtps_cpp", "fastcdr", *runtime])
    lib("rosidl_typesupport_introspection_c", cc, sorted((gen / "introspection_c" / p / "msg" / "detail").glob("*.c")),
        [f"{p}__rosidl_generator_c", *dep_libs("rosidl_typesupport_introspection_c"), *runtime])
    # the dispatcher dlopen()s lib<pkg>__rosidl_typesupport_<impl>.so by name, which finds them only when already
    # loaded (they are on no library path): make loading it load them
    lib("rosidl_typesupport_c", cxx, sorted((gen / "typesupport_c" / p / "msg").glob("*.cpp")),
        [f"{p}__rosidl_generator_c", "rosidl_typesupport_c", *runtime, "-Wl,--no-as-needed",
         f"{p}__rosidl_typesupport_fastrtps_c", f"{p}__rosidl_typesupport_introspection_c"])
    lib("rosidl_generator_py", cc, sorted((gen / "generator_py" / p / "msg").glob("*_s.c")),
        [f"{p}__rosidl_generator_c", f"{p}__rosidl_typesupport_c", *dep_libs("rosidl_generator_py"), *dep_libs("rosidl_generator_c"), *runtime])
    lib(f"{p}_s__rosidl_typesupport_c", cc, [gen / "generator_py" / p / f"_{p}_s.ep.rosidl_typesupport_c.c"],
        [f"{p}__rosidl_generator_py", f"{p}__rosidl_typesupport_c", f"{p}__rosidl_generator_c", *runtime], soname=False)


def _generate(package: str, interface_files: list[str], include_paths: list[str], gen: Path) -> None:
    """Run the wheels' rosidl generators (their classes, not the ``rosidl`` CLI, whose entry points the wheels register twice)."""
    from rosidl_generator_c.cli import GenerateC
    from rosidl_generator_py.cli import GeneratePython
    from rosidl_typesupport_c.cli import GenerateCTypesupport
    from rosidl_typesupport_fastrtps_c.cli import GenerateFastRTPSCTypesupport
    from rosidl_generator_type_description.cli import HashTypeDescription
    from rosidl_typesupport_introspection_c.cli import GenerateIntrospectionCTypesupport

    hashes = HashTypeDescription("type_description").generate_type_hashes(package, interface_files, include_paths, gen / "hash")
    for name, cls in (("generator_c", GenerateC), ("generator_py", GeneratePython), ("typesupport_c", GenerateCTypesupport),
                      ("fastrtps_c", GenerateFastRTPSCTypesupport), ("introspection_c", GenerateIntrospectionCTypesupport)):
        ext = cls(name)
        kwargs = {"type_description_files": hashes} if "type_description_files" in inspect.signature(ext.generate).parameters else {}
        ext.generate(package, interface_files, include_paths, gen / name / package, **kwargs)
