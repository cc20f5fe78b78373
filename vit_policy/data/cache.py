"""Episode cache: each bag is extracted once into memory-mapped ``.npy`` arrays.

Why ``.npy`` + ``mmap``: frames are stored already at the encoder's input size as raw uint8, so a
training sample is a page-cache read with no decoding (``benchmarks/training.py`` measures the
loader against JPEG decoding of the same frames), any DataLoader worker can open the arrays without
copying them, and the format needs nothing beyond NumPy.

A cache entry is ``<cache_dir>/<bag name>-<key>/`` where the key hashes the bag's absolute path and
every extraction setting (topic map, rates, chunk size, image size). ``meta.json`` records each
source file's size, mtime and SHA-256: a bag whose size or content changed is extracted again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vit_policy.data.configuration import DataConfig
from vit_policy.data.bags import Episode, extract_episodes

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: observations stamped at their camera frame, pose interpolated there (vit_policy/inputs.py)
ARRAYS = ("stamps_ns", "position", "quaternion", "gripper", "action", "action_mask")


def _source_files(bag: Path) -> list[Path]:
    return sorted(p for p in bag.rglob("*") if p.is_file()) if bag.is_dir() else [bag]


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def source_record(bag: Path, previous: dict | None = None) -> dict[str, dict]:
    """{file: {size, mtime_ns, sha256}} of a bag; hashes are reused when size and mtime are unchanged."""
    prev = (previous or {}).get("sources", {})
    out = {}
    for f in _source_files(bag):
        st = f.stat()
        rel = str(f.relative_to(bag)) if bag.is_dir() else f.name
        old = prev.get(rel)
        same = old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns
        out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": old["sha256"] if same else file_sha256(f)}
    return out


def cache_key(bag: Path, data: DataConfig, chunk_size: int, image_size: tuple[int, int] | None) -> str:
    params = {"version": CACHE_VERSION, "bag": str(bag.resolve()), "data": dataclasses.asdict(data), "chunk_size": chunk_size,
              "image_size": list(image_size) if image_size else None}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _is_fresh(entry: Path, bag: Path) -> bool:
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    current = source_record(bag, meta)
    # content decides: a touched but identical bag keeps its cache
    return {k: (v["size"], v["sha256"]) for k, v in current.items()} == {
        k: (v["size"], v["sha256"]) for k, v in meta.get("sources", {}).items()
    }


def write_episodes(entry: Path, episodes: list[Episode], meta: dict) -> None:
    """Write episodes as .npy arrays + meta.json, atomically (a temp dir renamed into place)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        for i, ep in enumerate(episodes):
            for name in ARRAYS:
                np.save(tmp / f"ep{i:03d}_{name}.npy", np.ascontiguousarray(getattr(ep, name)))
            for cam, frames in ep.images.items():
                np.save(tmp / f"ep{i:03d}_image_{cam}.npy", np.ascontiguousarray(frames))
        meta = {**meta, "episodes": [{"source": ep.source, "length": len(ep), "cameras": sorted(ep.images)} for ep in episodes]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_episodes(entry: Path, mmap: bool = True) -> list[Episode]:
    """Episodes of a cache entry; arrays are memory-mapped (read-only) unless ``mmap`` is False."""
    meta = json.loads((entry / "meta.json").read_text())
    mode = "r" if mmap else None
    episodes = []
    for i, info in enumerate(meta["episodes"]):
        arrays = {name: np.load(entry / f"ep{i:03d}_{name}.npy", mmap_mode=mode) for name in ARRAYS}
        images = {cam: np.load(entry / f"ep{i:03d}_image_{cam}.npy", mmap_mode=mode) for cam in info["cameras"]}
        episodes.append(Episode(source=info["source"], images=images, **arrays))
    return episodes


def load_or_extract(
    bag: str | Path, data: DataConfig, chunk_size: int, image_size: tuple[int, int] | None, cache_dir: str | Path
) -> list[Episode]:
    """Episodes of one bag from the cache, extracting (and caching) them when missing or stale."""
    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag {str(bag)!r} does not exist")
    entry = Path(cache_dir) / f"{bag.name}-{cache_key(bag, data, chunk_size, image_size)}"
    if _is_fresh(entry, bag):
        return read_episodes(entry)
    log.info("extracting %s -> %s", bag, entry)
    episodes = extract_episodes(bag, data, chunk_size, image_size)
    try:
        write_episodes(entry, episodes, {"version": CACHE_VERSION, "bag": str(bag.resolve()), "sources": source_record(bag)})
    except OSError as exc:  # a full disk or unwritable cache_dir costs speed, not the run: the episodes are in memory
        log.warning("could not cache %s in %s (%s); going on without a cache. Free space there or set cache_dir "
                    "to a writable folder on a larger disk.", bag, entry, exc)
        return episodes
    return read_episodes(entry)
