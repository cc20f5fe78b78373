"""rosbag2 <-> LeRobotDataset v3 (``codebase_version`` "v3.0"), written and read with pyarrow and PyAV only.

Export (``vit-policy export-dataset``) runs each bag through the extraction the trainer uses
(:func:`vit_policy.data.bags.extract_episodes`: the node's InputRouter and Synchronizer, one sample per
reference-camera frame stamped at its exposure, the EE pose and gripper interpolated there), so a
LeRobot policy trained on the export sees exactly the samples this policy trains on. The layout is
lerobot 0.4.4's::

    meta/info.json  meta/stats.json  meta/tasks.parquet  meta/episodes/chunk-000/file-000.parquet
    data/chunk-000/file-000.parquet  [videos/observation.images.<cam>/chunk-000/file-000.mp4]

Features: ``observation.images.<cam>`` (PNG in the parquet, lossless; or one H.264 / AV1 stream per
camera with ``--video``), ``observation.state`` = [x, y, z, qx, qy, qz, qw, gripper] (EE pose in the
robot base frame, quaternion in ROS order, gripper opening in [0, 1]), ``action`` = the same layout for
the target at ``timestamp + 1/fps`` (the recorded command with ``labels: command``, the interpolated
future pose with ``labels: future_pose``), ``stamp_ns`` (the observation's ROS stamp) and LeRobot's
``timestamp`` (seconds since the episode's first observation stamp), ``frame_index``, ``episode_index``,
``index``, ``task_index``. ``info.json["vit_policy"]`` states these conventions and the data config.

One episode per bag segment (a bag split at gaps longer than ``data.gap_split_s``). The dataset's fps
is the control rate: frames faster than it are thinned to the one nearest each 1/fps tick, so LeRobot's
index offsets (``delta_timestamps``, a policy's action chunk) step by one control period; a tick with no
frame (a dropped or undecodable frame) ends the episode there, since LeRobot takes frame k + j to be j/fps
after frame k (and its video decoder maps a timestamp to a frame index). ``timestamp`` stays the real stamp.

Reading (:func:`read_episodes`, used by ``vit-policy train`` for a dataset directory among ``bags``)
maps ``data.cameras`` to image features and needs an EE pose in ``observation.state``; the K-step
labels are the ``action`` of frames t .. t+K-1 as deltas to the pose at t (or, without an EE-pose
action and with ``labels: future_pose``, the states of frames t+1 .. t+K).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vit_policy.config import ConfigError
from vit_policy.data.configuration import DataConfig
from vit_policy.data.bags import Episode, extract_episodes
from vit_policy.geometry import apply_delta, pose_delta, rot6d_to_rotvec, rotvec_to_rot6d

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk directory (lerobot's default)
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
POSE_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw"]
STATE_NAMES = [*POSE_NAMES, "gripper"]
IMAGE_PREFIX = "observation.images."
VIDEO_CODECS = {"h264": "libx264", "av1": "libsvtav1"}
VIDEO_PSNR_DB = 32.0  # the round trip's bound per frame (tests/test_lerobot.py): h264 crf 18, yuv420p, 24x32 marker frames
CONVENTIONS = {
    "frame": "observation.state and action: EE position (m) in the robot base frame",
    "quaternion": "x, y, z, w (ROS / scipy order); observation.state's sign as recorded, action's canonical (w >= 0)",
    "gripper": "opening in [0, 1] (0 closed, 1 open), from data.gripper",
    "timestamp": "seconds since the episode's first observation stamp: the reference camera frame's exposure stamp "
                 "(stamp_ns, ROS time ns); the pose and gripper are interpolated at it. Frames lie within half a frame of "
                 "the 1/fps ticks (faster cameras thinned); a tick without a frame ends the episode",
    "action": "target EE pose and gripper at timestamp + 1/fps: the recorded command (data.labels: command) or the "
              "EE pose interpolated there (data.labels: future_pose); absolute, in the base frame",
}


class DatasetError(ValueError):
    """A LeRobot dataset cannot be read or written as asked; the message names the path, the cause and the fix."""


def _require() -> None:
    """pyarrow and PyAV (the ``lerobot`` extra), or one clear error."""
    import importlib.util

    missing = [m for m in ("pyarrow", "av") if importlib.util.find_spec(m) is None]
    if missing:
        raise DatasetError(f"LeRobot datasets need {' and '.join(missing)}, which are not installed; "
                           "pip install 'vit_policy[lerobot]' (or pip install pyarrow av)")


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What an export wrote and where its time went (seconds)."""

    out: Path
    episodes: int = 0
    frames: int = 0
    bag_bytes: int = 0
    fps: int = 0
    thinned: int = 0  # samples dropped to one per 1/fps tick
    holes: int = 0  # ticks without a frame inside a bag segment: each ends an episode
    undecodable: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"check": 0.0, "extract": 0.0, "decode": 0.0, "png": 0.0, "video": 0.0,
                                                               "write": 0.0, "total": 0.0})


