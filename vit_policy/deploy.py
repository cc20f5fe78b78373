"""Deployment: the policy step as an ONNX graph (fp32 and int8), and the inference backends.

The graph holds the whole step after the one preprocessing step that stays outside it, the uint8
resize of each frame to the encoder's input (:func:`vit_policy.images.resize_uint8`, as the training
cache and the runner already do):

  inputs   image_<camera>     uint8 (B, H, W, 3) RGB at the encoder's size, one per camera (cfg.cameras order)
           position (B, 3), quaternion (B, 4) x y z w, gripper (B,), history (B, H, 7) with pose.history  float32
  outputs  action_normalized  (B, K, 10) the head's output in normalised units (what the export checks to 1e-4)
           action             (B, K, 10) decoded: [dp (m, base frame), rot6d of the delta rotation, gripper probability]

Image normalisation (the encoder's mean / std), the state and action statistics, the encoder, pose
tokens, fusion and head are all inside; what is left in Python is rot6d -> rotation vector and the
ActionChunk (:func:`vit_policy.model.policy.chunks_from_actions`, shared with the torch backend).

:func:`load_policy` is the one place that turns ``runtime.backend`` into a policy object; the node,
replay and ``sim-eval`` all call it, and every backend's object is a :class:`vit_policy.model.policy.Policy`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vit_policy.config import ConfigError
from vit_policy.model.configuration import PolicyConfig
from vit_policy.runtime import RuntimeConfig
from vit_policy.geometry import geodesic_deg, rot6d_to_rotvec
from vit_policy.model.checkpoint import (CONFIG_FILE, EXPORT_REPORT, METADATA_FILE, ONNX_FILE, ONNX_INT8_FILE, STATS_FILE,
                                         load_checkpoint, read_policy_config, read_spec)
from vit_policy.model.policy import Batch, Policy, VisuomotorPolicy, chunks_from_actions, observation_batch
from vit_policy.observation import ActionChunk, Observation, example_observation
from vit_policy.ood import OOD_FILE, OODMonitor, capture

log = logging.getLogger(__name__)

OPSET = 17
FP32_TOLERANCE = 1e-4  # normalised units: the exported graph computes what torch computes
INT8_TOLERANCE_MM, INT8_TOLERANCE_DEG = 1.0, 0.5  # int8 against torch on held-out frames
ACCELERATED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preferred in this order by "auto"


def input_names(cfg: PolicyConfig) -> list[str]:
    """The graph's input names in order (images first, in cfg.cameras order)."""
    return [f"image_{c}" for c in cfg.cameras] + ["position", "quaternion", "gripper"] + (["history"] if cfg.pose.history else [])


def output_names(cfg: PolicyConfig) -> list[str]:
    """The graph's outputs: normalised and decoded actions, then each camera's pooled encoder features (what the OOD monitor scores)."""
    return ["action_normalized", "action"] + [f"features_{c}" for c in cfg.cameras]


class PolicyStep(nn.Module):
    """The policy step after the resize as one module with positional tensor inputs (what the exporter traces)."""

    def __init__(self, policy: VisuomotorPolicy) -> None:
        super().__init__()
        if policy.language is not None:
            raise ConfigError("language.enabled: the instruction goes through the CLIP text tower, which is not exported; "
                              "export a policy without language conditioning, or run it with runtime.backend: torch")
        self.policy = policy

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cfg = self.policy.cfg
        n = len(cfg.cameras)
        batch: Batch = {"images": dict(zip(cfg.cameras, inputs[:n])), "position": inputs[n], "quaternion": inputs[n + 1],
                        "gripper": inputs[n + 2]}
        if cfg.pose.history:
            batch["history"] = inputs[n + 3]
        with capture(self.policy) as cap:
            out = self.policy.forward(batch)["action"]
        features = cap.features()
        return (out, self.policy.decode_actions_t(out, inputs[n], inputs[n + 1]), *(features[c].float() for c in cfg.cameras))


