"""The ROS input path: image conversion, jpeg decode, DDS transport overhead and a soak of the real node.

    .venv/bin/python benchmarks/ros_path.py                 # everything, 60 s soak
    .venv/bin/python benchmarks/ros_path.py --soak 20 --skip-transport
    .venv/bin/python benchmarks/ros_path.py --resolutions            # the node at 640x480 .. 1920x1080, 1 and 2 cameras
    .venv/bin/python benchmarks/ros_path.py --backends --seconds 10  # DDS and rclpy nodes side by side at 10, 30, 100 Hz

Prints one table. Targets (issue 3): conversion <= 2 ms, transport overhead p99 <= 5 ms, no growth
of resident memory or latency over the soak.

* conversion: a 640x480 sensor_msgs/Image (rgb8 / bgr8, as received over DDS) -> RGB array ->
  uint8 resize to 224 (``resize_uint8``, as the training cache and PolicyRunner) -> the normalised
  (1, 3, 224, 224) model input tensor (``to_model_input``), on one thread.
* transport: a second process runs the node's input path (DDS reader, ``image_to_rgb``) and answers
  each frame with a TwistStamped carrying the frame's stamp; the round trip frame published ->
  command received contains everything of the node's path except the model.
* soak: ``vit-policy serve --transport dds`` with a tiny random-init checkpoint, enabled, fed two 30 Hz
  640x480 cameras and a 100 Hz pose; resident memory, command rate and inference latency in the
  first and the last 10 s.
* backends (``--backends [dds] [rclpy] [--rates 10 30 100] [--executors events multi] [--seconds N]``):
  ``vit-policy serve --transport dds|rclpy`` (tiny random-init checkpoint, enabled, pose output) fed by
  one peer, the DDS backend (Cyclone; it matches Fast DDS, the rclpy wheels' middleware), with one
  30 Hz 640x480 bgr8 camera and a 100 Hz pose. The rclpy node runs with
  ``configs/ros/fastdds_large_buffers.xml`` (4 MiB socket buffers): with the kernel's default receive
  buffer Fast DDS loses about two thirds of the 640x480 frames sent by Cyclone (``--fastdds-profile ''``
  shows it: the "camera Hz" column is the rate the node received frames at). ``--executors`` picks the rclpy node's
  executor(s) (``VIT_POLICY_EXECUTOR``; default the node's own, ``events``).
  Hit ratio: commands received by the peer in the measured window / (control rate x window); the
  overrun share is the node's own count (``overruns`` in /diagnostics: ticks more than 1.5 periods after
  the previous one) over its ticks. Pose in -> command out: pose n carries its sequence number in
  ``position.x`` (0.3 m + n x 10 um, 1 mm/s of motion) and ``safety.max_step`` is 0.1 um, so every
  ``cmd/pose`` target is the measured pose its tick used, to 0.1 um (the clamp to ``max_step`` from the
  measured pose is the last thing a tick does, whatever the model said), which names the pose n. The
  latency is the command's arrival at the peer minus the peer's publish time of pose n (one host, one
  clock); it contains the wait for the next tick (up to one control period plus one pose period), so
  it also splits at the command's stamp (the tick's node time) into "in" (pose published -> tick) and
  "out" (tick -> command received, the node's own path to the wire).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vit_policy import messages as M  # noqa: E402


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q)) if x else float("nan")


def timeit(fn, n: int) -> list[float]:
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_conversion(rows: list[tuple[str, str, str, str]], n: int) -> None:
    """Where a frame's time goes: routing (header checks only), decoding, and resize + normalise to 224."""
    import torch

    from ros_nodes.transport.dds_backend import shared_types
    from vit_policy.images import resize_uint8, to_model_input
    from vit_policy.inputs import InputRouter, InputSpec

    torch.set_num_threads(1)
    f = shared_types()
    router = InputRouter(InputSpec({"front": "/cam"}, "/ee_pose"))
    for w, h in ((640, 480), (1280, 720), (1920, 1080)):
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        msg = f("sensor_msgs/msg/Image").deserialize(M.rgb_to_image(f, rgb, 1, "cam", "bgr8").serialize())
        t = timeit(lambda: router.route("/cam", msg, 0), n)
        rows.append((f"bgr8 {w}x{h}: route (header checks, no decode)", f"{pct(t, 50):.3f}", f"{pct(t, 99):.3f}", "every frame"))
        t = timeit(lambda: M.image_to_rgb(msg), n)
        rows.append((f"bgr8 {w}x{h}: decode -> RGB array", f"{pct(t, 50):.2f}", f"{pct(t, 99):.2f}", "inferred frames only"))
        t = timeit(lambda: to_model_input(resize_uint8(rgb, 224), 224, (0.5,) * 3, (0.5,) * 3), n)
        rows.append((f"bgr8 {w}x{h}: resize + normalise -> tensor 224", f"{pct(t, 50):.2f}", f"{pct(t, 99):.2f}", "inferred frames only"))
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    jpeg = M.rgb_to_compressed(f, rgb, 1, "cam", "jpeg")
    t = timeit(lambda: M.compressed_to_rgb(jpeg), n)
    rows.append(("jpeg 640x480 -> RGB array", f"{pct(t, 50):.2f}", f"{pct(t, 99):.2f}", "inferred frames only"))
    t = timeit(lambda: M.rgb_to_image(f, rgb, 1, "cam", "rgb8").serialize(), n)
    rows.append(("RGB -> Image CDR (640x480)", f"{pct(t, 50):.2f}", f"{pct(t, 99):.2f}", ""))


