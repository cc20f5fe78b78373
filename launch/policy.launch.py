"""Launch the vit_policy policy node as a lifecycle node, configured and activated by the launch by default.

    ros2 launch vit_policy policy.launch.py checkpoint:=/path/to/checkpoint output_mode:=pose
    ros2 launch vit_policy policy.launch.py params_file:=/my/params.yaml namespace:=arm node_name:=left
    ros2 launch vit_policy policy.launch.py remappings:="/ee_pose:=/franka/ee_pose cmd/twist:=/servo/delta_twist_cmds"
    ros2 launch vit_policy policy.launch.py autostart:=false   # a lifecycle manager drives the transitions

``autostart:=true`` (default): the launch requests ``configure`` once the node is up and ``activate``
once it has configured (lifecycle events of launch_ros; a later deactivate is not undone). The node's
own ``autostart`` parameter is always false here, so only one party drives the transitions.

Parameters apply under any namespace and node name: a parameter file entry keyed by the node's
name in the root namespace (``policy_node:``, the form older parameter files used, or the
``node_name`` given) is passed re-keyed as ``/**/<node_name>:``; a file keyed ``/**:`` (as
``configs/ros/policy_node.yaml`` is) or by the fully qualified name is passed as it is. A file with no entry for the node is an error, not a node
silently running on defaults. Arguments left empty keep the value of the parameter file.

The node starts disabled: ``ros2 service call /<namespace>/<node_name>/enable std_srvs/srv/SetBool "{data: true}"``.
"""

import os
import re
import tempfile

import lifecycle_msgs.msg
import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

PACKAGE, EXECUTABLE, DEFAULT_NAME = "vit_policy", "policy_node", "policy_node"
TRUE = ("1", "true", "yes", "on")


def _fully_qualified(context, namespace: str, name: str) -> str:
    """The node's name as launch_ros resolves it (a relative namespace goes under a pushed ROS namespace)."""
    base = context.launch_configurations.get("ros_namespace", None) or ""
    ns = namespace if namespace.startswith("/") else f"{base.rstrip('/')}/{namespace}"
    parts = [p for p in ns.split("/") if p]
    return "/" + "/".join(parts + [name])


def _key_matches(key: str, fqn: str) -> bool:
    """Whether a parameter file key applies to ``fqn`` under rcl's rules (``*`` one token, ``**`` any number)."""
    tokens = [t for t in str(key).split("/") if t]
    pattern = "".join("(/[^/]+)*" if t == "**" else "/[^/]+" if t == "*" else "/" + re.escape(t) for t in tokens)
    return re.fullmatch(pattern, fqn) is not None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parameter_file_for(path: str, node_name: str, fqn: str):
    """``(path to pass, re-keyed keys)``: entries keyed by the node's root-namespace name re-keyed to ``/**/<name>``."""
    if not os.path.isfile(path):
        raise RuntimeError(f"params_file {path!r}: no such file")
    with open(path, encoding="utf-8") as f:
        content = yaml.safe_load(f) or {}
    if not isinstance(content, dict):
        raise RuntimeError(f"params_file {path}: expected a mapping of node names to 'ros__parameters'")
    own = {DEFAULT_NAME, node_name}
    rekeyed = [k for k in content if "*" not in str(k) and str(k).strip("/") in own and "/" not in str(k).strip("/")]
    if rekeyed:
        wildcard = f"/**/{node_name}"
        merged = content.get(wildcard, {})
        # the default name first, so that an entry for the given node name overrides it
        for key in sorted(rekeyed, key=lambda k: str(k).strip("/") != DEFAULT_NAME):
            merged = _merge(merged, content[key] or {})
        content = {k: v for k, v in content.items() if k not in rekeyed and k != wildcard}
        content[wildcard] = merged
    if not any(_key_matches(k, fqn) for k in content):
        raise RuntimeError(f"params_file {path} has no entry for the node {fqn} (keys: {', '.join(map(str, content)) or 'none'}); "
                           f"key it '/**:' or '{node_name}:'")
    if not rekeyed:
        return path, []
    with tempfile.NamedTemporaryFile("w", prefix=f"{node_name}_params_", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(content, f, default_flow_style=False, sort_keys=False)
        return f.name, rekeyed


def parse_remappings(text: str) -> list:
    """``"a:=b c:=d"`` (spaces, commas or semicolons between rules) -> ``[("a", "b"), ("c", "d")]``."""
    rules = []
    for rule in re.split(r"[\s,;]+", text.strip()):
        if not rule:
            continue
        src, sep, dst = rule.partition(":=")
        if not sep or not src or not dst or ":=" in dst:
            raise RuntimeError(f"remappings: {rule!r} is not 'from:=to'")
        rules.append((src, dst))
    return rules


def _launch_setup(context, *args, **kwargs):
    value = lambda name: LaunchConfiguration(name).perform(context).strip()  # noqa: E731
    name, namespace = value("node_name") or DEFAULT_NAME, value("namespace")
    params_file, rekeyed = parameter_file_for(value("params_file"), name, _fully_qualified(context, namespace, name))
    # launch_ros writes a dict under the node's fully qualified name, so it overrides the file; it
    # yaml-quotes plain str values, so a checkpoint named "123" stays a string
    overrides = {"use_sim_time": value("use_sim_time").lower() in TRUE, "autostart": False}
    for key in ("checkpoint", "output_mode"):
        if value(key):
            overrides[key] = value(key)
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=name,
        namespace=namespace,
        parameters=[params_file, overrides],
        remappings=parse_remappings(value("remappings")),
        output="screen",
        emulate_tty=True,
    )
    actions = []
    if rekeyed:
        actions.append(LogInfo(msg=f"{value('params_file')}: entries {rekeyed} applied as '/**/{name}' ({params_file})"))
    actions.append(node)
    if value("autostart").lower() in TRUE:
        actions += [
            # after the first successful configure (configuring -> inactive; deactivate also ends in inactive)
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="inactive", handle_once=True,
                entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                      transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))])),
            EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                        transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE)),
        ]
    return actions


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "configs", "ros", "policy_node.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file of the node"),
        DeclareLaunchArgument("checkpoint", default_value="", description="trained checkpoint directory (overrides the file)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace (relative topics resolve in it)"),
        DeclareLaunchArgument("node_name", default_value=DEFAULT_NAME, description="node name (two arms: two names or namespaces)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (simulation, bag replay)"),
        DeclareLaunchArgument("output_mode", default_value="", description="twist | pose | trajectory (overrides the file)"),
        DeclareLaunchArgument("remappings", default_value="", description="topic remappings 'from:=to', separated by spaces"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at start-up (false: a lifecycle manager drives the node)"),
        OpaqueFunction(function=_launch_setup),
    ])
