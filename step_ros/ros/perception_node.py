"""perception_node: camera images in, step_ros_msgs/HumanAction out; a ROS 2 lifecycle node.

configure reads the parameters and loads the model, activate subscribes to the camera and starts
the worker, deactivate stops both (the model stays loaded), cleanup frees the model. With
`autostart` (the default) main() configures and activates it at once, as a plain node would start.

The subscription callbacks only store the newest image of their input (raw, compressed) in a
latest-wins slot; one worker thread decodes it, pushes it through the streaming engine (which
samples by header stamp), feeds each head's raw prediction to that head's Decider (the ROS-free
decision stage that bag-eval and the demo run too) and publishes both on `human_action`, the
START / END events on `human_action/events`. A slow model therefore drops frames and never
answers with stale ones. A watchdog in the diagnostics timer turns /diagnostics to ERROR when
that worker died or is stuck.
"""

from __future__ import annotations

import gc
import re
import signal
import sys
import time
import traceback

import rclpy
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import (
    LifecycleNode,
    LifecyclePublisher,
    LifecycleState,
    TransitionCallbackReturn,
)
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.subscription import Subscription
from rclpy.task import Future
from rclpy.timer import Timer
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from step_ros_msgs.msg import ActionEvent, ActionLabels, HumanAction

from step_ros.backbone import BackboneError
from step_ros.checkpoint import CheckpointError
from step_ros.config import NODE_NAME, PARAMETERS, ConfigError, PerceptionConfig
from step_ros.decision import ActionEvent as Event
from step_ros.decision import Decider
from step_ros.decode import ImageRejected, check_message, decode_message
from step_ros.engine import StepResult, StreamingEngine
from step_ros.ros import diagnostics
from step_ros.ros.conversions import (
    annotate,
    event_to_msg,
    labels_msg,
    prediction_to_msg,
    rgb_to_image,
    stamp_to_ns,
    warming_up_msg,
)
from step_ros.ros.logs import RateLimitedLog
from step_ros.ros.worker import Worker
from step_ros.runtime import build_engine

IMAGE_QOS = {
    'sensor_data': qos_profile_sensor_data,  # REP-2003: best effort, keep last 5
    'reliable': QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
}
RESULT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Events are rare and each one matters: reliable and deep, so that a busy planner misses none.
# Volatile on purpose: a planner that starts late must not act on a START of long ago; the
# current state is in every HumanAction (state, stable_label, stable_since).
EVENT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Late subscribers (planners started after the node) still receive the label lists.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
WARN_PERIOD_S = 5.0  # at most one warning per kind of problem in this time
# Consecutive frames each farther apart than the window: the window can never fill.
GAP_RESETS_WARNED = 3
INPUTS = ('image', 'image/compressed')  # relative topics, also the names of the worker's slots


