"""Shared helpers of the tests: tiny head checkpoints, params files, the node as a subprocess."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from step_ros.model.backbone import BackboneInfo, FrozenBackbone
from step_ros.model.checkpoint import HeadMeta, save_head
from step_ros.model.heads import PRESETS, build_head

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(__file__).parents[1].parent / 'shared' / 'testdata'
LABELS = ('pick_up', 'put_down', 'open_drawer', 'close_drawer', 'wave')
PAIRS = (('pick_up', 'put_down'), ('open_drawer', 'close_drawer'))
INSTALLED_NODE = REPO / 'install' / 'step_ros' / 'lib' / 'step_ros' / 'perception_node'


@functools.cache
def tiny_info() -> BackboneInfo:
    return FrozenBackbone.load('tiny').info


def make_head(path: Path, *, num_frames: int, labels: tuple[str, ...] = LABELS,
              pairs: tuple[tuple[str, str], ...] = PAIRS, task: str = 'action',
              preset: str = 'step', info: BackboneInfo | None = None, seed: int = 0,
              background: str | None = None, temperature: float = 1.0,
              window_seconds: float = 2.0, decision: dict | None = None) -> Path:
    """A randomly initialised head for the tiny backbone, saved as a checkpoint."""
    info = info or tiny_info()
    config = PRESETS[preset]
    torch.manual_seed(seed)
    module = build_head(config, dim=info.embed_dim, num_frames=num_frames,
                        num_patches=info.num_patches, num_classes=len(labels))
    meta = HeadMeta(task=task, labels=tuple(labels), symmetric_pairs=tuple(pairs), head=config,
                    num_frames=num_frames, backbone=info.to_dict(), background=background,
                    temperature=temperature, window_seconds=window_seconds,
                    decision=decision)
    return save_head(path, module, meta)


def write_params(path: Path, values: dict) -> Path:
    """A ROS 2 parameters file for every node name, from {dotted name: value}."""
    tree: dict = {}
    for name, value in values.items():
        *parents, leaf = name.split('.')
        branch = tree
        for part in parents:
            branch = branch.setdefault(part, {})
        branch[leaf] = value
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': tree}}))
    return path


def tiny_params(tmp: Path, *, num_frames: int = 4, window_seconds: float = 1.0, **extra) -> Path:
    """Params of a node on the tiny backbone with a fresh random head."""
    head = make_head(tmp / 'action.safetensors', num_frames=num_frames)
    values = {'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
              'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': num_frames,
              'window_seconds': window_seconds, 'top_k': 3, 'diagnostics_period': 0.5, **extra}
    return write_params(tmp / 'params.yaml', values)


def node_command() -> list[str]:
    """The installed console script when built with colcon, else the module."""
    if INSTALLED_NODE.is_file():
        return [str(INSTALLED_NODE)]
    return [sys.executable, '-m', 'step_ros.ros.perception_node']


def ros_env() -> dict[str, str]:
    """This process's environment with DDS kept on loopback in a random domain."""
    env = os.environ.copy()
    env['ROS_DOMAIN_ID'] = str(random.randint(1, 100))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '0'
    return env


class ChildProcess:
    """A command as a subprocess whose output goes to a file; always stop() it."""

    def __init__(self, command: list[str], *, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open('w')
        self.process = subprocess.Popen(command, env=env, stdout=self._file,
                                        stderr=subprocess.STDOUT, cwd=REPO)

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> int:
        """SIGINT, then SIGKILL after 10 s; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()
        return self.process.returncode


class NodeProcess(ChildProcess):
    """perception_node as a subprocess whose output goes to a file; always stop() it."""

    def __init__(self, ros_args: list[str], *, env: dict[str, str], log: Path) -> None:
        super().__init__([*node_command(), '--ros-args', *ros_args], env=env, log=log)


def spin_until(executor, predicate, *, timeout: float, process: NodeProcess | None = None
               ) -> bool:
    """Spin until predicate() is true, the timeout passes, or the node process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process is not None and process.process.poll() is not None:
            return predicate()
        executor.spin_once(timeout_sec=0.05)
    return predicate()


@contextlib.contextmanager
def ros_client(env: dict[str, str], name: str):
    """(node, executor) of an rclpy context of this test process in the domain of `env`."""
    saved = os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env['ROS_DOMAIN_ID']))
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if saved is None:
            os.environ.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
        else:
            os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = saved


@contextlib.contextmanager
def node_with_client(ros_args: list[str], *, env: dict[str, str], log: Path, name: str):
    """(client node, executor, NodeProcess): perception_node started with `ros_args` and an
    rclpy client `name` in its domain; the node is stopped on the way out."""
    process = NodeProcess(ros_args, env=env, log=log)
    try:
        with ros_client(env, name) as (node, executor):
            yield node, executor, process
    finally:
        process.stop()
