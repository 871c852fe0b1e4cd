"""The real ros2 CLI against the node: `ros2 launch` with autostart:=false driven by
`ros2 lifecycle set`, `ros2 run`, and the README's robot commands run verbatim."""

import re
import subprocess
from pathlib import Path

import pytest
from ros2_cli import (
    Background,
    Camera,
    require_ros2_tools,
    ros2,
    run,
    start_daemon,
    stop_daemon,
    wait_for_node,
)

require_ros2_tools()
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

import yaml  # noqa: E402
from node_helpers import LABELS, REPO, ros_client, ros_env, spin_until, tiny_params  # noqa: E402
from step_ros_msgs.msg import HumanAction  # noqa: E402

from step_ros.ros.perception_node import RESULT_QOS  # noqa: E402

T = 4
WINDOW_S = 2.0  # the heads of tiny_params are made for 2 s windows
START_TIMEOUT = 240  # torch import and model build of a node on a loaded 2-core machine
README = (REPO / 'README.md').read_text()


@pytest.fixture
def env():
    """A random domain on loopback, with a ros2 daemon of its own that is stopped after."""
    env = ros_env()
    start_daemon(env)
    try:
        yield env
    finally:
        stop_daemon(env)


def test_ros2_pkg_executables_finds_the_console_script():
    out = ros2(['pkg', 'executables', 'step_ros'], env=ros_env()).stdout
    assert out.split() == ['step_ros', 'perception_node'], out


