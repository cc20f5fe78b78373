"""Launch the vit_policy policy node (a lifecycle node that configures and activates itself by default).

    ros2 launch vit_policy policy.launch.py checkpoint:=/path/to/checkpoint output_mode:=pose
    ros2 launch vit_policy policy.launch.py params_file:=/my/params.yaml namespace:=arm use_sim_time:=true

Arguments left empty keep the value of the parameter file. The node starts disabled: call
``ros2 service call /<namespace>/policy_node/enable std_srvs/srv/SetBool "{data: true}"``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context, *args, **kwargs):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {"use_sim_time": value("use_sim_time").lower() in ("1", "true", "yes"),
                 "autostart": value("autostart").lower() in ("1", "true", "yes")}
    for name in ("checkpoint", "output_mode"):
        if value(name):
            overrides[name] = value(name)
    return [Node(
        package="vit_policy",
        executable="policy_node",
        name="policy_node",
        namespace=value("namespace"),
        parameters=[value("params_file"), overrides],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory("vit_policy"), "configs", "ros", "policy_node.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file of the node"),
        DeclareLaunchArgument("checkpoint", default_value="", description="trained checkpoint directory (overrides the file)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace (relative topics resolve in it)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (simulation, bag replay)"),
        DeclareLaunchArgument("output_mode", default_value="", description="twist | pose | trajectory (overrides the file)"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure and activate at start-up"),
        OpaqueFunction(function=_node),
    ])
