"""The README stays true: its commands, its parameter table and its launch arguments."""

import ast
import re
from pathlib import Path

from step_ros.stream.config import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def test_readme_starts_with_the_two_commands():
    block = re.search(r'```sh\n(.*?)```', README, re.S)
    assert block, 'README has no sh block'
    commands = [line.split('#')[0].strip() for line in block.group(1).splitlines()]
    assert commands == ['make demo', 'make test'], commands
    assert README.index(block.group(0)) < 20, 'the two commands must open the README'


def test_parameter_table_matches_the_declared_parameters():
    rows = dict(re.findall(r'^\| `([a-z_.]+)` \| `(.*?)` \|', README, re.M))
    for p in PARAMETERS:
        assert p.name in rows, f'parameter {p.name} missing from the README table'
        assert rows[p.name] == repr(p.default), \
            f'README says {p.name} defaults to {rows[p.name]}, the node uses {p.default!r}'


def test_launch_arguments_are_documented():
    tree = ast.parse((ROOT / 'launch' / 'perception.launch.py').read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') ==
                'DeclareLaunchArgument'}
    assert declared == {'camera', 'params_file', 'device', 'namespace', 'use_sim_time',
                        'autostart', 'cameras'}, declared
    for name in declared:
        assert f'| `{name}` |' in README, f'launch argument {name} missing from the README'


def test_makefile_has_the_readme_targets_and_ci_calls_make_test():
    makefile = (ROOT / 'Makefile').read_text()
    for target in ('demo', 'test'):
        assert re.search(rf'^{target}:', makefile, re.M), f'Makefile has no {target} target'
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()