def step_feeds(cfg: PolicyConfig, batch: Batch, image_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """A model batch (torch or numpy) -> the graph's numpy inputs; frames not at ``image_size`` are resized (uint8)."""
    from vit_policy.images import resize_uint8

    def arr(x: Any, dtype: Any) -> np.ndarray:
        x = x.numpy(force=True) if isinstance(x, torch.Tensor) else np.asarray(x)
        return np.ascontiguousarray(x, dtype=dtype)

    feeds = {}
    for cam, name in zip(cfg.cameras, input_names(cfg)):
        img = arr(batch["images"][cam], np.uint8)
        if image_size is not None and tuple(img.shape[1:3]) != tuple(image_size):
            img = np.stack([resize_uint8(f, image_size) for f in img])
        feeds[name] = img
    b = feeds[input_names(cfg)[0]].shape[0]
    feeds["position"] = arr(batch["position"], np.float32)
    feeds["quaternion"] = arr(batch["quaternion"], np.float32)
    grip = batch.get("gripper")
    feeds["gripper"] = np.ones(b, np.float32) if grip is None else arr(grip, np.float32).reshape(b)
    if cfg.pose.history:
        feeds["history"] = arr(batch["history"], np.float32)
    return feeds


# --------------------------------------------------------------------------------------------------
# The ONNX Runtime backend
# --------------------------------------------------------------------------------------------------


def resolve_providers(names: list[str]) -> list[str]:
    """``runtime.providers`` -> ONNX Runtime execution providers: ``auto`` takes TensorRT and CUDA when this
    onnxruntime has them (onnxruntime-gpu on a GPU machine), then the CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if list(names) in ([], ["auto"]):
        return [p for p in ACCELERATED_PROVIDERS if p in have] + ["CPUExecutionProvider"]
    missing = [n for n in names if n not in have]
    if missing:
        raise ConfigError(f"runtime.providers: {missing} not available in this onnxruntime (have {have}); "
                          "install onnxruntime-gpu for CUDA / TensorRT, or set runtime.providers: [auto]")
    return list(names)


class OnnxPolicy:
    """An exported policy on ONNX Runtime: a :class:`vit_policy.model.policy.Policy`, as VisuomotorPolicy is.

    Loads ``config.yaml`` and the graph from a directory written by :func:`export_policy`; no torch
    weights are read. The graph also returns each camera's pooled encoder features, which the directory's
    ``ood.safetensors`` (when there is one) scores, as on torch. Attention maps are not part of the graph:
    ``return_attention`` gives chunks without them.
    """

    training = False
    language = None
    ood: OODMonitor | None = None

    def __init__(self, directory: str | Path, onnx_file: str = ONNX_FILE, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        fix = f"export the checkpoint: vit-policy export --checkpoint <checkpoint dir> --bags <held-out bag> --out {directory}"
        path = directory / onnx_file
        if not path.is_file():
            raise FileNotFoundError(f"runtime.backend: onnxruntime needs {str(path)!r}, which does not exist; {fix} "
                                    "(add --int8 for policy.int8.onnx), or set runtime.backend: torch")
        if not (directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{str(directory)!r}: {CONFIG_FILE} is missing beside {onnx_file}; {fix}")
        self.cfg = read_policy_config(directory, fix)
        self.spec = read_spec(directory, self.cfg, fix)
        self.directory, self.onnx_file = directory, onnx_file
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.providers = resolve_providers(list(providers or ["auto"]))
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as exc:  # a truncated or foreign file: onnxruntime's first line, the path and the fix
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load ONNX graph {str(path)!r}: {first}; {fix}") from exc
        names = [i.name for i in self.session.get_inputs()]
        if names != input_names(self.cfg):
            raise ConfigError(f"{str(path)!r} takes inputs {names}, but its {CONFIG_FILE} needs {input_names(self.cfg)}: "
                              f"the graph and the config come from different exports; {fix}")
        shape = self.session.get_inputs()[0].shape
        self.image_size: tuple[int, int] = (int(shape[1]), int(shape[2]))
        self.outputs = [o.name for o in self.session.get_outputs()]
        if (directory / OOD_FILE).is_file():
            if self.outputs == output_names(self.cfg):
                self.ood = OODMonitor.load(directory / OOD_FILE)
            else:  # an export from before the graph returned the features
                log.warning("%s: the OOD monitor is off on onnxruntime: this graph does not return the encoder features; "
                            "export again (vit-policy export) to score frames", path)

    def eval(self) -> "OnnxPolicy":
        return self

    def __repr__(self) -> str:
        return f"OnnxPolicy({str(self.directory / self.onnx_file)!r}, providers={self.providers})"

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A model batch -> (normalised actions, decoded actions, each (B, K, 10); the feeds; {camera: pooled features}
        when the monitor is on, else {})."""
        feeds = step_feeds(self.cfg, batch, self.image_size)
        names = self.outputs if self.ood is not None else self.outputs[:2]
        normalized, actions, *features = self.session.run(names, feeds)
        return normalized, actions, feeds, dict(zip(self.cfg.cameras, features))

    def predict(self, obs: Observation | list[Observation] | Batch, return_attention: bool = False) -> ActionChunk | list[ActionChunk]:
        """One observation -> ActionChunk; a list of observations or a batch -> list of ActionChunks."""
        single = isinstance(obs, Observation)
        batch = observation_batch(self.cfg, [obs] if single else obs) if isinstance(obs, (Observation, list)) else obs
        _, actions, feeds, features = self.run(batch)
        ood = None
        if self.ood is not None:
            scores = self.ood.score(features)
            ood = [{c: float(v[i]) for c, v in scores.items()} for i in range(actions.shape[0])]
        chunks = chunks_from_actions(actions, feeds["position"], feeds["quaternion"], batch.get("stamp_ns"), self.cfg.control_dt_ns,
                                     ood=ood)
        return chunks[0] if single else chunks


def load_policy(checkpoint: str | Path, runtime: RuntimeConfig, device: str = "cpu") -> Policy:
    """The policy of ``checkpoint`` on the backend ``runtime.backend`` names, in eval mode: the node, replay and sim-eval all load here."""
    if runtime.backend == "onnxruntime":
        providers = list(runtime.providers)
        if device.startswith("cuda") and providers == ["auto"]:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return OnnxPolicy(checkpoint, runtime.onnx_file, providers)
    return accelerated(load_checkpoint(checkpoint, map_location=device), runtime)


def accelerated(policy: VisuomotorPolicy, runtime: RuntimeConfig) -> Policy:
    """A torch policy as ``runtime`` runs it: replayed as a CUDA graph (``runtime.cuda_graph``), compiled
    (``runtime.compile``), or as it is."""
    if runtime.cuda_graph:
        return CudaGraphPolicy(policy)
    return compiled(policy) if runtime.compile else policy


def compiled(policy: VisuomotorPolicy) -> VisuomotorPolicy:
    """``runtime.compile``: the policy with its transformer parts compiled, warmed up by one step on an example
    observation so the compilation happens at load, not on the first control tick."""
    import time

    t0 = time.perf_counter()
    policy.compile_step()
    try:
        policy.predict(example_observation(policy.cfg.cameras, policy.image_size, policy.cfg.pose.history))
    except Exception as exc:  # inductor's errors are long; the first line, the cause and the way out
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"runtime.compile: torch.compile failed ({type(exc).__name__}: {first}); it needs a C++ compiler "
                          "(apt-get install g++); or set runtime.compile: false") from exc
    log.info("runtime.compile: the torch step compiled in %.1f s", time.perf_counter() - t0)
    return policy


