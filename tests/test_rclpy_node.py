"""The rclpy backend on a real ROS 2 install (Humble / Jazzy). Skipped where rclpy is not importable.

rclpy is on neither PyPI nor Debian, so these tests cannot run on the development machines; the same
node logic is covered end to end over CycloneDDS in tests/test_dds_node.py. Run them after
``source /opt/ros/<distro>/setup.bash`` with the package's pip dependencies installed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="rclpy is not installed (it ships with a ROS 2 distribution, not pip); source /opt/ros/<distro>/setup.bash to run"
)

import torch  # noqa: E402

from vit_policy import messages as M  # noqa: E402
from vit_policy.config import EncoderConfig, PolicyConfig  # noqa: E402
from vit_policy.geometry import NormStats  # noqa: E402
from vit_policy.model.policy import VisuomotorPolicy, identity_stats  # noqa: E402


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="pooled"),
                       d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=8)
    policy = VisuomotorPolicy.from_config(cfg)
    policy.set_stats({k: NormStats(*(np.array(a) for a in (s.mean, s.std, s.min, s.max))) for k, s in identity_stats(cfg).items()})
    return policy.save_pretrained(tmp_path / "ckpt")


@pytest.fixture
def ros_context():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def spin_until(executor, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
        if cond():
            return True
    return False


@pytest.mark.slow
def test_lifecycle_node_parameters_services_and_commands(checkpoint: Path, ros_context):
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_srvs.srv import SetBool

    from ros_nodes.transport.rclpy_backend import PolicyLifecycleNode, RclpyFactory

    node = PolicyLifecycleNode("policy_node", parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("runtime.control_rate_hz", value=10.0)])
    node.trigger_configure()
    assert node.policy_node is not None
    desc = node.describe_parameter("safety.max_linear_speed")
    assert desc.read_only and "m/s" in desc.description
    node.trigger_activate()

    f = RclpyFactory()
    peer = Node("peer")
    twists: list[np.ndarray] = []
    peer.create_subscription(f("geometry_msgs/msg/TwistStamped"), "/cmd/twist",
                             lambda m: twists.append(np.array([m.twist.linear.x, m.twist.linear.y, m.twist.linear.z])), 10)
    pub_img = peer.create_publisher(f("sensor_msgs/msg/Image"), "/camera/front/image_raw", 10)
    pub_pose = peer.create_publisher(f("geometry_msgs/msg/PoseStamped"), "/ee_pose", 10)
    client = peer.create_client(SetBool, "/policy_node/enable")
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    executor.add_node(peer)
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)

    def stream() -> None:
        now = node.get_clock().now().nanoseconds
        pub_img.publish(M.rgb_to_image(f, rgb, now, "camera", "bgr8"))
        pub_pose.publish(M.make_pose_stamped(f, now, "base_link", [0.4, 0, 0.3], [1.0, 0, 0, 0]))

    timer = peer.create_timer(0.05, stream)
    assert spin_until(executor, lambda: len(twists) >= 5, 20)
    assert all(np.all(t == 0) for t in twists)  # disabled by default: stop only
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(SetBool.Request(data=True))
    assert spin_until(executor, future.done, 10) and future.result().success
    n = len(twists)
    assert spin_until(executor, lambda: any(np.any(t != 0) for t in twists[n:]), 20)
    assert all(np.all(np.isfinite(t)) for t in twists)
    timer.cancel()
    node.trigger_deactivate()
    executor.shutdown()
