"""`python -m step_ros <command>` for the commands that need ROS 2 (rclpy and the built
step_ros_msgs), run where those do not import: one line that says to source the workspace."""

import subprocess
import sys

import pytest
from node_helpers import REPO, ros_env

# A fresh interpreter in which a meta-path finder refuses one package, then `python -m step_ros`.
RUN_BLOCKED = r"""
import runpy, sys

BLOCKED = sys.argv[1]


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == BLOCKED:
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None


sys.meta_path.insert(0, Blocker())
sys.argv = ['step_ros', *sys.argv[2:]]
runpy.run_module('step_ros', run_name='__main__', alter_sys=True)
"""


@pytest.mark.parametrize('blocked', ['rclpy', 'step_ros_msgs'])
@pytest.mark.parametrize('command', [['demo'], ['replay', '--bag', 'x'], ['bench-ros', 'e2e'],
                                     ['bench-ros', 'multicam', '--help']])
def test_ros_command_without_ros_says_to_source_the_workspace(command, blocked):
    result = subprocess.run([sys.executable, '-c', RUN_BLOCKED, blocked, *command], cwd=REPO,
                            env=ros_env(), capture_output=True, text=True, timeout=60)
    err = result.stderr.strip()
    assert result.returncode == 2, f'exit {result.returncode}:\n{result.stdout}\n{err}'
    assert 'Traceback' not in err and len(err.splitlines()) == 1, err
    assert f'step_ros {command[0]}: needs ROS 2' in err and blocked in err, err
    assert 'source install/setup.bash' in err and 'scripts/run' in err, err


def test_offline_command_runs_without_ros():
    """Offline commands do not ask for ROS: `synth --help` runs with rclpy unimportable."""
    result = subprocess.run([sys.executable, '-c', RUN_BLOCKED, 'rclpy', 'synth', '--help'],
                            cwd=REPO, env=ros_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and 'usage:' in result.stdout, result.stdout + result.stderr


def test_package_share_outside_a_colcon_install_is_the_source_tree(monkeypatch):
    """Without ament_index (not installed with colcon) the shipped config is found in the
    source tree: the demo's default params file exists there."""
    from step_ros.stream.config import package_share
    monkeypatch.setitem(sys.modules, 'ament_index_python', None)
    monkeypatch.setitem(sys.modules, 'ament_index_python.packages', None)
    share = package_share()
    assert (share / 'config' / 'demo.yaml').is_file(), share


CHECK_FLUSH = r"""
import sys, torch
from step_ros import __main__ as cli
from step_ros.learn.training import flushes_denormals
seen = {}
def record(argv, prog=None):
    seen['flush'] = flushes_denormals()
    return 0
import step_ros.tools.train as train
train.main = record
code = cli.main(['train', '--help'])
print(seen['flush'], code)
"""


def test_training_commands_flush_subnormals_before_torch_starts_threads():
    result = subprocess.run([sys.executable, '-c', CHECK_FLUSH], cwd=REPO, env=ros_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ['True', '0'], (result.stdout, result.stderr)
