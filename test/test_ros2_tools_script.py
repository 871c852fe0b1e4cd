"""scripts/ros2_tools.sh where ../shared/ros2-tools is absent (a user's clone): it says so,
removes an earlier install so that the tests skip, and succeeds; with a system ROS 2 it
leaves the tools to the system."""

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'ros2_tools.sh'


def clone_root(tmp: Path, *, pypi_venv: bool) -> Path:
    """A repository root with only the script, and a .venv as bootstrap leaves it."""
    root = tmp / 'clone'
    (root / 'scripts').mkdir(parents=True)
    shutil.copy(SCRIPT, root / 'scripts' / 'ros2_tools.sh')
    (root / '.venv' / 'ros2-tools' / 'site').mkdir(parents=True)
    (root / '.venv' / 'ros2-tools' / 'setup.bash').write_text('# an earlier install\n')
    if pypi_venv:
        (root / '.venv' / 'local_setup.sh').write_text('# ROS 2 from PyPI\n')
    return root


def run(root: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = {'PATH': '/usr/bin:/bin', 'STEP_ROS_ROS2_TOOLS': str(tmp / 'absent')}
    return subprocess.run(['bash', str(root / 'scripts' / 'ros2_tools.sh')], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_absent_tools_remove_an_earlier_install(tmp_path):
    root = clone_root(tmp_path, pypi_venv=True)
    result = run(root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f'no ROS 2 launch/ros2cli wheels at {tmp_path / "absent"}' in result.stdout
    assert not (root / '.venv' / 'ros2-tools').exists()
    again = run(root, tmp_path)  # idempotent
    assert again.returncode == 0 and 'the tests that need them skip' in again.stdout


def test_system_ros_keeps_its_own_tools(tmp_path):
    root = clone_root(tmp_path, pypi_venv=False)
    result = run(root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'using the system ROS 2 installation' in result.stdout, result.stdout