def echo(domain: int) -> None:
    """Second process of the transport benchmark: the node's input path, answering each frame at once."""
    from ros_nodes.transport.dds_backend import DDSTransport

    t = DDSTransport("echo", domain_id=domain)
    pub = t.create_publisher("geometry_msgs/msg/TwistStamped", "/bench/cmd", "reliable")

    def on_image(msg):
        rgb = M.image_to_rgb(msg)
        stamp = M.stamp_to_ns(msg.header.stamp)
        pub.publish(M.make_twist_stamped(t.factory, stamp, "base_link", [float(rgb[0, 0, 0]), 0, 0], [0, 0, 0]))

    t.create_subscription("sensor_msgs/msg/Image", "/bench/image", on_image, "sensor_data")
    t.spin()


def bench_transport(rows: list[tuple[str, str, str, str]], seconds: float) -> None:
    from ros_nodes.transport.dds_backend import DDSTransport

    domain = 150 + os.getpid() % 50
    proc = subprocess.Popen([sys.executable, __file__, "--echo", str(domain)], cwd=ROOT)
    try:
        t = DDSTransport("bench", domain_id=domain)
        lat: list[float] = []
        t.create_subscription("geometry_msgs/msg/TwistStamped", "/bench/cmd",
                              lambda m: lat.append((time.time_ns() - M.stamp_to_ns(m.header.stamp)) / 1e6), "reliable")
        pub = t.create_publisher("sensor_msgs/msg/Image", "/bench/image", "sensor_data")
        rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        end = time.monotonic() + 5.0
        while not lat and time.monotonic() < end:  # discovery
            pub.publish(M.rgb_to_image(t.factory, rgb, time.time_ns(), "cam", "bgr8"))
            time.sleep(0.05)
        lat.clear()
        sent = 0
        end = time.monotonic() + seconds
        msg = M.rgb_to_image(t.factory, rgb, 0, "cam", "bgr8")  # built once: the camera driver's cost is not ours
        while time.monotonic() < end:
            msg.header.stamp = M.ns_to_stamp(t.factory, time.time_ns())
            pub.publish(msg)
            sent += 1
            time.sleep(1 / 30)
        time.sleep(0.3)
        rows.append((f"DDS frame -> command, no model ({len(lat)}/{sent} frames)", f"{pct(lat, 50):.2f}", f"{pct(lat, 99):.2f}", "p99 <= 5 ms"))
        t.shutdown()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


POSE_X0, POSE_STEP_M = 0.3, 1e-5  # --backends: pose n is at x = 0.3 m + n * 10 um
MAX_STEP_M = 1e-7  # --backends: safety.max_step, so a commanded target is the measured pose it started from, to 0.1 um
FASTDDS_PROFILE = ROOT / "configs" / "ros" / "fastdds_large_buffers.xml"


