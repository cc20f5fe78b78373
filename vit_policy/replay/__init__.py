"""Offline replay evaluation of checkpoints on recorded rosbag2 bags: metrics, ``metrics.json``, report.

Two modes, one set of metrics:

* **faithful**: the bag's messages go in bag-time order through the node's input router and
  ``PolicyRunner`` on a simulated clock; the commands the node would have published are scored too.
* **batch**: the synchronised frames of ``data.bags.extract_episodes`` (the training path) go through
  ``policy.predict`` in batches, for throughput.

``metrics``: pure array metrics (chunks against labels, executed streams, jerk, latency).
``modes``: the two modes of one policy on one bag. ``evaluation``: checks, several checkpoints on
several bags, ``metrics.json`` and the report (``vit_policy.report``), settings recovered from a YAML
or the checkpoint.
"""

from vit_policy.replay.configuration import ReplayConfig, ReplayMode
from vit_policy.replay.evaluation import (
    CheckpointResult, check_bag, check_checkpoints, load_replay_config, replay_checkpoints, replay_policies, replay_settings,
)
from vit_policy.replay.metrics import (
    CommandStream, Predictions, chunk_metrics, error_summary, jerk, latency_summary, recorded_target_at, stream_metrics,
)
from vit_policy.replay.modes import (
    MODES, BagResult, RecordedTrack, attention_samples, episode_batch, measure_latency, run_batch, run_faithful,
)

__all__ = [
    "MODES", "BagResult", "CheckpointResult", "ReplayConfig", "ReplayMode", "CommandStream", "Predictions", "RecordedTrack", "attention_samples",
    "check_bag", "check_checkpoints", "chunk_metrics", "episode_batch", "error_summary", "jerk", "latency_summary",
    "load_replay_config", "measure_latency", "recorded_target_at", "replay_checkpoints", "replay_policies",
    "replay_settings", "run_batch", "run_faithful", "stream_metrics",
]