def export_fps(data: DataConfig, fps: int | None) -> int:
    """The dataset's fps: ``fps`` or data.control_rate_hz, a positive integer (LeRobot stores an int)."""
    rate = float(fps) if fps is not None else data.control_rate_hz
    if rate <= 0 or abs(rate - round(rate)) > 1e-9:
        where = "--fps" if fps is not None else "data.control_rate_hz"
        raise ConfigError(f"{where}: {rate:g} is not a positive whole number of frames per second (LeRobot's info.json fps is "
                          "an int); give --fps N")
    return int(round(rate))


def thin_to_fps(stamps_ns: np.ndarray, fps: int) -> list[np.ndarray]:
    """Indices of the samples kept, as runs of consecutive 1/fps ticks from the first stamp: per tick the sample
    nearest it, if within half a frame period (the camera's median period, or the tick's when the camera is
    slower). A tick without one (a dropped frame) ends a run: LeRobot takes frame k + j as j/fps later."""
    stamps = np.asarray(stamps_ns, np.int64)
    period = 1e9 / fps
    off = (stamps - int(stamps[0])).astype(np.float64)
    tick = np.rint(off / period).astype(np.int64)
    err = np.abs(off - tick * period)
    frame = float(np.median(np.diff(stamps))) if len(stamps) > 1 else period
    tol = 0.5 * min(frame, period) + 1e3  # + 1 us: a stamp exactly halfway
    keep: dict[int, int] = {}
    for i, (t, e) in enumerate(zip(tick.tolist(), err.tolist())):
        if e <= tol and (t not in keep or e < err[keep[t]]):
            keep[t] = i
    ticks = np.array(sorted(keep), np.int64)
    kept = np.array([keep[t] for t in ticks.tolist()], np.int64)
    return np.split(kept, np.flatnonzero(np.diff(ticks) != 1) + 1)


def _absolute_action(ep: Episode) -> np.ndarray:
    """(T, 8) targets [x, y, z, qx, qy, qz, qw, gripper] from step 0 of the extraction's delta labels."""
    a = np.asarray(ep.action[:, 0], np.float64)
    p, q = apply_delta(ep.position, ep.quaternion, a[:, :3], rot6d_to_rotvec(a[:, 3:9]))
    return np.concatenate([p, q, a[:, 9:10]], axis=1)