class FedNode:
    """``vit-policy serve --transport dds|rclpy`` (tiny random-init checkpoint, enabled) fed by cameras and a pose.

    Cameras publish at ``camera_hz`` with frames stamped ``lead_s`` before publication (exposure plus
    driver latency), each message built once per camera (a driver's cost is not the node's); the pose
    publishes at ``pose_hz`` stamped at publication. The feeder is always the DDS backend. With
    ``pose_seq`` pose n is at ``x = POSE_X0 + n * POSE_STEP_M`` and ``pose_sent[n]`` is its publish time.
    ``env`` is added to the node's environment.
    """

    def __init__(self, cameras: list[str], size_wh: tuple[int, int], img_size: int, camera_hz: float = 30.0,
                 pose_hz: float = 100.0, lead_s: float = 0.0, transport: str = "dds", control_hz: float = 10.0,
                 params: dict | None = None, pose_seq: bool = False, env: dict[str, str] | None = None) -> None:
        import torch
        import yaml

        from ros_nodes.transport.dds_backend import DDSTransport
        from vit_policy.model.configuration import EncoderConfig, PolicyConfig
        from vit_policy.model.policy import VisuomotorPolicy, identity_stats

        self.tmp = tmp = Path(tempfile.mkdtemp(prefix="ros_path_"))
        torch.manual_seed(0)
        cfg = PolicyConfig(cameras=cameras, encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=img_size),
                           d_model=128, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=10,
                           control_dt=1.0 / control_hz)  # the checkpoint's chunk step is the control period
        policy = VisuomotorPolicy.from_config(cfg)
        policy.set_stats(identity_stats(cfg))
        ckpt = policy.save_pretrained(tmp / "ckpt")
        node_params: dict = {"checkpoint": str(ckpt), "threads": 1, "diagnostics_rate_hz": 2.0, "runtime": {"control_rate_hz": float(control_hz)}}
        for key, value in (params or {}).items():  # {"safety": {...}} merges into that section
            if isinstance(value, dict):
                node_params.setdefault(key, {}).update(value)
            else:
                node_params[key] = value
        (tmp / "node.yaml").write_text(yaml.safe_dump({"policy_node": {"ros__parameters": node_params}}))
        self.transport = transport
        self.domain = domain = 100 + (os.getpid() + len(cameras) * 7 + size_wh[0] + int(control_hz) + len(transport)) % 100
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "vit_policy.cli", "serve", "--transport", transport, "--config",
                                      str(tmp / "node.yaml")], env=self.env, cwd=ROOT)
        self.t = DDSTransport("feeder", domain_id=domain)
        f = self.t.factory
        self.diags: list[tuple[float, dict[str, str]]] = []
        self.cmds: list[float] = []  # arrival (monotonic) of each command
        self.poses_out: list[tuple[int, int, float]] = []  # cmd/pose: (arrival time_ns, stamp ns, position.x)
        self.t.create_subscription("diagnostic_msgs/msg/DiagnosticArray", "/diagnostics",
                                   lambda m: self.diags.append((time.monotonic(), M.diagnostic_values(m))))
        if node_params.get("output_mode") == "pose":
            def on_pose_cmd(m) -> None:
                self.poses_out.append((time.time_ns(), M.stamp_to_ns(m.header.stamp), m.pose.position.x))
                self.cmds.append(time.monotonic())

            self.t.create_subscription("geometry_msgs/msg/PoseStamped", "/cmd/pose", on_pose_cmd)
        else:
            self.t.create_subscription("trajectory_msgs/msg/MultiDOFJointTrajectory", "/policy/chunk", lambda m: self.cmds.append(time.monotonic()))
        pubs = {c: self.t.create_publisher("sensor_msgs/msg/Image", f"/camera/{c}/image_raw", "sensor_data") for c in cameras}
        pose = self.t.create_publisher("geometry_msgs/msg/PoseStamped", "/ee_pose")
        self.enable = self.t.create_publisher("std_msgs/msg/Bool", "/policy/enable")
        self.stop = threading.Event()
        rgb = np.random.default_rng(0).integers(0, 256, (size_wh[1], size_wh[0], 3), dtype=np.uint8)
        msgs = {c: M.rgb_to_image(f, rgb, 0, c, "bgr8") for c in cameras}
        lead = int(lead_s * 1e9)
        self.pose_sent: list[int] = []  # publish time_ns of pose n

        def frame(c: str) -> None:
            msgs[c].header.stamp = M.ns_to_stamp(f, time.time_ns() - lead)
            pubs[c].publish(msgs[c])

        def pose_once() -> None:
            x = POSE_X0 + len(self.pose_sent) * POSE_STEP_M if pose_seq else 0.4
            msg = M.make_pose_stamped(f, time.time_ns(), "base_link", [x, 0, 0.3], [1.0, 0, 0, 0])
            self.pose_sent.append(time.time_ns())  # just before the publish call
            pose.publish(msg)

        def loop(period: float, fn) -> None:
            nxt = time.monotonic()
            while not self.stop.is_set():
                fn()
                nxt += period
                self.stop.wait(max(0.0, nxt - time.monotonic()))

        self.threads = [threading.Thread(target=loop, args=(1 / camera_hz, lambda c=c: frame(c)), daemon=True) for c in cameras]
        self.threads.append(threading.Thread(target=loop, args=(1 / pose_hz, pose_once), daemon=True))
        for th in self.threads:
            th.start()

    def start(self, warmup_s: float = 3.0) -> None:
        """Wait for the node, enable it, wait for its first command and a warm-up."""
        end = time.monotonic() + 120
        while not self.diags and time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.transport} node exited with {self.proc.returncode} before its first diagnostics")
            time.sleep(0.2)
        if self.transport == "rclpy":  # ~/enable is a service there: a one-shot rclpy client process
            subprocess.run([sys.executable, __file__, "--enable-rclpy", "/policy_node/enable"], env=self.env, cwd=ROOT, timeout=90, check=True)
        else:
            for _ in range(3):
                self.enable.publish(self.t.factory("std_msgs/msg/Bool")(data=True))
                time.sleep(0.2)
        while not (self.cmds and self.latest().get("enabled") == "True") and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(warmup_s)

    def latest(self) -> dict[str, str]:
        return self.diags[-1][1] if self.diags else {}

    def close(self) -> None:
        self.stop.set()
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.t.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


