"""Policy step latency against an encoder-only forward, and achieved GFLOP/s against a matmul peak.

Everything is measured in one run so the ratios hold even on a noisy machine:
  python benchmarks/inference.py [--threads 2] [--repeats 30] [--configs vit_tiny vit_small clip_b32] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vit_policy.config import load_policy_config
from vit_policy.images import to_model_input
from vit_policy.model.policy import VisuomotorPolicy, count_parameters, identity_stats
from vit_policy.observation import Observation

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "policy"


def timeit(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def flops(fn) -> float:
    """Forward floating-point operations of one call (with autograd on: FlopCounterMode's module
    tracker fails under no_grad / inference_mode)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_gflops(repeats: int) -> float:
    """float32 GEMM rate on this machine with the current thread count (best of several sizes)."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        ms = statistics.median(timeit(lambda: a @ b, max(3, repeats // 3)))
        best = max(best, 2 * n**3 / (ms * 1e-3) / 1e9)
    return best


def bench(name: str, cameras: int, repeats: int) -> dict:
    cfg = load_policy_config(CONFIGS / f"{name}.yaml", [f"cameras={[f'cam{i}' for i in range(cameras)]}"])
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(cfg))
    h, w = policy.image_size
    rng = np.random.default_rng(0)
    obs = Observation(0, {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in cfg.cameras},
                      np.array([0.4, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]), 1.0)
    enc = policy.encoder_for(cfg.cameras[0])
    x = torch.cat([to_model_input(obs.images[c], enc.img_size, enc.mean, enc.std) for c in cfg.cameras])

    def encoder_only():
        with torch.inference_mode():
            enc.forward_features(x)

    def step():
        policy.predict(obs)

    enc_flops = flops(lambda: enc.forward_features(x))
    step_flops = flops(lambda: policy.forward(policy.observation_batch([obs])))
    # interleave the two measurements so drift on a shared machine hits both alike
    enc_ms, step_ms = [], []
    for _ in range(3):
        enc_ms += timeit(encoder_only, repeats // 3)
        step_ms += timeit(step, repeats // 3)
    enc_p50 = float(np.percentile(enc_ms, 50))
    step_p50 = float(np.percentile(step_ms, 50))
    return {
        "config": name, "cameras": cameras, "K": cfg.chunk_size, "img": f"{h}x{w}",
        "params_M": count_parameters(policy) / 1e6, "step_GFLOPs": step_flops / 1e9, "enc_GFLOPs": enc_flops / 1e9,
        "step_p50_ms": step_p50, "step_p90_ms": float(np.percentile(step_ms, 90)),
        "enc_p50_ms": enc_p50, "enc_p90_ms": float(np.percentile(enc_ms, 90)),
        "step_over_enc": step_p50 / enc_p50, "enc_GFLOP_s": enc_flops / 1e9 / (enc_p50 * 1e-3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--configs", nargs="+", default=["vit_tiny", "vit_small", "clip_b32"])
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.repeats)
    rows = [bench(name, cams, args.repeats) for name in args.configs for cams in args.cameras]
    for r in rows:
        r["enc_pct_of_peak"] = 100 * r["enc_GFLOP_s"] / peak
    if args.json:
        print(json.dumps({"threads": args.threads, "matmul_peak_GFLOP_s": peak, "rows": rows}, indent=2))
        return
    print(f"batch 1, {args.threads} threads, float32 matmul peak {peak:.1f} GFLOP/s (measured in this run)")
    head = f"{'config':<10} {'cams':>4} {'K':>3} {'img':>7} {'params M':>8} {'GFLOPs':>7} {'step p50':>9} {'step p90':>9} {'enc p50':>8} {'step/enc':>8} {'enc GFLOP/s':>11} {'% peak':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['config']:<10} {r['cameras']:>4} {r['K']:>3} {r['img']:>7} {r['params_M']:>8.1f} {r['step_GFLOPs']:>7.2f} "
              f"{r['step_p50_ms']:>8.1f}ms {r['step_p90_ms']:>8.1f}ms {r['enc_p50_ms']:>7.1f}ms {r['step_over_enc']:>8.3f} "
              f"{r['enc_GFLOP_s']:>11.1f} {r['enc_pct_of_peak']:>5.0f}%")


if __name__ == "__main__":
    main()
