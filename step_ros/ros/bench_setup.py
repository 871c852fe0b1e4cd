"""What `bench_client --start-node` sets up: the node's files, its process, the DDS profile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from step_ros.stream.config import package_share

# Fast DDS defaults (208 KiB UDP socket buffers, 512 KiB shared-memory segments) lose most
# best-effort camera frames bigger than those between processes on one machine: measured here,
# a plain subscriber got 70-120 of 300 640x480 rgb8 frames at 30 Hz. This participant profile
# (64 MiB SHM segment, 4 MiB UDP buffers, within this machine's rmem_max) delivered 300 of 300.
# Fast DDS defaults lose most best-effort camera frames between processes on one machine; the
# shipped profile config/fastdds_large_frames.xml does not (numbers in that file).
FASTDDS_PROFILE = 'config/fastdds_large_frames.xml'
PROFILE_VARIABLES = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')


def use_large_frames_profile() -> str:
    """Point this process (and its children) at the shipped profile; call before rclpy.init."""
    given = next((os.environ[v] for v in PROFILE_VARIABLES if os.environ.get(v)), None)
    if given:
        return given  # the caller chose a profile: keep it
    path = package_share() / FASTDDS_PROFILE
    for variable in PROFILE_VARIABLES:
        os.environ[variable] = str(path.resolve())
    return str(path)


def write_node_files(out: Path, *, frames: int, window_seconds: float) -> Path:
    """A random-weight head for the tiny backbone and the params file that uses it."""
    from step_ros.benchmark.subjects import load_backbone, make_head
    from step_ros.model.checkpoint import save_head

    backbone = load_backbone('tiny', device='cpu', precision='fp32')
    head = make_head(backbone, num_frames=frames)
    checkpoint = save_head(out / 'bench_head.safetensors', head.module, head.meta)
    params = {'/**': {'ros__parameters': {
        'backbone': {'weights': 'tiny', 'image_size': 0}, 'device': 'cpu', 'precision': 'fp32',
        'heads': {'checkpoints': [str(checkpoint.resolve())], 'topics': ['human_action']},
        'num_frames': frames, 'window_seconds': window_seconds, 'diagnostics_period': 1.0}}}
    path = out / 'bench_node.yaml'
    path.write_text(yaml.safe_dump(params))
    return path


def start_node(params: Path, *, ns: str, log: Path, name: str | None = None
               ) -> subprocess.Popen:
    command = [sys.executable, '-m', 'step_ros.ros.perception_node', '--ros-args',
               '--params-file', str(params), '-r', f'__ns:={ns}']
    if name is not None:
        command += ['-r', f'__node:={name}']
    with log.open('w') as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)


def stop_node(process: subprocess.Popen) -> int | None:
    """SIGINT (the node's clean shutdown), then SIGTERM, then SIGKILL: never left running."""
    for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return process.poll()