def bench_soak(rows: list[tuple[str, str, str, str]], seconds: float, img_size: int) -> None:
    node = FedNode(["left", "right"], (640, 480), img_size)
    try:
        node.start()
        t0 = time.monotonic()
        rss = [(0.0, rss_mb(node.proc.pid))]
        while time.monotonic() < t0 + seconds:
            time.sleep(1.0)
            rss.append((time.monotonic() - t0, rss_mb(node.proc.pid)))
        t1 = time.monotonic()
    finally:
        node.close()
    cmds, diags = node.cmds, node.diags

    def window(a: float, b: float) -> tuple[float, str, str]:
        n = sum(a <= c < b for c in cmds)
        d = [v for ts, v in diags if a <= ts < b]
        last = d[-1] if d else {}
        return n / (b - a), last.get("inference_latency_ms_p50", "n/a"), last.get("inference_latency_ms_p99", "n/a")

    w = min(10.0, seconds / 3)
    r0, p50_0, p99_0 = window(t0, t0 + w)
    r1, p50_1, p99_1 = window(t1 - w, t1)
    start_rss = np.mean([m for s, m in rss if s <= w])
    end_rss = np.mean([m for s, m in rss if s >= seconds - w])
    rows.append((f"soak {seconds:.0f} s: node RSS MB (first / last {w:.0f} s)", f"{start_rss:.0f}", f"{end_rss:.0f}", "no growth"))
    rows.append(("soak: policy commands / s (first / last)", f"{r0:.1f}", f"{r1:.1f}", "10 Hz"))
    rows.append(("soak: inference ms p50 (first / last)", p50_0, p50_1, f"{img_size}px tiny ViT, 2 cams"))
    rows.append(("soak: inference ms p99 (first / last)", p99_0, p99_1, ""))


RESOLUTIONS = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}