def _pixel_sample(rgb: np.ndarray, most: int = 256) -> np.ndarray:
    """At most ``most`` pixels (N, 3) of a frame on a regular grid: the image statistics' sample."""
    h, w = rgb.shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(h * w / most))))
    return rgb[::stride, ::stride].reshape(-1, 3)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _RunningStats:
    """min / max / mean / std / count / quantiles (exact, from the kept values) of one feature, per channel."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        self.parts.append(x.reshape(len(x), -1) if x.dtype == np.uint8 else x.astype(np.float64).reshape(len(x), -1))

    def result(self, image: bool = False) -> dict[str, Any]:
        x = np.concatenate(self.parts).astype(np.float64)
        out: dict[str, Any] = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": [len(x)]}
        for q in QUANTILES:
            out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=0)
        if image:  # lerobot: per channel, in [0, 1], shape (3, 1, 1)
            out = {k: (v if k == "count" else (np.asarray(v) / 255.0).reshape(3, 1, 1)) for k, v in out.items()}
        return {k: np.asarray(v).tolist() if k != "count" else v for k, v in out.items()}


class _VideoWriter:
    """One camera's stream: episodes appended in order, frame pts = episode offset + timestamp (lerobot's from_timestamp)."""

    def __init__(self, root: Path, key: str, fps: int, codec: str, crf: int) -> None:
        self.root, self.key, self.fps, self.codec, self.crf = root, key, fps, codec, crf
        self.chunk, self.file, self.offset, self.start, self.bytes = 0, 0, 0.0, 0.0, 0
        self.container: Any = None
        self.stream: Any = None
        self.seconds = 0.0

    def _open(self, shape: tuple[int, ...]) -> None:
        import av

        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        s = self.container.add_stream(VIDEO_CODECS[self.codec], rate=self.fps)
        s.height, s.width, s.pix_fmt = shape[0], shape[1], "yuv420p"
        s.time_base = Fraction(1, 1_000_000)
        s.codec_context.time_base = Fraction(1, 1_000_000)
        s.options = {"crf": str(self.crf), "g": "2", **({"bf": "0", "preset": "veryfast"} if self.codec == "h264" else {"preset": "12"})}
        self.stream, self.bytes = s, 0

    def begin_episode(self) -> None:
        """Start an episode where the last one ended (a new file past video_files_size_in_mb)."""
        if self.container is not None and self.bytes >= VIDEO_FILE_MB * 2**20:
            self.close()
            self.chunk, self.file = (self.chunk + 1, 0) if self.file == CHUNKS_SIZE - 1 else (self.chunk, self.file + 1)
            self.offset = 0.0
        self.start = self.offset

    def add_frame(self, rgb: np.ndarray, ts: float) -> None:
        """Encode one frame at ``ts`` seconds into the episode."""
        import av

        t0 = time.perf_counter()
        if self.container is None:
            self._open(rgb.shape)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = int(round((self.start + ts) * 1_000_000))
        frame.time_base = Fraction(1, 1_000_000)
        for packet in self.stream.encode(frame):
            self.bytes += packet.size
            self.container.mux(packet)
        self.seconds += time.perf_counter() - t0

    def end_episode(self, last_ts: float) -> dict[str, Any]:
        """The episode's ``videos/<key>/...`` columns; the next one starts 1/fps after its last frame."""
        self.offset = self.start + round(last_ts * self.fps + 1.0) / self.fps  # the next start stays on the 1/fps grid
        return {f"videos/{self.key}/chunk_index": self.chunk, f"videos/{self.key}/file_index": self.file,
                f"videos/{self.key}/from_timestamp": self.start, f"videos/{self.key}/to_timestamp": self.offset}

    def close(self) -> None:
        if self.container is not None:
            t0 = time.perf_counter()
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None
            self.seconds += time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        import av

        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=0, file_index=0)
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name,
                    "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3,
                    "has_audio": False}


def _features(cams: dict[str, tuple[int, int, int]], fps: int, video: bool) -> dict[str, dict[str, Any]]:
    feats: dict[str, dict[str, Any]] = {}
    for cam, shape in cams.items():
        feats[IMAGE_PREFIX + cam] = {"dtype": "video" if video else "image", "shape": list(shape), "names": ["height", "width", "channels"]}
    feats["observation.state"] = {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)}
    feats["action"] = {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)}
    feats["stamp_ns"] = {"dtype": "int64", "shape": [1], "names": None}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
                        ("task_index", "int64")):
        feats[name] = {"dtype": dtype, "shape": [1], "names": None}
    return feats


def _arrow_schema(features: dict[str, dict[str, Any]]) -> Any:
    import pyarrow as pa

    fields = []
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            fields.append(pa.field(key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        elif ft["shape"] == [1]:
            fields.append(pa.field(key, pa.from_numpy_dtype(np.dtype(ft["dtype"]))))
        else:
            fields.append(pa.field(key, pa.list_(pa.from_numpy_dtype(np.dtype(ft["dtype"])), ft["shape"][0])))
    return pa.schema(fields)


def _tasks_table(tasks: list[str]) -> Any:
    """meta/tasks.parquet as pandas writes it (lerobot reads it with pandas: the task string is the index)."""
    import pyarrow as pa

    meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "pandas_version": "2.2.3", "creator": {"library": "pyarrow"},
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}]}
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


def _bag_bytes(bag: Path) -> int:
    return sum(p.stat().st_size for p in bag.rglob("*") if p.is_file()) if bag.is_dir() else bag.stat().st_size


