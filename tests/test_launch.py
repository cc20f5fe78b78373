"""launch/policy.launch.py: what it would start, loaded with stand-ins for ``launch`` and ``launch_ros``.

``launch`` and ``launch_ros`` come with a ROS install and have no wheel, so small stand-ins replace
them in ``sys.modules`` (``ament_index_python.packages`` too, pointed at this checkout, and
``lifecycle_msgs`` where its wheel is absent). Each stand-in records the arguments it is built with and
takes them with the signature of the real class or function (read in ros2/launch and ros2/launch_ros,
Humble to Rolling): keyword-only arguments, ``LifecycleNode``'s required ``name`` and ``namespace``,
``parameters`` a list, remappings 2-tuples, ``ChangeState`` transition ids from
``lifecycle_msgs/Transition``, and ``OnStateTransition``'s matcher as launch_ros builds it (it compares
the ``StateTransition`` event's action, start and goal state labels). The test runs the description
as ``ros2 launch`` would (arguments with their defaults, command-line values over them, the
``OpaqueFunction`` called with a context) and checks the actions: executable, package, namespace,
name, parameter files, remappings, and with ``autostart`` the configure request and the activate that
follows the first configure.

Where rclpy is importable, the parameter files the launch passes are also given to a real rclpy node
under ``-r __ns:=/arm -r __node:=left``, to check rcl applies them there.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = ROOT / "launch" / "policy.launch.py"
CONFIGURE, ACTIVATE, DEACTIVATE = 1, 3, 4  # lifecycle_msgs/msg/Transition


# --------------------------------------------------------------------------------------------------
# Stand-ins (signatures of launch / launch_ros; they record, they do not run anything)
# --------------------------------------------------------------------------------------------------


class LaunchDescription:
    def __init__(self, initial_entities=None) -> None:
        self.entities = list(initial_entities or [])


class Action:
    def __init__(self, **kwargs) -> None:  # launch.Action takes only 'condition'
        assert set(kwargs) <= {"condition"}, f"unexpected arguments {set(kwargs)}"


class DeclareLaunchArgument(Action):
    def __init__(self, name, *, default_value=None, description=None, choices=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction(Action):
    def __init__(self, *, function, args=None, kwargs=None, **left_over_kwargs) -> None:
        super().__init__(**left_over_kwargs)
        assert callable(function)
        self.function, self.args, self.kwargs = function, list(args or []), dict(kwargs or {})

    def execute(self, context):
        return self.function(context, *self.args, **self.kwargs)


class EmitEvent(Action):
    def __init__(self, *, event, **kwargs) -> None:
        super().__init__(**kwargs)
        assert isinstance(event, ChangeState), f"EmitEvent() expected an event instance, got {event!r}"
        self.event = event


class RegisterEventHandler(Action):
    def __init__(self, event_handler, **kwargs) -> None:
        super().__init__(**kwargs)
        assert isinstance(event_handler, EventHandler)
        self.event_handler = event_handler


class LogInfo(Action):
    def __init__(self, *, msg, **kwargs) -> None:
        super().__init__(**kwargs)
        self.msg = msg


def matches_action(target_action):
    return lambda action: action == target_action  # launch.events.matches_action


class LaunchConfiguration:
    def __init__(self, variable_name, *, default=None) -> None:
        self.variable_name, self.default = variable_name, default

    def perform(self, context) -> str:
        if self.variable_name not in context.launch_configurations:
            if self.default is None:
                raise LookupError(f"launch configuration '{self.variable_name}' does not exist")
            return self.default
        return context.launch_configurations[self.variable_name]


class Node(Action):
    def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
                 remappings=None, ros_arguments=None, arguments=None, **kwargs) -> None:
        process = {k: kwargs.pop(k) for k in list(kwargs) if k in ("output", "emulate_tty", "respawn", "respawn_delay",
                                                                   "sigterm_timeout", "sigkill_timeout", "additional_env")}
        super().__init__(**kwargs)  # ExecuteProcess options taken above; anything else is an error
        if parameters is not None and not isinstance(parameters, list):
            raise TypeError("parameters: expected a list")  # ensure_argument_type(parameters, (list), ...)
        for rule in remappings or []:
            if not isinstance(rule, tuple) or len(rule) != 2:
                raise TypeError(f"remap_rule must be a tuple of length 2, got {rule!r}")
        self.executable, self.package, self.name, self.namespace = executable, package, name, namespace
        self.parameters, self.remappings, self.process = parameters, list(remappings or []), process


class LifecycleNode(Node):
    def __init__(self, *, name, namespace, **kwargs) -> None:
        super().__init__(name=name, namespace=namespace, **kwargs)


class EventHandler:
    def __init__(self, *, matcher, entities=None, handle_once=False) -> None:
        self.matcher, self.entities, self.handle_once = matcher, list(entities or []), handle_once


class StateTransition:
    """launch_ros.events.lifecycle.StateTransition: the labels of a lifecycle_msgs/TransitionEvent."""

    def __init__(self, *, action, start_state: str, goal_state: str, transition: str = "") -> None:
        self.action, self.start_state, self.goal_state, self.transition = action, start_state, goal_state, transition


class OnStateTransition(EventHandler):
    def __init__(self, *, entities, target_lifecycle_node=None, transition=None, start_state=None, goal_state=None,
                 matcher=None, **kwargs) -> None:
        if not isinstance(target_lifecycle_node, (LifecycleNode, type(None))):
            raise RuntimeError("OnStateTransition requires a 'LifecycleNode' action as the target")
        if matcher is None:
            def matcher(event):
                return (isinstance(event, StateTransition)
                        and (target_lifecycle_node is None or event.action == target_lifecycle_node)
                        and (transition is None or event.transition == transition)
                        and (start_state is None or event.start_state == start_state)
                        and (goal_state is None or event.goal_state == goal_state))
        super().__init__(matcher=matcher, entities=entities, **kwargs)


class ChangeState:
    valid_transitions = dict.fromkeys(range(9))  # TRANSITION_CREATE (0) .. TRANSITION_DESTROY (8)

    def __init__(self, *, lifecycle_node_matcher, transition_id) -> None:
        if transition_id not in self.valid_transitions:
            raise ValueError(f"given transition_id of '{transition_id}'")
        self.lifecycle_node_matcher, self.transition_id = lifecycle_node_matcher, transition_id


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """Replace launch, launch_ros and ament_index_python in sys.modules (lifecycle_msgs only where it has no wheel)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # re-keyed parameter files go here, not to /tmp
    modules = {
        "launch": _module("launch", LaunchDescription=LaunchDescription, EventHandler=EventHandler),
        "launch.actions": _module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument, EmitEvent=EmitEvent,
                                  LogInfo=LogInfo, OpaqueFunction=OpaqueFunction, RegisterEventHandler=RegisterEventHandler),
        "launch.events": _module("launch.events", matches_action=matches_action),
        "launch.substitutions": _module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch_ros": _module("launch_ros"),
        "launch_ros.actions": _module("launch_ros.actions", Node=Node, LifecycleNode=LifecycleNode),
        "launch_ros.event_handlers": _module("launch_ros.event_handlers", OnStateTransition=OnStateTransition),
        "launch_ros.events": _module("launch_ros.events"),
        "launch_ros.events.lifecycle": _module("launch_ros.events.lifecycle", ChangeState=ChangeState, StateTransition=StateTransition),
        "ament_index_python": _module("ament_index_python"),
        "ament_index_python.packages": _module("ament_index_python.packages", get_package_share_directory=_share_directory),
    }
    if importlib.util.find_spec("lifecycle_msgs") is None:
        transition = SimpleNamespace(TRANSITION_CONFIGURE=CONFIGURE, TRANSITION_ACTIVATE=ACTIVATE)
        modules["lifecycle_msgs"] = _module("lifecycle_msgs")
        modules["lifecycle_msgs.msg"] = _module("lifecycle_msgs.msg", Transition=transition)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def _share_directory(package: str) -> str:
    assert package == "vit_policy"
    return str(ROOT)  # the installed share directory holds configs/ like the checkout (setup.py data_files)


