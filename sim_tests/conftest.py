"""The Reach chain trained once per test session: labelled frames -> encoder -> expert demos (rosbag2) ->
train.py -> checkpoint.

Shared by the pretraining test, the closed-loop test (through PolicyRunner, in process) and the DDS
simulator-in-the-loop test (the real node in its own process), all in ``test_reach_chain.py``, so the slow
part runs once, on one pytest-xdist worker, started before the other tests.

The encoder is pretrained on frames labelled with the simulator's goal and EE positions (simulator
labels), frozen, and its two points are the policy's tokens: the policy settings of the ``reach_labels``
recipe (``configs/sim/recipes/reach_labels.yaml``) on a smaller budget. Measured on this 2-core machine,
one thread: pretraining 180 s (2400 frames rendered, 600 steps), 100 demonstrations 43 s, 600 training
steps 86 s; 16/20 closed-loop successes on new goals (the test asks 12). The label-free chain (300
demonstrations, 5000 steps from scratch: 17/20) took 1216 s; ``benchmarks/sim_success.py --recipe
reach_no_labels`` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sim_tests.configuration import SimConfig, load_sim_config
from vit_policy.pretrain import PretrainResult

REACH_PRETRAIN_RESETS = 300  # x 8 labelled frames
REACH_PRETRAIN_STEPS = 600
REACH_DEMOS = 100  # short demonstrations: the expert reaches within 7 steps, then holds
REACH_DEMO_STEPS = 10
REACH_TRAIN_STEPS = 600
REACH_IMAGE = 64  # px: test_vit sees 4 x 4 patches per camera
DEMO_SEED = 1000  # demonstrations use seeds 1000..1099, pretraining from 1_000_000; the tests evaluate on seeds from 5000


@dataclass
class TrainedReach:
    checkpoint: Path
    sim: SimConfig  # cameras and frame size of the demonstrations
    demos: int
    steps: int
    train_s: float


def reach_sim_config(overrides: list[str] | None = None) -> SimConfig:
    """configs/sim/fetch_reach.yaml at 64 px with the goal marker drawn at the 5 cm success radius."""
    from vit_policy.config import default_config

    base = [f"image_size={REACH_IMAGE}", "target_marker_radius=0.05"]
    return load_sim_config(default_config("sim/fetch_reach.yaml"), [*base, *(overrides or [])])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Reach chain's module first, then the other slow tests: with ``--dist loadfile --no-loadscope-reorder``
    the two longest runs start at once on the two workers."""
    def rank(item: pytest.Item) -> int:
        return 0 if item.path.name == "test_reach_chain.py" else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


@pytest.fixture(scope="session")
def pretrained_reach_encoder(tmp_path_factory: pytest.TempPathFactory) -> PretrainResult:
    import torch

    from sim_tests.pretrain import pretrain_for_task

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("reach_encoder") / "reach.safetensors"
    return pretrain_for_task(reach_sim_config(), out, resets=REACH_PRETRAIN_RESETS, steps=REACH_PRETRAIN_STEPS)


@pytest.fixture(scope="session")
def trained_reach(pretrained_reach_encoder: PretrainResult, tmp_path_factory: pytest.TempPathFactory) -> TrainedReach:
    import time

    import torch

    from sim_tests.demo import load_recipe
    from sim_tests.record import record_demonstrations, train_config_for
    from vit_policy.train import train

    root = tmp_path_factory.mktemp("reach")
    record_demonstrations(reach_sim_config([f"episode_steps={REACH_DEMO_STEPS}"]), root / "demos", REACH_DEMOS, seed=DEMO_SEED)
    cfg = reach_sim_config()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    policy = [*load_recipe("reach_labels").policy_overrides, f"encoder.weights={pretrained_reach_encoder.path}"]  # points as tokens, frozen
    result = train(train_config_for(cfg, [str(root / "demos" / "episode_*")], root, steps=REACH_TRAIN_STEPS, policy_overrides=policy))
    assert result.last is not None
    return TrainedReach(result.last, cfg, REACH_DEMOS, result.step, time.perf_counter() - t0)
