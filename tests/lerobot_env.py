"""lerobot 0.4.4 beside this project's torch, for the LeRobotDataset load check (tests/test_lerobot.py) and
the ACT peer (benchmarks/peer_act.py, benchmarks/inference.py --backends).

lerobot 0.4.4 pins torch < 2.11 and torchvision < 0.26; this project runs torch 2.14. Its dataset
code needs neither pin, so it is installed with ``--no-deps`` into a directory of its own, with the
runtime packages its ``LeRobotDataset`` imports, and run by the project venv's python with that
directory on PYTHONPATH (never imported into the test process). Video decoding: lerobot uses
torchcodec (torchvision's VideoReader is gone from torchvision 0.24+); torchcodec needs FFmpeg's
shared libraries, taken from the running venv's PyAV wheel (``av.libs``) under their plain sonames.

    python tests/lerobot_env.py            # build (or reuse) ~/.cache/vit_policy/lerobot-0.4.4, print its env
    python tests/lerobot_env.py --check DATASET_DIR OUT.npz [K]   # what lerobot reads from a dataset (+ K-frame action chunks)

Builds in about a minute from a PyPI mirror (119 MB); a built directory is reused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

LEROBOT = "lerobot==0.4.4"
# What `from lerobot.datasets.lerobot_dataset import LeRobotDataset` imports beyond this project's venv
# (torch, numpy, pyarrow, av, pyyaml, pillow, fsspec, packaging, tqdm come from the venv).
PACKAGES = [
    LEROBOT, "datasets==4.8.5", "pandas==3.1.1", "huggingface_hub==0.35.3", "draccus==0.10.0", "jsonlines==4.0.0",
    "deepdiff==9.1.0", "termcolor==3.3.0", "einops==0.8.2", "dill==0.4.1", "multiprocess==0.70.19", "xxhash==4.1.0",
    "requests==2.34.2", "urllib3==2.8.0", "certifi==2026.10.19.post1", "charset_normalizer==3.5.3", "idna==3.20",
    "httpx==0.28.1", "httpcore==1.0.9", "h11==0.16.0", "anyio==4.16.0", "sniffio==1.3.1", "accelerate==1.15.0", "mergedeep==1.3.4",
    "pyyaml-include==1.4.1", "typing-inspect==0.9.0", "mypy-extensions==1.2.0", "toml==0.10.2", "orderly-set==5.5.0",
    "python-dateutil==4.0.0", "pytz==2026.6", "tzdata==2026.6", "six==1.17.0", "torchcodec==0.17.0",
    "diffusers==0.35.1", "pyserial==3.5", "cachebox==6.2.10",  # what importing lerobot.policies (ACT) adds
]
DEFAULT_DIR = Path(os.environ.get("VIT_POLICY_LEROBOT_DIR", Path.home() / ".cache" / "vit_policy" / "lerobot-0.4.4"))
IMPORT_CHECK = "from lerobot.datasets.lerobot_dataset import LeRobotDataset; from lerobot.policies.act.modeling_act import ACTPolicy"


class Unavailable(RuntimeError):
    """lerobot cannot be installed here (no package index, a package missing from it)."""


def _av_libs() -> Path:
    import av

    return Path(av.__file__).resolve().parent.parent / "av.libs"


def _ffmpeg_links(target: Path, libs: Path) -> Path:
    """A directory of FFmpeg sonames (libavutil.so.60 ...) pointing at this venv's PyAV copies (``av.libs``).

    One directory per venv, made on every use: the lerobot directory is shared by every clone on the machine, and
    links into a venv that has since been deleted must not be what a later venv finds."""
    import hashlib

    out = target / "ffmpeg" / hashlib.sha1(str(libs).encode()).hexdigest()[:12]
    out.mkdir(parents=True, exist_ok=True)
    for f in libs.glob("lib*.so*"):
        m = re.match(r"(lib(?:av|sw|postproc)\w*)-[0-9a-f]{8}(\.so\.\d+)", f.name)
        link = out / (m.group(1) + m.group(2)) if m else None
        if link is not None and link.resolve() != f.resolve():
            tmp = link.with_name(f".{link.name}.{os.getpid()}")  # atomic: test workers may make the same link at once
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(f)
            os.replace(tmp, link)
    return out


def environment(target: Path = DEFAULT_DIR) -> dict[str, str]:
    """os.environ for a subprocess that imports lerobot from ``target`` (offline: no hub)."""
    libs = _av_libs()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(Path(__file__).resolve().parent.parent)])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(_ffmpeg_links(target, libs)), str(libs), env.get("LD_LIBRARY_PATH", "")])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(target / "hf_home"), TOKENIZERS_PARALLELISM="false")
    return env


def build(target: Path = DEFAULT_DIR) -> dict[str, str]:
    """Install lerobot into ``target`` unless a working copy is there; returns :func:`environment`. Raises Unavailable."""
    done = target / ".complete"
    if done.is_file() and done.read_text().split() == PACKAGES:  # built from this very list
        return environment(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "--target", str(partial), *PACKAGES]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode:
        shutil.rmtree(partial, ignore_errors=True)
        tail = " ".join(res.stderr.strip().splitlines()[-2:])
        raise Unavailable(f"pip could not install {LEROBOT} and its dataset dependencies into {partial}: {tail}")
    check = subprocess.run([sys.executable, "-c", IMPORT_CHECK], env=environment(partial), capture_output=True, text=True, timeout=300)
    if check.returncode:
        raise Unavailable(f"{LEROBOT} installed in {partial} but does not import: {check.stderr.strip().splitlines()[-1:]}")
    (partial / ".complete").write_text(" ".join(PACKAGES) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return environment(target)


def reexec_with_act() -> None:
    """Run the calling script again (same argv) with lerobot's ACT importable, unless it already imports: what the
    ACT benchmarks (benchmarks/peer_act.py, benchmarks/inference.py --act) do first. Raises Unavailable."""
    try:
        import lerobot.policies.act.modeling_act  # noqa: F401
        return
    except ImportError:
        if os.environ.get("VIT_POLICY_ACT_REEXEC"):
            raise
    env = build()
    env["VIT_POLICY_ACT_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def check(dataset: str, out: str, chunk: int = 0) -> None:
    """Load ``dataset`` with lerobot's own LeRobotDataset and save every item's tensors (run inside the lerobot env);
    with ``chunk`` K also each item's action chunk as a lerobot policy gets it (``delta_timestamps``: K frames)."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/vit_policy_export", root=dataset)
    items = [ds[i] for i in range(len(ds))]
    arrays = {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0] if k != "task"}
    if chunk:
        chunked = LeRobotDataset("local/vit_policy_export", root=dataset, delta_timestamps={"action": [k / ds.fps for k in range(chunk)]})
        got = [chunked[i] for i in range(len(chunked))]
        arrays["chunk_action"] = np.stack([np.asarray(it["action"]) for it in got])
        arrays["chunk_is_pad"] = np.stack([np.asarray(it["action_is_pad"]) for it in got])
    arrays["fps"] = np.asarray(ds.fps)
    arrays["num_episodes"] = np.asarray(ds.num_episodes)
    arrays["video_backend"] = np.asarray(ds.video_backend if ds.meta.video_keys else "")
    arrays["tasks"] = np.asarray([it["task"] for it in items])
    np.savez(out, **arrays)


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--check":
        check(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else 0)
    else:
        try:
            e = build()
        except Unavailable as exc:
            sys.exit(f"unavailable: {exc}")
        print(f"lerobot 0.4.4 at {DEFAULT_DIR}; run with:\n  PYTHONPATH={e['PYTHONPATH']} LD_LIBRARY_PATH={e['LD_LIBRARY_PATH']} "
              f"HF_HUB_OFFLINE=1 {sys.executable} ...")