class StartupError(RuntimeError):
    """The node cannot run as configured; the fatal log line says why."""


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # Declared once here (read-only), read on each configure: a cleanup + configure cycle
        # must not declare them twice.
        self.declare_parameters('', [
            (p.name, p.default, ParameterDescriptor(description=p.description,
                                                    dynamic_typing=True, read_only=True))
            for p in PARAMETERS])
        self.autostart = self.get_parameter('autostart').value
        if not isinstance(self.autostart, bool):
            self.get_logger().fatal(f'cannot start: autostart={self.autostart!r}: expected bool')
            self.destroy_node()
            raise StartupError('autostart')
        self.finished = Future()  # done by the shutdown transition: main() stops spinning
        self.config: PerceptionConfig | None = None
        self.engine: StreamingEngine | None = None
        self.worker: Worker | None = None
        self.stats = diagnostics.NodeStats()
        self._log = RateLimitedLog(self.get_logger(), period=WARN_PERIOD_S)
        self._dropped: dict[str, int] = {}  # frames dropped by workers of earlier activations
        self._previous_stamp_ns: int | None = None
        self._gap_resets = 0  # consecutive frames that restarted the window by a gap
        self._image_topic = self.resolve_topic_name('image')
        self._compressed_topic = self.resolve_topic_name('image/compressed')
        self._outputs: dict[str, LifecyclePublisher] = {}
        self._events: dict[str, LifecyclePublisher] = {}
        self._deciders: dict[str, Decider] = {}  # per head (task): the decision state
        self._frame_id = ''  # of the newest image, for events decided without one
        self._labels_publishers: list[Publisher] = []
        self._diagnostics: LifecyclePublisher | None = None
        self._debug: LifecyclePublisher | None = None
        self._inputs: list[Subscription] = []
        self._diagnostics_timer: Timer | None = None
        if not self.autostart:
            self.get_logger().info('unconfigured: waiting for a lifecycle manager (autostart is '
                                   'false)')

    def start(self) -> bool:
        """configure + activate (autostart); False when either failed (logged as fatal)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal('cannot start: activation failed')
            return False
        return True

    def _configure_failed(self, text: str) -> TransitionCallbackReturn:
        """Report a failed configure: fatal when it ends the process (autostart), else error."""
        if self.autostart:
            self.get_logger().fatal(f'cannot start: {text}')
        else:
            self.get_logger().error(f'cannot configure: {text}')
        self._release()
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.config = self._read_config()
            self.engine = build_engine(self.config)
        except (ConfigError, CheckpointError, BackboneError, OSError) as exc:
            return self._configure_failed(str(exc))
        except Exception:  # rclpy would turn it into an error transition without a word
            return self._configure_failed(f'unexpected error\n{traceback.format_exc()}')
        self.stats = diagnostics.NodeStats()
        self._dropped = {}
        for head, topic in zip(self.engine.heads, self.config.head_topics):
            self._outputs[head.task] = self.create_lifecycle_publisher(HumanAction, topic,
                                                                       RESULT_QOS)
            self._events[head.task] = self.create_lifecycle_publisher(
                ActionEvent, f'{topic}/events', EVENT_QOS)
            self._deciders[head.task] = Decider(
                task=head.task, labels=head.labels, background=head.background,
                config=self.config.decision,
                window_ns=round(self.config.engine.window_seconds * 1e9))
            # A plain publisher, published once here: the label list describes the loaded model
            # (configure to cleanup), not the activity, and transient-local keeps it for late
            # subscribers. A lifecycle publisher would republish it on every activation.
            labels = self.create_publisher(ActionLabels, f'{topic}/labels', LATCHED_QOS)
            labels.publish(labels_msg(head, topic=self.resolve_topic_name(topic)))
            self._labels_publishers.append(labels)
        self._diagnostics = self.create_lifecycle_publisher(DiagnosticArray, '/diagnostics',
                                                            RESULT_QOS)
        if self.config.debug_image:
            self._debug = self.create_lifecycle_publisher(Image, 'debug_image', RESULT_QOS)
        info = self.engine.backbone.info
        self.get_logger().info(
            f'configured: backbone {info.id} on {self.engine.backbone.device} '
            f'({self.engine.backbone.dtype}), heads {[h.task for h in self.engine.heads]}, '
            f'{self.config.engine.num_frames} frames over {self.config.engine.window_seconds} s')
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.engine.reset()  # a window never spans the time the node was inactive
        self._previous_stamp_ns, self._gap_resets = None, 0
        self.worker = Worker(process=self._process, on_error=self._on_worker_error,
                             stall_seconds=self.config.worker_timeout)
        self.worker.start()
        qos = IMAGE_QOS[self.config.image_qos]
        raw, compressed = INPUTS
        self._inputs = [self.create_subscription(
            Image, raw, lambda msg: self._on_image(msg, raw), qos)]
        if self.config.subscribe_compressed:
            self._inputs.append(self.create_subscription(
                CompressedImage, compressed, lambda msg: self._on_image(msg, compressed), qos))
        # A steady clock: diagnostics keep coming under use_sim_time while /clock is silent.
        self._diagnostics_timer = self.create_timer(
            self.config.diagnostics_period, self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f'ready: input {self._image_topic} ({self.config.image_qos}) -> '
            f'{[self.resolve_topic_name(t) for t in self.config.head_topics]}')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._end_actions()  # a planner must not wait for an END that would never come
        self.get_logger().info('inactive: input closed, model kept loaded')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info('unconfigured: model released')
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        if state.label == 'active':
            self._end_actions()
        self._release()
        self.get_logger().info(f'finalized (from {state.label}): exiting')
        self.finished.set_result(True)
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition callback into this state without logging it.
        self.get_logger().error(f'a transition from {state.label} raised an exception; '
                                'model released, back to unconfigured')
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        """Close the input, then finish what was handed over before the publishers stop."""
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        worker, self.worker = self.worker, None
        if worker is None:
            return
        if not worker.stop(timeout=10.0):
            self.get_logger().error('inference worker did not stop within 10 s')
            return
        for key, count in worker.slot.dropped_by.items():
            self._dropped[key] = self._dropped.get(key, 0) + count
        # Handed over, not yet taken by the worker (one per input at most).
        while (leftover := worker.slot.take(timeout=0)) is not None:
            try:
                self._process(leftover)
            except Exception as exc:  # as in the worker: one bad frame is reported, not raised
                self._on_worker_error(exc)

    def _release(self) -> None:
        """Drop the model and the outputs (idempotent); the device memory goes back."""
        for publisher in (*self._outputs.values(), *self._events.values()):
            self.destroy_lifecycle_publisher(publisher)
        for publisher in (self._diagnostics, self._debug):
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
        for publisher in self._labels_publishers:
            self.destroy_publisher(publisher)
        self._outputs, self._events, self._labels_publishers = {}, {}, []
        self._deciders = {}
        self._diagnostics = self._debug = None
        cuda = self.engine is not None and self.engine.backbone.device.type == 'cuda'
        self.engine = self.config = None
        gc.collect()  # the engine holds reference cycles (modules); free them now
        if cuda:
            torch.cuda.empty_cache()

    def _read_config(self) -> PerceptionConfig:
        # Typed by PerceptionConfig (with messages naming the parameter), not by rclpy, so that
        # e.g. `window_seconds: 2` is accepted. Changes after start-up are not applied.
        values = {p.name: self.get_parameter(p.name).value for p in PARAMETERS}
        # rclpy silently ignores overrides nobody declares: report typos instead.
        for name in getattr(self, '_parameter_overrides', {}):
            if not self.has_parameter(name) and not name.startswith('qos_overrides.'):
                values[name] = None
        config = PerceptionConfig.from_params(values)
        for topic in config.head_topics:
            try:
                validate_topic_name(topic)
            except Exception as exc:  # InvalidTopicNameException: several lines with a caret
                reason = str(exc).splitlines()[0].split(': ', 1)[-1]
                raise ConfigError(f'heads.topics: {topic!r} is not a valid topic name '
                                  f'({reason})') from None
        return config

    def _on_image(self, msg: Image | CompressedImage, key: str) -> None:
        # Runs in the executor: never the model, only the hand-off to the worker.
        self.stats.count_received()
        self.worker.submit((msg, time.monotonic_ns()), key)

    def _process(self, item: tuple[Image | CompressedImage, int]) -> None:
        msg, received_ns = item
        header = msg.header
        stamp_ns = stamp_to_ns(header.stamp)
        if stamp_ns == 0:
            # Sampling follows header stamps; an unstamped camera would never fill a window.
            self._log.warning('stamp', f'images on {self._image_topic} have zero header stamps; '
                              'using the receive time (fix the camera driver)')
            header.stamp = self.get_clock().now().to_msg()
            stamp_ns = stamp_to_ns(header.stamp)
        compressed = isinstance(msg, CompressedImage)
        limit = self.config.max_image_pixels
        try:
            # Every frame: format and declared sizes, no pixel decoded.
            check_message(msg, compressed=compressed, max_pixels=limit)
            # Decoded (e.g. a JPEG) only if the stamp sampler keeps the frame: most are skipped.
            result = self.engine.push(
                lambda: decode_message(msg, compressed=compressed, max_pixels=limit),
                stamp_ns, received_ns)
        except ImageRejected as exc:
            self.stats.count_rejected(exc.kind)
            topic = self._compressed_topic if compressed else self._image_topic
            self._log.warning(exc.kind, f'rejected image on {topic} ({exc.kind}, '
                              f'{self.stats.rejected[exc.kind]} so far): {exc}')
            return
        self.stats.count_processed()
        self._frame_id = header.frame_id
        if result.reset:
            self._log.info('reset', 'header stamps went back or left a gap: window restarted')
            self._end_actions()
        self._watch_gaps(stamp_ns, reset=result.reset)
        self._publish_results(result, header=header, received_ns=received_ns)
        if self._debug is not None and result.predictions:
            self._debug.publish(rgb_to_image(annotate(result.frame, result.predictions),
                                             header=header))

    def _publish_results(self, result: StepResult, *, header: Header, received_ns: int
                         ) -> None:
        """Each raw prediction through its head's Decider: HumanAction, then its events. While
        the window fills, each sampled frame gives a warming_up HumanAction per head."""
        for prediction in result.predictions:
            decision = self._deciders[prediction.task].update(
                probs=prediction.probs, stamp_ns=prediction.stamp_ns,
                window_start_ns=prediction.window_start_ns, ambiguous=prediction.ambiguous)
            latency_ns = time.monotonic_ns() - received_ns
            self._outputs[prediction.task].publish(prediction_to_msg(
                prediction, decision=decision, header=header, latency_ns=latency_ns))
            self.stats.count_published(latency_ns)
            self._publish_events(decision.events)
        if result.sampled and self.engine.warming_up:
            for task, decider in self._deciders.items():
                self._outputs[task].publish(warming_up_msg(
                    decider.warming_up(), task=task, frames=self.engine.buffered,
                    window_start_ns=self.engine.ring.oldest_stamp(), header=header,
                    latency_ns=time.monotonic_ns() - received_ns))

    def _end_actions(self) -> None:
        """The stream restarted or stops: every head's open action ends (END events)."""
        for decider in self._deciders.values():
            self._publish_events(decider.reset())

    def _publish_events(self, events: tuple[Event, ...] | list[Event]) -> None:
        for event in events:
            self._events[event.task].publish(event_to_msg(event, frame_id=self._frame_id))
            self.get_logger().info(
                f'{event.task}: {event.kind.upper()} {event.label} at '
                f'{event.stamp_ns / 1e9:.3f} (confidence {event.confidence:.2f}'
                + (f', {event.duration_s:.2f} s)' if event.kind == 'end' else ')'))

    def _watch_gaps(self, stamp_ns: int, *, reset: bool) -> None:
        """Warn when every frame restarts the window: frames farther apart than the window."""
        previous, self._previous_stamp_ns = self._previous_stamp_ns, stamp_ns
        window_ns = self.config.engine.window_seconds * 1e9
        if not (reset and previous is not None and stamp_ns - previous > window_ns):
            self._gap_resets = 0
            return
        self._gap_resets += 1
        if self._gap_resets >= GAP_RESETS_WARNED:
            self._log.warning('window', self._gap_problem(stamp_ns - previous))

    def _gap_problem(self, gap_ns: float) -> str:
        return (f'frames on the input are {gap_ns / 1e9:.3g} s apart, more than '
                f'window_seconds={self.config.engine.window_seconds:g}: every frame restarts '
                'the window, which never fills; raise window_seconds')

    def _publish_diagnostics(self) -> None:
        backbone = self.engine.backbone
        worker = self.worker
        fault = worker.fault()
        if fault is not None:
            self._log.error('worker', f'{fault}; no results are published')
        dropped = dict(self._dropped)
        for key, count in worker.slot.dropped_by.items():
            dropped[key] = dropped.get(key, 0) + count
        problem = None
        if self._gap_resets >= GAP_RESETS_WARNED and self._previous_stamp_ns is not None:
            problem = 'window never fills: frames farther apart than window_seconds'
        self._diagnostics.publish(diagnostics.report(
            name=f'{self.get_name()}: action recognition',
            hardware_id=f'{backbone.info.id} on {backbone.device}', stats=self.stats,
            dropped=dropped, buffered=self.engine.buffered,
            num_frames=self.config.engine.num_frames, warming_up=self.engine.warming_up,
            stamp=self.get_clock().now().to_msg(), image_topic=self._image_topic,
            fault=fault, problem=problem))

    def _on_worker_error(self, exc: BaseException) -> None:
        if not self.context.ok():
            return  # shutting down: publishers are gone, nothing to report
        self.stats.count_rejected('error')
        self._log.error('error', f'inference failed: {type(exc).__name__}: {exc}')

    def destroy_node(self) -> None:
        # Ctrl-C ends spinning in any state without a shutdown transition: stop the worker here.
        worker = getattr(self, 'worker', None)
        if worker is not None and not worker.stop(timeout=10.0):
            self.get_logger().error('inference worker did not stop within 10 s')
        super().destroy_node()


