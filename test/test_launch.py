"""launch_testing: perception.launch.py starts the node on a camera remap and a params file."""

import tempfile
import unittest
from pathlib import Path

import pytest

pytest.importorskip(
    'launch_testing', reason='launch_testing is not installed here (it is not on PyPI); this '
    'test runs on a machine with a ROS 2 installation')

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description import LaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from node_helpers import REPO, tiny_params  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix='step_ros_launch_'))


@pytest.mark.launch_test
def generate_test_description():
    params = tiny_params(TMP, num_frames=4)
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / 'launch' / 'perception.launch.py')),
        launch_arguments={'camera': '/launch_test/camera/image_raw', 'params_file': str(params),
                          'device': 'cpu', 'namespace': 'robot1',
                          'use_sim_time': 'true'}.items())
    return LaunchDescription([perception, launch_testing.actions.ReadyToTest()])


class TestPerceptionLaunch(unittest.TestCase):
    def test_node_starts_on_the_remapped_camera(self, proc_output):
        # The ready line names the resolved input topic and the namespaced output topic.
        proc_output.assertWaitFor('input /launch_test/camera/image_raw', timeout=120)
        proc_output.assertWaitFor('/robot1/human_action', timeout=5)


@launch_testing.post_shutdown_test()
class TestPerceptionShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
