"""Cost of the out-of-distribution monitor: the policy step with and without it, and the scoring alone.

The monitor reads the encoder's tokens from the step's own forward (vit_policy/ood.py), so its cost is
pooling plus one Mahalanobis distance per camera (the `score` column). Measured in one run, interleaved:
  python benchmarks/ood.py [--threads 2] [--repeats 30] [--configs vit_tiny vit_small] [--cameras 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic scene renderer

from benchmarks.inference import CONFIGS, timeit  # noqa: E402
from synthetic import render  # noqa: E402
from vit_policy.model.configuration import load_policy_config  # noqa: E402
from vit_policy.model.policy import VisuomotorPolicy, identity_stats  # noqa: E402
from vit_policy.observation import Observation  # noqa: E402
from vit_policy.ood import OODMonitor, encode_features, encoder_fingerprint, fit_camera, pooled_features  # noqa: E402


def bench(name: str, cameras: int, repeats: int) -> dict:
    cams = [f"cam{i}" for i in range(cameras)]
    cfg = load_policy_config(CONFIGS / f"{name}.yaml", [f"cameras={cams}"])
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(cfg))
    size = policy.image_size
    rng = np.random.default_rng(0)
    frames = np.stack([render(rng.uniform(0.39, 0.51, 2), rng.uniform([0.33, -0.12, 0.1], [0.57, 0.12, 0.3]), 0, size) for _ in range(48)])
    feats = encode_features(policy, {c: frames for c in cams})
    monitor = OODMonitor({c: fit_camera(feats[c][:32], feats[c][32:], 0.99) for c in cams}, 0.99, encoder_fingerprint(policy))
    obs = Observation(0, {c: frames[0] for c in cams}, np.array([0.45, 0.0, 0.3]), np.array([1.0, 0.0, 0.0, 0.0]), 1.0)
    enc = policy.encoder_for(cams[0])
    tokens = torch.randn(1, enc.num_prefix_tokens + enc.num_patches, enc.embed_dim)  # one frame's backbone output

    def pool_and_score() -> None:
        monitor.score({c: pooled_features(tokens, enc.num_prefix_tokens) for c in cams})

    def step_with(m: OODMonitor | None):
        def run() -> None:
            policy.ood = m
            policy.predict(obs)
        return run

    off, on = [], []
    timeit(step_with(monitor), 0)
    for _ in range(repeats):  # alternating calls: drift on a shared machine hits both alike
        off += timeit(step_with(None), 1, warmup=0)
        on += timeit(step_with(monitor), 1, warmup=0)
    score = timeit(pool_and_score, repeats)
    return {"config": name, "cameras": cameras, "img": f"{size[0]}x{size[1]}", "features": feats[cams[0]].shape[1],
            "off_ms": float(np.median(off)), "on_ms": float(np.median(on)), "score_ms": float(np.median(score))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--configs", nargs="+", default=["vit_tiny", "vit_small"])
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch 1, {args.threads} threads; step p50 without / with the monitor, and pooling + scoring alone (all cameras)")
    head = f"{'config':<10} {'cams':>4} {'img':>7} {'features':>8} {'step off':>9} {'step on':>9} {'on/off':>7} {'score':>8}"
    print(head)
    print("-" * len(head))
    for name in args.configs:
        for cams in args.cameras:
            r = bench(name, cams, args.repeats)
            print(f"{r['config']:<10} {r['cameras']:>4} {r['img']:>7} {r['features']:>8} {r['off_ms']:>7.1f}ms {r['on_ms']:>7.1f}ms "
                  f"{r['on_ms'] / r['off_ms']:>7.3f} {r['score_ms']:>6.2f}ms")


if __name__ == "__main__":
    main()
