"""perception_node: camera images in, step_ros_msgs/HumanAction out.

The subscription callback only stores the newest image in a latest-wins slot; one worker thread
decodes it, pushes it through the streaming engine (which samples by header stamp) and publishes
the results. A slow model therefore drops frames and never answers with stale ones.
"""

from __future__ import annotations

import sys
import time

import cv2
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from step_ros_msgs.msg import ActionLabels, HumanAction

from step_ros.backbone import BackboneError
from step_ros.checkpoint import CheckpointError
from step_ros.config import NODE_NAME, PARAMETERS, ConfigError, PerceptionConfig
from step_ros.decode import ImageRejected
from step_ros.engine import Prediction
from step_ros.ros import diagnostics
from step_ros.ros.conversions import (
    image_to_rgb,
    labels_msg,
    prediction_to_msg,
    rgb_to_image,
    stamp_to_ns,
)
from step_ros.ros.worker import Worker
from step_ros.runtime import build_engine

IMAGE_QOS = {
    'sensor_data': qos_profile_sensor_data,  # REP-2003: best effort, keep last 5
    'reliable': QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
}
RESULT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Late subscribers (planners started after the node) still receive the label lists.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
WARN_PERIOD_S = 5.0  # at most one warning per kind of problem in this time


class StartupError(RuntimeError):
    """The node cannot run as configured; the fatal log line says why."""


class PerceptionNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.config = self._read_config()
            self.engine = build_engine(self.config)
        except (ConfigError, CheckpointError, BackboneError, OSError) as exc:
            self.get_logger().fatal(f'cannot start: {exc}')
            self.destroy_node()
            raise StartupError(str(exc)) from exc
        self.stats = diagnostics.NodeStats()
        self._warned: dict[str, float] = {}
        self._image_topic = self.resolve_topic_name('image')
        self._compressed_topic = self.resolve_topic_name('image/compressed')
        self._outputs = {}
        self._labels_publishers = []  # kept alive: they hold the latched label lists
        for head, topic in zip(self.engine.heads, self.config.head_topics):
            self._outputs[head.task] = self.create_publisher(HumanAction, topic, RESULT_QOS)
            labels = self.create_publisher(ActionLabels, f'{topic}/labels', LATCHED_QOS)
            labels.publish(labels_msg(head, topic=self.resolve_topic_name(topic)))
            self._labels_publishers.append(labels)
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', RESULT_QOS)
        self._debug = (self.create_publisher(Image, 'debug_image', RESULT_QOS)
                       if self.config.debug_image else None)
        self.worker = Worker(process=self._process, on_error=self._on_worker_error)
        self.worker.start()
        qos = IMAGE_QOS[self.config.image_qos]
        self.create_subscription(Image, 'image', self._on_image, qos)
        if self.config.subscribe_compressed:
            self.create_subscription(CompressedImage, 'image/compressed', self._on_image, qos)
        # A steady clock: diagnostics keep coming under use_sim_time while /clock is silent.
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        info = self.engine.backbone.info
        self.get_logger().info(
            f'ready: backbone {info.id} on {self.engine.backbone.device} '
            f'({self.engine.backbone.dtype}), heads {[h.task for h in self.engine.heads]} -> '
            f'{[self.resolve_topic_name(t) for t in self.config.head_topics]}, '
            f'{self.config.engine.num_frames} frames over {self.config.engine.window_seconds} s, '
            f'input {self._image_topic} ({self.config.image_qos})')

    def _read_config(self) -> PerceptionConfig:
        # Typed by PerceptionConfig (with messages naming the parameter), not by rclpy, so that
        # e.g. `window_seconds: 2` is accepted. Changes after start-up are not applied.
        self.declare_parameters('', [
            (p.name, p.default, ParameterDescriptor(description=p.description,
                                                    dynamic_typing=True, read_only=True))
            for p in PARAMETERS])
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
        try:
            frame = image_to_rgb(msg)  # (H, W, 3) uint8
        except ImageRejected as exc:
            self.stats.count_rejected(exc.kind)
            topic = self._compressed_topic if isinstance(msg, CompressedImage) \
                else self._image_topic
            self._warn(exc.kind, f'rejected image on {topic} ({exc.kind}, '
                       f'{self.stats.rejected[exc.kind]} so far): {exc}')
            return
        header = msg.header
        stamp_ns = stamp_to_ns(header.stamp)
        if stamp_ns == 0:
            # Sampling follows header stamps; an unstamped camera would never fill a window.
            self._warn('stamp', f'images on {self._image_topic} have zero header stamps; '
                       'using the receive time (fix the camera driver)')
            header.stamp = self.get_clock().now().to_msg()
            stamp_ns = stamp_to_ns(header.stamp)
        result = self.engine.push(frame, stamp_ns, received_ns)
        self.stats.count_processed()
        if result.reset:
            self._warn('reset', 'header stamps went back or left a gap: window restarted',
                       level='info')
        for prediction in result.predictions:
            latency_ns = time.monotonic_ns() - received_ns
            self._outputs[prediction.task].publish(
                prediction_to_msg(prediction, header=header, latency_ns=latency_ns))
            self.stats.count_published(latency_ns)
        if self._debug is not None and result.predictions:
            self._debug.publish(rgb_to_image(annotate(frame, result.predictions), header=header))

    def _publish_diagnostics(self) -> None:
        backbone = self.engine.backbone
        self._diagnostics.publish(diagnostics.report(
            name=f'{self.get_name()}: action recognition',
            hardware_id=f'{backbone.info.id} on {backbone.device}', stats=self.stats,
            dropped=self.worker.slot.dropped, buffered=self.engine.buffered,
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
        worker = getattr(self, 'worker', None)
        if worker is not None and not worker.stop(timeout=10.0):
            self.get_logger().error('inference worker did not stop within 10 s')
        super().destroy_node()


def annotate(frame, predictions: list[Prediction]):
    """A copy of the RGB frame with one text line per head (the debug image)."""
    out = frame.copy()
    for row, p in enumerate(predictions):
        text = f'{p.task}: {p.label} {p.confidence:.2f}'
        if p.ambiguous:
            text += f' (or {p.ambiguous_with}?)'
        origin = (8, 24 + 24 * row)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 1,
                    cv2.LINE_AA)
    return out


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = PerceptionNode()
        rclpy.spin(node)
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
