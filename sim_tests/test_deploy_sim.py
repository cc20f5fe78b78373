"""`vit-policy sim-eval` with runtime.backend: onnxruntime: the exported graph drives the simulated Fetch through PolicyRunner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vit_policy.cli import main
from vit_policy.config import to_dict
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.model.policy import VisuomotorPolicy, identity_stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the synthetic bag writer, a test helper
from synthetic import GRIPPER_JOINTS, write_synthetic_bag  # noqa: E402


def test_sim_eval_runs_the_exported_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = PolicyConfig(cameras=["overhead"], encoder=EncoderConfig(name="test_vit", img_size=32, token_mode="pooled"),
                       d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, chunk_size=4, control_dt=0.04)
    policy = VisuomotorPolicy.from_config(cfg)
    policy.set_stats(identity_stats(cfg))
    data = DataConfig(cameras={"overhead": "/camera/overhead/image_raw"}, gripper=GripperConfig(joints=list(GRIPPER_JOINTS)),
                      control_rate_hz=25.0)
    ckpt = policy.save_pretrained(tmp_path / "ckpt", metadata={"data": to_dict(data)})
    bag = write_synthetic_bag(tmp_path / "bag", cameras=("overhead",), image_size=(32, 32), duration_s=1.0, camera_hz=25.0)
    assert main(["export", "--checkpoint", str(ckpt), "--bags", str(bag.path), "--frames", "4"]) == 0
    out = tmp_path / "eval"
    assert main(["sim-eval", "--checkpoint", str(ckpt), "--task", "FetchReach-v4", "--episodes", "1", "--gifs", "0", "--out", str(out),
                 "image_size=32", "episode_steps=6", "runtime.backend=onnxruntime"]) == 0
    (episode,) = json.loads((out / "sim_eval.json").read_text())["per_episode"]
    assert episode["statuses"].get("ok", 0) >= 3 and episode["non_finite_commands"] == 0  # commands came from the graph
