"""The core and the offline tools import with ROS made unimportable (only step_ros.ros uses it)."""

import json
import subprocess
import sys

from node_helpers import REPO

# Runs in a fresh interpreter: a meta-path finder refuses every ROS package, then every module
# of step_ros outside step_ros.ros is imported.
PROBE = r"""
import importlib, json, pkgutil, sys

BLOCKED = ('rclpy', 'rcl_interfaces', 'rosidl_runtime_py', 'rosidl_parser', 'builtin_interfaces',
           'std_msgs', 'sensor_msgs', 'diagnostic_msgs', 'step_ros_msgs', 'launch',
           'launch_ros', 'launch_testing', 'rosbag2_py', 'cv_bridge', 'ament_index_python')


class Blocker:
    def find_spec(self, name, path=None, target=None):
        root = name.split('.')[0]
        if root in BLOCKED or root.endswith('_msgs') or root.startswith('rosidl'):
            raise ModuleNotFoundError(f'{name} is blocked: the core must not need ROS', name=name)
        return None


sys.meta_path.insert(0, Blocker())
try:
    import rclpy  # noqa: F401
    sys.exit('the blocker does not work: rclpy imported')
except ModuleNotFoundError:
    pass
import step_ros
names = sorted(m.name for m in pkgutil.walk_packages(step_ros.__path__, 'step_ros.')
               if not (m.name == 'step_ros.ros' or m.name.startswith('step_ros.ros.')))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f'{type(exc).__name__}: {exc}'
print(json.dumps({'imported': names, 'failed': failed}))
"""


def test_core_imports_without_ros():
    result = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['failed'] == {}, report['failed']
    core = {'step_ros.backbone', 'step_ros.heads', 'step_ros.checkpoint', 'step_ros.engine',
            'step_ros.config', 'step_ros.runtime', 'step_ros.decode'}
    assert core <= set(report['imported']), sorted(core - set(report['imported']))
