"""ONNX export and the inference backends (vit_policy/deploy.py) on real bags, real graphs and real sessions.

A tiny random-init policy (timm ``test_vit`` at 32 px) with statistics computed on a synthetic rosbag2
recording is exported with ``vit-policy export``; the same replay then runs on every backend
(torch | onnxruntime), and the node runs the exported graph.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_policy.cli import main
from vit_policy.config import ConfigError, to_dict
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.runtime import RuntimeConfig
from vit_policy.data.bags import extract_episodes
from vit_policy.data.dataset import episode_history
from synthetic import GRIPPER_JOINTS, SyntheticBag, write_synthetic_bag
from vit_policy.geometry import NormStats
from vit_policy.deploy import ONNX_FILE, ONNX_INT8_FILE, OnnxPolicy, load_policy
from vit_policy.model.policy import VisuomotorPolicy, compute_norm_stats
from vit_policy.observation import Observation

IMG, K, DT = 32, 6, 0.1
BACKENDS = ["torch", "onnxruntime"]  # both installed by the project (the deploy extra)


def tiny_config(history: int = 0, encoder: EncoderConfig | None = None) -> PolicyConfig:
    encoder = encoder or EncoderConfig(name="test_vit", img_size=IMG, token_mode="pooled")
    cfg = PolicyConfig(cameras=["front"], encoder=encoder,
                       d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, chunk_size=K, control_dt=DT)
    cfg.pose.history = history
    return cfg


def data_config() -> DataConfig:
    return DataConfig(cameras={"front": "/camera/front/image_raw"}, gripper=GripperConfig(joints=list(GRIPPER_JOINTS)), control_rate_hz=1 / DT)


def save_checkpoint(path: Path, bag: SyntheticBag, history: int = 0, action_spread: float = 1.0,
                    encoder: EncoderConfig | None = None) -> Path:
    """A random-init policy with the statistics of the bag's labels (a trained checkpoint's scale), data config in its
    metadata; ``action_spread`` widens the action statistics (actions that many times larger)."""
    torch.manual_seed(0)
    cfg = tiny_config(history, encoder)
    policy = VisuomotorPolicy.from_config(cfg)
    ep = extract_episodes(bag.path, data_config(), K, (IMG, IMG))[0]
    hist = np.stack([episode_history(ep, t, history) for t in range(len(ep))]) if history else None
    stats = compute_norm_stats(cfg, ep.position, ep.quaternion, ep.gripper, ep.action[..., :9], ep.action_mask, hist)
    a = stats["action"]
    stats["action"] = NormStats(a.mean.copy(), a.std * action_spread, a.min.copy(), a.max.copy())
    policy.set_stats(stats)
    return policy.save_pretrained(path, metadata={"data": to_dict(data_config())})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> SyntheticBag:
    return write_synthetic_bag(tmp_path_factory.mktemp("bag") / "demo", image_size=(IMG, IMG), duration_s=2.5, seed=3, camera_hz=10.0)


@pytest.fixture(scope="module")
def exported(bag: SyntheticBag, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`vit-policy export --int8` of the tiny policy into a directory of its own."""
    root = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(root / "ckpt", bag)
    out = root / "onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--out", str(out), "--int8"]) == 0
    return {"ckpt": ckpt, "out": out}


