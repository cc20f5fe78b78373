"""Policy step latency on a CUDA GPU: fp32 eager (the node with ``device: cuda``), bf16 autocast, and each replayed
as a CUDA graph (fp32: ``runtime.cuda_graph``); p50 / p99 over many steps, each against the same precision's encoder-only forward.

  python benchmarks/gpu.py [--configs vit_small] [--cameras 1 2] [--size 224] [--repeats 300] [--compile] [--check] [--out rows.json]

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
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import interleaved, timeit, untrained  # noqa: E402  (the CPU benchmark's policy, frames and timing)

from vit_policy.deploy import CudaGraphPolicy  # noqa: E402
from vit_policy.observation import ActionChunk, Observation  # noqa: E402


def cuda_timeit(fn: Callable[[], Any], repeats: int, warmup: int = 10) -> list[float]:
    """Wall time (ms) of each call, the device synchronised after it."""
    torch.cuda.synchronize()
    return timeit(lambda: (fn(), torch.cuda.synchronize()), repeats, warmup)


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
    policy = policy.to(dev)  # the statistics' buffers too
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

    graphs = {dtype: CudaGraphPolicy(policy, dtype) for dtype in (None, bf16)}  # runtime.cuda_graph (fp32), and in bf16
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
    timed = {key: fn for label, (step, encode) in fns.items()
             for key, fn in ((label, lambda step=step: step(obs)), (label + " enc", encode))}
    times, _ = interleaved(timed, repeats, timer=cuda_timeit)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    rows = []
    for label in fns:
        t, e = times[label], times[label + " enc"]
        step_p50, enc_p50 = float(np.percentile(t, 50)), float(np.percentile(e, 50))
        rows.append({"config": name, "cameras": cameras, "img": f"{h}x{w}", "variant": label,
                     "step_p50_ms": step_p50, "step_p99_ms": float(np.percentile(t, 99)),
                     "enc_p50_ms": enc_p50, "step_over_enc": step_p50 / enc_p50,
                     "err_rel": rel[label], "peak_MiB": peak_mb,
                     "compile_s": compile_s if label == "fp32 runtime.compile" else None})
    return rows


def check_cuda_graph_option(name: str = "vit_tiny") -> str:
    """``runtime.cuda_graph`` through the loader the node uses, two cameras and an OOD monitor, called from a worker
    thread as the runner does: the replayed step's actions and OOD scores against the eager step's."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from vit_policy.deploy import load_policy
    from vit_policy.model.checkpoint import save_checkpoint
    from vit_policy.ood import OODMonitor, encode_features, encoder_fingerprint, fit_camera
    from vit_policy.runtime import RuntimeConfig

    cfg, policy, obs, _ = untrained(name, 2)
    policy = policy.to("cuda")
    h, w = policy.image_size
    rng = np.random.default_rng(1)
    feats = encode_features(policy, {c: rng.integers(0, 256, (64, h, w, 3), dtype=np.uint8) for c in cfg.cameras})
    policy.ood = OODMonitor({c: fit_camera(f[:48], f[48:], 0.99) for c, f in feats.items()}, 0.99, encoder_fingerprint(policy))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(policy, d)
        graph = load_policy(d, RuntimeConfig(cuda_graph=True), "cuda")
        eager = load_policy(d, RuntimeConfig(), "cuda")
    assert isinstance(graph, CudaGraphPolicy), type(graph)
    actions = scores = 0.0
    with ThreadPoolExecutor(1) as worker:
        for _ in range(8):
            o = replace(obs, images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in cfg.cameras})
            a, b = worker.submit(graph.predict, o).result(), eager.predict(o)
            actions = max(actions, float(np.abs(a.target_positions - b.target_positions).max()))
            scores = max(scores, max(abs(a.ood[c] - b.ood[c]) / b.ood[c] for c in cfg.cameras))
    return (f"runtime.cuda_graph through load_policy ({name}, 2 cameras, OOD monitor, a worker thread), 8 fresh frames: "
            f"targets differ from eager by at most {actions:.1e}, OOD scores by {scores:.1e} (relative)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["vit_small"])
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--size", type=int, default=224, help="encoder input size")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--compile", action="store_true", help="a runtime.compile row too (torch.compile at load)")
    ap.add_argument("--check", action="store_true", help="first check runtime.cuda_graph through the node's loader against eager")
    ap.add_argument("--out", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine")
    torch.manual_seed(0)
    if args.check:
        print(check_cuda_graph_option(), flush=True)
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
