"""Policy step latency on a CUDA GPU: fp32 eager (what the node runs with ``device: cuda``), bf16 autocast, and
each replayed as a CUDA graph; p50 / p99 over many steps, each against the same precision's encoder-only forward.

  python benchmarks/gpu.py [--configs vit_small] [--cameras 1 2] [--size 224] [--repeats 300] [--compile] [--out rows.json]

A step is the whole call the node makes: Observation (numpy frames, pose) -> ActionChunk (numpy), so it
includes validation, the host-to-device copy of the uint8 frames, the device-to-host copy of the actions and
their decoding. Random init, identity statistics, batch 1. ``vs fp32``: each variant's chunk of targets against
fp32 eager's on the same frames, relative to the chunk's motion (the worst of 8 random frames; with identity
statistics the targets are in no physical unit, so no millimetres).
Needs a GPU; no test depends on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import untrained  # noqa: E402  (the CPU benchmark's policy and frames)

from vit_policy.model.policy import VisuomotorPolicy, chunks_from_actions  # noqa: E402
from vit_policy.observation import ActionChunk, Observation  # noqa: E402


def cuda_timeit(fn: Callable[[], Any], repeats: int, warmup: int = 10) -> list[float]:
    """Wall time (ms) of each call, the device synchronised around it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


class GraphStep:
    """The policy step replayed as one CUDA graph: the observation is copied into static device buffers, the
    captured forward and action decoding replay, the actions come back to the host and become a chunk."""

    def __init__(self, policy: VisuomotorPolicy, obs: Observation, dtype: torch.dtype | None) -> None:
        self.policy = policy
        dev = policy.device
        batch = policy.observation_batch([obs])
        keys = ["position", "quaternion", "gripper"] + (["history"] if "history" in batch else [])
        self.host = {k: batch[k].pin_memory() for k in keys} | {f"img/{c}": batch["images"][c].pin_memory() for c in policy.cfg.cameras}
        self.static = {k: v.to(dev) for k, v in self.host.items()}
        self.autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else nullcontext
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up outside the capture: cuBLAS handles, autotuning, the cached constants
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.out = self._forward()

    def _forward(self) -> torch.Tensor:
        s = self.static
        batch = {k: s[k] for k in ("position", "quaternion", "gripper", "history") if k in s}
        batch["images"] = {c: s[f"img/{c}"] for c in self.policy.cfg.cameras}
        with self.autocast():
            out = self.policy.forward(batch)["action"]
        return self.policy.decode_actions_t(out.float(), s["position"], s["quaternion"])

    def predict(self, obs: Observation) -> ActionChunk:
        batch = self.policy.observation_batch([obs])  # validation and stacking on the host, as predict does
        for k in self.host:
            src = batch["images"][k[4:]] if k.startswith("img/") else batch[k]
            self.host[k].copy_(src)
            self.static[k].copy_(self.host[k], non_blocking=True)
        self.graph.replay()
        raw = self.out.cpu().double().numpy()
        return chunks_from_actions(raw, batch["position"].numpy(), batch["quaternion"].numpy(), batch["stamp_ns"],
                                   self.policy.cfg.control_dt_ns)[0]


