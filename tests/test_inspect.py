"""``vit-policy inspect``: bag statistics, the dry run's pose coverage and losses, the verdict and its fixes.

The bags are real rosbag2 recordings written with ``rosbags`` (messages built by ``vit_policy.messages``)
with known stamps and record times, so every number of the report is checked against what was written;
the pose coverage against the timing rule written out here (:func:`rule_has_pose`), and every suggested
setting by inspecting again with it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vit_policy import messages as M
from vit_policy.config import ConfigError
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.data.inspect import check_bags, format_report, format_reports, inspect_bag, inspect_bags, load_data_config
from vit_policy.data.bags import BagError, extract_episodes
from synthetic import GRIPPER_JOINTS, write_synthetic_bag

REPO = Path(__file__).resolve().parent.parent
MS = 1_000_000
START = 1_700_000_000 * 1_000_000_000
CAMERA, WRIST, POSE, JOINTS = "/camera/front/image_raw", "/camera/wrist/image_raw", "/ee_pose", "/joint_states"
DATA = {"cameras": {"front": CAMERA}, "pose_topic": POSE,
        "gripper": {"topic": JOINTS, "joints": list(GRIPPER_JOINTS), "closed": 0.0, "open": 0.08}}
LEADS_MS = (60, 70, 80, 90, 100)  # camera record time - stamp, cycled: median 80 ms
FRAMES_MS = list(range(50, 2001, 50))  # the front camera's stamps (robot_messages' default)


def data_config(**kw) -> DataConfig:
    d = {**DATA, **kw}
    return DataConfig(cameras=d["cameras"], pose_topic=d["pose_topic"], gripper=GripperConfig(**d["gripper"]),
                      **{k: v for k, v in kw.items() if k not in ("cameras", "pose_topic", "gripper")})


def rule_has_pose(frames, poses, tol, extrapolation) -> list[bool]:
    """The timing rule, written out (any one unit): a frame has an EE pose when a pose shares its stamp, when the
    poses around it are at most 2 x tol apart, or when it lies at most ``extrapolation`` beyond the stream's ends."""
    poses = sorted(poses)
    out = []
    for s in frames:
        before, after = [p for p in poses if p <= s], [p for p in poses if p >= s]
        if s in poses:
            out.append(True)
        elif not before or not after:
            out.append((after[0] - s if after else s - before[-1]) <= extrapolation)
        else:
            out.append(after[0] - before[-1] <= 2 * tol)
    return out