class CudaGraphPolicy:
    """``runtime.cuda_graph``: the torch step replayed as one captured CUDA graph, a
    :class:`vit_policy.model.policy.Policy`.

    At batch 1 a GPU step is bound by kernel launches and Python, not arithmetic (``benchmarks/gpu.py``, vit_small
    on an H200: 6-13 ms eager, 2.8-3.6 ms replayed, the same actions). Each call copies the observation into
    static device buffers and replays the forward, the action decoding and the OOD monitor's features. One
    observation a call at the encoder's size (what the runner gives); anything else runs the eager policy.
    ``dtype`` (bf16) runs the captured step under autocast (the benchmark's rows).
    """

    training = False
    language = None

    def __init__(self, policy: VisuomotorPolicy, dtype: torch.dtype | None = None) -> None:
        if policy.device.type != "cuda":
            raise ConfigError(f"runtime.cuda_graph: true replays the step on a CUDA device, but the policy is on {policy.device}: "
                              "set device: cuda (a machine with an NVIDIA GPU), or runtime.cuda_graph: false")
        if policy.language is not None:
            raise ConfigError("runtime.cuda_graph: a language-conditioned policy encodes its instruction on the host each step; "
                              "set runtime.cuda_graph: false")
        self.policy = policy.eval()
        self.cfg, self.spec, self.ood, self.image_size = policy.cfg, policy.spec, policy.ood, policy.image_size
        example = self._inputs(policy.observation_batch([example_observation(self.cfg.cameras, self.image_size, self.cfg.pose.history)]))
        self._host = {k: v.pin_memory() for k, v in example.items()}
        self._static = {k: v.to(policy.device) for k, v in example.items()}
        self._batch: Batch = {k: v for k, v in self._static.items() if not k.startswith("image/")}
        self._batch["images"] = {c: self._static[f"image/{c}"] for c in self.cfg.cameras}
        self._autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else contextlib.nullcontext
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # outside the capture: cuBLAS handles, the image constants, lazy allocations
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            with capture(policy) if self.ood is not None else contextlib.nullcontext() as cap:
                self._actions = self._forward()
            self._features = cap.features() if cap is not None else None

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The tensors of a batch that the step reads, flat: what each call copies into the graph's buffers."""
        out = {k: batch[k] for k in ("position", "quaternion", "gripper", "history") if k in batch}
        return out | {f"image/{c}": batch["images"][c] for c in self.cfg.cameras}

    def _forward(self) -> torch.Tensor:
        b = self._batch
        with self._autocast():
            out = self.policy.forward(b)["action"]
        return self.policy.decode_actions_t(out.float(), b["position"], b["quaternion"])

    def eval(self) -> "CudaGraphPolicy":
        return self

    def __repr__(self) -> str:
        return f"CudaGraphPolicy({self.cfg.encoder.name}, {self.policy.device})"

    def predict(self, obs: Observation | list[Observation] | Batch, return_attention: bool = False) -> ActionChunk | list[ActionChunk]:
        """One observation -> ActionChunk (replayed); a list, a batch, attention or another frame size -> the eager policy."""
        if not isinstance(obs, Observation) or return_attention or any(
                np.shape(obs.images.get(c))[:2] != self.image_size for c in self.cfg.cameras):
            return self.policy.predict(obs, return_attention)
        batch = self.policy.observation_batch([obs])  # validates, as the eager step does
        for key, src in self._inputs(batch).items():
            self._host[key].copy_(src)
            self._static[key].copy_(self._host[key], non_blocking=True)
        self._graph.replay()
        actions = self._actions.cpu().double().numpy()  # waits for the replay
        ood = None
        if self._features is not None:  # captured when the policy has a monitor
            ood = [{c: float(v[0]) for c, v in self.ood.score(self._features).items()}]  # type: ignore[union-attr]
        return chunks_from_actions(actions, batch["position"].numpy(), batch["quaternion"].numpy(), batch["stamp_ns"],
                                   self.cfg.control_dt_ns, ood=ood)[0]


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def onnx_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: str | Path, **kwargs: Any) -> Path:
    """torch.onnx.export with the legacy TorchScript exporter (timm's ViTs trace cleanly, no onnxscript needed), with
    nn.MultiheadAttention's fused fast path off: open_clip's blocks take it in eval and it has no ONNX form."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():  # the tracer warns about the input checks it bakes in; exports are verified
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return Path(path)


def export_onnx(policy: VisuomotorPolicy, path: str | Path, example: Batch) -> Path:
    """Trace the step with a dynamic batch."""
    feeds = step_feeds(policy.cfg, example)
    names = input_names(policy.cfg)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    outputs = output_names(policy.cfg)
    return onnx_export(PolicyStep(policy), args, path, input_names=names, output_names=outputs,
                       dynamic_axes={n: {0: "batch"} for n in names + outputs})


def quantize_encoder(src: Path, dst: Path, cfg: PolicyConfig) -> Path:
    """Dynamic int8 quantisation of the image encoder's MatMul / Gemm nodes (onnxruntime.quantization).

    Only the backbone: it holds nearly all of the step's FLOPs, while the fusion transformer and the
    head are small and decide the action directly (on a random-weight tiny policy, quantising every node
    measured 3.2 mm / 12.6 deg off torch, the backbone alone 0.13 mm / 0.61 deg).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    scopes = tuple(f"/{k}/" for k in (["shared"] if cfg.encoder.shared else cfg.cameras))  # the encoders' module names
    nodes = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
             if n.op_type in ("MatMul", "Gemm") and n.name.startswith(scopes) and "/pool/" not in n.name]
    logging.disable(logging.WARNING)  # the quantiser logs whole tensor protos for the integer inputs it leaves alone
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    finally:
        logging.disable(logging.NOTSET)
    return dst