class GraphEncoder:
    """The encoder-only forward replayed as a CUDA graph (the denominator of the graph row's step / enc)."""

    def __init__(self, enc: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> None:
        self.x = x.clone()
        with torch.inference_mode(), (torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()):
            for _ in range(3):
                enc.forward_features(self.x)
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                enc.forward_features(self.x)

    def __call__(self) -> None:
        self.graph.replay()


def bench(name: str, cameras: int, size: int | None, repeats: int, compile_torch: bool = False) -> list[dict]:
    cfg, policy, obs, x = untrained(name, cameras, size)
    dev = torch.device("cuda")
    policy = policy.to(dev)
    policy.set_stats(policy.stats)  # the statistics' tensors onto the device
    x = x.to(dev)
    enc = policy.encoder_for(cfg.cameras[0])
    h, w = policy.image_size
    bf16 = torch.bfloat16

    def encoder(dtype: torch.dtype | None, encoder: torch.nn.Module = enc) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), (torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()):
                encoder.forward_features(x)
        return run

    def step_bf16(o: Observation = obs) -> ActionChunk:
        with torch.autocast("cuda", dtype=bf16):
            return policy.predict(o)

    graphs = {dtype: GraphStep(policy, obs, dtype) for dtype in (None, bf16)}
    fns = {"fp32 eager": (policy.predict, encoder(None)),
           "fp32 CUDA graph": (graphs[None].predict, GraphEncoder(enc, x, None)),
           "bf16 eager": (step_bf16, encoder(bf16)),
           "bf16 CUDA graph": (graphs[bf16].predict, GraphEncoder(enc, x, bf16))}
    compile_s = None
    if compile_torch:  # runtime.compile: the same weights, compiled (inductor's default mode) and warmed up at load
        from vit_policy.deploy import compiled

        _, cpolicy, _, _ = untrained(name, cameras, size)
        cpolicy.load_state_dict(policy.state_dict())
        cpolicy = cpolicy.to(dev)
        cpolicy.set_stats(cpolicy.stats)
        t0 = time.perf_counter()
        compiled(cpolicy)
        compile_s = time.perf_counter() - t0
        fns["fp32 runtime.compile"] = (cpolicy.predict, encoder(None, cpolicy.encoder_for(cfg.cameras[0])))
    # each variant against fp32 eager on fresh frames (never check on one input alone), relative to the chunk's motion
    rel: dict[str, float] = dict.fromkeys(fns, 0.0)
    rng = np.random.default_rng(0)
    for _ in range(8):
        o = replace(obs, images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in cfg.cameras})
        ref = policy.predict(o)
        for label, (step, _) in fns.items():
            c = step(o)
            rel[label] = max(rel[label], float(np.linalg.norm(c.target_positions - ref.target_positions)
                                               / max(np.linalg.norm(ref.target_positions - ref.origin_position), 1e-12)))
    torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {}
    for _ in range(3):  # interleaved rounds: drift hits every row alike
        for label, (step, encode) in fns.items():
            times.setdefault(label, []).extend(cuda_timeit(lambda: step(obs), repeats // 3))
            times.setdefault(label + " enc", []).extend(cuda_timeit(encode, repeats // 3))
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    rows = []
    for label in fns:
        t, e = times[label], times[label + " enc"]
        rows.append({"config": name, "cameras": cameras, "img": f"{h}x{w}", "variant": label,
                     "step_p50_ms": float(np.percentile(t, 50)), "step_p99_ms": float(np.percentile(t, 99)),
                     "enc_p50_ms": float(np.percentile(e, 50)), "step_over_enc": statistics.median(t) / statistics.median(e),
                     "err_rel": rel[label], "peak_MiB": peak_mb,
                     "compile_s": compile_s if label == "fp32 runtime.compile" else None})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["vit_small"])
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--size", type=int, default=224, help="encoder input size")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--compile", action="store_true", help="a runtime.compile row too (torch.compile at load)")
    ap.add_argument("--out", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine")
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch 1, {args.repeats} steps a row; "
          "step: Observation -> ActionChunk on the host; enc: the same precision's encoder-only forward")
    head = (f"{'config':<10} {'cams':>4} {'img':>7} {'variant':<20} {'step p50':>9} {'step p99':>9} {'enc p50':>8} "
            f"{'step/enc':>8} {'vs fp32':>8} {'peak MiB':>8}")
    print(head)
    print("-" * len(head), flush=True)
    rows = []
    for name in args.configs:
        for n in args.cameras:
            for r in bench(name, n, args.size, args.repeats, args.compile):
                rows.append(r)
                err = f"{r['err_rel']:.1e}" if r["variant"] != "fp32 eager" else "-"
                print(f"{r['config']:<10} {r['cameras']:>4} {r['img']:>7} {r['variant']:<20} {r['step_p50_ms']:>7.2f}ms "
                      f"{r['step_p99_ms']:>7.2f}ms {r['enc_p50_ms']:>6.2f}ms {r['step_over_enc']:>8.2f} {err:>8} {r['peak_MiB']:>8.0f}",
                      flush=True)
                if r["compile_s"] is not None:
                    print(f"  (compiled at load in {r['compile_s']:.0f} s)", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
