"""Export throughput: rosbag2 -> LeRobotDataset v3, PNG frames against video, with each phase's time.

    .venv/bin/python benchmarks/export_dataset.py [--duration 10] [--image 240x320] [--camera-hz 30] [--repeats 2]

Writes one recording with tests/realtime_bags.py (two cameras at ``--camera-hz``: ``front`` JPEG and
``wrist`` raw rgb8, ``--image`` H x W; PoseStamped at 100 Hz; JointState at 100 + 125 Hz; mcap), then
exports it (best of ``--repeats``) at fps = camera rate (every frame) and at 10 fps (thinned), as PNG
frames (lossless) and as H.264 video (crf 18). Columns: MB of bag per second, frames (rows) per
second, and the seconds in each phase: inspect's pre-flight (a dry run over the bag), extraction (router + synchroniser + labels, pixels untouched),
pixel decoding, PNG encoding, video encoding, parquet / metadata writing. The cost of video is its
encoding column against the PNG column of the same fps.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from realtime_bags import CameraSpec, Scenario, write_scenario  # noqa: E402
from vit_policy.data.configuration import DataConfig, GripperConfig  # noqa: E402
from vit_policy.data.lerobot import ExportResult, export_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of recording")
    ap.add_argument("--image", default="240x320", help="H x W of both cameras")
    ap.add_argument("--camera-hz", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    h, w = (int(x) for x in args.image.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="export_bench_"))
    try:
        sc = Scenario("bench", (CameraSpec("front", args.camera_hz, 0.004, "jpeg", latency_s=0.04),
                                CameraSpec("wrist", args.camera_hz, 0.011, "rgb8", latency_s=0.03)),
                      storage="mcap", pose_rate_hz=100, duration_s=args.duration, image_size=(h, w))
        bag = write_scenario(tmp / "bag", sc)
        data = DataConfig(cameras=bag.camera_topics, pose_topic="/ee_pose",
                          gripper=GripperConfig(topic="/joint_states", kind="joint_state", joints=list(sc.gripper_joints),
                                                closed=sc.gripper_closed, open=sc.gripper_open), control_rate_hz=10.0)
        rows: list[tuple[str, ExportResult]] = []
        for fps in (args.camera_hz, 10):
            for video in (False, True):
                best = None
                for r in range(args.repeats):
                    out = tmp / f"ds_{fps}_{video}_{r}"
                    res = export_dataset([bag.path], data, out, fps=fps, video=video, progress=False)
                    if best is None or res.seconds["total"] < best.seconds["total"]:
                        best = res
                    shutil.rmtree(out)
                assert best is not None
                rows.append((f"{fps} fps, {'video h264' if video else 'PNG'}", best))
        mb = rows[0][1].bag_bytes / 2**20
        print(f"bag: {args.duration:g} s, 2 cameras {h}x{w} at {args.camera_hz} Hz (jpeg + rgb8), pose 100 Hz; {mb:.1f} MB (mcap)")
        head = f"{'export':<20} {'frames':>6} {'MB/s':>7} {'frames/s':>9} {'total s':>8} {'check':>6} {'extract':>8} {'decode':>7} {'png':>6} {'video':>6} {'write':>6}"
        print(head)
        for name, r in rows:
            s = r.seconds
            print(f"{name:<20} {r.frames:>6} {mb / s['total']:>7.1f} {r.frames / s['total']:>9.1f} {s['total']:>8.2f} {s['check']:>6.2f} {s['extract']:>8.2f} "
                  f"{s['decode']:>7.2f} {s['png']:>6.2f} {s['video']:>6.2f} {s['write']:>6.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
