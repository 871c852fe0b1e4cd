"""The layout of step_ros: the core and the offline tools import with ROS made unimportable (only
step_ros.ros uses it), the core's wings import only from the wings below them, and no modules
import each other, directly or around a circle."""

import ast
import json
import subprocess
import sys
from pathlib import Path

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
    core = {'step_ros.model.backbone', 'step_ros.model.heads', 'step_ros.model.checkpoint',
            'step_ros.stream.engine', 'step_ros.stream.config', 'step_ros.stream.runtime',
            'step_ros.stream.decode', 'step_ros.data.features', 'step_ros.learn.training',
            'step_ros.evaluate.stream_eval'}
    assert core <= set(report['imported']), sorted(core - set(report['imported']))


# The core's wings, lowest first: a module may import from its own wing and the ones before it.
# The edges (ros, tools, benchmark) may import any wing; no wing imports an edge.
WINGS = ('progress', 'distributed', 'model', 'stream', 'data', 'evaluate', 'learn')
LOOSE = 2  # the first WINGS are modules, not packages
EDGES = ('ros', 'tools', 'benchmark')
PACKAGE = Path(REPO) / 'step_ros'


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The step_ros modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    modules = set(files)
    graph = {name: imports(path, modules) for name, path in files.items()}
    # a package import (`from step_ros.data import bags`) names the module, not the package
    return {name: {d for d in deps if d != name and files[d].name != '__init__.py'}
            for name, deps in graph.items()}


def wing(module: str) -> str:
    return module.split('.')[1]


def test_each_wing_imports_only_the_wings_below_it():
    wrong = []
    for module, deps in import_graph().items():
        if module.count('.') == 0 or wing(module) not in WINGS:
            continue
        for dep in deps:
            if wing(dep) in EDGES or WINGS.index(wing(dep)) > WINGS.index(wing(module)):
                wrong.append(f'{module} imports {dep}')
    assert not wrong, wrong


def test_no_modules_import_each_other_directly_or_around_a_circle():
    graph = import_graph()
    circles = []
    for start in graph:  # a depth-first search for a path back to the start
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    circles.append(' -> '.join(path + [start]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
    assert not circles, circles


def test_the_package_root_holds_at_most_three_modules():
    loose = sorted(p.name for p in PACKAGE.glob('*.py') if p.name not in
                   ('__init__.py', '__main__.py'))
    assert len(loose) <= 3, loose
    wings = {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()}
    assert wings == set(WINGS[LOOSE:]) | set(EDGES), sorted(wings)