def _params_file_problem(exc: Exception, argv: list[str]) -> str:
    """One line for rcl's error on a parameters file it cannot parse, naming the file."""
    match = re.search(r"params file: '--params-file (.+?)'", str(exc))
    files = [match.group(1)] if match else \
        [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '--params-file']
    for path in files:
        try:
            with open(path) as stream:
                yaml.safe_load(stream)
        except OSError as error:
            return f'parameters file {path!r} cannot be read: {error.strerror}'
        except yaml.YAMLError as error:
            where = getattr(error, 'problem_mark', None)
            line = f' (line {where.line + 1})' if where is not None else ''
            return f'parameters file {path!r} is not valid YAML{line}'
    if files:
        return (f"parameters file {files[0]!r} is not a ROS 2 parameters file (expected "
                "'<node name or /**>: ros__parameters: {...}')")
    return f'invalid command line arguments: {str(exc).splitlines()[0]}'


def main(args: list[str] | None = None) -> int:
    try:
        rclpy.init(args=args)
    except Exception as exc:  # rcl parses --ros-args (and params files) here
        print(f'[FATAL] [{NODE_NAME}]: cannot start: '
              f'{_params_file_problem(exc, list(sys.argv if args is None else args))}',
              file=sys.stderr)
        return 1
    node = None
    try:
        node = PerceptionNode()
        if node.autostart and not node.start():
            return 1
        # Until the shutdown transition (lifecycle manager) or Ctrl-C.
        rclpy.spin_until_future_complete(node, node.finished)
    except StartupError:
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A second Ctrl-C (a terminal running `ros2 launch` sends one to the whole group, then
        # launch passes on its own) must not abort the teardown half-way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
