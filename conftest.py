"""Test-wide settings: one torch thread per process.

The models in the tests are tiny; on a 2-core machine where a DDS node, a torchrun peer or a simulator
runs beside the test process, one thread each is faster than two threads contending (replay tests:
116 s -> 20 s). Subprocesses inherit the limit through the environment.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)
