"""perception_node: camera images in, step_ros_msgs/HumanAction out; a ROS 2 lifecycle node.

configure reads the parameters and loads the model, activate subscribes to the camera and starts
the worker, deactivate stops both (the model stays loaded), cleanup frees the model. With
`autostart` (the default) main() configures and activates it at once, as a plain node would start.

The subscription callbacks only store the newest image of their input (raw, compressed) in a
latest-wins slot; one worker thread decodes it, pushes it through the streaming engine (which
samples by header stamp), feeds each head's raw prediction to that head's Decider (the ROS-free
decision stage that bag-eval and the demo run too) and publishes both on `human_action`, the
START / END events on `human_action/events`. A slow model therefore drops frames and never
answers with stale ones. With `cameras` set, every camera n has its own inputs (n/image), slots,
sampler, window, Deciders, outputs (n/human_action) and /diagnostics status, and the worker
batches the due frames of the cameras through one backbone pass (`batch_timeout_ms`). A
watchdog in the diagnostics timer turns /diagnostics to ERROR when that worker died or is stuck.
A planner is never left with an open action: an input timer ENDs those of a camera that sent
nothing for input_timeout_seconds, and SIGINT / SIGTERM END them before the process exits.
A camera with no image NO_IMAGES_WARN_S after activation is warned about once, with the image
topics that do have publishers (a remapping that missed).
"""

from __future__ import annotations

import gc
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial

import rclpy
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.expand_topic_name import expand_topic_name
from rclpy.lifecycle import (
    LifecycleNode,
    LifecyclePublisher,
    LifecycleState,
    TransitionCallbackReturn,
)
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.task import Future
from rclpy.timer import Timer
from rclpy.validate_full_topic_name import validate_full_topic_name
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from step_ros_msgs.msg import ActionEvent, ActionLabels, HumanAction

from step_ros.model.backbone import BackboneError
from step_ros.model.checkpoint import CheckpointError
from step_ros.ros import diagnostics
from step_ros.ros.conversions import (
    annotate,
    event_to_msg,
    labels_msg,
    ns_to_time,
    prediction_to_msg,
    rgb_to_image,
    stamp_to_ns,
    warming_up_msg,
)
from step_ros.ros.logs import RateLimitedLog
from step_ros.ros.worker import Worker
from step_ros.stream.config import (
    DEFAULTS,
    NODE_NAME,
    PARAMETERS,
    ConfigError,
    PerceptionConfig,
    describe,
)
from step_ros.stream.decision import ActionEvent as Event
from step_ros.stream.decision import Decider
from step_ros.stream.decode import ImageRejected, check_message, decode_message
from step_ros.stream.engine import Offer, StepResult, StreamingEngine
from step_ros.stream.runtime import build_engine, decision_for, describe_decision

IMAGE_QOS = {
    'sensor_data': qos_profile_sensor_data,  # REP-2003: best effort, keep last 5
    'reliable': QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
}
RESULT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Events are rare and each one matters: reliable and deep, so that a busy planner misses none.
# Transient-local: a planner whose subscription is matched only after an event went out (it
# started late, or discovery was slow) still receives the last 100, in order; the newest event
# of each task and label says whether that action is going on (a START with no END after it).
EVENT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
# On the way out (SIGINT, SIGTERM, shutdown), how long the final END events may take to be
# acknowledged by the planners before the publishers are destroyed: a reliable reader
# acknowledges on the writer's next heartbeat (every 3 s by default in Fast DDS), and
# `ros2 launch` escalates to SIGTERM after 5 s.
EXIT_DELIVERY_S = 3.5
# Late subscribers (planners started after the node) still receive the label lists.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
WARN_PERIOD_S = 5.0  # at most one warning per kind of problem in this time
# Consecutive frames each farther apart than the window: the window can never fill.
GAP_RESETS_WARNED = 3
INPUTS = ('image', 'image/compressed')
# A camera that sent nothing for this long is not waited for by a batch (until it sends again).
LIVE_SECONDS = 1.0  # relative topics, also the names of the worker's slots
# A camera that sent no image this long after activation is warned about, once per activation,
# with the topics that have image publishers: a camera remapped to another name shows there.
NO_IMAGES_WARN_S = 5.0
IMAGE_TYPES = {'sensor_msgs/msg/Image': '', 'sensor_msgs/msg/CompressedImage': ' (compressed)'}


class StartupError(RuntimeError):
    """The node cannot run as configured; the fatal log line says why."""


