"""launch_testing: perception.launch.py with a camera remap, a namespace, a parameters file,
a `device:=` override and `use_sim_time:=true`; the node answers on the namespaced topic and
exits cleanly."""

import os
import tempfile
import unittest
from pathlib import Path

import pytest
from ros2_cli import SKIP_REASON

pytest.importorskip('launch_testing', reason=SKIP_REASON)
pytest.importorskip('launch_ros', reason=SKIP_REASON)
pytest.importorskip('composition_interfaces.srv', reason=SKIP_REASON)
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description import LaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from node_helpers import LABELS, REPO, ros_client, ros_env, spin_until, tiny_params  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from ros2_cli import Camera  # noqa: E402
from step_ros_msgs.msg import HumanAction  # noqa: E402

from step_ros.ros.perception_node import RESULT_QOS  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix='step_ros_launch_'))
T = 4
WINDOW_S = 2.0  # the heads of tiny_params are made for 2 s windows
CAMERA = '/launch_test/camera/image_raw'
NODE = '/robot1/perception_node'
ENV = ros_env()


@pytest.mark.launch_test
def generate_test_description():
    # The launched node and this test's client share a random domain on loopback.
    for name in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE'):
        os.environ[name] = ENV[name]
    # The file asks for CUDA (absent here): only the device:= override lets the node start.
    params = tiny_params(TMP, num_frames=T, window_seconds=WINDOW_S, device='cuda',
                         image_qos='reliable')
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / 'launch' / 'perception.launch.py')),
        launch_arguments={'camera': CAMERA, 'params_file': str(params), 'device': 'cpu',
                          'namespace': 'robot1', 'use_sim_time': 'true'}.items())
    return LaunchDescription([perception, launch_testing.actions.ReadyToTest()])


class TestPerceptionLaunch(unittest.TestCase):
    def test_remapped_input_namespaced_output_and_parameters(self, proc_output):
        # The ready line names the resolved input topic and the namespaced output topic.
        proc_output.assertWaitFor(f'ready: input {CAMERA}', timeout=180)
        proc_output.assertWaitFor("['/robot1/human_action']", timeout=5)
        with ros_client(ENV, 'launch_test_client') as (node, executor):
            names = ['num_frames', 'backbone.weights', 'device', 'use_sim_time', 'image_qos']
            values = get_parameters(node, executor, names)
            assert values == {'num_frames': T, 'backbone.weights': 'tiny', 'device': 'cpu',
                              'use_sim_time': True, 'image_qos': 'reliable'}, values

            actions = []
            node.create_subscription(HumanAction, '/robot1/human_action', actions.append,
                                     RESULT_QOS)
            camera = Camera(node, executor, CAMERA, period_ns=int(WINDOW_S * 1e9) // T)
            assert spin_until(executor, lambda: camera.publisher.get_subscription_count() > 0,
                              timeout=30), f'nothing subscribes to {CAMERA}'
            def results() -> list:  # past warm-up: a label from a full window
                return [a for a in actions if a.state != HumanAction.STATE_WARMING_UP]

            for _ in range(T + 6):
                if len(results()) >= 2:
                    break
                camera.publish()
            assert spin_until(executor, lambda: len(results()) >= 2, timeout=30), \
                f'{len(actions)} HumanAction on /robot1/human_action from {camera.frames} frames'
            assert all(a.label in LABELS and a.frames == T for a in results()), results()[0]


def get_parameters(node, executor, names: list[str]) -> dict:
    client = node.create_client(GetParameters, f'{NODE}/get_parameters')
    assert spin_until(executor, client.service_is_ready, timeout=30), \
        f'{NODE}/get_parameters is not available'
    future = client.call_async(GetParameters.Request(names=names))
    assert spin_until(executor, future.done, timeout=30), 'get_parameters did not answer'
    return {name: parameter_value(value) for name, value in zip(names, future.result().values)}


def parameter_value(value):
    """The Python value of an rcl_interfaces/ParameterValue (the types used here)."""
    from rcl_interfaces.msg import ParameterType

    return {ParameterType.PARAMETER_BOOL: lambda: value.bool_value,
            ParameterType.PARAMETER_INTEGER: lambda: value.integer_value,
            ParameterType.PARAMETER_DOUBLE: lambda: value.double_value,
            ParameterType.PARAMETER_STRING: lambda: value.string_value}.get(
                value.type, lambda: f'<type {value.type}>')()


@launch_testing.post_shutdown_test()
class TestPerceptionShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info, proc_output):
        launch_testing.asserts.assertExitCodes(proc_info)
        for process in proc_output:
            assert b'Traceback' not in process.text, process.text.decode(errors='replace')
