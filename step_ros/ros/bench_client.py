"""End-to-end ROS benchmark: publish camera frames to a perception_node, time its HumanActions.

  e2e    640x480 rgb8 at 30 Hz: publish -> HumanAction received latency p50 / p99, delivered rate.
  flood  1920x1080 rgb8 at 100 Hz for minutes: node RSS (/proc/<pid>/status), latency over time,
         and the node's own counters from /diagnostics: frames dropped and counted, not queued.
  multicam  K cameras into one node against K nodes (step_ros/ros/bench_multicam.py).

`--start-node` runs the node itself (tiny backbone on the CPU, a random-weight head) under
`--ns`; otherwise the client talks to a running node in that namespace (RSS via --node-pid, or
the newest process named perception_node).
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
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from step_ros_msgs.msg import HumanAction

from step_ros.benchmark.measure import summary
from step_ros.benchmark.plot import plot_run
from step_ros.benchmark.procstat import find_pid, memory_trend, status_mib
from step_ros.ros.bench_setup import (
    start_node,
    stop_node,
    use_large_frames_profile,
    write_node_files,
)
from step_ros.ros.conversions import ns_to_time, stamp_to_ns
from step_ros.ros.spinning import BackgroundSpinner

MODES = {  # mode -> (rate Hz, width, height, seconds)
    'e2e': (30.0, 640, 480, 30.0),
    'flood': (100.0, 1920, 1080, 180.0),
}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('mode', choices=sorted(MODES), metavar='{e2e,flood,multicam}',
                        help='e2e | flood (the flags below); multicam has flags of its own: '
                             '`multicam --help`')
    parser.add_argument('--rate', type=float, help='publish rate in Hz (e2e 30, flood 100)')
    parser.add_argument('--width', type=int, help='frame width (e2e 640, flood 1920)')
    parser.add_argument('--height', type=int, help='frame height (e2e 480, flood 1080)')
    parser.add_argument('--seconds', type=float, help='publishing time (e2e 30, flood 180)')
    parser.add_argument('--ns', default='/bench', help='namespace of the node (default /bench)')
    parser.add_argument('--start-node', action='store_true',
                        help='start perception_node here (tiny backbone, CPU, random head)')
    parser.add_argument('--node-pid', type=int, help='pid of a running node, for its RSS')
    parser.add_argument('--frames', type=int, default=8, help='T of the started node')
    parser.add_argument('--window-seconds', type=float, default=2.0,
                        help='window_seconds of the started node')
    parser.add_argument('--sample-every', type=float, default=1.0,
                        help='seconds between RSS / counter samples')
    parser.add_argument('--ready-timeout', type=float, default=120.0,
                        help='seconds to wait for the node to subscribe')
    parser.add_argument('--dds', choices=('large-frames', 'default'), default='large-frames',
                        help='Fast DDS profile of this client and the started node: '
                             "'large-frames' (bigger SHM segments and UDP buffers; see "
                             "bench_setup.py) or the rmw defaults")
    parser.add_argument('--out', type=Path, default=Path('out/bench_ros'),
                        help='directory for <mode>.json (default out/bench_ros)')
    return parser


class Client:
    """Publishes frames, remembers when each stamp left, times the HumanAction that names it."""

    def __init__(self, node, *, ns: str, width: int, height: int) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.sent: dict[int, int] = {}  # header stamp ns -> monotonic ns at publish
        self.latencies: list[tuple[float, float, float]] = []  # (t s, client ms, node ms)
        self.warming_up = 0  # answers before the window filled, left out of the latencies
        self.diagnostics: dict[str, str] = {}
        self.publisher = node.create_publisher(Image, f'{ns}/image', qos_profile_sensor_data)
        self.actions = node.create_subscription(HumanAction, f'{ns}/human_action',
                                                self._on_action,
                                                QoSProfile(depth=100,
                                                           reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.frames = [self._image(width, height, i) for i in range(4)]
        self.t0 = time.monotonic_ns()

    @staticmethod
    def _image(width: int, height: int, seed: int) -> Image:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
        msg = Image(height=height, width=width, encoding='rgb8', is_bigendian=0, step=width * 3)
        msg.header.frame_id = 'bench_camera'
        msg.data = pixels.tobytes()
        return msg

    def matched(self) -> bool:
        """The node takes our images and we take its actions (matched both ways)."""
        counted = getattr(self.actions, 'get_publisher_count', None)  # rclpy >= Iron
        return self.publisher.get_subscription_count() > 0 and (counted is None or counted() > 0)

    def publish(self, i: int) -> None:
        msg = self.frames[i % len(self.frames)]
        stamp_ns = time.time_ns()
        msg.header.stamp = ns_to_time(stamp_ns)
        with self.lock:
            self.sent[stamp_ns] = time.monotonic_ns()
            if len(self.sent) > 4096:  # frames the node dropped are never answered
                for old in sorted(self.sent)[:2048]:
                    del self.sent[old]
        self.publisher.publish(msg)

    def _on_action(self, msg: HumanAction) -> None:
        now = time.monotonic_ns()
        with self.lock:
            sent = self.sent.pop(stamp_to_ns(msg.header.stamp), None)
        if sent is None:
            return
        if msg.state == HumanAction.STATE_WARMING_UP:
            self.warming_up += 1  # the window is not full yet: no head ran, not a prediction
            return
        node_ms = msg.latency.sec * 1e3 + msg.latency.nanosec / 1e6
        self.latencies.append(((now - self.t0) / 1e9, (now - sent) / 1e6, node_ms))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if 'perception_node' in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}


def run(client: Client, *, rate: float, seconds: float, sample_every: float, pid: int | None
        ) -> dict:
    """Publish at `rate` for `seconds` (never bursting to catch up); sample RSS and counters."""
    period = 1.0 / rate
    samples = []
    published = late = 0
    deadline = time.monotonic() + 3.0  # the node's counters before the run, when it reports
    while not client.diagnostics and time.monotonic() < deadline:
        time.sleep(0.05)
    node_before = dict(client.diagnostics)
    client.t0 = time.monotonic_ns()  # latency-over-time axis starts with publishing
    start = time.perf_counter()
    next_publish = next_sample = start
    while (now := time.perf_counter()) - start < seconds:
        if now >= next_sample:
            samples.append(dict(t=now - start, published=published,
                                actions=len(client.latencies),
                                rss_mib=None if pid is None else status_mib(pid),
                                node=dict(client.diagnostics)))
            next_sample += sample_every
        if now >= next_publish:
            client.publish(published)
            published += 1
            next_publish += period
            if time.perf_counter() - next_publish > period:  # behind: drop the slot
                late += 1
                next_publish = time.perf_counter() + period
        time.sleep(max(0.0, min(next_publish, next_sample) - time.perf_counter()))
    elapsed = time.perf_counter() - start
    time.sleep(2.0)  # answers in flight, and one more /diagnostics
    return dict(published=published, publish_hz=published / elapsed, late_slots=late,
                elapsed_s=elapsed, node_before=node_before, samples=samples)


def analyse(result: dict, client: Client, *, rate: float, sample_hz: float, frames: int,
            seconds: float) -> dict:
    lat = client.latencies
    client_ms = [c for _, c, _ in lat]
    node_ms = [n for _, _, n in lat]
    expected = max(0.0, min(result['publish_hz'], sample_hz) * seconds - (frames - 1))
    out = dict(latency_publish_to_action=summary([m / 1e3 for m in client_ms]),
               latency_node_receipt_to_publish=summary([m / 1e3 for m in node_ms]),
               actions=len(lat), action_hz=len(lat) / result['elapsed_s'],
               warming_up_messages=client.warming_up,
               expected_actions=expected, node=client.diagnostics)
    # The node's counters over the run (they count from its start): what reached its callback,
    # what the worker took, what the latest-wins slot replaced unseen.
    first, last = result['node_before'], client.diagnostics

    def delta(key: str) -> int | None:
        if key not in last:
            return None
        return int(last[key]) - int(first.get(key, 0))

    out['node_delta'] = {k: delta(k) for k in ('received', 'processed', 'dropped (worker busy)',
                                                'published')}
    # Latency over time, in tenths of the run: bounded means the last tenth is like the first.
    edges = np.linspace(0, result['elapsed_s'] + 2.0, 11)
    out['latency_by_tenth'] = [
        dict(start_s=float(a), **summary([c / 1e3 for t, c, _ in lat if a <= t < b]))
        for a, b in zip(edges[:-1], edges[1:])]
    times = [s['t'] for s in result['samples'] if s['rss_mib'] is not None]
    rss = [s['rss_mib'] for s in result['samples'] if s['rss_mib'] is not None]
    out['memory'] = memory_trend(times, rss, settle_s=min(30.0, seconds / 3))
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['multicam']:  # K cameras into one node against K nodes: its own module
        from step_ros.ros.bench_multicam import main as multicam
        return multicam(argv, prog=prog)
    args = build_parser(prog).parse_args(argv)
    rate, width, height, seconds = MODES[args.mode]
    rate, width = args.rate or rate, args.width or width
    height, seconds = args.height or height, args.seconds or seconds
    args.out.mkdir(parents=True, exist_ok=True)
    process = None
    dds = use_large_frames_profile() if args.dds == 'large-frames' else 'rmw defaults'
    rclpy.init()
    node = rclpy.create_node('step_ros_bench_client')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = BackgroundSpinner(executor)
    try:
        if args.start_node:
            params = write_node_files(args.out, frames=args.frames,
                                      window_seconds=args.window_seconds)
            process = start_node(params, ns=args.ns, log=args.out / f'{args.mode}_node.log')
        client = Client(node, ns=args.ns, width=width, height=height)
        spinner.start()
        deadline = time.monotonic() + args.ready_timeout
        while not client.matched():
            if process is not None and process.poll() is not None:
                print(f'bench_client: the node exited with {process.returncode}; see '
                      f"{args.out / f'{args.mode}_node.log'}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f'bench_client: no node took {args.ns}/image and published '
                      f'{args.ns}/human_action within {args.ready_timeout:.0f} s',
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
        pid = args.node_pid or (process.pid if process else find_pid('perception_node'))
        print(f'bench_client: {args.mode}: {width}x{height} rgb8 at {rate:g} Hz for '
              f'{seconds:g} s to {args.ns}/image (node pid {pid})', file=sys.stderr)
        result = run(client, rate=rate, seconds=seconds, sample_every=args.sample_every,
                     pid=pid)
        sample_hz = args.frames / args.window_seconds
        report = dict(mode=args.mode, rate_hz=rate, width=width, height=height,
                      seconds=seconds, node_pid=pid, started_node=args.start_node, dds=dds,
                      frames=args.frames, window_seconds=args.window_seconds,
                      cpu_count=os.cpu_count(), loadavg_1m=os.getloadavg()[0],
                      **{k: v for k, v in result.items() if k not in ('samples',)},
                      **analyse(result, client, rate=rate, sample_hz=sample_hz,
                                frames=args.frames, seconds=result['elapsed_s']),
                      samples=result['samples'])
        path = args.out / f'{args.mode}.json'
        path.write_text(json.dumps(report, indent=2) + '\n')
        picture = plot_run(args.out / f'{args.mode}.png', report, client.latencies)
        print(render(report))
        print(f'bench_client: wrote {path} and {picture}', file=sys.stderr)
        return 0
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
        if process is not None:
            stop_node(process)


def render(r: dict) -> str:
    c, n, m = r['latency_publish_to_action'], r['latency_node_receipt_to_publish'], r['memory']

    def ms(stats: dict, key: str) -> str:
        return '-' if stats[key] is None else f'{stats[key]:.1f}'

    node = r['node_delta']
    lines = [
        f"{r['mode']}: {r['width']}x{r['height']} rgb8, asked {r['rate_hz']:g} Hz, published "
        f"{r['published']} frames in {r['elapsed_s']:.0f} s = {r['publish_hz']:.1f} Hz "
        f"({r['late_slots']} late slots skipped); DDS profile: {r['dds']}",
        f"HumanAction received: {r['actions']} ({r['action_hz']:.2f} Hz; about "
        f"{r['expected_actions']:.0f} expected from the node's sampling)",
        f"publish -> HumanAction: p50 {ms(c, 'p50_ms')} ms, p99 {ms(c, 'p99_ms')} ms (n={c['n']})"
        f"; node receipt -> publish: p50 {ms(n, 'p50_ms')} ms, p99 {ms(n, 'p99_ms')} ms",
        f"node counters over the run (/diagnostics): received {node['received']} of "
        f"{r['published']} published, processed {node['processed']}, dropped (worker busy) "
        f"{node['dropped (worker busy)']}, published {node['published']}",
    ]
    if m.get('growth_mib') is not None:
        lines.append(f"node RSS: {m['first_mib']:.0f} MiB -> {m['last_mib']:.0f} MiB (growth "
                     f"{m['growth_mib']:+.1f} MiB, slope {m['slope_mib_per_min']:+.2f} MiB/min, "
                     f"max {m['max_mib']:.0f} MiB, {m['samples']} samples)")
    tenths = [f"{ms(t, 'p99_ms')}" for t in r['latency_by_tenth']]
    lines.append(f"latency p99 by tenth of the run (ms): {', '.join(tenths)}")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