def run_launch(**arguments: str) -> tuple[list[DeclareLaunchArgument], list[Any]]:
    """``ros2 launch vit_policy policy.launch.py name:=value ...``: the declared arguments and the actions made."""
    spec = importlib.util.spec_from_file_location("policy_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    names = {d.name for d in declared}
    assert not set(arguments) - names, f"undeclared launch arguments {set(arguments) - names}"
    context = SimpleNamespace(launch_configurations={**{d.name: d.default_value for d in declared}, **arguments})
    actions = []
    for entity in description.entities:
        if isinstance(entity, OpaqueFunction):
            actions += entity.execute(context) or []
        else:
            assert isinstance(entity, DeclareLaunchArgument), entity
    return declared, actions


def the_node(actions: list[Any]) -> LifecycleNode:
    nodes = [a for a in actions if isinstance(a, Node)]
    assert len(nodes) == 1 and isinstance(nodes[0], LifecycleNode), actions
    return nodes[0]


def read(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def write_params(path: Path, key: str, params: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump({key: {"ros__parameters": params}}))
    return str(path)


SHIPPED = ROOT / "configs" / "ros" / "policy_node.yaml"


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_defaults_start_the_lifecycle_node_with_the_shipped_parameters(stand_ins):
    declared, actions = run_launch()
    assert {d.name for d in declared} == {"params_file", "checkpoint", "namespace", "node_name", "use_sim_time",
                                          "output_mode", "remappings", "autostart"}
    assert {d.name: d.default_value for d in declared}["params_file"] == str(SHIPPED)
    node = the_node(actions)
    assert (node.package, node.executable, node.name, node.namespace) == ("vit_policy", "policy_node", "policy_node", "")
    assert node.process == {"output": "screen", "emulate_tty": True}
    assert node.remappings == []
    params_file, overrides = node.parameters
    assert overrides == {"use_sim_time": False, "autostart": False}  # the launch drives the transitions, not the node
    shipped = read(str(SHIPPED))
    (key, entry), = shipped.items()
    if key == "/**":  # already applies under any namespace and name: passed as it is
        assert params_file == str(SHIPPED)
    else:  # keyed by the node's name: passed re-keyed, every value kept
        assert key.strip("/") == "policy_node"
        assert read(params_file) == {"/**/policy_node": entry}
        assert any(isinstance(a, LogInfo) and "/**/policy_node" in a.msg for a in actions)


def test_namespace_rename_remappings_and_overrides(stand_ins, tmp_path):
    params = write_params(tmp_path / "p.yaml", "policy_node", {"output_mode": "twist", "runtime": {"control_rate_hz": 17.0}})
    _, actions = run_launch(params_file=params, namespace="arm", node_name="left", checkpoint="/ckpt/123",
                            output_mode="pose", use_sim_time="true",
                            remappings="/ee_pose:=/franka/ee_pose  cmd/twist:=/servo/delta_twist_cmds,"
                                       "/camera/front/image_raw:=/realsense/color/image_raw")
    node = the_node(actions)
    assert (node.name, node.namespace) == ("left", "arm")
    assert node.remappings == [("/ee_pose", "/franka/ee_pose"), ("cmd/twist", "/servo/delta_twist_cmds"),
                               ("/camera/front/image_raw", "/realsense/color/image_raw")]
    params_file, overrides = node.parameters
    assert read(params_file) == {"/**/left": {"ros__parameters": {"output_mode": "twist", "runtime": {"control_rate_hz": 17.0}}}}
    assert overrides == {"use_sim_time": True, "autostart": False, "checkpoint": "/ckpt/123", "output_mode": "pose"}


def test_parameter_file_keyed_for_any_namespace_is_passed_as_it_is(stand_ins, tmp_path):
    wildcard = write_params(tmp_path / "any.yaml", "/**", {"output_mode": "pose"})
    _, actions = run_launch(params_file=wildcard, namespace="arm")
    assert the_node(actions).parameters[0] == wildcard
    assert not any(isinstance(a, LogInfo) for a in actions)
    full = write_params(tmp_path / "full.yaml", "/arm/left", {"output_mode": "pose"})
    _, actions = run_launch(params_file=full, namespace="arm", node_name="left")
    assert the_node(actions).parameters[0] == full


def test_renamed_node_entry_overrides_the_default_name_entry(stand_ins, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({
        "policy_node": {"ros__parameters": {"output_mode": "twist", "safety": {"max_linear_speed": 0.1, "max_step": 0.02}}},
        "left": {"ros__parameters": {"safety": {"max_linear_speed": 0.05}}},
        "/other_arm/right": {"ros__parameters": {"output_mode": "pose"}},
    }))
    _, actions = run_launch(params_file=str(path), namespace="arm", node_name="left")
    assert read(the_node(actions).parameters[0]) == {
        "/other_arm/right": {"ros__parameters": {"output_mode": "pose"}},
        "/**/left": {"ros__parameters": {"output_mode": "twist", "safety": {"max_linear_speed": 0.05, "max_step": 0.02}}},
    }


def test_a_file_without_an_entry_for_the_node_and_bad_remappings_are_errors(stand_ins, tmp_path):
    other = write_params(tmp_path / "other.yaml", "/other_arm/policy_node", {"output_mode": "pose"})
    with pytest.raises(RuntimeError, match=r"no entry for the node /arm/policy_node \(keys: /other_arm/policy_node\)"):
        run_launch(params_file=other, namespace="arm")
    with pytest.raises(RuntimeError, match="'cmd/twist' is not 'from:=to'"):
        run_launch(remappings="cmd/twist")


def test_autostart_configures_then_activates_after_the_first_configure(stand_ins):
    _, actions = run_launch(namespace="arm")
    node = the_node(actions)
    assert [type(a).__name__ for a in actions if not isinstance(a, LogInfo)] == ["LifecycleNode", "RegisterEventHandler", "EmitEvent"]
    register, configure = actions[-2], actions[-1]
    assert configure.event.transition_id == CONFIGURE
    assert configure.event.lifecycle_node_matcher(node) and not configure.event.lifecycle_node_matcher(object())
    handler = register.event_handler
    assert isinstance(handler, OnStateTransition) and handler.handle_once
    # the labels an rclpy lifecycle node publishes on ~/transition_event (start_state -> goal_state)
    assert handler.matcher(StateTransition(action=node, start_state="configuring", goal_state="inactive"))
    assert not handler.matcher(StateTransition(action=node, start_state="unconfigured", goal_state="configuring"))
    assert not handler.matcher(StateTransition(action=node, start_state="deactivating", goal_state="inactive"))  # no re-activation
    assert not handler.matcher(StateTransition(action=object(), start_state="configuring", goal_state="inactive"))
    (activate,) = handler.entities
    assert isinstance(activate, EmitEvent) and activate.event.transition_id == ACTIVATE
    assert activate.event.lifecycle_node_matcher(node)


def test_without_autostart_nothing_drives_the_lifecycle(stand_ins):
    _, actions = run_launch(autostart="false")
    the_node(actions)
    assert not any(isinstance(a, (EmitEvent, RegisterEventHandler)) for a in actions)
    assert the_node(actions).parameters[1]["autostart"] is False


PROBE = r'''
import json, sys, rclpy
from rclpy.context import Context
result = {}
for label, files in json.loads(sys.argv[1]).items():
    ctx = Context()
    args = ["--ros-args"] + [a for f in files for a in ("--params-file", f)] + ["-r", "__ns:=/arm", "-r", "__node:=left"]
    rclpy.init(args=args, context=ctx)
    node = rclpy.create_node("policy_node", context=ctx, automatically_declare_parameters_from_overrides=True)
    names = [n for n in node.list_parameters([], 0).names if n != "start_type_description_service"]
    result[label] = {"fqn": node.get_fully_qualified_name(), **{n: node.get_parameter(n).value for n in names}}
    node.destroy_node()
    rclpy.shutdown(context=ctx)
print(json.dumps(result))
'''


def test_rcl_applies_the_launch_parameter_files_under_a_namespace_and_a_rename(stand_ins, tmp_path):
    """The files the launch passes, given to a real rclpy node as launch_ros would (``--params-file`` each)."""
    if importlib.util.find_spec("rclpy") is None:
        pytest.skip("rclpy is not importable: the ros extra (pip install -e .[ros]) or a sourced ROS 2 install")
    params = write_params(tmp_path / "p.yaml", "policy_node", {"checkpoint": "/from/file", "runtime": {"control_rate_hz": 17.0}})
    _, actions = run_launch(params_file=params, namespace="arm", node_name="left", checkpoint="/from/launch")
    params_file, overrides = the_node(actions).parameters
    # launch_ros writes the dict under the node's fully qualified name (Node._create_params_file_from_dict)
    dict_file = write_params(tmp_path / "launch_params.yaml", "/arm/left", overrides)
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps({"launch": [params_file, dict_file], "as_is": [params]})],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["launch"] == {"fqn": "/arm/left", "use_sim_time": False, "autostart": False,
                                "checkpoint": "/from/launch", "runtime.control_rate_hz": 17.0}
    assert result["as_is"] == {"fqn": "/arm/left", "use_sim_time": False}  # the bug re-keying avoids: every value dropped
