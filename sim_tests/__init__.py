"""MuJoCo Fetch tasks as a robot: env wrapper, scripted experts, rosbag2 demonstrations, closed loop.

MuJoCo picks its GL backend when it is first imported: render on the CPU through EGL unless told
otherwise (set here, so that importing any part of this package comes first). ``fetch_env`` loads
triton before the first GL context (why: its docstring).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
