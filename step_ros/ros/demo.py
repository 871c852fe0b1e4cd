"""`python -m step_ros demo`: perception_node on a synthetic camera, results printed live.

Starts the node as a subprocess on config/demo.yaml, publishes a 30 fps stream of procedural
actions (step_ros.data.synth.ActionStream) with header stamps = stream time, and prints what a
planner receives: the decided state when it changes and each START / END event, next to the action
really shown (not every raw window). It ends with the raw agreement over full windows (all frames
inside one action) and the stream metrics of its own run, raw against decided (accuracy, label
changes per minute, edit score, F1@IoU; START precision / recall / F1, onset latency, false
starts on background), computed by step_ros.evaluate.stream_metrics as bag-eval does. Everything
stays on this machine, in a ROS domain of its own.
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
IDLE_SECONDS = (0.5, 4.0)  # as in `synth --bag`


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
    parser.add_argument('--idle-seconds', type=float, nargs=2, default=IDLE_SECONDS,
                        metavar=('SHORTEST', 'LONGEST'),
                        help='idle gap (the background class) after each action, of a length '
                             'drawn uniformly from this range (default 0.5 4.0; 0 0: none)')
    return parser


class Scoreboard:
    """Collects the node's decided stream and events and compares them with the actions shown.

    Prints what a planner sees: a line when the decided state changes and one per event, not
    every raw window.
    """

    def __init__(self, *, stream, base_ns: int, labels: list[str], pairs: set[str],
                 background: str | None, window_s: float) -> None:
        self.stream = stream
        self.labels = labels
        self.base_ns = base_ns
        self.pairs = pairs  # labels that belong to a symmetric pair
        self.background = background
        self.window_s = window_s
        # (t newest, t oldest, raw label, decided label) per decided window
        self.rows: list[tuple[float, float, str, str]] = []
        self.events: list[tuple[str, str, float, float]] = []  # (kind, label, t, t decided)
        self.messages: list = []  # HumanAction past warm-up, for the stream metrics
        self.event_messages: list = []  # ActionEvent
        self.shown: tuple[str, str] | None = None  # the (state, stable label) printed last
        self.lock = threading.Lock()

    def seconds(self, stamp, stamp_to_ns) -> float:
        return (stamp_to_ns(stamp) - self.base_ns) / 1e9

    def truth(self, t: float) -> str:
        """The action shown at stream time t; background (or '') between actions."""
        for start, end, label in reversed(self.stream.segments()):
            if start <= t < end:
                return label
        return self.background or ''

    def started(self, onset: float, decided: float) -> tuple[float, float, str] | None:
        """The true action a START (onset estimate `onset`, decided at `decided`) begins: of the
        actions shown between the two, the one that began nearest the onset; None if none."""
        shown = [(start, end, label) for start, end, label in self.stream.segments()
                 if label != self.background and start <= decided and end > onset]
        return min(shown, key=lambda s: abs(s[0] - onset), default=None)

    def true_since(self, t: float) -> float | None:
        for start, end, _ in reversed(self.stream.segments()):
            if start <= t < end:
                return start
        return None

    def add_action(self, msg, stamp_to_ns) -> str | None:
        t = self.seconds(msg.header.stamp, stamp_to_ns)
        if msg.state != 'warming_up':
            decided = msg.stable_label if msg.state == 'active' else (self.background or '')
            with self.lock:
                self.rows.append((t, self.seconds(msg.window_start, stamp_to_ns), msg.label,
                                  decided))
                self.messages.append(msg)
        key = (msg.state, msg.stable_label)
        if key == self.shown:
            return None
        self.shown = key
        if msg.state == 'warming_up':
            return f'{t:7.2f} s  warming up ({msg.frames} frames buffered)'
        decided = f'{msg.state} {msg.stable_label}'.strip()
        conf = f'{msg.stable_confidence:.2f}' if msg.state == 'active' else ''
        return (f'{t:7.2f} s  {decided:<22} {conf:>4}  raw {msg.label:<13} '
                f'{msg.confidence:4.2f}  true: {self.truth(t)}')

    def add_event(self, msg, stamp_to_ns) -> str:
        t = self.seconds(msg.stamp, stamp_to_ns)
        decided = self.seconds(msg.header.stamp, stamp_to_ns)
        with self.lock:
            self.events.append((msg.kind, msg.label, t, decided))
            self.event_messages.append(msg)
        if msg.kind == 'start':
            segment = self.started(t, decided)
            true = (f'{segment[2]} shown {segment[0]:.2f}-{segment[1]:.2f} s' if segment
                    else f'{self.background or "no action"} (no action shown from onset to '
                         'decision)')
            return (f'{decided:7.2f} s  START {msg.label:<13} onset {t:6.2f} s  '
                    f'p={msg.confidence:.2f}  true: {true}')
        duration = msg.duration.sec + msg.duration.nanosec * 1e-9
        return (f'{decided:7.2f} s  END   {msg.label:<13} offset {t:5.2f} s  '
                f'{duration:.2f} s long')

    def summary(self) -> list[str]:
        with self.lock:
            rows, events = list(self.rows), list(self.events)
            messages, event_messages = list(self.messages), list(self.event_messages)
        # Windows whose frames all show one action (idle gaps are scored by the stream metrics).
        full = [(raw, self.truth(t)) for t, oldest, raw, _ in rows
                if self.true_since(t) is not None and self.true_since(t) <= oldest + 1e-6
                and self.truth(t) != self.background]
        lines = [f'{len(rows)} results, {len(full)} on full windows (all frames inside one '
                 f'action), {len(events)} events']
        for name, subset in (('overall', full), ('symmetric pairs', [r for r in full
                                                                       if r[1] in self.pairs])):
            if subset:
                hits = sum(p == t for p, t in subset)
                lines.append(f'raw agreement {name} (full windows): {hits}/{len(subset)} = '
                             f'{hits / len(subset):.1%}')
            else:
                lines.append(f'raw agreement {name}: no full windows')
        return lines + stream_summary(self, messages, event_messages)


def stream_summary(board: Scoreboard, messages: list, event_messages: list) -> list[str]:
    """The stream metrics of this run, computed by bag-eval's own scoring (stream_eval)."""
    import numpy as np

    from step_ros.data.timeline import Segment, Timeline
    from step_ros.evaluate.stream_eval import StreamRecord, stream_report
    from step_ros.ros.conversions import stamp_to_ns
    from step_ros.stream.decision import ActionEvent, Decision, State

    if len(messages) < 2:
        return ['stream metrics: fewer than two decided windows']
    labels = board.labels
    records, decisions = [], []
    for m in messages:
        # A HumanAction carries the top-k only; the stream and event scores use the labels, and
        # the probability-based blocks (calibration, frame mAP) are not reported here.
        probs = np.zeros(len(labels))
        for name, score in zip(m.top_labels, m.top_scores):
            probs[labels.index(name)] = score
        records.append(StreamRecord(stamp_ns=stamp_to_ns(m.header.stamp),
                                    window_start_ns=stamp_to_ns(m.window_start), label=m.label,
                                    probs=probs, ambiguous=m.ambiguous))
        decisions.append(Decision(state=State(m.state), stable_label=m.stable_label,
                                  stable_confidence=m.stable_confidence,
                                  stable_since_ns=stamp_to_ns(m.stable_since), events=()))
    events = [ActionEvent(task=e.task, label=e.label, kind=e.kind,
                          stamp_ns=stamp_to_ns(e.stamp), decided_ns=stamp_to_ns(e.header.stamp),
                          window_start_ns=stamp_to_ns(e.window_start),
                          confidence=e.confidence,
                          duration_s=e.duration.sec + e.duration.nanosec * 1e-9)
              for e in event_messages]
    timeline = Timeline([Segment(start_ns=board.base_ns + round(start * 1e9),
                                 end_ns=board.base_ns + round(end * 1e9), label=label)
                         for start, end, label in board.stream.segments()], source='demo')
    report = stream_report(records, decisions, events, timeline=timeline, labels=labels,
                           background=board.background,
                           window_ns=round(board.window_s * 1e9), temperature=1.0)
    stream, scores = report['stream'], report['events']

    def number(value, form: str = '.2f') -> str:
        return 'n/a' if value is None else format(value, form)

    lines = [f'stream metrics over {number(stream["minutes"] * 60, ".1f")} s (as bag-eval '
             f'computes them): true label changes {number(stream["true_changes_per_min"])} '
             'per minute',
             '  raw = the label of each window as published (its top-1); decided = the state a '
             'planner acts on (the active action, else background), which waits for agreement '
             'over windows, so it lags the raw label and changes less often',
             f'  accuracy = share of the {len(records)} results whose label is the action shown '
             "at the result's stamp (its newest frame; idle gaps count as background)"]
    for name in ('raw', 'decided'):
        block = stream[name]
        f1 = '/'.join(number(v) for v in block['f1_at_iou'].values())
        lines.append(
            f'{name:>7}: accuracy {number(block["accuracy"], ".1%")}, label changes '
            f'{number(block["label_changes_per_min"])} per minute, edit score '
            f'{number(block["edit_score"], ".1f")}, F1@{"/".join(block["f1_at_iou"])} {f1}')
    latency = scores['onset_latency_s']
    lines.append(
        f' events: {scores["starts"]} STARTs for {scores["true_segments"]} actions: precision '
        f'{number(scores["start_precision"])}, recall {number(scores["start_recall"])}, F1 '
        f'{number(scores["start_f1"])}; onset latency p50 {number(latency["p50"])} s, p90 '
        f'{number(latency["p90"])} s; false starts on background '
        f'{number(scores["false_starts_per_min_background"])} per minute')
    onset, offset = scores['onset_error_s'], scores['offset_error_s']
    lines.append(f' stamps: onset estimates {number(onset["p50"], "+.2f")} s from the true onset '
                 f'(p50; p10 {number(onset["p10"], "+.2f")}, p90 {number(onset["p90"], "+.2f")}), '
                 f'offsets {number(offset["p50"], "+.2f")} s (p10 {number(offset["p10"], "+.2f")},'
                 f' p90 {number(offset["p90"], "+.2f")})')
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

    from step_ros.stream.config import (
        ConfigError,
        PerceptionConfig,
        load_params_file,
        package_share,
    )
    params_file = Path(args.params_file or package_share() / 'config' / 'demo.yaml')
    try:
        config = PerceptionConfig.from_params(load_params_file(params_file))
    except ConfigError as exc:
        print(f'demo: {params_file}: {exc}\n(a head is written by `python -m step_ros train`; '
              'point --params-file at a parameters file that uses it)', file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile('w+', prefix='perception_node_', suffix='.log',
                                     delete=False) as log:
        print(f'demo: ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]}, node log: {log.name} '
              '(removed at the end unless the demo fails)')
        # SIGTERM (a supervisor, a test timeout) ends the demo like Ctrl-C: through the
        # `finally` below, which stops the node instead of leaving it running.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        process = _start_node(params_file, '/demo/camera/image_raw', log)
        code = 1
        try:
            code = _run(args, config, process, Path(log.name))
            return code
        finally:
            _stop(process)
            if code in (0, 130):  # done, or stopped by Ctrl-C / SIGTERM
                Path(log.name).unlink(missing_ok=True)
            else:
                print(f'demo: failed (exit code {code}); the node log is kept: {log.name}',
                      file=sys.stderr)


def _run(args, config, process: subprocess.Popen, log_path: Path) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from step_ros_msgs.msg import ActionEvent, ActionLabels, HumanAction

    from step_ros.data.synth import ActionStream
    from step_ros.ros.conversions import ns_to_time, rgb_to_image, stamp_to_ns
    from step_ros.ros.perception_node import EVENT_QOS, IMAGE_QOS, LATCHED_QOS, RESULT_QOS
    from step_ros.ros.spinning import BackgroundSpinner

    topic = '/' + config.head_topics[0].lstrip('/')
    # Ctrl-C as a KeyboardInterrupt in this thread: the summary is still printed.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('step_ros_demo')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = BackgroundSpinner(executor)
    labels: list[ActionLabels] = []
    board: Scoreboard | None = None
    try:
        camera = node.create_publisher(Image, '/demo/camera/image_raw',
                                       IMAGE_QOS[config.image_qos])
        node.create_subscription(ActionLabels, f'{topic}/labels', labels.append, LATCHED_QOS)

        def on_action(msg: HumanAction) -> None:
            line = board.add_action(msg, stamp_to_ns) if board is not None else None
            if line:
                print(line, flush=True)

        def on_event(msg: ActionEvent) -> None:
            if board is not None:
                print(board.add_event(msg, stamp_to_ns), flush=True)

        node.create_subscription(HumanAction, topic, on_action, RESULT_QOS)
        node.create_subscription(ActionEvent, f'{topic}/events', on_event, EVENT_QOS)
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
        idle = tuple(args.idle_seconds)
        if not labels[0].background and idle != (0.0, 0.0):
            # The head has no class for 'nothing is happening': it cannot be scored on idle gaps.
            print('demo: the head has no background label: actions back to back, no idle gaps',
                  flush=True)
            idle = (0.0, 0.0)
        stream = ActionStream(seed=args.seed, fps=args.fps,
                              action_seconds=args.action_seconds or engine.window_seconds,
                              idle_seconds=idle)
        base_ns = time.time_ns()
        board = Scoreboard(stream=stream, base_ns=base_ns, labels=list(labels[0].labels),
                           pairs=pairs,
                           background=labels[0].background or None,
                           window_s=engine.window_seconds)
        print(f'demo: labels {list(labels[0].labels)} (background: '
              f'{labels[0].background or "none"}); camera {args.fps:g} fps for '
              f'{args.seconds:g} s\ndemo: warming up: the first result comes once '
              f'{engine.num_frames} frames ({engine.window_seconds:g} s of video) are buffered',
              flush=True)
        print('demo: one line per change of the decided state and per START / END event '
              '(stream time; onset / offset estimated by the node)', flush=True)
        print(f'{"decided":>9}  {"state":<22} {"p":>4}  raw window            true action',
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
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
