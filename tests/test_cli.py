"""The `vit-policy` command: the pre-training demo prints a chunk and latency; bad configs fail at load."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_policy.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_policy_demo_prints_chunk_and_latency():
    res = run("policy-demo", "--config", "configs/policy/vit_tiny.yaml", "--repeats", "2", "encoder.img_size=64", "chunk_size=5")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "vit_tiny_patch16_224 @ 64x64" in lines[0] and "K=5" in lines[0]
    table = [l for l in lines if l.strip() and l.split()[0].isdigit()]
    assert [int(l.split()[0]) for l in table] == list(range(5))
    assert [int(l.split()[1]) for l in table] == [100, 200, 300, 400, 500]  # step k at (k+1) * dt
    assert all(0.0 <= float(l.split()[-1]) <= 1.0 for l in table)  # gripper targets
    assert "latency over 2 steps" in lines[-1] and "p50" in lines[-1]


def test_bad_override_fails_at_load_with_the_key():
    res = run("policy-demo", "--config", "configs/policy/vit_tiny.yaml", "encoder.nmae=x")
    assert res.returncode == 2
    assert "unknown config key 'encoder.nmae'; did you mean 'name'" in res.stderr