def bench_resolutions(seconds: float, img_size: int, sizes: list[str]) -> list[tuple[str, ...]]:
    """The node at its control rate under 30 Hz cameras stamped 30 ms before publication and a 200 Hz pose."""
    out = []
    for name in sizes:
        for cams in (["front"], ["front", "side"]):
            node = FedNode(cams, RESOLUTIONS[name], img_size, camera_hz=30.0, pose_hz=200.0, lead_s=0.03)
            try:
                node.start(warmup_s=2.0)
                first = node.latest()
                time.sleep(seconds)
                last = node.latest()
            finally:
                node.close()
            ticks = int(last.get("ticks", 0)) - int(first.get("ticks", 0))
            ok = int(last.get("ticks_ok", 0)) - int(first.get("ticks_ok", 0))
            out.append((name, str(len(cams)), last.get("input_lag_ms_p50", "n/a"), last.get("input_lag_ms_p99", "n/a"),
                        f"{min(ok / ticks, 1.0):.2f}" if ticks else "n/a", f"{ticks / seconds:.1f}", last.get("dropped_frames", "n/a")))
    return out


def enable_rclpy(service: str) -> None:
    """--backends helper process: call the rclpy node's ``~/enable`` (std_srvs/SetBool) once."""
    import rclpy
    from std_srvs.srv import SetBool

    from ros_nodes.transport.rclpy_backend import NO_SIGNAL_HANDLERS

    rclpy.init(**NO_SIGNAL_HANDLERS)
    node = rclpy.create_node("ros_path_enable")
    client = node.create_client(SetBool, service)
    if not client.wait_for_service(timeout_sec=60.0):
        raise SystemExit(f"{service}: no such service after 60 s")
    future = client.call_async(SetBool.Request(data=True))
    rclpy.spin_until_future_complete(node, future, timeout_sec=30.0)
    if not (future.done() and future.result().success):
        raise SystemExit(f"{service}: the call did not succeed")
    node.destroy_node()
    rclpy.try_shutdown()


