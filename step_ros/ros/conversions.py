"""Messages <-> numpy and engine results: the only place that knows both sides."""

from __future__ import annotations

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from step_ros_msgs.msg import ActionEvent, ActionLabels, HumanAction

from step_ros.stream.decision import ActionEvent as Event
from step_ros.stream.decision import Decision
from step_ros.stream.engine import Head, Prediction


def stamp_to_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_time(ns: int) -> Time:
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def ns_to_duration(ns: int) -> Duration:
    sec, nanosec = divmod(max(int(ns), 0), 1_000_000_000)
    return Duration(sec=sec, nanosec=nanosec)


def rgb_to_image(frame: np.ndarray, *, header: Header) -> Image:
    """RGB uint8 (H, W, 3) -> sensor_msgs/Image rgb8."""
    height, width, _ = frame.shape
    msg = Image(header=header, height=height, width=width, encoding='rgb8', is_bigendian=0,
                step=width * 3)
    msg.data = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    return msg


def prediction_to_msg(prediction: Prediction, *, decision: Decision, header: Header,
                      latency_ns: int) -> HumanAction:
    """The raw result of one window and the decision taken on it."""
    msg = HumanAction(
        header=header, window_start=ns_to_time(prediction.window_start_ns),
        task=prediction.task, label=prediction.label, label_id=prediction.label_id,
        confidence=prediction.confidence, top_labels=list(prediction.top_labels),
        top_scores=list(prediction.top_scores), ambiguous=prediction.ambiguous,
        ambiguous_with=prediction.ambiguous_with,
        ambiguity_reason=prediction.ambiguity_reason, margin=prediction.margin,
        frames=prediction.frames, latency=ns_to_duration(latency_ns))
    _set_decided(msg, decision)
    return msg


def warming_up_msg(decision: Decision, *, task: str, frames: int, window_start_ns: int,
                   header: Header, latency_ns: int) -> HumanAction:
    """While the window fills: no raw result, the state says so (label_id -1: no class)."""
    msg = HumanAction(header=header, window_start=ns_to_time(window_start_ns), task=task,
                      label_id=-1, frames=frames, latency=ns_to_duration(latency_ns))
    _set_decided(msg, decision)
    return msg


def _set_decided(msg: HumanAction, decision: Decision) -> None:
    msg.state = decision.state.value
    msg.stable_label = decision.stable_label
    msg.stable_confidence = float(decision.stable_confidence)
    msg.stable_since = ns_to_time(decision.stable_since_ns)


def event_to_msg(event: Event, *, frame_id: str) -> ActionEvent:
    """A decision event; its header is that of the window it was decided on."""
    return ActionEvent(
        header=Header(stamp=ns_to_time(event.decided_ns), frame_id=frame_id),
        window_start=ns_to_time(event.window_start_ns), task=event.task, label=event.label,
        kind=event.kind, stamp=ns_to_time(event.stamp_ns), confidence=float(event.confidence),
        duration=ns_to_duration(round(event.duration_s * 1e9)))


def labels_msg(head: Head, *, topic: str) -> ActionLabels:
    return ActionLabels(task=head.task, topic=topic, labels=list(head.labels),
                        pair_a=[a for a, _ in head.pairs], pair_b=[b for _, b in head.pairs],
                        background=head.background or '')


def annotate(frame: np.ndarray, predictions: list[Prediction]) -> np.ndarray:
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