def compare(reference: np.ndarray, actions: np.ndarray) -> dict[str, float]:
    """Decoded actions against a reference, both (B, K, 10): worst translation (mm), rotation (deg) and gripper differences."""
    from scipy.spatial.transform import Rotation

    mm = np.linalg.norm(actions[..., :3] - reference[..., :3], axis=-1) * 1e3
    qa = Rotation.from_rotvec(rot6d_to_rotvec(actions[..., 3:9]).reshape(-1, 3)).as_quat()
    qb = Rotation.from_rotvec(rot6d_to_rotvec(reference[..., 3:9]).reshape(-1, 3)).as_quat()
    deg = geodesic_deg(qa, qb)
    return {"translation_mm_max": float(mm.max()), "translation_mm_mean": float(mm.mean()),
            "rotation_deg_max": float(deg.max()), "rotation_deg_mean": float(deg.mean()),
            "gripper_max": float(np.abs(actions[..., 9] - reference[..., 9]).max())}


def held_out_frames(checkpoint: str | Path, bags: list[str | Path], data_config: str | Path | None, image_size: tuple[int, int],
                    chunk_size: int, frames: int) -> list[tuple[Any, np.ndarray]]:
    """Up to ``frames`` frames spread evenly over the bags' synchronised frames (the replay's extraction), as
    (episode, index) groups; the topics come from ``data_config`` or the checkpoint's metadata, as for replay."""
    from vit_policy.data.bags import extract_episodes
    from vit_policy.data.inspect import check_bags
    from vit_policy.replay import load_replay_config

    if not bags:
        raise ConfigError("--bags: give at least one held-out rosbag2 recording to check the export on")
    data = load_replay_config(data_config, [checkpoint]).data
    check_bags(bags, data)
    episodes = [ep for bag in bags for ep in extract_episodes(bag, data, chunk_size, image_size)]
    pairs = [(e, i) for e, ep in enumerate(episodes) for i in range(len(ep.stamps_ns))]
    pick = [pairs[j] for j in np.unique(np.linspace(0, len(pairs) - 1, min(frames, len(pairs))).round().astype(int))]
    groups: dict[int, list[int]] = {}
    for e, i in pick:
        groups.setdefault(e, []).append(i)
    return [(episodes[e], np.array(idx)) for e, idx in groups.items()]


