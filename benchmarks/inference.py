"""Policy step latency against an encoder-only forward, and achieved GFLOP/s against a matmul peak; then the
inference backends (torch eager, ONNX Runtime fp32 and int8) and, when ``lerobot`` is importable, LeRobot ACT.

Everything is measured in one run so the ratios hold even on a noisy machine:
  python benchmarks/inference.py [--threads 2] [--repeats 30] [--configs vit_tiny vit_small clip_b32] [--json]
  python benchmarks/inference.py --backends [--act] [--compile] [--rounds 3] [--configs vit_small] [--cameras 1 2] [--size 224]

With --backends, each backend's step is timed against that backend's own encoder-only forward (the same
encoder exported alone for ONNX Runtime), interleaved, and against ACT's ``select_action`` (ResNet18,
random init, chunk 20, a new chunk every call) on the same frames when lerobot is importable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vit_policy.model.configuration import load_policy_config
from vit_policy.images import to_model_input
from vit_policy.model.policy import VisuomotorPolicy, count_parameters, identity_stats
from vit_policy.observation import Observation, example_observation

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


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, rounds: int = 3,
                timer: Callable[..., list[float]] = timeit) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each function timed in turn, ``rounds`` times over, ``repeats`` calls split over the rounds, so drift on a
    shared machine hits every one alike: (all times, each round's median) per name."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    medians: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t = timer(fn, max(1, repeats // rounds))
            times[key] += t
            medians[key].append(statistics.median(t))
    return times, medians


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


def untrained(name: str, cameras: int, size: int | None = None) -> tuple[Any, VisuomotorPolicy, Observation, torch.Tensor]:
    """A shipped policy config with ``cameras`` cameras (random init, identity statistics), one observation of
    random frames, and the normalised encoder input of its frames."""
    overrides = [f"cameras={[f'cam{i}' for i in range(cameras)]}"] + ([f"encoder.img_size={size}"] if size else [])
    cfg = load_policy_config(CONFIGS / f"{name}.yaml", overrides)
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(cfg))
    obs = example_observation(cfg.cameras, policy.image_size, cfg.pose.history)
    enc = policy.encoder_for(cfg.cameras[0])
    x = torch.cat([to_model_input(obs.images[c], enc.img_size, enc.mean, enc.std) for c in cfg.cameras])
    return cfg, policy, obs, x


def bench(name: str, cameras: int, repeats: int) -> dict:
    cfg, policy, obs, x = untrained(name, cameras)
    h, w = policy.image_size
    enc = policy.encoder_for(cfg.cameras[0])

    def encoder_only():
        with torch.inference_mode():
            enc.forward_features(x)

    def step():
        policy.predict(obs)

    enc_flops = flops(lambda: enc.forward_features(x))
    step_flops = flops(lambda: policy.forward(policy.observation_batch([obs])))
    times, _ = interleaved({"enc": encoder_only, "step": step}, repeats)
    enc_ms, step_ms = times["enc"], times["step"]
    enc_p50 = float(np.percentile(enc_ms, 50))
    step_p50 = float(np.percentile(step_ms, 50))
    return {
        "config": name, "cameras": cameras, "K": cfg.chunk_size, "img": f"{h}x{w}",
        "params_M": count_parameters(policy) / 1e6, "step_GFLOPs": step_flops / 1e9, "enc_GFLOPs": enc_flops / 1e9,
        "step_p50_ms": step_p50, "step_p90_ms": float(np.percentile(step_ms, 90)),
        "enc_p50_ms": enc_p50, "enc_p90_ms": float(np.percentile(enc_ms, 90)),
        "step_over_enc": step_p50 / enc_p50, "enc_GFLOP_s": enc_flops / 1e9 / (enc_p50 * 1e-3),
    }


class _EncoderOnly(torch.nn.Module):
    def __init__(self, enc: torch.nn.Module) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc.forward_features(x)


def act_step(cameras: int, size: int) -> Any:
    """LeRobot ACT's select_action on random frames (None without lerobot): ResNet18 random init, a chunk per call."""
    try:
        from lerobot.configs.types import FeatureType, PolicyFeature
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy
    except ImportError:
        return None
    feats = {f"observation.images.cam{i}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, size, size)) for i in range(cameras)}
    feats["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(8,))
    cfg = ACTConfig(input_features=feats, output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(10,))},
                    pretrained_backbone_weights=None, chunk_size=20, n_action_steps=1)
    act = ACTPolicy(cfg).eval()
    obs = {k: torch.rand(1, *f.shape) for k, f in feats.items()}

    def step() -> None:
        with torch.inference_mode():
            act.select_action(obs)  # n_action_steps=1: the network runs on every call

    return step


