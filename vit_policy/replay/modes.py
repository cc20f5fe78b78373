"""The two replay modes of one policy on one bag, both scored against the labels of ``extract_episodes``.

* **faithful** (``run_faithful``): the bag's messages are fed in bag-time order through the node's
  input router (``vit_policy.inputs``, via ``PolicyRunner``) on a simulated clock that ticks at the
  control rate in bag time. Inference runs inline (``runtime.synchronous``) and a chunk becomes
  available ``latency`` after its observation (the configured value, or the measured one). The
  commands the node would have published are recorded as a ``CommandStream``.
* **batch** (``run_batch``): the synchronised frames of the extracted episodes (the training path)
  go through ``policy.predict`` in batches, for throughput.

A chunk is scored against the labels of the frame with the same observation stamp.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vit_policy.config import ConfigError
from vit_policy.replay.configuration import ReplayConfig
from vit_policy.inputs import InputSpec
from vit_policy.observation import ActionChunk
from vit_policy.replay.metrics import CommandStream, Predictions

if TYPE_CHECKING:
    from vit_policy.data.bags import Episode
    from vit_policy.model.policy import Policy

MODES = ("faithful", "batch")


@dataclass
class RecordedTrack:
    """One extracted episode's EE positions over time, for the plots."""

    stamps_ns: np.ndarray
    position: np.ndarray


@dataclass
class BagResult:
    """One checkpoint on one bag in one mode."""

    bag: str
    mode: str
    predictions: Predictions
    recorded: list[RecordedTrack]
    commands: CommandStream | None = None
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frames_lost: dict[str, int] = field(default_factory=dict)
    attention: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the replay
    bag_seconds: float = 0.0  # bag time covered
    episodes: list["Episode"] = field(default_factory=list, repr=False)  # the labels (faithful: for the stream)
    latency_used_ms: float | None = None  # faithful: the delay each chunk was released after

    @property
    def t0_ns(self) -> int:
        starts = [int(r.stamps_ns[0]) for r in self.recorded if len(r.stamps_ns)]
        return min(starts) if starts else 0


# --------------------------------------------------------------------------------------------------
# Batch mode
# --------------------------------------------------------------------------------------------------


def episode_batch(policy: "Policy", ep: "Episode", index: np.ndarray) -> dict[str, Any]:
    """Frames ``index`` of an episode in the model's batch format."""
    cams = policy.cfg.cameras
    missing = [c for c in cams if c not in ep.images]
    if missing:
        raise ConfigError(f"data.cameras: the policy needs camera(s) {missing}; the data config extracts {sorted(ep.images)}")
    batch: dict[str, Any] = {
        "images": {c: torch.from_numpy(np.ascontiguousarray(ep.images[c][index])) for c in cams},
        "position": torch.as_tensor(ep.position[index], dtype=torch.float32),
        "quaternion": torch.as_tensor(ep.quaternion[index], dtype=torch.float32),
        "gripper": torch.as_tensor(ep.gripper[index], dtype=torch.float32),
        "stamp_ns": torch.as_tensor(np.asarray(ep.stamps_ns)[index], dtype=torch.int64),
    }
    if policy.cfg.pose.history:  # the training dataset's history: the previous H samples, oldest first
        from vit_policy.data.dataset import episode_history

        hist = np.stack([episode_history(ep, int(t), policy.cfg.pose.history) for t in index])
        batch["history"] = torch.as_tensor(hist, dtype=torch.float32)
    return batch


def run_batch(policy: "Policy", episodes: list["Episode"], batch_size: int) -> tuple[Predictions, float]:
    """Batched ``policy.predict`` over every synchronised frame; returns predictions and wall seconds."""
    parts = []
    t0 = time.perf_counter()
    for ep in episodes:
        n = len(ep.stamps_ns)
        chunks: list[ActionChunk] = []
        for s in range(0, n, batch_size):
            chunks += policy.predict(episode_batch(policy, ep, np.arange(s, min(n, s + batch_size))))  # type: ignore[operator]
        parts.append(Predictions.from_chunks(chunks, ep, np.arange(n)))
    return Predictions.concat(parts), time.perf_counter() - t0


def attention_samples(policy: "Policy", episodes: list["Episode"], n: int) -> list[dict[str, Any]]:
    """Attention of the action queries on ``n`` frames spread evenly over the episodes."""
    frames = [(e, i) for e, ep in enumerate(episodes) for i in range(len(ep.stamps_ns))]
    if n <= 0 or not frames:
        return []
    t0 = min(int(ep.stamps_ns[0]) for ep in episodes if len(ep.stamps_ns))
    out = []
    for j in np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int):
        e, i = frames[j]
        ep = episodes[e]
        chunk = policy.predict(episode_batch(policy, ep, np.array([i])), return_attention=True)[0]  # type: ignore[index]
        out.append({"bag": ep.source, "time_s": (int(ep.stamps_ns[i]) - t0) / 1e9, "images": {c: ep.images[c][i] for c in policy.cfg.cameras},
                    "attention": dict(chunk.attention or {})})
    return out


# --------------------------------------------------------------------------------------------------
# Faithful mode: the bag through the node's decoding and PolicyRunner on a simulated clock
# --------------------------------------------------------------------------------------------------