@dataclass
class Camera:
    """One camera's inputs, outputs, decision state and counters ('' is the single input)."""

    name: str
    inputs: tuple[str, str]  # relative raw and compressed topics, also the worker's slot keys
    image_topic: str  # resolved, for messages
    compressed_topic: str
    stats: diagnostics.NodeStats = field(default_factory=diagnostics.NodeStats)
    outputs: dict[str, LifecyclePublisher] = field(default_factory=dict)  # per head (task)
    events: dict[str, LifecyclePublisher] = field(default_factory=dict)
    deciders: dict[str, Decider] = field(default_factory=dict)
    debug: LifecyclePublisher | None = None
    frame_id: str = ''  # of the newest image, for events decided without one
    previous_stamp_ns: int | None = None
    gap_resets: int = 0  # consecutive frames that restarted the window by a gap
    dropped: Counter = field(default_factory=Counter)  # by workers of earlier activations
    last_received: float = -math.inf  # monotonic s of its newest image
    input_lost: bool = True  # no image since activation, or for input_timeout_seconds

    def live(self, now: float) -> bool:
        """Sending images: a batch waits for this camera's frame (up to batch_timeout_ms)."""
        return now - self.last_received < LIVE_SECONDS

    def prefix(self, topic: str) -> str:
        return f'{self.name}/{topic}' if self.name else topic