def bench_backends(name: str, cameras: int, repeats: int, size: int | None, compile_torch: bool = False,
                   n_rounds: int = 3) -> list[dict]:
    """Step and encoder-only p50 per backend (torch eager, ONNX Runtime fp32 / int8; torch compiled with
    ``compile_torch``) and ACT, interleaved in ``n_rounds`` rounds; step / enc and x ACT are medians of the
    rounds' ratios, so a machine whose speed changes between rounds skews neither."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as d:  # a vit_small export pair is ~1 GB: never left behind
        return _bench_backends(Path(d), name, cameras, repeats, size, compile_torch, n_rounds)


def _bench_backends(tmp: Path, name: str, cameras: int, repeats: int, size: int | None, compile_torch: bool,
                    n_rounds: int) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vit_policy.config import save_config
    from vit_policy.deploy import ONNX_FILE, ONNX_INT8_FILE, OnnxPolicy, export_onnx, onnx_export, quantize_encoder

    cfg, policy, obs, x = untrained(name, cameras, size)
    h, w = policy.image_size
    enc = policy.encoder_for(cfg.cameras[0])
    save_config(cfg, tmp / "config.yaml")
    export_onnx(policy, tmp / ONNX_FILE, policy.observation_batch([obs]))
    quantize_encoder(tmp / ONNX_FILE, tmp / ONNX_INT8_FILE, cfg)
    onnx_export(_EncoderOnly(enc), (x,), tmp / "encoder.onnx", input_names=["x"])
    quantize_dynamic(str(tmp / "encoder.onnx"), str(tmp / "encoder.int8.onnx"), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    import onnxruntime as ort

    def session(path: Path) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    xs = {"x": x.numpy()}
    ort_fp32, ort_int8 = OnnxPolicy(tmp, ONNX_FILE), OnnxPolicy(tmp, ONNX_INT8_FILE)
    enc_fp32, enc_int8 = session(tmp / "encoder.onnx"), session(tmp / "encoder.int8.onnx")

    def torch_encoder() -> None:
        with torch.inference_mode():
            enc.forward_features(x)

    fns = {"torch eager": (lambda: policy.predict(obs), torch_encoder),
           "onnxruntime fp32": (lambda: ort_fp32.predict(obs), lambda: enc_fp32.run(None, xs)),
           "onnxruntime int8": (lambda: ort_int8.predict(obs), lambda: enc_int8.run(None, xs))}
    if compile_torch:  # a second policy of the same config: compiling changes the module it is applied to
        from vit_policy.deploy import compiled

        t0 = time.perf_counter()
        _, cpolicy, _, _ = untrained(name, cameras, size)
        compiled(cpolicy)
        cenc = cpolicy.encoder_for(cfg.cameras[0])
        compile_s = time.perf_counter() - t0

        def compiled_encoder() -> None:
            with torch.inference_mode():
                cenc.forward_features(x)

        fns["torch compiled"] = (lambda: cpolicy.predict(obs), compiled_encoder)
    # the ratio the arithmetic alone sets: what is left above it is overhead (dispatch, conversion, small kernels)
    floor = flops(lambda: policy.forward(policy.observation_batch([obs]))) / flops(lambda: enc.forward_features(x))
    act = act_step(cameras, h)
    timed = {key: fn for label, (step, encoder) in fns.items() for key, fn in ((label, step), (label + " enc", encoder))}
    times, rounds = interleaved(timed | ({"act": act} if act is not None else {}), repeats, n_rounds)

    def paired(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(rounds[a], rounds[b])]

    rows = []
    for label in fns:
        vs_act = paired(label, "act") if act is not None else None
        rows.append({"config": name, "cameras": cameras, "img": f"{h}x{w}", "backend": label,
                     "step_p50_ms": float(np.percentile(times[label], 50)), "step_p90_ms": float(np.percentile(times[label], 90)),
                     "enc_p50_ms": float(np.percentile(times[label + " enc"], 50)),
                     "step_over_enc": statistics.median(paired(label, label + " enc")), "flop_floor": floor,
                     "vs_act": statistics.median(vs_act) if vs_act else None, "vs_act_rounds": vs_act,
                     "compile_s": compile_s if label == "torch compiled" else None})
    if act is not None:
        rows.append({"config": "ACT (lerobot)", "cameras": cameras, "img": f"{h}x{w}", "backend": "torch eager select_action",
                     "step_p50_ms": float(np.percentile(times["act"], 50)), "step_p90_ms": float(np.percentile(times["act"], 90)),
                     "enc_p50_ms": None, "step_over_enc": None, "flop_floor": None, "vs_act": 1.0, "vs_act_rounds": None, "compile_s": None})
    return rows


def print_backend_rows(rows: list[dict], threads: int) -> None:
    print(f"batch 1, {threads} threads; step / enc: each backend's step against its own encoder-only forward; "
          "FLOP floor: step FLOPs / encoder FLOPs (the ratio with no overhead at all); step / enc and x ACT: "
          "medians of ratios taken within each interleaved round")
    head = (f"{'config':<14} {'cams':>4} {'img':>7} {'backend':<27} {'step p50':>9} {'step p90':>9} {'enc p50':>8} {'step/enc':>8} "
            f"{'floor':>6} {'x ACT':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        enc = f"{r['enc_p50_ms']:>7.1f}ms" if r["enc_p50_ms"] is not None else f"{'-':>9}"
        ratio = f"{r['step_over_enc']:>8.3f}" if r["step_over_enc"] is not None else f"{'-':>8}"
        act = f"{r['vs_act']:>6.2f}" if r["vs_act"] is not None else f"{'-':>6}"
        floor = f"{r['flop_floor']:>6.3f}" if r["flop_floor"] is not None else f"{'-':>6}"
        print(f"{r['config']:<14} {r['cameras']:>4} {r['img']:>7} {r['backend']:<27} {r['step_p50_ms']:>8.1f}ms "
              f"{r['step_p90_ms']:>8.1f}ms {enc} {ratio} {floor} {act}")
    for r in rows:
        if r["vs_act_rounds"]:
            print(f"{r['config']} {r['cameras']} camera(s) {r['backend']}: x ACT over {len(r['vs_act_rounds'])} rounds "
                  f"{min(r['vs_act_rounds']):.2f}-{max(r['vs_act_rounds']):.2f}")
    for r in rows:
        if r["compile_s"] is not None:
            print(f"{r['config']} {r['cameras']} camera(s): torch.compile took {r['compile_s']:.0f} s at load (runtime.compile)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", action="store_true", help="rows per inference backend (and ACT when lerobot is importable)")
    ap.add_argument("--act", action="store_true", help="--backends: make lerobot importable first (builds its env once) for the ACT row")
    ap.add_argument("--compile", action="store_true", help="--backends: a torch.compile row too (runtime.compile; compiling takes minutes)")
    ap.add_argument("--size", type=int, default=None, help="--backends: encoder input size (default: each config's)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="--backends: interleaved rounds (repeats are split over them)")
    ap.add_argument("--configs", nargs="+", default=["vit_tiny", "vit_small", "clip_b32"])
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    if args.act:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import lerobot_env

        lerobot_env.reexec_with_act()  # builds the lerobot env once (tests/lerobot_env.py), then runs this again with it
    torch.set_num_threads(args.threads)
    if args.backends:
        rows = [r for name in args.configs for cams in args.cameras for r in bench_backends(name, cams, args.repeats, args.size, args.compile, args.rounds)]
        if args.json:
            print(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
        else:
            print_backend_rows(rows, args.threads)
        return
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