def export_dataset(
    bags: Sequence[str | Path], data: DataConfig, out: str | Path, fps: int | None = None, video: bool = False,
    task: str = "demonstration", robot_type: str | None = None, vcodec: str = "h264", crf: int = 18, progress: bool = True,
) -> ExportResult:
    """Write ``bags`` as one LeRobotDataset v3 at ``out`` (a new directory); ``inspect``'s pre-flight first.

    ``fps`` (default data.control_rate_hz) sets the control period of the ``action`` labels and the
    dataset's frame rate. Raises BagError / ConfigError / FileExistsError naming the input to fix.
    """
    _require()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vit_policy.data.inspect import check_bags
    from vit_policy.messages import MessageError

    t_start = time.perf_counter()
    out, paths = Path(out), [Path(b) for b in bags]
    fps = export_fps(data, fps)
    if vcodec not in VIDEO_CODECS:
        raise ConfigError(f"--vcodec: {vcodec!r} is not one of {sorted(VIDEO_CODECS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {str(out)!r} exists and is not empty; give a new directory (a dataset is written once)")
    data = dataclasses.replace(data, control_rate_hz=float(fps))  # the action is the target one frame (1/fps) ahead
    t0 = time.perf_counter()
    check_bags(paths, data)
    check_s = time.perf_counter() - t0
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    res = ExportResult(out=out, fps=fps, bag_bytes=sum(_bag_bytes(p) for p in paths))
    res.seconds["check"] = check_s
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=0, desc="export", unit="frame", dynamic_ncols=True)
    features: dict[str, dict[str, Any]] | None = None
    schema = None
    writer: Any = None
    data_file, data_bytes = (0, 0), 0
    videos: dict[str, _VideoWriter] = {}
    stats: dict[str, _RunningStats] = {}
    episodes_rows: list[dict[str, Any]] = []
    index = 0
    cams = list(data.cameras)
    def flush(bag: Path, ep: Episode, rows: list[int], pngs: dict[str, list[dict[str, Any]]]) -> None:
        """Write one episode's rows (the frames are encoded already)."""
        nonlocal writer, data_bytes, data_file, index
        if not rows:
            return
        ep_index = len(episodes_rows)
        sel = np.array(rows, np.int64)
        n = len(sel)
        stamps = np.asarray(ep.stamps_ns, np.int64)[sel]
        ts = ((stamps - stamps[0]) / 1e9).astype(np.float32)
        state = np.concatenate([ep.position[sel], ep.quaternion[sel], np.asarray(ep.gripper, np.float64)[sel, None]], 1)
        action = _absolute_action(ep)[sel]
        meta: dict[str, Any] = {}
        for c in cams:
            if video:
                meta.update(videos[c].end_episode(float(ts[-1])))
        cols: dict[str, Any] = {
            "observation.state": state.astype(np.float32), "action": action.astype(np.float32), "stamp_ns": stamps,
            "timestamp": ts, "frame_index": np.arange(n, dtype=np.int64), "episode_index": np.full(n, ep_index, np.int64),
            "index": np.arange(index, index + n, dtype=np.int64), "task_index": np.zeros(n, np.int64),
        }
        cols.update({IMAGE_PREFIX + c: pngs[c] for c in cams if not video})
        for k, v in cols.items():
            if not k.startswith(IMAGE_PREFIX):
                stats[k].add(np.asarray(v))
        t0 = time.perf_counter()
        arrays = []
        for f in schema:
            v = cols[f.name]
            if pa.types.is_fixed_size_list(f.type):
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v).ravel()), f.type.list_size))
            else:
                arrays.append(pa.array(v, f.type))
        table = pa.Table.from_arrays(arrays, schema=schema)
        if writer is not None and data_bytes >= DATA_FILE_MB * 2**20:
            writer.close()
            writer, data_bytes = None, 0
            c_i, f_i = data_file
            data_file = (c_i + 1, 0) if f_i == CHUNKS_SIZE - 1 else (c_i, f_i + 1)
        if writer is None:
            path = tmp / DATA_PATH.format(chunk_index=data_file[0], file_index=data_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, schema, compression="snappy")
        writer.write_table(table)
        data_bytes += table.nbytes
        res.seconds["write"] += time.perf_counter() - t0
        episodes_rows.append({
            "episode_index": ep_index, "tasks": [task], "length": n,
            "data/chunk_index": data_file[0], "data/file_index": data_file[1],
            "dataset_from_index": index, "dataset_to_index": index + n, **meta,
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
            "source": str(bag), "start_stamp_ns": int(stamps[0]),
        })
        index += n
        res.frames += n

    try:
        for bag in paths:
            t0 = time.perf_counter()
            eps = extract_episodes(bag, data, 1, None, decode=False)
            res.seconds["extract"] += time.perf_counter() - t0
            for ep in eps:
                runs = thin_to_fps(ep.stamps_ns, fps)
                kept = sum(len(r) for r in runs)
                res.thinned += len(ep) - kept
                res.holes += len(runs) - 1
                if bar is not None:
                    bar.total += kept
                # one frame at a time: decoded, encoded (PNG or video) and released, so memory holds no episode of pixels
                for run in runs:
                    rows: list[int] = []
                    pngs: dict[str, list[dict[str, Any]]] = {c: [] for c in cams}
                    for i in run.tolist():
                        t0 = time.perf_counter()
                        try:
                            frames = {c: ep.images[c][i].rgb() for c in cams}
                        except MessageError as exc:  # dropped, as the training extraction drops it: a hole, the episode ends
                            res.undecodable += 1
                            log.warning("bag %s: frame at %d ns dropped: %s", bag, int(ep.stamps_ns[i]), exc)
                            flush(bag, ep, rows, pngs)
                            rows, pngs = [], {c: [] for c in cams}
                            continue
                        finally:
                            for c in cams:
                                ep.images[c][i] = None  # the pixels go once no other sample holds the frame
                            res.seconds["decode"] += time.perf_counter() - t0
                        if features is None:
                            features = _features({c: frames[c].shape for c in cams}, fps, video)
                            schema = _arrow_schema(features)
                            stats = {k: _RunningStats() for k in features}
                            if video:
                                videos = {c: _VideoWriter(tmp, IMAGE_PREFIX + c, fps, vcodec, crf) for c in cams}
                        if not rows and video:
                            for v in videos.values():
                                v.begin_episode()
                        ts_i = (int(ep.stamps_ns[i]) - int(ep.stamps_ns[rows[0] if rows else i])) / 1e9
                        for c in cams:
                            want = tuple(features[IMAGE_PREFIX + c]["shape"])
                            if frames[c].shape != want:
                                raise DatasetError(f"bag {str(bag)!r}: camera {c!r} frames are {frames[c].shape}, earlier ones {want}; "
                                                   "a LeRobot image feature has one shape: export bags of one camera resolution together")
                            stats[IMAGE_PREFIX + c].add(_pixel_sample(frames[c]))
                            if video:
                                videos[c].add_frame(frames[c], float(np.float32(ts_i)))
                            else:
                                t0 = time.perf_counter()
                                pngs[c].append({"bytes": _png(frames[c]), "path": None})
                                res.seconds["png"] += time.perf_counter() - t0
                        rows.append(i)
                        if bar is not None:
                            bar.update(1)
                    flush(bag, ep, rows, pngs)
        if not episodes_rows or features is None:
            raise DatasetError(f"bags {[str(p) for p in paths]}: no frame could be exported (every frame failed to decode)")
        t0 = time.perf_counter()
        if writer is not None:
            writer.close()
        for v in videos.values():
            v.close()
        res.seconds["write"] += time.perf_counter() - t0
        for c, v in videos.items():
            features[IMAGE_PREFIX + c]["info"] = v.info()
        _write_meta(tmp, features, fps, video, robot_type, task, episodes_rows, stats, data, paths)
        res.seconds["video"] = sum(v.seconds for v in videos.values())
        if out.exists():  # an empty directory given as --out
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        for closable in [writer, *videos.values()]:
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # the first error is the one to report
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    res.episodes = len(episodes_rows)
    res.seconds["total"] = time.perf_counter() - t_start
    return res