def test_export_writes_a_deployable_directory_checked_against_torch(exported: dict, bag: SyntheticBag) -> None:
    out = exported["out"]
    assert {ONNX_FILE, ONNX_INT8_FILE, "config.yaml", "stats.safetensors", "metadata.json", "export.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "export.json").read_text())
    assert report["frames"] >= 20 and report["inputs"] == ["image_front", "position", "quaternion", "gripper"]
    assert report["fp32"]["normalized_abs_max"] <= 1e-4
    assert report["int8"]["translation_mm_max"] <= 1.0 and report["int8"]["rotation_deg_max"] <= 0.5
    int8 = load_policy(out, RuntimeConfig(backend="onnxruntime", onnx_file=ONNX_INT8_FILE))
    fp32 = load_policy(exported["ckpt"], RuntimeConfig(backend="torch"))
    ep = extract_episodes(bag.path, data_config(), K, (IMG, IMG))[0]
    obs = Observation(int(ep.stamps_ns[3]), {"front": ep.images["front"][3]}, ep.position[3], ep.quaternion[3], float(ep.gripper[3]))
    a, b = int8.predict(obs), fp32.predict(obs)
    assert np.linalg.norm(a.delta_position - b.delta_position, axis=-1).max() <= 1e-3  # the figure holds on a frame of its own


def test_int8_beyond_tolerance_is_refused_with_its_figures(bag: SyntheticBag, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", bag, action_spread=1000.0)  # actions of metres: int8's error grows with them
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--int8", "--frames", "8"]) == 2  # --out: the checkpoint
    err = capsys.readouterr().err
    assert "--int8: the int8 graph is" in err and "tolerance 1 mm / 0.5 deg" in err and "policy.onnx (fp32)" in err
    report = json.loads((ckpt / "export.json").read_text())
    assert report["int8"]["translation_mm_max"] > 1.0 and report["fp32"]["normalized_abs_max"] <= 1e-4
    assert (ckpt / ONNX_FILE).is_file() and not (ckpt / ONNX_INT8_FILE).exists()


def test_onnxruntime_predict_matches_torch_for_any_batch_and_every_input(exported: dict, bag: SyntheticBag) -> None:
    """Observations in a batch of 3 (the graph was traced with another size); each input changes the output as in torch."""
    ort_policy = OnnxPolicy(exported["out"])
    torch_policy = VisuomotorPolicy.from_pretrained(exported["ckpt"])
    assert ort_policy.image_size == torch_policy.image_size == (IMG, IMG)
    assert ort_policy.spec == torch_policy.spec and torch_policy.spec.cameras == ("front",)  # from the exported metadata.json
    for policy in (ort_policy, torch_policy):  # both are a vit_policy.model.policy.Policy
        assert policy.cfg.cameras == ["front"] and policy.ood is None and callable(policy.eval) and callable(policy.predict)
    ep = extract_episodes(bag.path, data_config(), K, (IMG, IMG))[0]
    obs = [Observation(int(ep.stamps_ns[i]), {"front": ep.images["front"][i]}, ep.position[i], ep.quaternion[i], float(ep.gripper[i]))
           for i in (0, 5, 10)]
    obs.append(Observation(obs[0].stamp_ns, obs[0].images, obs[0].position, obs[0].quaternion, 0.0))  # only the gripper differs
    obs.append(Observation(obs[0].stamp_ns, {"front": 255 - obs[0].images["front"]}, obs[0].position, obs[0].quaternion, obs[0].gripper))
    a, b = ort_policy.predict(obs), torch_policy.predict(obs)
    for x, y in zip(a, b):
        assert x.stamp_ns == y.stamp_ns
        np.testing.assert_allclose(x.delta_position, y.delta_position, atol=1e-5)
        np.testing.assert_allclose(x.delta_rotation, y.delta_rotation, atol=1e-4)
        np.testing.assert_allclose(x.gripper, y.gripper, atol=1e-5)
    for changed in (a[3], a[4]):  # the gripper and the image are live inputs of the graph, not constants of the trace
        assert np.abs(changed.delta_position - a[0].delta_position).max() > 1e-6
    frame = np.ascontiguousarray(np.repeat(np.repeat(ep.images["front"][0], 2, 0), 2, 1))  # 64 px: resized like the runner
    single = ort_policy.predict(Observation(1, {"front": frame}, ep.position[0], ep.quaternion[0], 1.0))
    assert single.delta_position.shape == (K, 3) and single.is_finite()


@pytest.fixture(scope="module")
def replays(exported: dict, bag: SyntheticBag, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("replay")
    out: dict[str, dict] = {}
    for backend in BACKENDS:
        rc = main(["replay", "--checkpoint", str(exported["out"] if backend == "onnxruntime" else exported["ckpt"]),
                   "--bags", str(bag.path), "--out", str(root / backend), "--latency-ms", "0", "--set", f"runtime.backend={backend}"])
        assert rc == 0
        out[backend] = json.loads((root / backend / "metrics.json").read_text())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_runs_on_each_backend(replays: dict[str, dict], backend: str) -> None:
    doc = replays[backend]
    assert doc["settings"]["backend"] == backend
    (ckpt,) = doc["checkpoints"].values()
    for mode in ("faithful", "batch"):
        m = ckpt["metrics"][mode]
        assert m["frames"] >= 20
        ref = next(iter(replays["torch"]["checkpoints"].values()))["metrics"][mode]
        assert m["translation_mae_mm"] == pytest.approx(ref["translation_mae_mm"], abs=1e-3)  # the same actions
        assert m["rotation_error_deg"]["mean"] == pytest.approx(ref["rotation_error_deg"]["mean"], abs=1e-3)


def test_backend_errors_name_the_setting_and_the_fix(exported: dict, bag: SyntheticBag, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="runtime.backend: 'tensorflow' is not one of"):
        main(["replay", "--checkpoint", str(exported["ckpt"]), "--bags", str(bag.path), "--out", str(tmp_path / "r"),
              "--set", "runtime.backend=tensorflow", "--debug"])
    rc = main(["replay", "--checkpoint", str(exported["ckpt"]), "--bags", str(bag.path), "--out", str(tmp_path / "r"),
               "--set", "runtime.backend=onnxruntime"])  # a torch checkpoint that was never exported
    assert rc == 2 and "policy.onnx is missing" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="vit-policy export --checkpoint"):
        load_policy(exported["ckpt"], RuntimeConfig(backend="onnxruntime"))
    with pytest.raises(ConfigError, match=r"runtime.providers: \['CUDAExecutionProvider'\] not available.*onnxruntime-gpu"):
        load_policy(exported["out"], RuntimeConfig(backend="onnxruntime", providers=["CUDAExecutionProvider"]))
    with pytest.raises(ConfigError, match="runtime.onnx_file"):
        RuntimeConfig(onnx_file="../policy.pt")
    cut = tmp_path / "cut"  # a copy cut short: the graph is named with the cause and the fix
    cut.mkdir()
    (cut / "config.yaml").write_bytes((exported["out"] / "config.yaml").read_bytes())
    (cut / ONNX_FILE).write_bytes((exported["out"] / ONNX_FILE).read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"cannot load ONNX graph .*policy.onnx.*vit-policy export"):
        OnnxPolicy(cut)
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--bags", str(bag.path)]) == 2


def test_an_export_never_outlives_the_weights_it_was_made_from(bag: SyntheticBag, tmp_path: Path) -> None:
    """Retraining into a checkpoint that was exported in place (train's best/, resume=auto) removes the old graphs:
    onnxruntime then refuses with the fix instead of running the previous weights. An fp32-only re-export removes an
    earlier int8 graph, so runtime.onnx_file: policy.int8.onnx cannot load it either."""
    ckpt = save_checkpoint(tmp_path / "ckpt", bag)
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--int8", "--frames", "4"]) == 0
    assert {ONNX_FILE, ONNX_INT8_FILE, "export.json"} <= {p.name for p in ckpt.iterdir()}
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--frames", "4"]) == 0
    assert (ckpt / ONNX_FILE).is_file() and not (ckpt / ONNX_INT8_FILE).exists()
    with pytest.raises(FileNotFoundError, match="policy.int8.onnx.*vit-policy export"):
        load_policy(ckpt, RuntimeConfig(backend="onnxruntime", onnx_file=ONNX_INT8_FILE))
    policy = load_policy(ckpt, RuntimeConfig(backend="torch"))
    with torch.no_grad():
        next(policy.parameters()).add_(0.1)  # a training step's worth of new weights
    policy.save_pretrained(ckpt)
    assert not {ONNX_FILE, ONNX_INT8_FILE, "export.json"} & {p.name for p in ckpt.iterdir()}
    with pytest.raises(FileNotFoundError, match="policy.onnx.*vit-policy export"):
        load_policy(ckpt, RuntimeConfig(backend="onnxruntime"))


def test_history_policy_exports_its_history_input(bag: SyntheticBag, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", bag, history=2)
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--frames", "6"]) == 0
    report = json.loads((ckpt / "export.json").read_text())
    assert report["inputs"][-1] == "history" and report["fp32"]["normalized_abs_max"] <= 1e-4


def test_open_clip_policy_exports(bag: SyntheticBag, tmp_path: Path) -> None:
    """open_clip's blocks are nn.MultiheadAttention, whose fused eval fast path (taken by frozen blocks) has no ONNX form."""
    enc = EncoderConfig(family="open_clip", name="ViT-S-32", img_size=IMG, token_mode="pooled", freeze="last_n", trainable_blocks=1)
    ckpt = save_checkpoint(tmp_path / "ckpt", bag, encoder=enc)
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--frames", "4"]) == 0
    assert json.loads((ckpt / "export.json").read_text())["fp32"]["normalized_abs_max"] <= 1e-4
    assert torch.backends.mha.get_fastpath_enabled()  # the export turned it off for itself only


def test_node_runs_the_exported_graph(exported: dict, dds_domain) -> None:
    """The ROS node (CycloneDDS transport) with runtime.backend: onnxruntime commands the arm from the graph.

    The inputs are handed to the node's subscription callback rather than written by a second participant in
    this process: in-process DDS writes beside onnxruntime segfaulted once in cyclonedds' write (a clean-clone
    make test); DDS traffic between processes is covered by test_dds_node / test_live_timing."""
    pytest.importorskip("cyclonedds", reason="the DDS transport needs the 'dds' extra (installed by make test)")
    from ros_nodes.policy_node import PolicyNode, config_from_parameters, parameter_defaults
    from ros_nodes.transport.dds_backend import DDSTransport
    from vit_policy import messages as M

    cfg = config_from_parameters({**parameter_defaults(), "checkpoint": str(exported["out"]), "threads": 1,
                                  "runtime.backend": "onnxruntime", "runtime.synchronous": True, "runtime.max_age_s": 5.0,
                                  "runtime.sync_tolerance_s": 1.0})
    domain = dds_domain(231, 232)
    node_t = DDSTransport("policy_node", domain_id=domain)
    node = PolicyNode(node_t, cfg)
    try:
        assert isinstance(node.policy, OnnxPolicy)
        f = node_t.factory
        rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for _ in range(3):
            now = time.time_ns()
            node._on_message("/camera/front/image_raw", M.rgb_to_image(f, rgb, now, "camera_front", "rgb8"))
            node._on_message("/ee_pose", M.make_pose_stamped(f, now, "base_link", [0.4, 0.0, 0.3], [1.0, 0, 0, 0]))
            time.sleep(0.05)
        assert node.runner.received["pose"] and node.runner.received["camera/front"]
        assert node.handle_enable(True)[0]
        cmd = node.control_step()
        assert cmd.status == "ok", cmd.reason
        assert node.runner.inferences == 1 and cmd.is_finite()
    finally:
        node.shutdown()
        node_t.close()


@pytest.mark.slow  # a real inductor build: about 40 s on one core with an empty compile cache
def test_runtime_compile_runs_the_same_step_compiled_from_the_node_parameters(exported: dict, bag: SyntheticBag,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """runtime.compile: the node's loader compiles the torch step at load (inductor, a real C++ build) and the compiled
    step gives the eager step's actions, also from another thread (the runner's inference thread); without a C++
    compiler loading fails naming the setting and the fix."""
    import logging
    import threading

    from torch._dynamo.utils import counters

    from ros_nodes.policy_node import config_from_parameters, load_policy as node_load_policy, parameter_defaults

    with pytest.raises(ConfigError, match="runtime.compile: true compiles the torch backend"):
        RuntimeConfig(backend="onnxruntime", compile=True)
    cfg = config_from_parameters({**parameter_defaults(), "checkpoint": str(exported["ckpt"]), "threads": 1, "runtime.compile": True})
    graphs = counters["stats"]["unique_graphs"]
    policy, untrained = node_load_policy(cfg, logging.getLogger("test"))
    assert not untrained and counters["stats"]["unique_graphs"] > graphs  # compiled at load, not on the first tick
    eager = load_policy(exported["ckpt"], RuntimeConfig())
    ep = extract_episodes(bag.path, data_config(), K, (IMG, IMG))[0]
    obs = Observation(int(ep.stamps_ns[4]), {"front": ep.images["front"][4]}, ep.position[4], ep.quaternion[4], float(ep.gripper[4]))
    out: list = []
    worker = threading.Thread(target=lambda: out.append(policy.predict(obs)))
    worker.start()
    worker.join(timeout=300)
    ref = eager.predict(obs)
    for got in (policy.predict(obs), out[0]):
        np.testing.assert_allclose(got.delta_position, ref.delta_position, atol=1e-5)
        np.testing.assert_allclose(got.delta_rotation, ref.delta_rotation, atol=1e-4)
        np.testing.assert_allclose(got.gripper, ref.gripper, atol=1e-5)
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor, "force_disable_caches", True)  # else the cached build of the same graph is reused ...
    torch._dynamo.reset()  # ... or the graphs dynamo already holds for these modules' code
    with pytest.raises(ConfigError, match=r"runtime.compile: torch.compile failed .*C\+\+ compiler.*set runtime.compile: false"):
        load_policy(exported["ckpt"], RuntimeConfig(compile=True))


def test_runtime_cuda_graph_is_refused_at_load_without_a_cuda_device(exported: dict) -> None:
    """runtime.cuda_graph replays the torch step on a GPU: on a CPU, or with another backend or compile, loading fails
    naming the setting and the fix (the replayed step itself is checked on a GPU by benchmarks/gpu.py --check: no
    CUDA device here or in CI)."""
    import logging

    from ros_nodes.policy_node import config_from_parameters, load_policy as node_load_policy, parameter_defaults

    with pytest.raises(ConfigError, match="runtime.cuda_graph: true replays the torch backend's eager step; runtime.backend is onnxruntime"):
        RuntimeConfig(backend="onnxruntime", cuda_graph=True)
    with pytest.raises(ConfigError, match="runtime.compile is true: set backend: torch and compile: false"):
        RuntimeConfig(compile=True, cuda_graph=True)
    cfg = config_from_parameters({**parameter_defaults(), "checkpoint": str(exported["ckpt"]), "runtime.cuda_graph": True})
    assert cfg.runtime.cuda_graph and cfg.device == "cpu"
    with pytest.raises(ConfigError, match=r"runtime.cuda_graph: true replays the step on a CUDA device, but the policy is on cpu: set device: cuda"):
        node_load_policy(cfg, logging.getLogger("test"))
