"""`ros2 launch step_ros perception.launch.py` with a parameters file the node rejects: the launch
ends by itself, names the node's FATAL line as its shutdown reason and exits non-zero."""

from node_helpers import ros_env, tiny_params
from ros2_cli import Background, require_ros2_tools

require_ros2_tools()

LAUNCH_BOUND_S = 90  # node start-up (torch import) and launch teardown, with margin


def test_launch_ends_naming_the_nodes_fatal_line(tmp_path):
    params = tiny_params(tmp_path, num_frames=4, window_seconds=2.0, infer_every=-2)
    launch = Background(['ros2', 'launch', 'step_ros', 'perception.launch.py',
                         f'params_file:={params}', 'camera:=/launch_error_test/image'],
                        env=ros_env(), log=tmp_path / 'launch.log')
    try:
        code = launch.wait_exit(LAUNCH_BOUND_S)
    finally:
        launch.stop()
    out = launch.output()
    assert code is not None, f'ros2 launch still running after {LAUNCH_BOUND_S} s:\n{out}'
    reason = [line for line in out.splitlines() if 'shutting down: perception_node exited' in line]
    assert reason, f'no shutdown reason in the launch output:\n{out}'
    assert 'with code 1: [FATAL]' in reason[0] and 'infer_every=-2' in reason[0], reason[0]
    assert code == 1, f'ros2 launch exited with {code}:\n{out}'