def _write_meta(root: Path, features: dict[str, dict[str, Any]], fps: int, video: bool, robot_type: str | None, task: str,
                rows: list[dict[str, Any]], stats: dict[str, _RunningStats], data: DataConfig, bags: list[Path]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = sum(r["length"] for r in rows)
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(rows), "total_frames": frames,
        "total_tasks": 1, "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": fps, "splits": {"train": f"0:{len(rows)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if video else None,
        "features": features,
        "vit_policy": {**CONVENTIONS, "labels": data.labels, "data": dataclasses.asdict(data), "bags": [str(b) for b in bags]},
    }
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    out_stats = {k: s.result(image=features[k]["dtype"] in ("image", "video")) for k, s in stats.items()}
    (root / "meta/stats.json").write_text(json.dumps(out_stats, indent=4))
    pq.write_table(_tasks_table([task]), root / "meta/tasks.parquet")
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    pq.write_table(pa.table(cols), path)


# --------------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------------


HUB_PREFIX = "hf://datasets/"


def from_hub(uri: str) -> Path:
    """``hf://datasets/<org>/<name>[@revision]``: the dataset's local snapshot, downloaded (once) into the Hugging Face cache."""
    repo, _, revision = uri[len(HUB_PREFIX):].partition("@")
    if repo.count("/") != 1:
        raise DatasetError(f"{uri!r} is not hf://datasets/<org>/<name>[@revision]; give e.g. hf://datasets/lerobot/pusht")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision or None))
    except Exception as exc:  # offline, unknown repo, no permission: one line with the way round it
        raise DatasetError(f"LeRobot dataset {uri!r} cannot be downloaded from the Hugging Face hub: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:300]}; on a machine that is online run huggingface-cli download "
                           f"--repo-type dataset {repo} --local-dir DIR, then give DIR") from None


