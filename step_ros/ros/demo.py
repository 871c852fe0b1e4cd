"""`python -m step_ros demo`: perception_node on a synthetic camera, results printed live.

Starts the node as a subprocess on config/demo.yaml, publishes a 30 fps stream of procedural
actions (step_ros.synth.ActionStream) with header stamps = stream time, prints every HumanAction
next to the action really shown, and ends with the agreement rate over full windows (all frames
inside one action), overall and on the nearly symmetric pairs. Everything stays on this machine,
in a ROS domain of its own.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NODE_START_TIMEOUT_S = 120.0


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description='Run perception_node on a built-in synthetic 30 fps camera and '
        'print each recognised action next to the action really shown.')
    parser.add_argument('--params-file', default=None,
                        help='node parameters (default: <share>/config/demo.yaml)')
    parser.add_argument('--seconds', type=float, default=30.0, help='stream length (s)')
    parser.add_argument('--fps', type=float, default=30.0, help='camera frame rate')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic actions')
    parser.add_argument('--action-seconds', type=float, default=None,
                        help='length of each action (default: the window length, as in '
                             'training)')
    return parser


class Scoreboard:
    """Collects HumanAction results and compares them with the actions shown."""

    def __init__(self, *, stream, base_ns: int, pairs: set[str]) -> None:
        self.stream = stream
        self.base_ns = base_ns
        self.pairs = pairs  # labels that belong to a symmetric pair
        self.rows: list[tuple[str, str, bool]] = []  # (predicted, true, full window)
        self.lock = threading.Lock()

    def truth(self, t_newest: float, t_oldest: float) -> tuple[str, bool]:
        for start, end, label in reversed(self.stream.segments()):
            if start <= t_newest < end:
                return label, start <= t_oldest + 1e-6
        return '?', False

    def add(self, msg, stamp_to_ns) -> str:
        t_newest = (stamp_to_ns(msg.header.stamp) - self.base_ns) / 1e9
        t_oldest = (stamp_to_ns(msg.window_start) - self.base_ns) / 1e9
        true, full = self.truth(t_newest, t_oldest)
        with self.lock:
            self.rows.append((msg.label, true, full))
        ambiguity = f'ambiguous ({msg.ambiguous_with}, {msg.ambiguity_reason})' \
            if msg.ambiguous else ''
        verdict = ('ok' if msg.label == true else 'WRONG') if full else '(window spans 2 actions)'
        latency_ms = msg.latency.sec * 1e3 + msg.latency.nanosec / 1e6
        return (f'{t_newest:7.2f} s  {msg.label:<13} {msg.confidence:5.2f}  {ambiguity:<32} '
                f'true: {true:<13} {verdict}  [{latency_ms:.0f} ms]')

    def summary(self) -> list[str]:
        with self.lock:
            full = [(p, t) for p, t, f in self.rows if f]
        lines = [f'{len(self.rows)} results, {len(full)} on full windows (all frames inside one '
                 'action)']
        for name, rows in (('overall', full), ('symmetric pairs', [r for r in full
                                                                     if r[1] in self.pairs])):
            if rows:
                hits = sum(p == t for p, t in rows)
                lines.append(f'agreement {name}: {hits}/{len(rows)} = {hits / len(rows):.1%}')
            else:
                lines.append(f'agreement {name}: no full windows')
        return lines


def _start_node(params_file: Path, camera: str, log) -> subprocess.Popen:
    command = [sys.executable, '-m', 'step_ros.ros.perception_node', '--ros-args',
               '--params-file', str(params_file), '-r', f'image:={camera}']
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    # The child node and this process must share the domain; set before rclpy.init.
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    from step_ros.config import ConfigError, PerceptionConfig, load_params_file, package_share
    params_file = Path(args.params_file or package_share() / 'config' / 'demo.yaml')
    try:
        config = PerceptionConfig.from_params(load_params_file(params_file))
    except ConfigError as exc:
        print(f'demo: {params_file}: {exc}\n(a head is written by `python -m step_ros train`; '
              'point --params-file at a parameters file that uses it)', file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile('w+', prefix='perception_node_', suffix='.log',
                                     delete=False) as log:
        print(f'demo: ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]}, node log: {log.name}')
        # SIGTERM (a supervisor, a test timeout) ends the demo like Ctrl-C: through the
        # `finally` below, which stops the node instead of leaving it running.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        process = _start_node(params_file, '/demo/camera/image_raw', log)
        try:
            return _run(args, config, process, Path(log.name))
        finally:
            _stop(process)


def _run(args, config, process: subprocess.Popen, log_path: Path) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from step_ros_msgs.msg import ActionLabels, HumanAction

    from step_ros.ros.conversions import ns_to_time, rgb_to_image, stamp_to_ns
    from step_ros.ros.perception_node import IMAGE_QOS, LATCHED_QOS, RESULT_QOS
    from step_ros.synth import ActionStream

    topic = '/' + config.head_topics[0].lstrip('/')
    # Ctrl-C as a KeyboardInterrupt in this thread: the summary is still printed.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('step_ros_demo')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    labels: list[ActionLabels] = []
    board: Scoreboard | None = None
    try:
        camera = node.create_publisher(Image, '/demo/camera/image_raw',
                                       IMAGE_QOS[config.image_qos])
        node.create_subscription(ActionLabels, f'{topic}/labels', labels.append, LATCHED_QOS)

        def on_action(msg: HumanAction) -> None:
            if board is not None:
                print(board.add(msg, stamp_to_ns), flush=True)

        node.create_subscription(HumanAction, topic, on_action, RESULT_QOS)
        spinner.start()
        print('demo: starting perception_node (loading the model)...', flush=True)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while not labels:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                print(f'demo: perception_node did not come up (exit code {process.poll()}); '
                      f'its log:\n{tail}', file=sys.stderr)
                return 1
            time.sleep(0.1)
        pairs = {name for name in (*labels[0].pair_a, *labels[0].pair_b)}
        engine = config.engine
        stream = ActionStream(seed=args.seed, fps=args.fps,
                              action_seconds=args.action_seconds or engine.window_seconds)
        base_ns = time.time_ns()
        board = Scoreboard(stream=stream, base_ns=base_ns, pairs=pairs)
        print(f'demo: labels {list(labels[0].labels)}; camera {args.fps:g} fps for '
              f'{args.seconds:g} s\ndemo: warming up: the first result comes once '
              f'{engine.num_frames} frames ({engine.window_seconds:g} s of video) are buffered',
              flush=True)
        print(f'{"newest":>9}  {"predicted":<13} {"conf":>5}  {"ambiguity":<32} true action',
              flush=True)
        start = time.monotonic()
        for frame, t, _ in stream:
            if t >= args.seconds or process.poll() is not None:
                break
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            header = Header(stamp=ns_to_time(base_ns + round(t * 1e9)), frame_id='demo_camera')
            camera.publish(rgb_to_image(frame, header=header))
        time.sleep(1.0)  # the last results are still on their way
        if process.poll() is not None:
            print(f'demo: perception_node exited with code {process.returncode}; see '
                  f'{log_path}', file=sys.stderr)
            return 1
        for line in board.summary():
            print(f'demo: {line}')
        return 0 if board.rows else 1
    except KeyboardInterrupt:
        if board is not None:
            for line in board.summary():
                print(f'demo: {line}')
        return 130
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
