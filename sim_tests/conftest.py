"""The Reach chain trained once per test session, from what a robot records only: expert demos (rosbag2)
-> encoder pretrained on their frames labelled in hindsight -> train.py -> checkpoint.

Shared by the pretraining test, the closed-loop test (through PolicyRunner, in process) and the DDS
simulator-in-the-loop test (the real node in its own process), all in ``test_reach_chain.py``, so the slow
part runs once, on one pytest-xdist worker, started before the other tests.

No simulator label: the encoder learns from the demonstrations' own frames to place the observed EE and
where each demonstration ended (``vit_policy.pretrain.hindsight_points``), is frozen, and its two points
are the policy's tokens: the ``reach_hindsight`` recipe (``configs/sim/recipes/reach_hindsight.yaml``) on a
smaller budget. Measured on this 2-core machine, one thread: 100 demonstrations 24 s, pretraining 71 s
(1100 frames, 600 steps; held-out demonstrations' ends placed to 0.9 cm), 600 training steps 65 s; 15/20
closed-loop successes on new goals, random actions 2/20 (the test asks 12). The same chain with an encoder
pretrained on 2400 frames labelled by the simulator scored 16/20 in 330 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sim_tests.configuration import SimConfig, load_sim_config
from vit_policy.pretrain import PretrainResult

REACH_PRETRAIN_STEPS = 600
REACH_DEMOS = 100  # short demonstrations: the expert reaches within 7 steps, then holds
REACH_DEMO_STEPS = 10
REACH_TRAIN_STEPS = 600
REACH_IMAGE = 64  # px: test_vit sees 4 x 4 patches per camera
DEMO_SEED = 1000  # demonstrations use seeds 1000..1099; the tests evaluate on seeds from 5000


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
def reach_demos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The recorded expert demonstrations (rosbag2 directories), all the chain learns from."""
    from sim_tests.record import record_demonstrations

    root = tmp_path_factory.mktemp("reach_demos")
    infos = record_demonstrations(reach_sim_config([f"episode_steps={REACH_DEMO_STEPS}"]), root, REACH_DEMOS, seed=DEMO_SEED)
    return [str(root / i.bag) for i in infos]


@pytest.fixture(scope="session")
def pretrained_reach_encoder(reach_demos: list[str], tmp_path_factory: pytest.TempPathFactory) -> PretrainResult:
    import torch

    from sim_tests.demo import load_recipe
    from sim_tests.pretrain import pretrain_from_demonstrations

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("reach_encoder") / "reach.safetensors"
    return pretrain_from_demonstrations(reach_sim_config(), reach_demos, out, REACH_PRETRAIN_STEPS, load_recipe("reach_hindsight").pretrain_hindsight)


@pytest.fixture(scope="session")
def trained_reach(reach_demos: list[str], pretrained_reach_encoder: PretrainResult, tmp_path_factory: pytest.TempPathFactory) -> TrainedReach:
    import time

    import torch

    from sim_tests.demo import load_recipe
    from sim_tests.record import train_config_for
    from vit_policy.train import train

    root = tmp_path_factory.mktemp("reach")
    cfg = reach_sim_config()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    policy = [*load_recipe("reach_hindsight").policy_overrides, f"encoder.weights={pretrained_reach_encoder.path}"]  # points as tokens, frozen
    result = train(train_config_for(cfg, reach_demos, root, steps=REACH_TRAIN_STEPS, policy_overrides=policy))
    assert result.last is not None
    return TrainedReach(result.last, cfg, REACH_DEMOS, result.step, time.perf_counter() - t0)
