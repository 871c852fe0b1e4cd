"""Start perception_node on one camera, or on several through one batched backbone pass.

    ros2 launch step_ros perception.launch.py camera:=/my/camera/image_raw
    ros2 launch step_ros perception.launch.py cameras:=[front,wrist]  # front/image, wrist/image
    ros2 launch step_ros perception.launch.py params_file:=/path/demo.yaml device:=cpu
    ros2 launch step_ros perception.launch.py autostart:=false  # then: ros2 lifecycle set ...

A node that exits with an error (a bad parameter: its FATAL line says which) ends the launch,
with that line as the shutdown reason and exit code 1.
"""

import re
from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import (
    DeclareLaunchArgument,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
)
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _perception_node(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    camera = arg('camera')
    parameters: list = [arg('params_file'),
                        {'use_sim_time': arg('use_sim_time').lower() in ('true', '1')}]
    if arg('device'):
        parameters.append({'device': arg('device')})
    if arg('autostart'):
        parameters.append({'autostart': arg('autostart').lower() in ('true', '1')})
    if arg('cameras'):
        parameters.append({'cameras': _camera_list(arg('cameras'))})
    node = Node(package='step_ros', executable='perception_node', name='perception_node',
                namespace=arg('namespace'), output='screen', emulate_tty=True,
                parameters=parameters,
                remappings=[('image', camera), ('image/compressed', f'{camera}/compressed')])
    return [node, *_end_with(node)]


def _end_with(node: Node) -> list:
    """Event handlers that end the launch when the node exits with an error (a bad parameter,
    a missing head: its FATAL line says why), naming that line as the shutdown reason."""
    fatal: list[str] = []  # the node's FATAL lines, without colours

    def on_output(event) -> None:
        for line in event.text.decode(errors='replace').splitlines():
            if 'FATAL' in line:
                fatal.append(ANSI.sub('', line).strip())

    def on_exit(event, context: LaunchContext) -> list | None:
        if event.returncode == 0 or context.is_shutdown:  # done, or stopped by the launch
            return None
        why = fatal[-1] if fatal else 'no FATAL line (see its output above)'
        reason = f'perception_node exited with code {event.returncode}: {why}'
        # Shutdown ends the launch with exit code 0; the failing action after it makes
        # `ros2 launch` exit with 1 (launch's only way to a non-zero exit code).
        return [LogInfo(msg=f'shutting down: {reason}'), Shutdown(reason=reason),
                OpaqueFunction(function=_fail, args=[event.returncode])]

    return [RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=on_output,
                                             on_stderr=on_output)),
            RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))]


def _fail(_context: LaunchContext, code: int) -> None:
    raise RuntimeError(f'perception_node failed (exit code {code})')


def _camera_list(text: str) -> list[str]:
    """cameras:=[front,wrist] (or cameras:=front) as a list of names; the node checks them."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'launch argument cameras:={text!r}: expected a list of names, e.g. '
                         'cameras:=[front,wrist]')
    return value or ['']


def generate_launch_description() -> LaunchDescription:
    default_params = Path(get_package_share_directory('step_ros')) / 'config' / 'perception.yaml'
    return LaunchDescription([
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='Image topic to recognise actions in (remaps `image`; '
                                          '`image/compressed` follows as <camera>/compressed).'),
        DeclareLaunchArgument('params_file', default_value=str(default_params),
                              description='ROS 2 parameters file of perception_node.'),
        DeclareLaunchArgument('device', default_value='',
                              description="Overrides the `device` parameter ('auto', 'cpu', "
                                          "'cuda', 'cuda:N'); empty keeps the file's value."),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and of its relative topics '
                                          '(human_action, debug_image).'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock for the node clock (bag replay, '
                                          'simulation); sampling follows header stamps anyway.'),
        DeclareLaunchArgument('autostart', default_value='',
                              description='Overrides the `autostart` parameter: true configures '
                                          'and activates the lifecycle node at start, false '
                                          'leaves it to a lifecycle manager; empty keeps the '
                                          "file's value."),
        DeclareLaunchArgument('cameras', default_value='',
                              description='Overrides the `cameras` parameter, e.g. '
                                          '[front,wrist]: inputs front/image, wrist/image, '
                                          'outputs front/human_action, wrist/human_action, one '
                                          "batched backbone pass; empty keeps the file's "
                                          'value.'),
        OpaqueFunction(function=_perception_node),
    ])
