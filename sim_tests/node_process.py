"""The policy node in its own process, for tests and benchmarks: start it on a domain, stop it, keep its log.

Test-process helpers, kept with the tests rather than in the node module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

ROOT = Path(__file__).resolve().parent.parent


def spawn_dds_node(params: dict[str, Any], workdir: Path, domain_id: int, threads: int = 1) -> "subprocess.Popen[str]":
    """``vit-policy serve --transport dds`` in its own process on DDS domain ``domain_id`` (:func:`spawn_node`)."""
    return spawn_node(params, workdir, domain_id, threads, transport="dds")


def spawn_node(params: dict[str, Any], workdir: Path, domain_id: int, threads: int = 1, transport: str = "dds") -> "subprocess.Popen[str]":
    """``vit-policy serve --transport <transport>`` in its own process on DDS / ROS domain ``domain_id``.

    ``params`` is a ROS 2 parameter file's content (``{node: {ros__parameters: ...}}``); it is written to
    ``workdir/policy_node.yaml``. Output (stdout and stderr) is collected by :func:`stop_node`.
    """
    import os
    import subprocess

    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "policy_node.yaml"
    path.write_text(yaml.safe_dump(params))
    root = ROOT
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "vit_policy.cli", "serve", "--transport", transport, "--config", str(path)],
                            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_node(proc: "subprocess.Popen[str]", timeout_s: float = 20.0) -> str:
    """SIGTERM (the node publishes a stop and shuts down), SIGKILL after ``timeout_s``; returns its output."""
    import subprocess

    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""
