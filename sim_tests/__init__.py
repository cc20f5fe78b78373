"""MuJoCo Fetch tasks as a robot: env wrapper, scripted experts, rosbag2 demonstrations, closed loop.

MuJoCo picks its GL backend when it is first imported: render on the CPU through EGL unless told
otherwise (set here, so that importing any part of this package comes first).

Mesa's software renderer loads its own LLVM into the process with the first GL context; loading
triton's LLVM after that crashes the process (segfault in ``import triton``, which torch pulls in
lazily, e.g. when timm builds a model after frames were rendered). Loading triton first avoids it.
"""

import importlib.util
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