class Outputs:
    """The test's rclpy side: a camera on `camera` and the HumanAction messages received."""

    def __init__(self, node, executor, *, camera: str, actions: str) -> None:
        self.executor = executor
        self.actions: list = []
        self.subscription = node.create_subscription(HumanAction, actions,
                                                     self.actions.append, RESULT_QOS)
        self.camera = Camera(node, executor, camera, period_ns=int(WINDOW_S * 1e9) // T)

    def connected(self, timeout: float = 30.0) -> bool:
        """Wait until the node subscribes to the camera and publishes to us (frames sent
        before discovery matched them would be lost)."""
        return spin_until(self.executor, lambda: self.camera.publisher.get_subscription_count()
                          > 0 and self.subscription.get_publisher_count() > 0, timeout=timeout)

    def feed(self, count: int) -> int:
        """Publish `count` frames, spin 1 s more; how many actions arrived meanwhile."""
        before = len(self.actions)
        for _ in range(count):
            self.camera.publish()
        self.camera.spin(1.0)
        return len(self.actions) - before

    def results(self) -> list:
        """The actions past warm-up: a label from a full window."""
        return [a for a in self.actions if a.state != HumanAction.STATE_WARMING_UP]

    def feed_until(self, count: int, *, frames: int) -> bool:
        """Publish up to `frames` frames until `count` more results arrived."""
        assert self.connected(), 'the node and the test do not see each other'
        before = len(self.results())
        for _ in range(frames):
            if len(self.results()) - before >= count:
                return True
            self.camera.publish()
        return spin_until(self.executor, lambda: len(self.results()) - before >= count,
                          timeout=20)


def test_lifecycle_through_ros2_lifecycle_set(tmp_path, env):
    # The file says autostart: true; the launch argument autostart:=false overrides it.
    params = tiny_params(tmp_path, num_frames=T, window_seconds=WINDOW_S, image_qos='reliable',
                         autostart=True)
    launch = Background(['ros2', 'launch', 'step_ros', 'perception.launch.py',
                         'camera:=/lifecycle_test/image', f'params_file:={params}',
                         'autostart:=false'], env=env, log=tmp_path / 'launch.log')
    try:
        assert launch.wait_for('waiting for a lifecycle manager', timeout=START_TIMEOUT), \
            launch.output()
        assert wait_for_node('/perception_node', env=env, timeout=60), \
            f'ros2 node list never showed /perception_node:\n{launch.output()}'

        def lifecycle(*args: str) -> str:
            result = ros2(['lifecycle', *args], env=env, timeout=90)
            assert result.returncode == 0, f'ros2 lifecycle {args}: {result.stdout}'
            return result.stdout

        def state() -> str:
            return lifecycle('get', '/perception_node').strip()

        def transition(name: str) -> None:
            out = lifecycle('set', '/perception_node', name)
            assert 'Transitioning successful' in out, f'{name}: {out}\n{launch.output()}'

        with ros_client(env, 'lifecycle_cli_client') as (node, executor):
            io = Outputs(node, executor, camera='/lifecycle_test/image', actions='/human_action')
            assert state() == 'unconfigured [1]'
            assert io.feed(T + 2) == 0, 'an unconfigured node published'

            transition('configure')
            assert state() == 'inactive [2]'
            assert 'configured: backbone tiny' in launch.output(), launch.output()
            assert io.feed(T + 2) == 0, 'an inactive node published'

            transition('activate')
            assert state() == 'active [3]'
            assert io.feed_until(2, frames=T + 8), \
                f'{len(io.actions)} HumanAction while active:\n{launch.output()}'
            assert all(a.label in LABELS and a.frames == T for a in io.results()), io.results()

            transition('deactivate')
            assert state() == 'inactive [2]'
            io.camera.spin(1.0)
            assert io.feed(T + 2) == 0, 'a deactivated node published'
            assert 'inactive: input closed, model kept loaded' in launch.output()

            transition('cleanup')
            assert state() == 'unconfigured [1]'
            assert 'unconfigured: model released' in launch.output(), launch.output()
            assert io.feed(T + 2) == 0, 'a cleaned-up node published'

            transition('shutdown')
        # The node ends by itself on shutdown, and ros2 launch with it, both cleanly.
        code = launch.wait_exit(timeout=60)
        assert code == 0, f'ros2 launch exit code {code}:\n{launch.output()}'
        output = launch.output()
        assert 'finalized (from unconfigured): exiting' in output, output
        assert re.search(r'process has finished cleanly \[pid \d+\]', output), output
        assert 'Traceback' not in output, output
    finally:
        launch.stop()


def test_ros2_run_starts_the_console_script(tmp_path, env):
    params = tiny_params(tmp_path, num_frames=T, window_seconds=WINDOW_S, image_qos='reliable')
    run = Background(['ros2', 'run', 'step_ros', 'perception_node', '--ros-args',
                      '--params-file', str(params), '-r', 'image:=/run_test/image', '-r',
                      '__ns:=/run_test'], env=env, log=tmp_path / 'run.log',
                     interrupt_group=True)
    try:
        assert run.wait_for("ready: input /run_test/image (reliable) -> "
                            "['/run_test/human_action']", timeout=START_TIMEOUT), run.output()
        with ros_client(env, 'ros2_run_client') as (node, executor):
            io = Outputs(node, executor, camera='/run_test/image',
                         actions='/run_test/human_action')
            assert io.feed_until(1, frames=T + 8), run.output()
    finally:
        code = run.stop()
    assert code == 0, f'ros2 run exit code {code} on Ctrl-C:\n{run.output()}'


# --- the README's robot commands --------------------------------------------------------------

def readme_robot_commands() -> list[str]:
    """The commands of the README's "Try it" block, continuation lines joined, comments cut."""
    section = README.split('## On a robot with ROS 2', 1)[1].split('\n## ', 1)[0]
    block = re.search(r'### Try it\n.*?```bash\n(.*?)```', section, re.S)
    assert block, 'README: no bash block under "### Try it" in "On a robot with ROS 2"'
    commands, current = [], ''
    for line in block.group(1).splitlines():
        line = re.sub(r'\s+#.*$', '', line).strip()
        if line.endswith('\\'):
            current += line[:-1].strip() + ' '
            continue
        current += line
        if current:
            commands.append(current)
        current = ''
    return commands


def test_readme_robot_commands_are_the_tested_ones():
    verbs = [' '.join(c.split()[:2]) for c in readme_robot_commands()]
    assert verbs == ['ros2 launch', 'ros2 topic', 'ros2 topic', 'ros2 lifecycle',
                     'ros2 param', 'ros2 interface'], verbs


def test_readme_robot_commands_run_verbatim(tmp_path, env):
    commands = readme_robot_commands()
    launch_line, echo, hz, lifecycle_get, param_get, interface_show = commands
    camera = re.search(r'camera:=(\S+)', launch_line).group(1)
    params_file = re.search(r'params_file:=((?:\$\([^)]*\)|\S)+)', launch_line).group(1)
    demo_num_frames = config_value(params_file, env, 'num_frames')
    demo_labels = head_labels(params_file, env)

    def shell(command: str, name: str) -> Background:
        return Background(['bash', '-c', command], env=env, log=tmp_path / f'{name}.log')

    launch = shell(launch_line, 'launch')
    running: list[Background] = [launch]
    try:
        assert launch.wait_for('ready: input', timeout=START_TIMEOUT), launch.output()
        assert f'ready: input {camera} ' in launch.output(), launch.output()
        with ros_client(env, 'readme_client') as (node, executor):
            io = Outputs(node, executor, camera=camera, actions='/human_action')
            io.camera.period_ns = int(2e9) // demo_num_frames  # demo.yaml: 2 s windows
            assert io.connected(), launch.output()

            echo_process = shell(echo, 'echo')
            running.append(echo_process)
            # The first messages may be warm-up ones (frames < T, no label); wait for a result.
            assert echo_process.wait_for(f'frames: {demo_num_frames}\n', timeout=120,
                                         spin=io.camera.publish), \
                f'{echo}:\n{echo_process.output()}\n{launch.output()}'
            message = echo_process.output()
            labels = re.findall(r'^label: (\w+)$', message, re.M)
            assert labels and set(labels) <= set(demo_labels), message

            hz_process = shell(hz, 'hz')
            running.append(hz_process)
            assert hz_process.wait_for('average rate:', timeout=120, spin=io.camera.publish), \
                f'{hz}:\n{hz_process.output()}'
            rate = float(re.search(r'average rate: ([0-9.]+)', hz_process.output()).group(1))
            assert rate > 0, hz_process.output()

            assert wait_for_node('/perception_node', env=env, timeout=60), launch.output()
            result = run_line(lifecycle_get, env)
            assert result.stdout.strip() == 'active [3]', result.stdout

            result = run_line(param_get, env)
            assert result.stdout.strip() == f'Integer value is: {demo_num_frames}', result.stdout

            result = run_line(interface_show, env)
            shown = result.stdout
            msg = (REPO / 'step_ros_msgs' / 'msg' / 'HumanAction.msg').read_text()
            fields = [line.split()[1] for line in msg.splitlines()
                      if line.strip() and not line.startswith('#') and '=' not in line]
            for field in fields:
                assert re.search(rf'^\S+ {field}\b', shown, re.M), f'{field} not in:\n{shown}'
    finally:
        codes = [process.stop() for process in reversed(running)]
    assert codes[-1] == 0, f'{launch_line} exit code {codes[-1]}:\n{launch.output()}'
    assert 'Traceback' not in launch.output(), launch.output()


def run_line(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = run(['bash', '-c', command], env=env, timeout=120)
    assert result.returncode == 0, f'{command}: {result.stdout}'
    return result


def config_value(params_file: str, env: dict[str, str], name: str):
    """A parameter of the README's params file (its $(...) expanded by bash, as the shell
    would)."""
    path = run_line(f'echo {params_file}', env).stdout.strip()
    tree = yaml.safe_load(Path(path).read_text())
    return tree['/**']['ros__parameters'][name]


def head_labels(params_file: str, env: dict[str, str]) -> list[str]:
    """The labels of the README params file's (first) head checkpoint."""
    from step_ros.model.checkpoint import read_meta

    checkpoint = config_value(params_file, env, 'heads')['checkpoints'][0]
    path = checkpoint.replace('package://step_ros/', f'{REPO}/')
    return list(read_meta(path).labels)