def is_dataset(path: str | Path) -> bool:
    """A LeRobot dataset directory (it has meta/info.json), as opposed to a rosbag2 bag."""
    return (Path(path) / "meta" / "info.json").is_file()


def _fail(root: Path, what: str, fix: str) -> DatasetError:
    return DatasetError(f"LeRobot dataset {str(root)!r}: {what}; {fix}")


def load_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked to be a v3.0 dataset."""
    try:
        info = json.loads((root / "meta/info.json").read_text())
    except (OSError, ValueError) as exc:
        raise _fail(root, f"meta/info.json cannot be read: {type(exc).__name__}: {exc}", "copy the dataset again") from None
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3."):
        raise _fail(root, f"codebase_version {version!r}, not v3.x", "convert it with lerobot's convert_dataset_v21_to_v30 script")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise _fail(root, f"meta/info.json has no {key!r}", "copy the dataset again")
    return info


def _read_parquets(root: Path, folder: str, columns: list[str] | None = None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / folder).glob("*/*.parquet"))
    if not files:
        raise _fail(root, f"no parquet file under {folder}/", "copy the dataset again (or export it again)")
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=columns))
        except Exception as exc:  # truncated or corrupt
            raise _fail(root, f"{f.relative_to(root)} cannot be read: {type(exc).__name__}: {' '.join(str(exc).split())}",
                        "copy or export the dataset again") from None
    return pa.concat_tables(tables)


def _state_columns(root: Path, info: dict[str, Any], key: str) -> dict[str, int] | None:
    ft = info["features"].get(key)
    if ft is None:
        return None
    names = ft.get("names")
    if isinstance(names, dict):  # {"motors": [...]} in some datasets
        names = next(iter(names.values()), None)
    return {n: i for i, n in enumerate(names or [])}


def _pose_index(cols: dict[str, int] | None) -> list[int] | None:
    return [cols[n] for n in POSE_NAMES] if cols is not None and all(n in cols for n in POSE_NAMES) else None


def _plan(root: Path, data: DataConfig) -> tuple[dict[str, Any], list[int], int, list[int] | None, dict[str, int] | None, dict[str, str]]:
    """What :func:`read_episodes` reads from a dataset, checked against the data config without reading a frame."""
    info = load_info(root)
    feats = info["features"]
    fps = int(info["fps"])
    if abs(data.control_rate_hz - fps) > 1e-9:
        raise _fail(root, f"fps {fps} differs from data.control_rate_hz {data.control_rate_hz:g} (a label step is one frame)",
                    f"set data.control_rate_hz={fps} and policy.control_dt={1 / fps:g}, or export again with --fps")
    state_cols = _state_columns(root, info, "observation.state")
    pose = _pose_index(state_cols)
    if pose is None or "gripper" not in (state_cols or {}):
        have = sorted(state_cols) if state_cols else "no observation.state feature"
        missing = [n for n in STATE_NAMES if n not in (state_cols or {})]
        raise _fail(root, f"no EE pose: observation.state lacks {missing} (has {have})",
                    "vit_policy needs the end-effector position, quaternion (x, y, z, w) in the robot base frame and the gripper "
                    "opening in observation.state, named " + ", ".join(STATE_NAMES) + " (as vit-policy export-dataset writes them)")
    act_cols = _state_columns(root, info, "action")
    act_pose = _pose_index(act_cols)
    if act_pose is None and data.labels != "future_pose":
        raise _fail(root, f"action is not an EE target pose (names {sorted(act_cols) if act_cols else None})",
                    "use data.labels: future_pose (labels from the later frames' observation.state)")
    image_keys = {k for k, ft in feats.items() if ft.get("dtype") in ("image", "video")}
    keys = {}
    for cam, topic in data.cameras.items():
        key = topic if topic in image_keys else IMAGE_PREFIX + cam
        if key not in image_keys:
            example = sorted(image_keys)[0][len(IMAGE_PREFIX):] if image_keys else "cam"
            raise _fail(root, f"no image feature for camera {cam!r} (data.cameras.{cam}: looked for {key!r}; it has {sorted(image_keys)})",
                        f"name the camera after the feature (data.cameras: {{{example}: ...}}) or give the feature key as its value")
        keys[cam] = key
    return info, pose, state_cols["gripper"], act_pose, act_cols, keys  # type: ignore[index]


def check_dataset(root: str | Path, data: DataConfig) -> None:
    """Pre-flight of train: the dataset is v3 and has what the data config maps (DatasetError otherwise)."""
    _plan(Path(root), data)


def read_episodes(
    root: str | Path, data: DataConfig, chunk_size: int, image_size: tuple[int, int] | None = None
) -> list[Episode]:
    """A local LeRobotDataset v3 as episodes in the trainer's format (images resized to ``image_size``).

    Needs ``observation.state`` with the EE pose names x, y, z, qx, qy, qz, qw and gripper, an image
    feature for each of ``data.cameras`` (``observation.images.<name>``, or the feature key given as the
    camera's value) and fps equal to data.control_rate_hz. Raises DatasetError naming what is missing.
    """
    from vit_policy.images import resize_uint8

    _require()
    root = Path(root)
    info, pose, g_col, act_pose, act_cols, keys = _plan(root, data)
    feats = info["features"]
    columns = ["observation.state", "episode_index", "frame_index", "timestamp"]
    columns += ["action"] if act_pose is not None else []
    columns += ["stamp_ns"] if "stamp_ns" in feats else []
    columns += [k for k in keys.values() if feats[k]["dtype"] == "image"]
    table = _read_parquets(root, "data", columns)
    ep_col = np.asarray(table.column("episode_index").to_numpy(), np.int64)
    order = np.lexsort((np.asarray(table.column("frame_index").to_numpy()), ep_col))
    state_all = np.asarray(table.column("observation.state").combine_chunks().flatten().to_numpy(), np.float64).reshape(len(table), -1)
    action_all = (np.asarray(table.column("action").combine_chunks().flatten().to_numpy(), np.float64).reshape(len(table), -1)
                  if act_pose is not None else None)
    ts_all = np.asarray(table.column("timestamp").to_numpy(), np.float64)
    stamp_all = np.asarray(table.column("stamp_ns").to_numpy(), np.int64) if "stamp_ns" in feats else None
    ep_meta = _read_parquets(root, "meta/episodes").to_pylist() if any(feats[k]["dtype"] == "video" for k in keys.values()) else []
    ep_meta_by = {int(r["episode_index"]): r for r in ep_meta}
    episodes = []
    k = chunk_size
    for e in np.unique(ep_col).tolist():
        rows = order[ep_col[order] == e]
        n = len(rows)
        st = state_all[rows]
        pos, quat, grip = st[:, pose[:3]], st[:, pose[3:]], st[:, g_col]
        steps = np.arange(n)[:, None] + np.arange(k)[None]  # frame of step j: t + j (action at t + j is the target 1/fps ahead)
        if action_all is not None:
            a = action_all[rows]
            tgt_p, tgt_q, tgt_g = a[:, act_pose[:3]], a[:, act_pose[3:]], a[:, act_cols["gripper"]] if "gripper" in act_cols else grip  # type: ignore[index]
            mask = steps < n
        else:  # future_pose from the states: step j is frame t + j + 1
            steps = steps + 1
            tgt_p, tgt_q, tgt_g = pos, quat, grip
            mask = steps < n
        idx = np.minimum(steps, n - 1)
        dp, dr = pose_delta(np.repeat(pos, k, 0), np.repeat(quat, k, 0), tgt_p[idx.ravel()], tgt_q[idx.ravel()])
        act = np.concatenate([dp, rotvec_to_rot6d(dr), np.asarray(tgt_g)[idx.ravel()][:, None]], -1).reshape(n, k, 10)
        last = np.maximum(mask.sum(1) - 1, 0)  # padding holds the last real step, as the bag extraction does
        held = np.take_along_axis(act, last[:, None, None].repeat(10, axis=2), axis=1)
        act = np.where(mask[..., None], act, held)
        keep = mask.any(1)
        if not keep.any():
            continue
        stamps = stamp_all[rows] if stamp_all is not None else np.rint(ts_all[rows] * 1e9).astype(np.int64)
        images = {}
        for cam, key in keys.items():
            if feats[key]["dtype"] == "image":
                frames = [_decode_png(root, b["bytes"]) for b in table.column(key).take(rows).to_pylist()]
            else:
                frames = _decode_video(root, info, key, ep_meta_by.get(e), ts_all[rows])
            if image_size is not None:
                frames = [resize_uint8(f, image_size) for f in frames]
            images[cam] = np.stack(frames)[keep]
        episodes.append(Episode(
            source=f"{root}#episode_{e}", stamps_ns=stamps[keep], images=images, position=pos[keep], quaternion=quat[keep],
            gripper=grip[keep].astype(np.float32), action=act[keep].astype(np.float32), action_mask=mask[keep],
        ))
    if not episodes:
        raise _fail(root, "no episode with a usable frame", "export the dataset again")
    return episodes


def _decode_png(root: Path, raw: bytes | None) -> np.ndarray:
    from PIL import Image

    if raw is None:
        raise _fail(root, "an image cell holds a path, not embedded bytes", "embed the images (lerobot's finalize() does) or export again")
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _decode_video(root: Path, info: dict[str, Any], key: str, ep: dict[str, Any] | None, ts: np.ndarray) -> list[np.ndarray]:
    """The frames of one episode at ``from_timestamp + timestamp`` (within half a frame period)."""
    import av

    if ep is None:
        raise _fail(root, f"meta/episodes has no row for an episode of {key}", "copy or export the dataset again")
    path = root / info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                           file_index=ep[f"videos/{key}/file_index"])
    want = float(ep[f"videos/{key}/from_timestamp"]) + ts
    tol = 0.5 / float(info["fps"])
    out: list[np.ndarray | None] = [None] * len(want)
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            if want[0] > 1.0:  # to the keyframe before the episode (g=2: one is at most two frames back)
                c.seek(int((want[0] - 1.0) / s.time_base), stream=s, backward=True)
            j = 0
            for frame in c.decode(s):
                t = float(frame.pts * s.time_base)
                while j < len(want) and want[j] < t - tol:
                    j += 1
                if j >= len(want):
                    break
                if abs(t - want[j]) <= tol:
                    out[j] = frame.to_ndarray(format="rgb24")
                    j += 1
    except (OSError, av.error.FFmpegError) as exc:
        raise _fail(root, f"{path.relative_to(root)} cannot be decoded: {type(exc).__name__}: {exc}", "copy or export the dataset again") from None
    missing = [i for i, f in enumerate(out) if f is None]
    if missing:
        raise _fail(root, f"{path.relative_to(root)} has no frame at {want[missing[0]]:.4f} s ({len(missing)} of {len(want)} missing)",
                    "copy or export the dataset again")
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Human output
# --------------------------------------------------------------------------------------------------


def format_export(res: ExportResult) -> str:
    """One line: what an export wrote, what it left out and where its time went."""
    mb = res.bag_bytes / 2**20
    s = res.seconds
    return (f"wrote {res.out}: {res.episodes} episode(s), {res.frames} frames at {res.fps} fps "
            f"({res.thinned} thinned to 1/fps; {res.holes} ticks without a frame and {res.undecodable} undecodable frames, each ending "
            f"an episode) from {mb:.1f} MB of bags in {s['total']:.1f} s "
            f"({mb / max(s['total'], 1e-9):.1f} MB/s, {res.frames / max(s['total'], 1e-9):.0f} frames/s; "
            f"video encoding {s['video']:.1f} s, PNG {s['png']:.1f} s)")