def bench_backends(backends: list[str], executors: list[str], rates: list[float], seconds: float, img_size: int,
                   fastdds_profile: str = str(FASTDDS_PROFILE)) -> list[tuple[str, ...]]:
    """The node on each backend (rclpy: under each executor) at each control rate: hit ratio, overruns, pose -> command latency."""
    from vit_policy.inputs import camera_key

    out = []
    params = {"output_mode": "pose", "safety": {"max_step": MAX_STEP_M}}
    runs = [("dds", "")] if "dds" in backends else []
    runs += [("rclpy", ex) for ex in executors] if "rclpy" in backends else []
    for rate in rates:
        for backend, executor in runs:
            # Fast DDS 3 (the wheels, Jazzy and later); Humble's Fast DDS 2 reads FASTRTPS_DEFAULT_PROFILES_FILE
            env = {"FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile, "VIT_POLICY_EXECUTOR": executor} if backend == "rclpy" else {}
            node = FedNode(["front"], (640, 480), img_size, camera_hz=30.0, pose_hz=100.0, transport=backend,
                           control_hz=rate, params=params, pose_seq=True, env=env)
            try:
                node.start(warmup_s=2.0)
                d0, c0, t0 = node.latest(), len(node.poses_out), time.monotonic()
                time.sleep(seconds)
                d1, c1, t1 = node.latest(), len(node.poses_out), time.monotonic()
            finally:
                node.close()
            got = sum(t0 <= c < t1 for c in node.cmds)
            ticks = int(d1.get("ticks", 0)) - int(d0.get("ticks", 0))
            over = int(d1.get("overruns", 0)) - int(d0.get("overruns", 0))
            lat, lat_in, lat_out = [], [], []
            for arrival, stamp, x in node.poses_out[c0:c1]:
                n = int(round((x - POSE_X0) / POSE_STEP_M))
                if 0 <= n < len(node.pose_sent):
                    lat.append((arrival - node.pose_sent[n]) / 1e6)
                    lat_in.append((stamp - node.pose_sent[n]) / 1e6)
                    lat_out.append((arrival - stamp) / 1e6)
            out.append((f"{backend} ({executor})" if executor else backend, f"{rate:g}", d1.get(f"{camera_key('front')}.rate_hz", "n/a"),
                        f"{got / (t1 - t0):.1f}", f"{got / (rate * (t1 - t0)):.2f}",
                        f"{over / ticks:.2f}" if ticks else "n/a", f"{pct(lat, 50):.1f}", f"{pct(lat, 99):.1f}",
                        f"{pct(lat_in, 50):.1f}", f"{pct(lat_out, 50):.1f}", f"{pct(lat_out, 99):.1f}"))
            print("  ".join(f"{v:>14}" for v in out[-1]), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--transport-seconds", type=float, default=10.0)
    parser.add_argument("--soak", type=float, default=60.0, help="soak duration in seconds (0: skip)")
    parser.add_argument("--img-size", type=int, default=96, help="encoder resolution of the soak's tiny ViT")
    parser.add_argument("--skip-transport", action="store_true")
    parser.add_argument("--resolutions", nargs="*", choices=sorted(RESOLUTIONS), metavar="WxH",
                        help="only the node under 30 Hz cameras at these sizes (default all), 1 and 2 cameras, 200 Hz pose")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per --resolutions / --backends row")
    parser.add_argument("--backends", nargs="*", choices=["dds", "rclpy"],
                        help="only the node on these transports (default both) at --rates: hit ratio, overruns, pose -> command latency")
    parser.add_argument("--rates", nargs="+", type=float, default=[10.0, 30.0, 100.0], help="control rates of --backends (Hz)")
    parser.add_argument("--executors", nargs="+", choices=["events", "single", "multi"], default=["events"],
                        help="the rclpy node's executors of --backends (VIT_POLICY_EXECUTOR; default events, the node's own)")
    parser.add_argument("--fastdds-profile", default=str(FASTDDS_PROFILE),
                        help="Fast DDS XML profile of the rclpy node of --backends ('' for none: the kernel's default socket buffers)")
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--enable-rclpy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo is not None:
        echo(args.echo)
        return 0
    if args.enable_rclpy:
        enable_rclpy(args.enable_rclpy)
        return 0
    if args.backends is not None:
        head = ("backend", "control Hz", "camera Hz", "commands/s", "hit ratio", "overruns", "lat p50", "lat p99", "in p50", "out p50", "out p99")
        print("  ".join(f"{h:>14}" for h in head), flush=True)
        table = bench_backends(args.backends or ["dds", "rclpy"], args.executors, args.rates, args.seconds, args.img_size,
                               args.fastdds_profile)
        print("\n| backend | control Hz | camera Hz at the node | commands/s | hit ratio | overrun share | pose->cmd p50 ms | p99 ms "
              "| pose->tick p50 ms | tick->cmd p50 ms | tick->cmd p99 ms |")
        print("| --- " * len(head) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
        print(f"(one peer: a 640x480 bgr8 camera at 30 Hz and a 100 Hz pose over the DDS backend; {args.seconds:g} s per row after "
              f"a 2 s warm-up; tiny ViT at {args.img_size} px, 1 torch thread; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M:%S')})")
        return 0
    if args.resolutions is not None:
        table = bench_resolutions(args.seconds, args.img_size, args.resolutions or list(RESOLUTIONS))
        head = ("camera", "cams", "lag p50 ms", "lag p99 ms", "ticks moving", "ticks/s", "dropped")
        print("  ".join(f"{h:>12}" for h in head))
        for row in table:
            print("  ".join(f"{v:>12}" for v in row))
        print(f"(lag: inference start minus the observation's frame stamp, which lies 30 ms before publication; control 10 Hz; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M:%S')})")
        return 0
    rows: list[tuple[str, str, str, str]] = []
    bench_conversion(rows, args.repeats)
    if not args.skip_transport:
        bench_transport(rows, args.transport_seconds)
    if args.soak > 0:
        bench_soak(rows, args.soak, args.img_size)
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'measure':<{width}}{'p50 / start':>12}{'p99 / end':>12}  target")
    for name, a, b, target in rows:
        print(f"{name:<{width}}{a:>12}{b:>12}  {target}")
    print(f"(ms unless stated; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; {time.strftime('%Y-%m-%d %H:%M:%S')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