def write_bag(path: Path, messages: list[tuple[int, str, object]]) -> Path:
    """(record time ns, topic, message) -> a sqlite3 rosbag2 directory, in record-time order."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    messages = sorted(messages, key=lambda m: m[0])
    types = {topic: str(type(msg).__msgtype__) for _, topic, msg in messages}  # type: ignore[attr-defined]
    with Writer(path, version=9) as w:
        conns = {topic: w.add_connection(topic, typ, typestore=store) for topic, typ in types.items()}
        for t, topic, msg in messages:
            w.write(conns[topic], t, store.serialize_cdr(msg, types[topic]))
    return path


def _factory() -> M.Factory:
    from rosbags.typesys import Stores, get_typestore

    return M.rosbags_factory(get_typestore(Stores.ROS2_HUMBLE))


def robot_messages(
    *, pose_topic: str = POSE, pose_until_ms: int = 1800, end_ms: int = 2000, leads_ms=LEADS_MS,
    pause_ms: tuple[int, int] | None = None, back: int | None = None, future_joints: dict[int, int] | None = None,
    pose_every_ms: int = 20, pose_lead_ms: int = 0, pose_frame: str = "base_link", cam_offset_ms: int = 0,
    wrist_every_ms: int | None = None,
) -> list[tuple[int, str, object]]:
    """A 20 Hz camera (stamps 50, 100, ... ms, recorded ``leads_ms`` later), a 50 Hz pose (every ``pose_every_ms``) up to
    ``pose_until_ms`` and 50 Hz joint states, stamped at their record time; ``pause_ms``: nothing recorded in [a, b);
    ``back``: camera frame ``back + 1`` is stamped before frame ``back``; ``future_joints``: index -> stamp lead (ms);
    ``pose_lead_ms``: the pose stamped that much after it is recorded; ``pose_frame``: its header.frame_id;
    ``cam_offset_ms``: added to the camera's stamps only (another clock); ``wrist_every_ms``: a second camera on
    /camera/wrist/image_raw stamped at 0, that, ... ms, recorded 5 ms later."""
    f = _factory()
    img = np.zeros((4, 4, 3), np.uint8)
    paused = (lambda ms: pause_ms[0] <= ms < pause_ms[1]) if pause_ms else (lambda ms: False)
    out: list[tuple[int, str, object]] = []
    cam_ms = [ms for ms in range(50, end_ms + 1, 50) if not paused(ms)]
    stamps = list(cam_ms)
    if back is not None:
        stamps[back + 1] = stamps[back] - 10  # 60 ms earlier than it should be: before the previous frame
    for k, (ms, stamp) in enumerate(zip(cam_ms, stamps)):
        out.append((START + (ms + leads_ms[k % len(leads_ms)]) * MS, CAMERA,
                    M.rgb_to_image(f, img, START + (stamp + cam_offset_ms) * MS, "front_optical_frame")))
    for ms in range(0, end_ms + 1, wrist_every_ms) if wrist_every_ms else ():
        out.append((START + (ms + 5) * MS, WRIST, M.rgb_to_image(f, img, START + ms * MS, "wrist_optical_frame")))
    for ms in range(0, min(pose_until_ms, end_ms) + 1, pose_every_ms):
        if not paused(ms):
            t = START + ms * MS
            out.append((t, pose_topic, M.make_pose_stamped(f, t + pose_lead_ms * MS, pose_frame, [0.4 + ms * 1e-5, 0.0, 0.3],
                                                           [0.0, 0.0, 0.0, 1.0])))
    for j, ms in enumerate(range(0, end_ms + 1, 20)):
        if not paused(ms):
            t = START + ms * MS
            lead = (future_joints or {}).get(j, 0) * MS
            out.append((t, JOINTS, M.make_joint_state(f, t + lead, list(GRIPPER_JOINTS), [0.04, 0.04])))
    return out


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    return {
        "lead": write_bag(root / "lead", robot_messages()),
        "missing": write_bag(root / "missing", robot_messages(pose_topic="/arm/ee_pose")),
        "backwards": write_bag(root / "backwards", robot_messages(end_ms=3000, pose_until_ms=3000, leads_ms=(5,), pause_ms=(1000, 2500),
                                                                  back=4, future_joints={10: 10, 20: 10})),
        "4hz": write_bag(root / "4hz", robot_messages(pose_every_ms=250, pose_until_ms=2000)),
    }


def _fix(rep: dict, key: str) -> str:
    """The one fix that names ``key``."""
    found = [f for f in rep["extract"]["fixes"] if f.startswith(key)]
    assert len(found) == 1, rep["extract"]["fixes"]
    return found[0]


def _setting(fix: str, key: str) -> float:
    """The value a fix suggests for ``key`` ('set data.key=value')."""
    return float(re.search(rf"set data\.{key}=([0-9.]+)", fix)[1])  # type: ignore[index]


def test_camera_stamped_before_recording_and_50hz_pose(bags: dict[str, Path]) -> None:
    rep = inspect_bag(bags["lead"], data_config())
    cam, pose, joints = (rep["topics"][t] for t in (CAMERA, POSE, JOINTS))
    assert (cam["type"], pose["type"]) == ("sensor_msgs/msg/Image", "geometry_msgs/msg/PoseStamped")
    assert (cam["count"], pose["count"], joints["count"]) == (40, 91, 101)
    assert cam["rate_hz"] == pytest.approx(20.0, rel=0.05) and pose["rate_hz"] == pytest.approx(50.0, rel=0.05)
    assert joints["rate_hz"] == pytest.approx(50.0, rel=0.05) and joints["joints"] == list(GRIPPER_JOINTS)
    assert cam["role"] == "data.cameras.front" and pose["role"] == "data.pose_topic"
    lead = cam["stamp_minus_record_ms"]
    assert abs(lead["median"] - -80.0) <= 2.0 and lead["min"] == pytest.approx(-100.0) and lead["max"] == pytest.approx(-60.0)
    assert lead["p95"] == pytest.approx(-60.0, abs=2.0)
    assert pose["stamp_minus_record_ms"]["median"] == 0.0 and pose["longest_gap_s"] == pytest.approx(0.02)
    assert all(r["backwards"] == 0 and r["future"] == 0 and r["gaps_over_split"] == 0 for r in rep["topics"].values())
    assert rep["tf_edges"] == [] and rep["rejected"] == {}
    # frames 50 ... 2000 ms, poses 0 ... 1800 ms every 20 ms: the 36 frames up to 1800 ms are inside the stream, the
    # 4 after it lie 50-200 ms past its end, beyond the 20 ms extrapolation
    has = rule_has_pose(FRAMES_MS, range(0, 1801, 20), 50, 20)
    assert sum(has) == 36
    cov = rep["coverage"]["front"]
    assert (cov["topic"], cov["frames"], cov["with_pose"], cov["fraction"]) == (CAMERA, 40, 36, pytest.approx(0.9))
    ex = rep["extract"]
    assert rep["ok"] and ex["ok"] and (ex["episodes"], ex["frames"], ex["reference_frames"], ex["reason"]) == (1, 36, 40, None)
    assert rep["dropped"] == {"50-200 ms after the last EE pose (max_extrapolation_s 20 ms)": 4}
    assert sum(rep["dropped"].values()) == ex["reference_frames"] - ex["frames"]
    assert any("4 of 40 frames get no EE pose" in w for w in rep["warnings"])
    # the extraction pairs the same frames, less those whose first label step (+100 ms) lies past the last pose
    episodes = extract_episodes(bags["lead"], data_config(), 1)
    assert len(episodes) == ex["episodes"] and sum(map(len, episodes)) == sum(1 for s, h in zip(FRAMES_MS, has) if h and s + 100 <= 1800)
    # 10% of the frames lost: a fix; the frame 50 ms past the end is within a tolerance of it, extrapolation reaches it
    fix = _fix(rep, "data.max_extrapolation_s")
    assert "1 frame(s)" in fix and _setting(fix, "max_extrapolation_s") == 0.051
    again = inspect_bag(bags["lead"], data_config(max_extrapolation_s=0.051))
    assert again["coverage"]["front"]["with_pose"] == sum(rule_has_pose(FRAMES_MS, range(0, 1801, 20), 50, 51)) == 37
    text = format_report(rep)
    assert "36 of 40 frames paired" in text and "front 90.0% (36/40)" in text and "extrapolated <= 20 ms" in text
    assert re.search(r"dropped frames \(4\):\n +4  50-200 ms after the last EE pose", text)


def test_pose_coverage_follows_the_timing_rule(bags: dict[str, Path]) -> None:
    # no tolerance: only the frames on the 20 ms pose grid (100, 200, ... ms) have a pose; the 50-ms-odd ones lie
    # between poses 20 ms apart, more than 2 x 0 ms
    thin = inspect_bag(bags["lead"], data_config(sync_tolerance_s=0.0))
    assert thin["coverage"]["front"]["with_pose"] == sum(rule_has_pose(FRAMES_MS, range(0, 1801, 20), 0, 20)) == 18
    assert thin["extract"]["frames"] == 18
    # a 4 Hz pose (every 250 ms): no frame is interpolated at 2 x 50 ms; only the 8 stamped with a pose have one
    rep = inspect_bag(bags["4hz"], data_config())
    poses = range(0, 2001, 250)
    assert rep["topics"][POSE]["count"] == 9 and rep["topics"][POSE]["rate_hz"] == pytest.approx(4.0)
    assert rep["coverage"]["front"]["with_pose"] == sum(rule_has_pose(FRAMES_MS, poses, 50, 20)) == 8
    assert rep["ok"] and rep["extract"]["frames"] == 8
    assert rep["dropped"] == {"EE pose gap: the poses around the frame 250 ms apart (at most 2 x sync_tolerance_s = 100 ms)": 32}
    fix = _fix(rep, "data.sync_tolerance_s")
    assert "32 frame(s)" in fix and "record the EE pose faster (it is at 4.0 Hz)" in fix
    tol = _setting(fix, "sync_tolerance_s")
    assert tol == 0.126  # half the 250 ms gap, + 1 ms for the rounding of the reason's numbers
    fixed = inspect_bag(bags["4hz"], data_config(sync_tolerance_s=tol))
    assert fixed["coverage"]["front"]["with_pose"] == sum(rule_has_pose(FRAMES_MS, poses, 126, 20)) == 40
    assert fixed["dropped"] == {} and fixed["extract"]["fixes"] == []
    assert inspect_bag(bags["4hz"], data_config(sync_tolerance_s=0.124))["coverage"]["front"]["with_pose"] == 8  # 248 ms < 250


def test_missing_pose_topic_names_the_fix(bags: dict[str, Path]) -> None:
    rep = inspect_bag(bags["missing"], data_config())
    assert not rep["ok"] and not rep["extract"]["ok"] and rep["extract"]["episodes"] == 0
    reason = rep["extract"]["reason"]
    assert "'/ee_pose'" in reason and "data.pose_topic" in reason and str(bags["missing"]) in reason
    assert any("set data.pose_topic=/arm/ee_pose" in f for f in rep["extract"]["fixes"])
    assert rep["coverage"] == {} and rep["topics"]["/arm/ee_pose"]["count"] == 91
    text = format_reports(inspect_bags([bags["missing"]], data_config()))
    assert "WOULD NOT EXTRACT" in text and "fix: data.pose_topic" in text and "0 of 1 bag(s) would extract" in text
    with pytest.raises(BagError, match=r"1 bag\(s\) would not extract.*'/ee_pose'.*fix: data.pose_topic.*/arm/ee_pose"):
        check_bags([bags["lead"], bags["missing"]], data_config())
    check_bags([bags["lead"]], data_config())  # a good bag passes


def test_backwards_and_future_stamps_and_gaps(bags: dict[str, Path]) -> None:
    rep = inspect_bag(bags["backwards"], data_config())
    cam, pose, joints = (rep["topics"][t] for t in (CAMERA, POSE, JOINTS))
    assert (cam["backwards"], cam["future"]) == (1, 0)
    assert (joints["backwards"], joints["future"]) == (0, 2) and joints["stamp_minus_record_ms"]["max"] == pytest.approx(10.0)
    assert (pose["backwards"], pose["future"]) == (0, 0)
    assert any("1 header stamp(s) go backwards" in w for w in rep["warnings"])
    # nothing recorded in [1.0, 2.5) s: one silence longer than gap_split_s (1 s) on every topic
    assert pose["longest_gap_s"] == pytest.approx(1.52) and cam["longest_gap_s"] == pytest.approx(1.55)
    for r in (cam, pose, joints):
        assert r["gaps_over_split"] == 1 and len(r["gaps"]) == 1 and r["gaps"][0]["length_s"] > 1.5
    assert pose["gaps"][0]["at_s"] == pytest.approx(0.98)
    # the frame stamped backwards is rejected by the synchroniser (its 29 others all pair); joints 10 ms ahead are not
    assert rep["rejected"] == {"camera/front": 1} and "stamp goes backwards by 10.0 ms" in rep["last_rejection"]
    ex = rep["extract"]
    assert ex["ok"] and (ex["episodes"], ex["frames"], ex["reference_frames"]) == (2, 29, 29)  # split at the pause
    assert rep["dropped"] == {} and rep["coverage"]["front"]["with_pose"] == 29
    assert any(f.startswith(f"{CAMERA}: 1 header stamp(s) go backwards") and "no setting" in f for f in ex["fixes"])
    assert not any(f.startswith("data.max_stamp_lead_s") for f in ex["fixes"])
    assert inspect_bag(bags["backwards"], data_config(gap_split_s=2.0))["topics"][POSE]["gaps_over_split"] == 0


def test_rejected_and_dropped_inputs_name_their_setting(tmp_path: Path) -> None:
    # the pose stamped 300 ms after it is recorded: every pose is rejected (max_stamp_lead_s 0.2 s)
    ahead = write_bag(tmp_path / "ahead", robot_messages(pose_lead_ms=300))
    rep = inspect_bag(ahead, data_config())
    assert not rep["ok"] and "no EE pose" in rep["extract"]["reason"] and "in the future" in rep["extract"]["reason"]
    assert rep["rejected"] == {"pose": 91} and rep["topics"][POSE]["future"] == 91
    lead = _setting(_fix(rep, "data.max_stamp_lead_s"), "max_stamp_lead_s")
    assert lead == 0.301
    fixed = inspect_bag(ahead, data_config(max_stamp_lead_s=lead))
    poses = range(300, 2101, 20)  # the stamps: frames before 280 ms are more than 20 ms before the first pose
    assert fixed["ok"] and fixed["coverage"]["front"]["with_pose"] == sum(rule_has_pose(FRAMES_MS, poses, 50, 20)) == 35
    assert fixed["dropped"] == {"50-250 ms before the first EE pose (max_extrapolation_s 20 ms)": 5}
    with pytest.raises(BagError, match=r"in the future.*fix: data.max_stamp_lead_s: .*set data.max_stamp_lead_s=0.301"):
        check_bags([ahead], data_config())

    # the EE pose published in 'world': rejected, the base frame named
    world = write_bag(tmp_path / "world", robot_messages(pose_frame="world"))
    rep = inspect_bag(world, data_config())
    assert not rep["ok"] and rep["rejected"] == {"pose": 91}
    assert "set data.tf_base_frame=world" in _fix(rep, "data.tf_base_frame")
    assert inspect_bag(world, data_config(tf_base_frame="world"))["extract"]["frames"] == 36

    # the camera stamped by a clock 5 s behind: every frame lies before the pose stream, nothing pairs
    clock = write_bag(tmp_path / "clock", robot_messages(cam_offset_ms=-5000))
    rep = inspect_bag(clock, data_config())
    assert not rep["ok"] and "no usable observation (40 front frames)" in rep["extract"]["reason"]
    assert rep["dropped"] == {"3000-4950 ms before the first EE pose (max_extrapolation_s 20 ms)": 40}
    hint = [f for f in rep["extract"]["fixes"] if "one clock" in f]
    assert len(hint) == 1 and "40 of 40 front frames lie up to 5.0 s outside" in hint[0] and "-5080 ms" in hint[0]
    assert not any(f.startswith("data.max_extrapolation_s") for f in rep["extract"]["fixes"])

    # a 5 Hz wrist camera: a front frame 100 ms from the nearest wrist frame is beyond the 50 ms tolerance
    wrist = write_bag(tmp_path / "wrist", robot_messages(wrist_every_ms=200))
    cams = {"front": CAMERA, "wrist": WRIST}
    rep = inspect_bag(wrist, data_config(cameras=cams))
    wrist_ms = range(0, 2001, 200)
    near = [min(abs(w - s) for w in wrist_ms) <= 50 for s in FRAMES_MS]
    has = rule_has_pose(FRAMES_MS, range(0, 1801, 20), 50, 20)
    assert near.count(False) == 10 and rep["extract"]["frames"] == sum(a and b for a, b in zip(near, has)) == 27
    assert rep["dropped"] == {"camera wrist: no frame within sync_tolerance_s = 50 ms of the front frame": 10,
                              "50-200 ms after the last EE pose (max_extrapolation_s 20 ms)": 3}
    assert rep["coverage"]["wrist"]["with_pose"] == sum(rule_has_pose(wrist_ms, range(0, 1801, 20), 50, 20)) == 10
    fix = [f for f in rep["extract"]["fixes"] if "wrist" in f]
    assert len(fix) == 1 and "(wrist at 5.0 Hz)" in fix[0]
    tol = _setting(fix[0], "sync_tolerance_s")
    assert tol == 0.101
    fixed = inspect_bag(wrist, data_config(cameras=cams, sync_tolerance_s=tol))
    assert fixed["extract"]["frames"] == sum(rule_has_pose(FRAMES_MS, range(0, 1801, 20), 101, 20)) == 36


def test_inspect_decodes_no_pixel(bags: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from vit_policy.inputs import Frame

    def no_decoding(self):
        raise AssertionError("inspect decoded a frame")

    monkeypatch.setattr(Frame, "rgb", no_decoding)
    assert inspect_bag(bags["lead"], data_config())["extract"]["frames"] == 36
    check_bags([bags["lead"], bags["backwards"]], data_config())


def test_tf_pose_coverage(tmp_path: Path) -> None:
    gt = write_synthetic_bag(tmp_path / "tf", pose_source="tf", duration_s=1.0, image_size=(8, 8), storage="mcap")
    data = data_config(pose_topic=None)
    rep = inspect_bag(tmp_path / "tf", data)
    assert rep["pose_source"] == "TF base_link -> ee_link"
    assert rep["tf_edges"] == ["base_link->torso_link", "torso_link->ee_link"]
    has = rule_has_pose(list(gt.frame_stamps_ns["front"]), list(gt.pose_stamps_ns), 50 * MS, 20 * MS)
    cov = rep["coverage"]["front"]
    assert (cov["frames"], cov["with_pose"]) == (len(has), sum(has)) and rep["ok"]
    bad = inspect_bag(tmp_path / "tf", data_config(pose_topic=None, tf_ee_frame="tool0"))
    assert not bad["ok"] and bad["coverage"] == {} and "no EE pose from the TF chain" in bad["extract"]["reason"]
    assert any("torso_link->ee_link" in f and "data.tf_ee_frame" in f for f in bad["extract"]["fixes"])


def test_unreadable_bags_and_the_data_config(tmp_path: Path) -> None:
    rep = inspect_bag(tmp_path / "nowhere", data_config())
    assert not rep["ok"] and "does not exist" in rep["extract"]["reason"] and rep["topics"] == {}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metadata.yaml").write_text("not: a bag\n")
    assert not inspect_bag(tmp_path / "junk", data_config())["ok"]
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"bags": ["x"], "data": {**DATA, "sync_tolerance_s": 0.04}, "epochs": 3}))
    cfg = load_data_config(path, ["data.gap_split_s=2", "max_age_s=0.3"])
    assert (cfg.cameras, cfg.sync_tolerance_s, cfg.gap_split_s, cfg.max_age_s) == (DATA["cameras"], 0.04, 2.0, 0.3)
    assert load_data_config(None).pose_topic == DataConfig().pose_topic
    with pytest.raises(ConfigError, match="did you mean 'pose_topic'"):
        load_data_config(path, ["data.pose_topc=/x"])


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vit_policy.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_json_tables_and_exit_codes(bags: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"data": DATA}))
    ok = _cli("inspect", str(bags["lead"]), str(bags["backwards"]), "--json", "--data-config", str(cfg))
    assert ok.returncode == 0, ok.stderr[-2000:]
    doc = json.loads(ok.stdout)
    assert set(doc) == {"ok", "data", "bags"} and doc["ok"] is True and doc["data"]["cameras"] == DATA["cameras"]
    assert [b["path"] for b in doc["bags"]] == [str(bags["lead"]), str(bags["backwards"])]
    for b in doc["bags"]:
        assert {"path", "ok", "start_ns", "end_ns", "duration_s", "messages", "topics", "tf_edges", "pose_source", "sync_tolerance_s",
                "max_extrapolation_s", "gap_split_s", "coverage", "dropped", "rejected", "last_drop", "last_rejection", "warnings",
                "extract"} <= set(b)
        assert set(b["extract"]) == {"ok", "episodes", "frames", "reference_frames", "reason", "fixes"}
        assert set(b["coverage"]["front"]) == {"topic", "frames", "with_pose", "fraction"}
        assert sum(b["dropped"].values()) == b["extract"]["reference_frames"] - b["extract"]["frames"]
        for r in b["topics"].values():
            assert {"type", "role", "count", "rate_hz", "first_s", "last_s", "longest_gap_s", "gaps_over_split", "gaps", "stamped",
                    "stamp_minus_record_ms", "backwards", "future", "unset_stamps"} <= set(r)
            assert set(r["stamp_minus_record_ms"]) == {"median", "p5", "p95", "min", "max"}
    assert doc["bags"][0]["topics"][CAMERA]["stamp_minus_record_ms"]["median"] == pytest.approx(-80.0, abs=2.0)
    assert doc["bags"][0]["coverage"]["front"]["with_pose"] == 36 and doc["bags"][1]["rejected"] == {"camera/front": 1}
    assert doc["bags"][0]["dropped"] == {"50-200 ms after the last EE pose (max_extrapolation_s 20 ms)": 4}

    bad = _cli("inspect", str(bags["lead"]), str(bags["missing"]), "--data-config", str(cfg), "--set", "sync_tolerance_s=0.04")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "extracts: 1 episode(s), 36 of 40 frames paired" in bad.stdout and "WOULD NOT EXTRACT" in bad.stdout
    assert "interpolated across <= 80 ms" in bad.stdout and "front 90.0% (36/40)" in bad.stdout
    assert "fix: data.pose_topic" in bad.stdout and "1 of 2 bag(s) would extract" in bad.stdout


def test_cli_set_applies_the_fix(bags: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vit_policy.cli import main

    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump(DATA))  # a bare data YAML
    assert main(["inspect", str(bags["missing"]), "--data-config", str(cfg), "--json"]) == 2
    assert not json.loads(capsys.readouterr().out)["bags"][0]["ok"]
    assert main(["inspect", str(bags["missing"]), "--data-config", str(cfg), "--set", "data.pose_topic=/arm/ee_pose", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bags"][0]["extract"]["episodes"] == 1
    assert main(["inspect", str(bags["lead"]), "--set", "data.bogus=1"]) == 2
    assert "data.bogus" in capsys.readouterr().err


def test_train_fails_fast_on_a_bag_without_its_pose_topic(bags: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"bags": [str(bags["lead"]), str(bags["missing"])], "data": DATA,
                                   "out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}))
    t0 = time.monotonic()
    proc = _cli("train", "--config", str(cfg), "--threads", "1", "epochs=1")
    took = time.monotonic() - t0
    assert proc.returncode != 0
    assert "would not extract" in proc.stderr and "'/ee_pose'" in proc.stderr and str(bags["missing"]) in proc.stderr
    assert "data.pose_topic=/arm/ee_pose" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing extracted, no model built
    assert took < 60, took


def test_replay_checks_the_bags_before_loading_a_checkpoint(bags: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from vit_policy.cli import main
    from vit_policy.model.checkpoint import CONFIG_FILE, STATS_FILE, WEIGHTS_FILE

    ckpt = tmp_path / "ckpt"  # complete by name only: loading it would fail, so the bag check must come first
    ckpt.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE):
        (ckpt / name).write_text("not a checkpoint")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"data": DATA}))
    rc = main(["replay", "--checkpoint", str(ckpt), "--bags", str(bags["lead"]), str(bags["missing"]), "--out", str(tmp_path / "o"),
               "--data-config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2 and "1 bag(s) would not extract" in err and str(bags["missing"]) in err and "data.pose_topic=/arm/ee_pose" in err
    assert not (tmp_path / "o").exists()
