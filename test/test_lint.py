"""ruff over the whole repository, and the launch file's rules that a linter cannot see."""

import ast
import importlib.util
import subprocess
import sys

import pytest
from node_helpers import REPO


@pytest.mark.skipif(importlib.util.find_spec('ruff') is None,
                    reason='ruff is not installed (run `make test`)')
def test_ruff_is_clean():
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_launch_file_declares_described_arguments_and_no_eval():
    source = (REPO / 'launch' / 'perception.launch.py').read_text()
    tree = ast.parse(source)
    declared = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'DeclareLaunchArgument':
            keywords = {k.arg for k in call.keywords}
            declared[call.args[0].value] = 'description' in keywords
    assert declared == dict.fromkeys(
        ('camera', 'params_file', 'device', 'namespace', 'use_sim_time', 'autostart',
         'cameras'), True), \
        declared
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {'eval', 'exec', 'PythonExpression', 'subprocess', 'ExecuteProcess'}