class _RecordingPolicy:
    """What the runner sees as its policy: forwards ``predict`` and records each chunk with its inference time.

    ``latency_ms`` is the wall time of each call (this machine's inference latency).
    """

    def __init__(self, policy: "Policy", clock: list[int]) -> None:
        self.policy, self.cfg, self.spec, self._clock = policy, policy.cfg, policy.spec, clock
        self.ood = getattr(policy, "ood", None)  # the runner scores (and with safety.ood_stop, stops) like the node's
        self.chunks: list[tuple[int, ActionChunk]] = []  # (simulated time of the inference, chunk)
        self.latency_ms: list[float] = []

    def predict(self, obs: Any, return_attention: bool = False) -> Any:
        t0 = time.perf_counter()
        chunk = self.policy.predict(obs, return_attention=return_attention)
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        self.chunks.append((self._clock[0], chunk))  # type: ignore[arg-type]
        return chunk


def measure_latency(policy: "Policy", episodes: list["Episode"], repeats: int = 5) -> float:
    """Median wall time (s) of one single-observation ``predict`` on this machine, after a warm-up."""
    ep = next(e for e in episodes if len(e.stamps_ns))
    batch = episode_batch(policy, ep, np.array([0]))
    policy.predict(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_faithful(policy: "Policy", bag: str | Path, episodes: list["Episode"], cfg: ReplayConfig) -> BagResult:
    """Replay one bag through PolicyRunner on bag time; score its chunks and its command stream.

    The clock ticks every control period from the bag's first message (the extraction's grid); a tick
    sees the messages that arrived up to its time. Inference runs inline; its chunk is released
    ``latency`` later (runtime.inference_latency_s, or the latency measured here when null).
    """
    from vit_policy.data.bags import iter_bag_messages, with_control_ticks
    from vit_policy.runtime import PolicyRunner

    latency_s = cfg.runtime.inference_latency_s
    if latency_s is None:
        latency_s = measure_latency(policy, episodes)
    runtime = dataclasses.replace(cfg.runtime, synchronous=True, inference_latency_s=latency_s)
    period = runtime.control_period_ns
    clock = [0]
    recorder = _RecordingPolicy(policy, clock)
    runner = PolicyRunner(recorder, runtime, cfg.safety, clock=lambda: clock[0], inputs=InputSpec.from_data(cfg.data))
    runner.set_enabled(True)
    assert runner.router is not None
    # the node's inputs, plus the command topics: the extraction reads them too, so the clock starts alike
    topics = runner.router.topics | {t for t in (cfg.data.command_topic, cfg.data.command_gripper_topic) if t}
    commands, chunk_ids = [], []
    release: list[int] = []  # simulated time each chunk becomes available
    first: int | None = None
    last = 0
    delay = int(round(latency_s * 1e9))

    def tick(now: int) -> None:
        clock[0] = now
        n = len(recorder.chunks)
        commands.append(runner.tick(now))
        release.extend(now + delay for _ in range(len(recorder.chunks) - n))
        chunk_ids.append(bisect.bisect_right(release, now))  # chunks released by now (release times increase)

    t_wall = time.perf_counter()
    for t_bag, item in with_control_ticks(iter_bag_messages(bag, topics), period):
        if item is None:
            tick(t_bag)
            continue
        first = t_bag if first is None else first
        clock[0] = last = t_bag
        if item[0] in runner.router.topics:
            runner.on_message(item[0], item[1], arrival_ns=t_bag)
    seconds = time.perf_counter() - t_wall

    stream = CommandStream.from_commands(commands, chunk_ids)
    preds, unmatched = _match_chunks([c for _, c in recorder.chunks], episodes)
    lost = {"ticks": len(commands), "commanding": int((~stream.is_stop).sum()),
            "waiting": stream.status.count("waiting"), "stale": stream.status.count("stale"),
            "fault": stream.status.count("fault"), "ood": stream.status.count("ood"), "rejected_inputs": int(sum(runner.rejected.values())),
            "inferences": len(recorder.chunks), "unmatched_chunks": unmatched}
    return BagResult(str(bag), "faithful", preds, [], commands=stream, latencies_ms=np.asarray(recorder.latency_ms),
                     frames_lost=lost, seconds=seconds, bag_seconds=(last - (first or last)) / 1e9,
                     episodes=episodes, latency_used_ms=latency_s * 1e3)


def _match_chunks(chunks: list[ActionChunk], episodes: list["Episode"]) -> tuple[Predictions, int]:
    """Pair each chunk with the extracted frame of the same observation stamp; count those without one."""
    where = {int(s): (e, i) for e, ep in enumerate(episodes) for i, s in enumerate(ep.stamps_ns)}
    by_ep: dict[int, list[tuple[int, ActionChunk]]] = {}
    unmatched = 0
    for c in chunks:
        hit = where.get(int(c.stamp_ns))
        if hit is None:
            unmatched += 1
            continue
        by_ep.setdefault(hit[0], []).append((hit[1], c))
    parts = [Predictions.from_chunks([c for _, c in items], episodes[e], np.array([i for i, _ in items]))
             for e, items in sorted(by_ep.items())]
    if not parts:
        raise ValueError("faithful replay: no chunk matches an extracted frame (is the runtime's sync rule the data config's?)")
    return Predictions.concat(parts), unmatched
