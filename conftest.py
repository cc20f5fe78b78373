"""Test-wide settings: one torch thread per process, and DDS domains that parallel workers never share.

The models in the tests are tiny; on a 2-core machine where a DDS node, a torchrun peer or a simulator
runs beside the test process, one thread each is faster than two threads contending (replay tests:
116 s -> 20 s), and a second thread spinning at OpenMP barriers while the cores are busy made a training
fixture 5.7x slower beside two CPU-bound jobs. Subprocesses inherit the limit through the environment.
``make test`` runs two pytest-xdist workers.
"""

import os
import random
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def worker_slot() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker; (0, 1) in a plain pytest run."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw")), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


@pytest.fixture(scope="session")
def dds_domain() -> Callable[[int, int], int]:
    """``pick(lo, hi)``: a ROS domain id in [lo, hi] that no other worker of this run draws (each takes its own
    residue class), preferring ids this worker has not used yet, so that two tests running at once never
    see each other's participants."""
    index, count = worker_slot()
    rng = random.Random(os.getpid() ^ time.time_ns())
    used: set[int] = set()

    def pick(lo: int, hi: int) -> int:
        mine = [d for d in range(lo, hi + 1) if d % count == index]
        if not mine:
            raise ValueError(f"domain range [{lo}, {hi}] has no id for worker {index} of {count}; widen it")
        domain = rng.choice([d for d in mine if d not in used] or mine)
        used.add(domain)
        return domain

    return pick
