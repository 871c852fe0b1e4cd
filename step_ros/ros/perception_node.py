"""perception_node: camera images in, step_ros_msgs/HumanAction out; a ROS 2 lifecycle node.

configure reads the parameters and loads the model, activate subscribes to the camera and starts
the worker, deactivate stops both (the model stays loaded), cleanup frees the model. With
`autostart` (the default) main() configures and activates it at once, as a plain node would start.

The subscription callback only stores the newest image in a latest-wins slot; one worker thread
decodes it, pushes it through the streaming engine (which samples by header stamp), feeds each
head's raw prediction to that head's Decider (the ROS-free decision stage that bag-eval and the
demo run too) and publishes both on `human_action`, the START / END events on
`human_action/events`. A slow model therefore drops frames and never answers with stale ones.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback

import rclpy
import torch
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
        self._warned: dict[str, float] = {}
        self._dropped = 0  # frames dropped by the workers of earlier activations
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

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger().fatal if self.autostart else self.get_logger().error
        try:
            self.config = self._read_config()
            self.engine = build_engine(self.config)
        except (ConfigError, CheckpointError, BackboneError, OSError) as exc:
            log(f'cannot start: {exc}' if self.autostart else f'cannot configure: {exc}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        except Exception:  # rclpy would turn it into an error transition without a word
            log(f'cannot configure: unexpected error\n{traceback.format_exc()}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.stats = diagnostics.NodeStats()
        self._dropped = 0
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
        self.worker = Worker(process=self._process, on_error=self._on_worker_error)
        self.worker.start()
        qos = IMAGE_QOS[self.config.image_qos]
        self._inputs = [self.create_subscription(Image, 'image', self._on_image, qos)]
        if self.config.subscribe_compressed:
            self._inputs.append(self.create_subscription(CompressedImage, 'image/compressed',
                                                         self._on_image, qos))
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
        self._dropped += worker.slot.dropped
        leftover = worker.slot.take(timeout=0)  # handed over, not yet taken by the worker
        if leftover is not None:
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
        return PerceptionConfig.from_params(values)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.count_received()
        self.worker.submit((msg, time.monotonic_ns()))

    def _process(self, item: tuple[Image | CompressedImage, int]) -> None:
        msg, received_ns = item
        header = msg.header
        stamp_ns = stamp_to_ns(header.stamp)
        if stamp_ns == 0:
            # Sampling follows header stamps; an unstamped camera would never fill a window.
            self._warn('stamp', f'images on {self._image_topic} have zero header stamps; '
                       'using the receive time (fix the camera driver)')
            header.stamp = self.get_clock().now().to_msg()
            stamp_ns = stamp_to_ns(header.stamp)
        compressed = isinstance(msg, CompressedImage)
        try:
            check_message(msg, compressed=compressed)  # every frame: format, sizes; no pixels
            # Decoded (e.g. a JPEG) only if the stamp sampler keeps the frame: most are skipped.
            result = self.engine.push(lambda: decode_message(msg, compressed=compressed),
                                      stamp_ns, received_ns)
        except ImageRejected as exc:
            self.stats.count_rejected(exc.kind)
            topic = self._compressed_topic if compressed else self._image_topic
            self._warn(exc.kind, f'rejected image on {topic} ({exc.kind}, '
                       f'{self.stats.rejected[exc.kind]} so far): {exc}')
            return
        self.stats.count_processed()
        self._frame_id = header.frame_id
        if result.reset:
            self._warn('reset', 'header stamps went back or left a gap: window restarted',
                       level='info')
            self._end_actions()
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

    def _publish_diagnostics(self) -> None:
        backbone = self.engine.backbone
        self._diagnostics.publish(diagnostics.report(
            name=f'{self.get_name()}: action recognition',
            hardware_id=f'{backbone.info.id} on {backbone.device}', stats=self.stats,
            dropped=self._dropped + self.worker.slot.dropped, buffered=self.engine.buffered,
            num_frames=self.config.engine.num_frames, warming_up=self.engine.warming_up,
            stamp=self.get_clock().now().to_msg(), image_topic=self._image_topic))

    def _on_worker_error(self, exc: BaseException) -> None:
        if not self.context.ok():
            return  # shutting down: publishers are gone, nothing to report
        self.stats.count_rejected('error')
        self._warn('error', f'inference failed: {type(exc).__name__}: {exc}', level='error')

    def _warn(self, kind: str, text: str, *, level: str = 'warning') -> None:
        """Log `text` unless a message of the same kind was logged in the last WARN_PERIOD_S."""
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_PERIOD_S) < WARN_PERIOD_S:
            return
        self._warned[kind] = now
        getattr(self.get_logger(), level)(text)

    def destroy_node(self) -> None:
        # Ctrl-C ends spinning in any state without a shutdown transition: stop the worker here.
        worker = getattr(self, 'worker', None)
        if worker is not None and not worker.stop(timeout=10.0):
            self.get_logger().error('inference worker did not stop within 10 s')
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
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
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
