"""`bench-ros multicam --cameras K`: K cameras into ONE node against K separate nodes.

Three runs, one after the other, with the same client: (1) one node with `cameras` = K names,
(2) K single-camera nodes, (3) one single-camera node alone (the reference latency). Each camera
publishes rgb8 frames at `--rate` (cameras out of phase, as real ones are). Measured over
`--seconds` after a warm-up: CPU time of the node processes (/proc/<pid>/stat, all threads) per
frame they processed, their total RSS, and per camera the publish -> HumanAction latency p50 /
p99 and the frames processed (the node's /diagnostics). The ratios are printed side by side;
multicam.json and multicam.png go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from step_ros_msgs.msg import HumanAction

from step_ros.benchmark.measure import summary
from step_ros.benchmark.plot import plot_multicam
from step_ros.benchmark.procstat import cpu_seconds, status_mib
from step_ros.ros.bench_setup import (
    start_node,
    stop_node,
    use_large_frames_profile,
    write_node_files,
)
from step_ros.ros.conversions import ns_to_time, stamp_to_ns
from step_ros.ros.spinning import BackgroundSpinner

STATUS = 'action recognition'


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=['multicam'])
    parser.add_argument('--cameras', type=int, default=4, help='K cameras (default 4)')
    parser.add_argument('--rate', type=float, default=30.0, help='Hz per camera (default 30)')
    parser.add_argument('--width', type=int, default=320, help='frame width (default 320)')
    parser.add_argument('--height', type=int, default=240, help='frame height (default 240)')
    parser.add_argument('--seconds', type=float, default=20.0,
                        help='measured seconds of each run (default 20), after --warmup')
    parser.add_argument('--warmup', type=float, default=4.0,
                        help='seconds published before measuring: windows fill (default 4)')
    parser.add_argument('--frames', type=int, default=8, help='T of the nodes (default 8)')
    parser.add_argument('--window-seconds', type=float, default=2.0,
                        help='window_seconds of the nodes (default 2)')
    parser.add_argument('--batch-timeout-ms', type=float, default=10.0,
                        help='batch_timeout_ms of the multi-camera node (default 10)')
    parser.add_argument('--ready-timeout', type=float, default=300.0,
                        help='seconds to wait for the nodes to subscribe (default 300)')
    parser.add_argument('--out', type=Path, default=Path('out/bench_ros'),
                        help='directory for multicam.json and the node logs')
    return parser


class Cameras:
    """The client: a publisher and a HumanAction subscription per camera, /diagnostics."""

    def __init__(self, node, topics: list[tuple[str, str]], *, width: int, height: int) -> None:
        self.lock = threading.Lock()
        self.sent: list[dict[int, int]] = [{} for _ in topics]  # stamp -> monotonic ns
        self.latencies: list[list[float]] = [[] for _ in topics]  # seconds
        self.measuring = False
        self.statuses: dict[str, dict[str, str]] = {}
        self.publishers = [node.create_publisher(Image, image, qos_profile_sensor_data)
                           for image, _ in topics]
        self.subscriptions = [
            node.create_subscription(HumanAction, action, lambda m, i=i: self._on_action(i, m),
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            for i, (_, action) in enumerate(topics)]
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        rng = np.random.default_rng(0)
        self.images = []
        for i in range(len(topics)):
            msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
            msg.header.frame_id = f'cam{i}'
            msg.data = rng.integers(0, 256, (height, width, 3), np.uint8).tobytes()
            self.images.append(msg)

    def publish(self, i: int) -> None:
        msg = self.images[i]
        stamp_ns = time.time_ns()
        msg.header.stamp = ns_to_time(stamp_ns)
        with self.lock:
            sent = self.sent[i]
            sent[stamp_ns] = time.monotonic_ns()
            if len(sent) > 2048:  # frames the node skipped are never answered
                for old in sorted(sent)[:1024]:
                    del sent[old]
        self.publishers[i].publish(msg)

    def _on_action(self, i: int, msg: HumanAction) -> None:
        now = time.monotonic_ns()
        with self.lock:
            sent = self.sent[i].pop(stamp_to_ns(msg.header.stamp), None)
            if sent is not None and self.measuring and msg.state != HumanAction.STATE_WARMING_UP:
                self.latencies[i].append((now - sent) / 1e9)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.statuses[status.name] = {kv.key: kv.value for kv in status.values}

    def processed(self, names: list[str]) -> list[int | None]:
        with self.lock:
            return [int(self.statuses[n]['processed']) if n in self.statuses else None
                    for n in names]


def _params(base: Path, path: Path, **values) -> Path:
    tree = yaml.safe_load(base.read_text())
    tree['/**']['ros__parameters'].update(values)
    path.write_text(yaml.safe_dump(tree))
    return path


def run_setup(label: str, *, nodes: list[tuple[Path, str, str]], topics: list[tuple[str, str]],
              status_names: list[str], args: argparse.Namespace) -> dict:
    """Start `nodes` (params, namespace, name), publish to `topics`, measure, stop them."""
    processes = [start_node(params, ns=ns, name=name, log=args.out / f'multicam_{name}.log')
                 for params, ns, name in nodes]
    node = rclpy.create_node(f'step_ros_bench_multicam_{label}')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    client = Cameras(node, topics, width=args.width, height=args.height)
    spinner = BackgroundSpinner(executor)
    spinner.start()
    try:
        deadline = time.monotonic() + args.ready_timeout
        while not all(p.get_subscription_count() for p in client.publishers):
            for process, (_, _, name) in zip(processes, nodes):
                if process.poll() is not None:
                    raise RuntimeError(f'{name} exited with {process.returncode}; see '
                                       f"{args.out / f'multicam_{name}.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f'{label}: the nodes did not subscribe within '
                                   f'{args.ready_timeout:.0f} s')
            time.sleep(0.1)
        k = len(topics)
        period = 1.0 / args.rate
        start = time.perf_counter()
        due = [start + i * period / k for i in range(k)]  # out of phase
        measured_at = start + args.warmup
        end = measured_at + args.seconds
        before = None
        while (now := time.perf_counter()) < end:
            if before is None and now >= measured_at:
                with client.lock:
                    client.measuring = True
                before = dict(cpu=[cpu_seconds(p.pid) for p in processes],
                              processed=client.processed(status_names), t=now)
            i = int(np.argmin(due))
            if now >= due[i]:
                client.publish(i)
                due[i] += period
                if now - due[i] > period:  # behind: skip the slot, never burst
                    due[i] = now + period
                continue
            time.sleep(max(0.0, min(min(due), end) - time.perf_counter()))
        after_cpu = [cpu_seconds(p.pid) for p in processes]
        elapsed = time.perf_counter() - before['t']
        rss = [status_mib(p.pid) for p in processes]
        time.sleep(args.window_seconds)  # answers in flight, and a /diagnostics or two
        after_processed = client.processed(status_names)
        with client.lock:
            client.measuring = False
    finally:
        spinner.stop()
        node.destroy_node()
        codes = [stop_node(p) for p in processes]
    if None in before['processed'] or None in after_processed:
        raise RuntimeError(f'{label}: no /diagnostics from {status_names}')
    processed = [b - a for a, b in zip(before['processed'], after_processed)]
    cpu = sum(b - a for a, b in zip(before['cpu'], after_cpu))
    cameras = [dict(processed=n, **summary(lat)) for n, lat in zip(processed, client.latencies)]
    return dict(label=label, nodes=len(nodes), cameras=cameras, cpu_s=cpu, elapsed_s=elapsed,
                processed=sum(processed), cpu_ms_per_frame=1e3 * cpu / max(1, sum(processed)),
                rss_mib=sum(rss), exit_codes=codes)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.cameras < 1 or args.rate <= 0 or args.seconds <= 0:
        print('bench-ros multicam: --cameras, --rate and --seconds must be positive',
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    use_large_frames_profile()
    base = write_node_files(args.out, frames=args.frames, window_seconds=args.window_seconds)
    k = args.cameras
    names = [f'cam{i}' for i in range(k)]
    one = _params(base, args.out / 'multicam_one.yaml', cameras=names,
                  batch_timeout_ms=args.batch_timeout_ms)
    rclpy.init()
    try:
        print(f'bench-ros multicam: {k} cameras, {args.width}x{args.height} rgb8 at '
              f'{args.rate:g} Hz each, {args.seconds:g} s measured per run', file=sys.stderr)
        runs = [
            run_setup('one_node', nodes=[(one, '/mc_one', 'perception_node')],
                      topics=[(f'/mc_one/{n}/image', f'/mc_one/{n}/human_action')
                              for n in names],
                      status_names=[f'perception_node: {STATUS} ({n})' for n in names],
                      args=args),
            run_setup('separate_nodes',
                      nodes=[(base, f'/mc_sep/{n}', f'perception_node_{n}') for n in names],
                      topics=[(f'/mc_sep/{n}/image', f'/mc_sep/{n}/human_action')
                              for n in names],
                      status_names=[f'perception_node_{n}: {STATUS}' for n in names],
                      args=args),
            run_setup('single_camera', nodes=[(base, '/mc_single', 'perception_node_single')],
                      topics=[('/mc_single/image', '/mc_single/human_action')],
                      status_names=[f'perception_node_single: {STATUS}'], args=args),
        ]
    except RuntimeError as exc:
        print(f'bench-ros multicam: {exc}', file=sys.stderr)
        return 1
    finally:
        rclpy.try_shutdown()
    report = dict(mode='multicam', cameras=k, rate_hz=args.rate, width=args.width,
                  height=args.height, seconds=args.seconds, frames=args.frames,
                  window_seconds=args.window_seconds, batch_timeout_ms=args.batch_timeout_ms,
                  cpu_count=os.cpu_count(), loadavg_1m=os.getloadavg()[0], runs=runs,
                  **ratios(runs))
    path = args.out / 'multicam.json'
    path.write_text(json.dumps(report, indent=2) + '\n')
    picture = plot_multicam(args.out / 'multicam.png', report)
    print(render(report))
    print(f'bench-ros multicam: wrote {path} and {picture}', file=sys.stderr)
    return 0


def ratios(runs: list[dict]) -> dict:
    one, separate, single = runs
    p99_one = max((c['p99_ms'] or float('nan')) for c in one['cameras'])
    p99_single = single['cameras'][0]['p99_ms'] or float('nan')
    return dict(cpu_per_frame_ratio=one['cpu_ms_per_frame'] / separate['cpu_ms_per_frame'],
                rss_ratio=one['rss_mib'] / separate['rss_mib'],
                p99_ratio=p99_one / p99_single)


def render(r: dict) -> str:
    def ms(value) -> str:
        return '-' if value is None else f'{value:.1f}'

    k = r['cameras']
    lines = [f"multicam: {k} cameras at {r['rate_hz']:g} Hz, {r['width']}x{r['height']} rgb8, "
             f"T = {r['frames']} over {r['window_seconds']:g} s, batch_timeout_ms "
             f"{r['batch_timeout_ms']:g}, {r['seconds']:g} s measured per run (load "
             f"{r['loadavg_1m']:.1f} on {r['cpu_count']} CPUs)",
             '| run | nodes | CPU ms / frame | total RSS MiB | frames processed per camera | '
             'latency p50 / p99 ms per camera |', '|---|---:|---:|---:|---|---|']
    for run in r['runs']:
        per = ', '.join(str(c['processed']) for c in run['cameras'])
        lat = ', '.join(f"{ms(c['p50_ms'])} / {ms(c['p99_ms'])}" for c in run['cameras'])
        lines.append(f"| {run['label']} | {run['nodes']} | {run['cpu_ms_per_frame']:.2f} | "
                     f"{run['rss_mib']:.0f} | {per} | {lat} |")
    lines += [f"one node / {k} nodes: CPU per frame {r['cpu_per_frame_ratio']:.2f}x (target "
              f"<= 0.5x), RSS {r['rss_ratio']:.2f}x (target <= 0.4x); per-camera p99 of the "
              f"one node / single-camera p99: {r['p99_ratio']:.2f}x (target <= 2x)"]
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