@dataclass
class Frame:
    """An image the worker took, checked and stamped, waiting for its turn in the engine."""

    camera: Camera
    key: str
    msg: Image | CompressedImage
    received_ns: int
    stamp_ns: int

    @property
    def compressed(self) -> bool:
        return isinstance(self.msg, CompressedImage)


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # Declared once here, read on each configure: a cleanup + configure cycle must not
        # declare them twice. A set is checked by _on_set_parameters (live ones applied).
        self.declare_parameters('', [
            (p.name, p.default, ParameterDescriptor(description=describe(p), dynamic_typing=True,
                                                    read_only=p.name == 'autostart'))
            for p in PARAMETERS])
        self.autostart = self.get_parameter('autostart').value
        if not isinstance(self.autostart, bool):
            self.get_logger().fatal(f'cannot start: autostart={self.autostart!r}: expected bool')
            self.destroy_node()
            raise StartupError('autostart')
        self.finished = Future()  # done by the shutdown transition: main() stops spinning
        self._starting = False  # in start(): a failed configure ends the process
        self._decision_params_set: set[str] = set()  # decision.* given by `ros2 param set`
        self._decisions: list = []  # per head: (DecisionConfig, where it comes from)
        self.config: PerceptionConfig | None = None
        self.engine: StreamingEngine | None = None
        self.worker: Worker | None = None
        self._log = RateLimitedLog(self.get_logger(), period=WARN_PERIOD_S)
        self.cameras: dict[str, Camera] = {}  # by name; configure to cleanup
        self._camera_of: dict[str, Camera] = {}  # by input (slot key)
        self._carry: list[tuple[str, tuple]] = []  # taken, left for the next batch
        self._carry_dropped: Counter[str] = Counter()  # carried items replaced by newer ones
        self._labels_publishers: list[Publisher] = []
        self._diagnostics: LifecyclePublisher | None = None
        self._inputs: list[Subscription] = []
        self._diagnostics_timer: Timer | None = None
        self._input_timer: Timer | None = None
        self._no_images_timer: Timer | None = None
        self._active_since = math.inf  # monotonic s of the latest activation
        # The worker's engine steps and the input timer's ENDs change the same windows and
        # decision states: one at a time.
        self._engine_lock = threading.Lock()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # rclpy's change_state handler raises, ending the process, on a transition that is not
        # available in the current state: requests are checked before they reach it.
        self._change_state = self._service_change_state.callback
        self._service_change_state.callback = self._on_change_state
        if not self.autostart:
            self.get_logger().info('unconfigured: waiting for a lifecycle manager (autostart is '
                                   'false)')

    def start(self) -> bool:
        """configure + activate (autostart); False when either failed (logged as fatal)."""
        self._starting = True
        try:
            configured = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
        finally:
            self._starting = False
        if not configured:
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal('cannot start: activation failed')
            return False
        return True

    def _configure_failed(self, text: str) -> TransitionCallbackReturn:
        """Report a failed configure: fatal when it ends the process (autostart's start()),
        else an error (a lifecycle manager's configure: the node stays unconfigured)."""
        if self._starting:
            self.get_logger().fatal(f'cannot start: {text}')
        else:
            self.get_logger().error(f'cannot configure: {text}')
        self._release()
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.config = self._read_config()
            self.engine = build_engine(self.config, warn=self.get_logger().warning)
            # Per head: the decision parameters and where they come from (the parameters'
            # decision.*, those fitted into its checkpoint by train, or the defaults).
            self._decisions = [decision_for(self.config, head.meta, path) for head, path
                               in zip(self.engine.heads, self.config.head_checkpoints)]
        except (ConfigError, CheckpointError, BackboneError, OSError) as exc:
            return self._configure_failed(str(exc))
        except Exception:  # rclpy would turn it into an error transition without a word
            return self._configure_failed(f'unexpected error\n{traceback.format_exc()}')
        self.cameras, self._camera_of = {}, {}
        for name in self.config.camera_names:
            inputs = (f'{name}/{INPUTS[0]}', f'{name}/{INPUTS[1]}') if name else INPUTS
            camera = Camera(name=name, inputs=inputs,
                            image_topic=self.resolve_topic_name(inputs[0]),
                            compressed_topic=self.resolve_topic_name(inputs[1]))
            self._configure_outputs(camera)
            self.cameras[name] = camera
            self._camera_of.update(dict.fromkeys(inputs, camera))
        self._diagnostics = self.create_lifecycle_publisher(DiagnosticArray, '/diagnostics',
                                                            RESULT_QOS)
        info = self.engine.backbone.info
        cameras = f', cameras {list(self.config.cameras)}' if self.config.cameras else ''
        self.get_logger().info(
            f'configured: backbone {info.id} on {self.engine.backbone.device} '
            f'({self.engine.backbone.dtype}), heads {[h.task for h in self.engine.heads]}, '
            f'{self.config.engine.num_frames} frames over {self.config.engine.window_seconds} s'
            f'{cameras}')
        for head, (decision, source) in zip(self.engine.heads, self._decisions):
            self.get_logger().info(f'head {head.task!r} decides with parameters ({source}): '
                                   f'{describe_decision(decision)}')
        return super().on_configure(state)

    def _configure_outputs(self, camera: Camera) -> None:
        """A camera's HumanAction, events and labels publishers per head, and its Deciders."""
        for head, head_topic, (decision, _) in zip(self.engine.heads, self.config.head_topics,
                                                   self._decisions):
            topic = camera.prefix(head_topic)
            camera.outputs[head.task] = self.create_lifecycle_publisher(HumanAction, topic,
                                                                        RESULT_QOS)
            camera.events[head.task] = self.create_lifecycle_publisher(
                ActionEvent, f'{topic}/events', EVENT_QOS)
            camera.deciders[head.task] = Decider(
                task=head.task, labels=head.labels, background=head.background,
                config=decision,
                window_ns=round(self.config.engine.window_seconds * 1e9),
                switch_fraction=head.switch_fraction)
            # A plain publisher, published once here: the label list describes the loaded model
            # (configure to cleanup), not the activity, and transient-local keeps it for late
            # subscribers. A lifecycle publisher would republish it on every activation.
            labels = self.create_publisher(ActionLabels, f'{topic}/labels', LATCHED_QOS)
            labels.publish(labels_msg(head, topic=self.resolve_topic_name(topic)))
            self._labels_publishers.append(labels)
        if self.config.debug_image:
            camera.debug = self.create_lifecycle_publisher(Image, camera.prefix('debug_image'),
                                                           RESULT_QOS)

    def output_topics(self) -> list[str]:
        return [self.resolve_topic_name(camera.prefix(topic)) for camera in self.cameras.values()
                for topic in self.config.head_topics]

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.engine.reset()  # a window never spans the time the node was inactive
        for camera in self.cameras.values():
            camera.previous_stamp_ns, camera.gap_resets = None, 0
            camera.input_lost = True
        self._carry = []
        self.worker = Worker(process=self._process_batch, on_error=self._on_worker_error,
                             stall_seconds=self.config.worker_timeout, batched=True)
        self.worker.start()
        qos = IMAGE_QOS[self.config.image_qos]
        self._active_since = time.monotonic()
        for camera in self.cameras.values():
            raw, compressed = camera.inputs
            self._inputs.append(self.create_subscription(
                Image, raw, lambda msg, key=raw: self._on_image(msg, key), qos))
            if self.config.subscribe_compressed:
                self._inputs.append(self.create_subscription(
                    CompressedImage, compressed,
                    lambda msg, key=compressed: self._on_image(msg, key), qos))
        # A steady clock: diagnostics keep coming under use_sim_time while /clock is silent.
        self._diagnostics_timer = self.create_timer(
            self.config.diagnostics_period, self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME))
        timeout = self.config.input_timeout_seconds
        self._input_timer = self.create_timer(
            min(max(timeout / 4, 0.05), 1.0), self._check_input,
            clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._no_images_timer = self.create_timer(
            NO_IMAGES_WARN_S, self._warn_no_images, clock=Clock(clock_type=ClockType.STEADY_TIME))
        inputs = ', '.join(camera.image_topic for camera in self.cameras.values())
        self.get_logger().info(
            f'ready: input {inputs} ({self.config.image_qos}) -> {self.output_topics()}')
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
            self._end_actions(deliver=EXIT_DELIVERY_S)  # before _release destroys publishers
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
        if self._input_timer is not None:
            self.destroy_timer(self._input_timer)
            self._input_timer = None
        if self._no_images_timer is not None:
            self.destroy_timer(self._no_images_timer)
            self._no_images_timer = None
        worker, self.worker = self.worker, None
        if worker is None:
            return
        if not worker.stop(timeout=10.0):
            self.get_logger().error('inference worker did not stop within 10 s')
            return
        for key, count in (worker.slot.dropped_by + self._carry_dropped).items():
            self._camera_of[key].dropped[key] += count
        self._carry_dropped = Counter()
        # Handed over, not yet taken by the worker (one per input at most), and carried ones.
        items = worker.slot.take_all(timeout=0)
        while items or self._carry:
            try:
                self._process_batch(items, batch_timeout=0.0)
            except Exception as exc:  # as in the worker: one bad frame is reported, not raised
                self._on_worker_error(exc)
                self._carry = []
            items = []

    def _release(self) -> None:
        """Drop the model and the outputs (idempotent); the device memory goes back."""
        for camera in self.cameras.values():
            for publisher in (*camera.outputs.values(), *camera.events.values()):
                self.destroy_lifecycle_publisher(publisher)
            if camera.debug is not None:
                self.destroy_lifecycle_publisher(camera.debug)
        if self._diagnostics is not None:
            self.destroy_lifecycle_publisher(self._diagnostics)
        for publisher in self._labels_publishers:
            self.destroy_publisher(publisher)
        self.cameras, self._camera_of, self._labels_publishers = {}, {}, []
        self._diagnostics = None
        cuda = self.engine is not None and self.engine.backbone.device.type == 'cuda'
        self.engine = self.config = None
        gc.collect()  # the engine holds reference cycles (modules); free them now
        if cuda:
            torch.cuda.empty_cache()

    def _read_config(self) -> PerceptionConfig:
        # Typed by PerceptionConfig (with messages naming the parameter), not by rclpy, so that
        # e.g. `window_seconds: 2` is accepted.
        values = {p.name: self.get_parameter(p.name).value for p in PARAMETERS}
        overrides = getattr(self, '_parameter_overrides', {})
        # rclpy silently ignores overrides nobody declares: report typos instead.
        for name in overrides:
            if not self.has_parameter(name) and not name.startswith('qos_overrides.'):
                values[name] = None
        # decision.* given (parameters file, command line, or set while unconfigured) win over
        # a head's fitted values; declared defaults do not.
        given = set(overrides) | self._decision_params_set
        config = replace(PerceptionConfig.from_params(values),
                         decision_set=any(n.startswith('decision.') for n in given))
        self._check_topics(config)
        return config

    def _check_topics(self, config: PerceptionConfig) -> None:
        """Every topic the node would open is a valid name in its namespace, and no two of
        them are the same topic; else one ConfigError naming the parameter and the rule."""
        for topic in config.head_topics:
            self._full_topic('heads.topics', topic, topic, relative=False)
        outputs = [f'{t}/{kind}' if kind else t for t in config.head_topics
                   for kind in ('', 'events', 'labels')]
        taken = {'/diagnostics': '/diagnostics'}
        for camera in config.camera_names:
            for topic in (*INPUTS, 'debug_image', *outputs):
                name = f'{camera}/{topic}' if camera and not topic.startswith('/') else topic
                full = self._full_topic('cameras' if camera else 'heads.topics', camera or topic,
                                        name)
                if full in taken:
                    raise ConfigError(
                        f'heads.topics={list(config.head_topics)!r}: {name!r} and '
                        f'{taken[full]!r} are both the topic {full!r}; every input and output '
                        'topic of the node must be a different one')
                taken[full] = name

    def _full_topic(self, parameter: str, value: str, topic: str, *, relative: bool = True
                    ) -> str:
        """`topic` expanded in the node's namespace, or a ConfigError naming `parameter`."""
        try:
            if not relative:
                validate_topic_name(topic)
            full = expand_topic_name(topic, self.get_name(), self.get_namespace())
            validate_full_topic_name(full)
        except Exception as exc:  # InvalidTopicNameException / ValueError: lines with a caret
            reason = str(exc).splitlines()[0].split(': ', 1)[-1]
            reason = re.sub(r', at \S+$', '', reason).rstrip(':')
            shown = f'{value[:60]!r}...' if len(value) > 60 else repr(value)
            raise ConfigError(f'{parameter}: {shown} gives the topic {topic[:80]!r}, which is '
                              f'not a valid topic name ({reason})') from None
        return full

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """`ros2 param set`: unconfigured, any value (the next configure checks it); else the
        live parameters, checked as at configure and applied to the running decision stage
        and engine, and no other (they need a restart)."""
        changes = {p.name: p.value for p in parameters if p.name in DEFAULTS}
        given = {n for n in changes if n.startswith('decision.')}
        if self.config is None:
            self._decision_params_set |= given
        if self.config is None or not changes:
            return SetParametersResult(successful=True)
        try:
            # The changes apply to each decider's own values (a head's may be fitted), all
            # checked before any is applied.
            retuned = {(camera.name, task): self.config.retuned(changes, decision=decider.config)
                       for camera in self.cameras.values()
                       for task, decider in camera.deciders.items()}
            config = next(iter(retuned.values()), None) or self.config.retuned(changes)
        except ConfigError as exc:
            self.get_logger().warning(f'parameter not set: {exc}')
            return SetParametersResult(successful=False, reason=str(exc))
        # Immutable configs, each swapped in by one assignment: the worker's next step uses
        # the new values.
        self.config = config
        self.engine.config = config.engine
        for camera in self.cameras.values():
            for task, decider in camera.deciders.items():
                decider.retune(retuned[camera.name, task].decision)
        self._decision_params_set |= given  # a later configure keeps them too
        self.get_logger().info('parameters set: ' + ', '.join(
            f'{name}={value!r}' for name, value in changes.items()))
        return SetParametersResult(successful=True)

    def _on_change_state(self, request, response):
        """The change_state service: a transition the current state does not offer is answered
        with success=false and a warning, before rclpy's handler would raise on it."""
        asked = request.transition
        available = self._state_machine.available_transitions  # (id, label, ...) tuples
        if not any(t[1] == asked.label if asked.label else t[0] == asked.id
                   for t in available):
            state = self._state_machine.current_state[1]
            what = f'{asked.label!r}' if asked.label else f'id {asked.id}'
            valid = ', '.join(f'{t[1]} (id {t[0]})' for t in available)
            self.get_logger().warning(f'change_state: transition {what} is not valid from state '
                                      f'{state!r}; valid: {valid}')
            response.success = False
            return response
        return self._change_state(request, response)

    def _on_image(self, msg: Image | CompressedImage, key: str) -> None:
        # Runs in the executor: never the model, only the hand-off to the worker.
        camera = self._camera_of[key]
        camera.stats.count_received()
        camera.last_received = time.monotonic()
        camera.input_lost = False
        self.worker.submit((msg, time.monotonic_ns()), key)

    def _process_batch(self, items: list[tuple[str, tuple]], *,
                       batch_timeout: float | None = None) -> None:
        """The worker's turn: every image it took, through the engine.

        Frames the stamp samplers skip go through at once. A frame that is due waits up to
        batch_timeout_ms for the due frames of the other live cameras (an image in the last
        LIVE_SECONDS), then all of them go through the backbone as one batch. A second frame
        of a camera already in the batch (its raw and compressed inputs, or a frame that came
        while waiting) is left for the next turn.
        """
        timeout = self.config.batch_timeout_ms / 1e3 if batch_timeout is None else batch_timeout
        latest: dict[str, tuple] = {}
        for key, item in [*self._carry, *items]:  # latest wins per input, carried ones too
            if key in latest:
                self._carry_dropped[key] += 1
            latest[key] = item
        self._carry = []
        batch: dict[str, Frame] = {}
        deadline = None
        queue = list(latest.items())
        while True:
            full = False
            for key, item in queue:
                frame = self._admit(key, item)
                if frame is None:
                    continue
                if frame.camera.name in batch:
                    self._carry.append((key, item))
                    full = True
                elif self.engine.due(frame.camera.name, frame.stamp_ns):
                    batch[frame.camera.name] = frame
                    deadline = deadline or time.monotonic() + timeout
                else:
                    self._run([frame])  # skipped by its sampler: nothing to wait for
            now = time.monotonic()
            waited_for = [c for c in self.cameras.values() if c.live(now)]
            if full or not batch or all(c.name in batch for c in waited_for) or \
                    self.worker is None:
                break
            remaining = deadline - time.monotonic()
            queue = self.worker.slot.take_all(timeout=remaining) if remaining > 0 else []
            if not queue:
                break
        if batch:
            self._run(list(batch.values()))

    def _admit(self, key: str, item: tuple) -> Frame | None:
        """Stamp and check one image (format and declared sizes, no pixel decoded)."""
        msg, received_ns = item
        camera = self._camera_of[key]
        header = msg.header
        stamp_ns = stamp_to_ns(header.stamp)
        if stamp_ns == 0:
            # Sampling follows header stamps; an unstamped camera would never fill a window.
            self._log.warning(f'stamp {camera.name}',
                              f'images on {camera.image_topic} have zero header stamps; '
                              'using the receive time (fix the camera driver)')
            header.stamp = self.get_clock().now().to_msg()
            stamp_ns = stamp_to_ns(header.stamp)
            if stamp_ns == 0:  # use_sim_time, and no /clock message yet: the clock reads 0
                self._log.warning(f'clock {camera.name}',
                                  f'images on {camera.image_topic} have zero header stamps and '
                                  'use_sim_time is true, but no /clock message has come: every '
                                  'frame would get stamp 0 and the window would never fill; '
                                  'frames are dropped until /clock runs (publish /clock, e.g. '
                                  '`ros2 bag play --clock`, or stamp the images)')
                return None
        frame = Frame(camera=camera, key=key, msg=msg, received_ns=received_ns,
                      stamp_ns=stamp_ns)
        try:
            check_message(msg, compressed=frame.compressed,
                          max_pixels=self.config.max_image_pixels)
        except ImageRejected as exc:
            self._rejected(frame, exc)
            return None
        return frame

    def _rejected(self, frame: Frame, exc: ImageRejected) -> None:
        stats = frame.camera.stats
        stats.count_rejected(exc.kind)
        topic = frame.camera.compressed_topic if frame.compressed else frame.camera.image_topic
        self._log.warning(f'{exc.kind} {frame.camera.name}',
                          f'rejected image on {topic} ({exc.kind}, '
                          f'{stats.rejected[exc.kind]} so far): {exc}')

    def _run(self, frames: list[Frame]) -> None:
        """Frames of distinct cameras through the engine as one batch, then their results."""
        with self._engine_lock:
            self._step(frames)

    def _step(self, frames: list[Frame]) -> None:
        limit = self.config.max_image_pixels
        # Decoded (e.g. a JPEG) only if the stamp sampler keeps the frame: most are skipped.
        offers = [Offer(f.camera.name, partial(decode_message, f.msg, compressed=f.compressed,
                                               max_pixels=limit), f.stamp_ns, f.received_ns)
                  for f in frames]
        try:
            results = self.engine.push_many(offers)
        except Exception as exc:  # e.g. NonFiniteScores: the batch gives no result
            for frame in frames:
                frame.camera.stats.count_rejected('error')
            self._on_worker_error(exc, counted=True)
            return
        for frame, result in zip(frames, results):
            if isinstance(result.error, ImageRejected):
                self._rejected(frame, result.error)
            elif result.error is not None:
                frame.camera.stats.count_rejected('error')
                self._on_worker_error(result.error, counted=True)
            else:
                self._after(frame, result)

    def _after(self, frame: Frame, result: StepResult) -> None:
        camera, header = frame.camera, frame.msg.header
        camera.stats.count_processed()
        camera.frame_id = header.frame_id
        if result.outlier_ns is not None:
            self._log.warning(f'outlier {camera.name}',
                              f'dropped one image on {camera.image_topic} stamped '
                              f'{result.outlier_ns / 1e9:.3f} s, off the time line of the frames '
                              f'around it ({self.engine.stats["outliers"]} so far): a glitched '
                              'stamp does not restart the window')
        if result.held:  # off the time line: the next frame says whether the stream restarted
            # Frames farther apart than the window are held and restart by turns: both count.
            self._watch_gaps(camera, frame.stamp_ns, reset=True)
            return
        if result.reset:
            self._log.info(f'reset {camera.name}', 'header stamps went back or left a gap'
                           + (f' on {camera.image_topic}' if camera.name else '')
                           + ': window restarted')
            self._end_actions(camera)
        self._watch_gaps(camera, frame.stamp_ns, reset=result.reset)
        self._publish_results(camera, result, header=header, received_ns=frame.received_ns)
        if camera.debug is not None and result.predictions:
            camera.debug.publish(rgb_to_image(annotate(result.frame, result.predictions),
                                              header=header))

    def _publish_results(self, camera: Camera, result: StepResult, *, header: Header,
                         received_ns: int) -> None:
        """Each raw prediction through its head's Decider: HumanAction, then its events. While
        the window fills, each sampled frame gives a warming_up HumanAction per head."""
        for prediction in result.predictions:
            decision = camera.deciders[prediction.task].update(
                probs=prediction.probs, stamp_ns=prediction.stamp_ns,
                window_start_ns=prediction.window_start_ns, ambiguous=prediction.ambiguous)
            latency_ns = time.monotonic_ns() - received_ns
            camera.outputs[prediction.task].publish(prediction_to_msg(
                prediction, decision=decision, header=header, latency_ns=latency_ns))
            camera.stats.count_published(latency_ns)
            self._publish_events(camera, decision.events)
        ring = self.engine.streams[camera.name].ring
        if result.sampled and not ring.full:
            for task, decider in camera.deciders.items():
                camera.outputs[task].publish(warming_up_msg(
                    decider.warming_up(), task=task, frames=ring.count,
                    window_start_ns=ring.oldest_stamp(), header=header,
                    latency_ns=time.monotonic_ns() - received_ns))

    def _end_actions(self, camera: Camera | None = None, *, deliver: float = 0.0,
                     last_frame_ns: int | None = None) -> None:
        """The stream restarted or stops: every head's open action ends (END events). With
        `deliver`, wait up to that many seconds for the planners to acknowledge them."""
        sent = []
        for one in self.cameras.values() if camera is None else (camera,):
            for decider in one.deciders.values():
                events = decider.reset(last_frame_ns=last_frame_ns)
                self._publish_events(one, events)
                sent += [one.events[event.task] for event in events]
        for publisher in dict.fromkeys(sent) if deliver > 0 else ():
            if not publisher.wait_for_all_acked(Duration(seconds=deliver)):
                self.get_logger().warning(f'END on {publisher.topic_name}: not every subscriber '
                                          f'acknowledged it within {deliver:g} s (one may have '
                                          'missed it)')

    def _check_input(self) -> None:
        """Input timer: a camera that sent no image for input_timeout_seconds ENDs its open
        actions, dated at its last frame, and its outputs say warming_up with 0 frames."""
        now = time.monotonic()
        for camera in self.cameras.values():
            silent = now - camera.last_received
            if camera.input_lost or silent < self.config.input_timeout_seconds:
                continue
            camera.input_lost = True
            with self._engine_lock:
                last_ns = self.engine.end_stream(camera.name)
                if last_ns is None:
                    continue
                self._log.warning(f'input {camera.name}',
                                  f'no image on {camera.image_topic} for {silent:.1f} s '
                                  f'(input_timeout_seconds={self.config.input_timeout_seconds:g})'
                                  ': open actions end at its last frame')
                self._end_actions(camera, last_frame_ns=last_ns)
                header = Header(stamp=ns_to_time(last_ns), frame_id=camera.frame_id)
                for task, decider in camera.deciders.items():
                    camera.outputs[task].publish(warming_up_msg(
                        decider.warming_up(), task=task, frames=0, window_start_ns=last_ns,
                        header=header, latency_ns=0))

    def _warn_no_images(self) -> None:
        """NO_IMAGES_WARN_S after activation, once: each camera that has had no image since
        names its inputs and the topics of the graph that have image publishers."""
        self._no_images_timer.cancel()  # destroyed by deactivate
        silent = [c for c in self.cameras.values() if c.last_received < self._active_since]
        if not silent:
            return
        found = ', '.join(self._image_publishers()) or 'none'
        for camera in silent:
            inputs = camera.image_topic + (f' or {camera.compressed_topic}'
                                           if self.config.subscribe_compressed else '')
            self.get_logger().warning(
                f'no images on {inputs} {NO_IMAGES_WARN_S:g} s after activation; publishers '
                f'of sensor_msgs/msg/Image or CompressedImage: {found}')

    def _image_publishers(self) -> list[str]:
        """The topics of type Image or CompressedImage that a node other than this one
        publishes, compressed ones marked."""
        me = (self.get_name(), self.get_namespace())
        found = []
        for topic, types in self.get_topic_names_and_types():
            kinds = [IMAGE_TYPES[t] for t in types if t in IMAGE_TYPES]
            if kinds and any((p.node_name, p.node_namespace) != me
                             for p in self.get_publishers_info_by_topic(topic)):
                found.append(topic + kinds[0])
        return sorted(found)

    def leave(self) -> None:
        """The process ends (SIGINT, SIGTERM) with no shutdown transition: an active node stops
        its input and ENDs its open actions as deactivate does, and waits (bounded) until the
        planners have them."""
        if self.worker is None:
            return  # not active: nothing is open
        self._stop_processing()
        self._end_actions(deliver=EXIT_DELIVERY_S)
        self.get_logger().info('stopping: input closed, open actions ended')

    def _publish_events(self, camera: Camera, events: tuple[Event, ...] | list[Event]) -> None:
        for event in events:
            camera.events[event.task].publish(event_to_msg(event, frame_id=camera.frame_id))
            where = f'{camera.name}: ' if camera.name else ''
            self.get_logger().info(
                f'{where}{event.task}: {event.kind.upper()} {event.label} at '
                f'{event.stamp_ns / 1e9:.3f} (confidence {event.confidence:.2f}'
                + (f', {event.duration_s:.2f} s)' if event.kind == 'end' else ')'))

    def _watch_gaps(self, camera: Camera, stamp_ns: int, *, reset: bool) -> None:
        """Warn when every frame restarts the window: frames farther apart than the window."""
        previous, camera.previous_stamp_ns = camera.previous_stamp_ns, stamp_ns
        window_ns = self.config.engine.window_seconds * 1e9
        if not (reset and previous is not None and stamp_ns - previous > window_ns):
            camera.gap_resets = 0
            return
        camera.gap_resets += 1
        if camera.gap_resets >= GAP_RESETS_WARNED:
            self._log.warning(f'window {camera.name}',
                              self._gap_problem(camera, stamp_ns - previous))

    def _gap_problem(self, camera: Camera, gap_ns: float) -> str:
        where = f'on {camera.image_topic} ' if camera.name else 'on the input '
        return (f'frames {where}are {gap_ns / 1e9:.3g} s apart, more than '
                f'window_seconds={self.config.engine.window_seconds:g}: every frame restarts '
                'the window, which never fills; raise window_seconds')

    def _publish_diagnostics(self) -> None:
        backbone = self.engine.backbone
        worker = self.worker
        fault = worker.fault()
        if fault is not None:
            self._log.error('worker', f'{fault}; no results are published')
        statuses = []
        # Node-wide, in every camera's status: frames / passes is the mean backbone batch.
        passes = {'backbone passes': str(self.engine.stats['backbone_batches']),
                  'backbone frames': str(self.engine.stats['backbone_frames'])}
        for camera in self.cameras.values():
            problem = None
            if camera.gap_resets >= GAP_RESETS_WARNED and camera.previous_stamp_ns is not None:
                problem = 'window never fills: frames farther apart than window_seconds'
            ring = self.engine.streams[camera.name].ring
            keys = camera.inputs if self.config.subscribe_compressed else camera.inputs[:1]
            name = f'{self.get_name()}: action recognition'
            statuses.append(diagnostics.status(
                name=f'{name} ({camera.name})' if camera.name else name,
                hardware_id=f'{backbone.info.id} on {backbone.device}', stats=camera.stats,
                dropped={key: camera.dropped[key] + worker.slot.dropped_by[key]
                         + self._carry_dropped[key] for key in keys},
                buffered=ring.count, num_frames=self.config.engine.num_frames,
                warming_up=not ring.full, image_topic=camera.image_topic, fault=fault,
                problem=problem, extra=passes))
        self._diagnostics.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=statuses))

    def _on_worker_error(self, exc: BaseException, *, counted: bool = False) -> None:
        if not self.context.ok():
            return  # shutting down: publishers are gone, nothing to report
        if not counted:
            for camera in self.cameras.values():
                camera.stats.count_rejected('error')
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
        # rclpy's own handlers would shut the context down at the signal, before an END could
        # go out: here SIGINT / SIGTERM only end the spinning, and the node leaves as
        # deactivate would.
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # rcl parses --ros-args (and params files) here
        print(f'[FATAL] [{NODE_NAME}]: cannot start: '
              f'{_params_file_problem(exc, list(sys.argv if args is None else args))}',
              file=sys.stderr)
        return 1
    stop: list[int] = []  # signals received
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda received, _frame: stop.append(received))
    node = None
    try:
        node = PerceptionNode()
        if node.autostart and not node.start():
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # Until the shutdown transition (lifecycle manager), SIGINT or SIGTERM; the timeout
        # bounds how long a signal waits to be seen.
        while not stop and not node.finished.done():
            executor.spin_once(timeout_sec=0.1)
        node.leave()
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


def run() -> None:
    """The `perception_node` executable: main(), then the process ends without the interpreter's
    teardown.

    After rclpy has shut down, the finalizers Python runs at exit sometimes crashed in torch's
    operator-library teardown (`torch/library.py` `_del_library`: a segmentation fault, exit code
    -11, in 3 of 16 runs of a node stopped by Ctrl-C after a failed configure; none in 23 runs
    since). Everything the node owns is released by then: the output is flushed and the exit
    code kept.
    """
    try:
        code = main()
    except BaseException:  # the traceback as Python would print it, and a failure code
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == '__main__':
    run()