def export_policy(checkpoint: str | Path, out: str | Path | None, bags: list[str | Path], int8: bool = False,
                  data_config: str | Path | None = None, frames: int = 64) -> dict[str, Any]:
    """``vit-policy export``: write policy.onnx (and policy.int8.onnx) with config.yaml and the statistics, checked on held-out frames.

    fp32 must match torch within 1e-4 in normalised units (else the export is wrong: an error). int8
    (dynamic quantisation of the weights, onnxruntime.quantization) must stay within 1 mm and 0.5 deg
    of torch's decoded actions on every checked frame and step; otherwise the int8 file is not written
    and the error gives the figures. The figures go to export.json.
    """
    from vit_policy.replay import episode_batch

    src = Path(checkpoint)
    dst = Path(out) if out is not None else src
    policy = load_checkpoint(src)
    PolicyStep(policy)  # refuses what cannot be exported, before the bags are read
    groups = held_out_frames(src, bags, data_config, policy.image_size, policy.cfg.chunk_size, frames)
    dst.mkdir(parents=True, exist_ok=True)
    if dst.resolve() != src.resolve():  # config and statistics beside the graph: the directory is a deployable checkpoint
        for name in (CONFIG_FILE, STATS_FILE, METADATA_FILE, OOD_FILE):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
    batches = [episode_batch(policy, ep, idx) for ep, idx in groups]
    export_onnx(policy, dst / ONNX_FILE, batches[0])
    outs, ref_features = [], []
    with torch.inference_mode():
        for b in batches:
            with capture(policy) as cap:
                outs.append(policy.forward(b)["action"])
            ref_features.append(cap.features())
        ref_norm = np.concatenate([o.numpy() for o in outs])
        ref = np.concatenate([policy.decode_actions(o, b) for o, b in zip(outs, batches)])

    def check(onnx_file: str) -> tuple[np.ndarray, np.ndarray, float | None]:
        """Normalised and decoded actions on the checked frames, and the largest OOD score difference to torch (None: no monitor)."""
        runner = OnnxPolicy(dst, onnx_file, ["CPUExecutionProvider"])
        outs = [runner.run(b) for b in batches]
        ood = None
        if runner.ood is not None:
            ood = max(float(np.abs(runner.ood.score(o[3])[c] - runner.ood.score(f)[c]).max())
                      for o, f in zip(outs, ref_features) for c in policy.cfg.cameras)
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), ood

    norm, actions, ood_diff = check(ONNX_FILE)
    report: dict[str, Any] = {"checkpoint": str(src), "bags": [str(b) for b in bags], "frames": int(len(ref)),
                              "inputs": input_names(policy.cfg), "opset": OPSET,
                              "fp32": {"file": ONNX_FILE, "normalized_abs_max": float(np.abs(norm - ref_norm).max()), **compare(ref, actions)}}
    if ood_diff is not None:
        report["fp32"]["ood_score_abs_max"] = ood_diff
    if report["fp32"]["normalized_abs_max"] > FP32_TOLERANCE:
        raise RuntimeError(f"the exported graph differs from torch by {report['fp32']['normalized_abs_max']:.2e} in normalised units "
                           f"(tolerance {FP32_TOLERANCE:g}) on {len(ref)} frames: an export bug, please report it with {src}")
    if int8:
        quantize_encoder(dst / ONNX_FILE, dst / ONNX_INT8_FILE, policy.cfg)
        _, actions8, ood_diff8 = check(ONNX_INT8_FILE)
        report["int8"] = {"file": ONNX_INT8_FILE, "method": "dynamic: the image encoder's matrix products (weights int8, "
                          "activations quantised per call); fusion and head fp32", **compare(ref, actions8)}
        if ood_diff8 is not None:
            report["int8"]["ood_score_abs_max"] = ood_diff8
        q = report["int8"]
        if q["translation_mm_max"] > INT8_TOLERANCE_MM or q["rotation_deg_max"] > INT8_TOLERANCE_DEG:
            (dst / ONNX_INT8_FILE).unlink()
            (dst / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
            raise ConfigError(f"--int8: the int8 graph is {q['translation_mm_max']:.2f} mm / {q['rotation_deg_max']:.2f} deg from torch "
                              f"on {len(ref)} frames of {[str(b) for b in bags]} (tolerance {INT8_TOLERANCE_MM:g} mm / "
                              f"{INT8_TOLERANCE_DEG:g} deg), so it was not written; deploy {dst / ONNX_FILE} (fp32)")
    else:  # an int8 graph of an earlier export must not stay beside this one
        (dst / ONNX_INT8_FILE).unlink(missing_ok=True)
    (dst / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The export check as a few lines for the terminal."""
    lines = [f"checked on {report['frames']} frames of {', '.join(report['bags'])}"]
    for key in ("fp32", "int8"):
        if key in report:
            r = report[key]
            extra = f", normalised {r['normalized_abs_max']:.1e}" if "normalized_abs_max" in r else ""
            extra += f", OOD score {r['ood_score_abs_max']:.1e}" if "ood_score_abs_max" in r else ""
            lines.append(f"{r['file']:<18} vs torch: max {r['translation_mm_max']:.4f} mm, {r['rotation_deg_max']:.4f} deg, "
                         f"gripper {r['gripper_max']:.1e}{extra}")
    return "\n".join(lines)
