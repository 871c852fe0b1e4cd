"""Rosbag I/O without ROS: camera images out of ROS 1 and rosbag2 (sqlite3, mcap) bags, and
annotated mcap rosbag2 bags written, with the `rosbags` library only.

Frames come out in header-stamp order and are decoded by `step_ros.stream.decode`, exactly as the
node decodes them live; images the node would reject (depth, unknown encodings) are counted by
reason.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from step_ros.stream.decode import DEFAULT_MAX_PIXELS, ImageRejected, decode_message
from step_ros.stream.engine import MAX_DISORDER_NS

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)
HUMAN_ACTION = 'step_ros_msgs/msg/HumanAction'
ACTION_EVENT = 'step_ros_msgs/msg/ActionEvent'


class BagError(ValueError):
    """A bag or topic cannot be used; the message names the bag, the topic and the problem."""


@dataclass(frozen=True)
class Topic:
    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagFrame:
    stamp_ns: int  # header stamp
    log_ns: int  # time the recorder logged the message
    frame_id: str
    image: np.ndarray  # RGB uint8 (H, W, 3)
    msgtype: str
    msg: object  # the deserialized message, for copying it into another bag


@dataclass
class ReadStats:
    """What reading one topic did: messages, decoded frames, skipped ones by reason."""

    messages: int = 0
    decoded: int = 0
    skipped: Counter = field(default_factory=Counter)  # kind -> count
    reasons: dict = field(default_factory=dict)  # kind -> first message of that kind
    out_of_order: int = 0  # stamps older than a frame already yielded (restarts)

    def skip(self, kind: str, message: str) -> None:
        self.skipped[kind] += 1
        self.reasons.setdefault(kind, message)

    def to_dict(self) -> dict:
        return dict(messages=self.messages, decoded=self.decoded, skipped=dict(self.skipped),
                    reasons=dict(self.reasons), out_of_order=self.out_of_order)


def msg_dirs() -> list[Path]:
    """Where the step_ros_msgs .msg files are: the source tree, then the installed share."""
    dirs = [Path(__file__).resolve().parents[1] / 'step_ros_msgs' / 'msg']
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory('step_ros_msgs')) / 'msg')
    except Exception:  # not installed, or ament_index not importable: the source tree will do
        pass
    return dirs


@lru_cache(maxsize=1)
def typestore():
    """The ROS 2 Jazzy types plus step_ros_msgs, registered from the .msg files."""
    store = get_typestore(Stores.ROS2_JAZZY)
    for folder in msg_dirs():
        files = sorted(folder.glob('*.msg'))
        if files:
            types = {}
            for path in files:
                name = f'step_ros_msgs/msg/{path.stem}'
                types.update(get_types_from_msg(path.read_text(), name))
            store.register(types)
            return store
    raise BagError(f'step_ros_msgs .msg files not found in {[str(d) for d in msg_dirs()]}')


def bag_path(path: str | Path) -> Path:
    """A rosbag2 directory, its .mcap / .db3 file, or a ROS 1 .bag file."""
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {str(path)!r} does not exist')
    if path.is_file() and path.suffix in ('.mcap', '.db3') and (
            path.parent / 'metadata.yaml').is_file():
        return path.parent
    if path.is_dir() and not (path / 'metadata.yaml').is_file():
        raise BagError(f'bag {str(path)!r}: a directory without metadata.yaml is not a rosbag2')
    return path


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """An open AnyReader; any failure to read the bag becomes a BagError naming it."""
    path = bag_path(path)
    reader = AnyReader([path], default_typestore=typestore())
    try:
        reader.open()
    except Exception as exc:  # rosbags raises several types for damaged files
        raise BagError(f'bag {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); '
                       'is it truncated or not a bag?') from exc
    try:
        yield reader
    finally:
        reader.close()


def list_topics(path: str | Path) -> list[Topic]:
    """Every topic in the bag with its type and message count."""
    with open_bag(path) as reader:
        counts: Counter = Counter()
        types = {}
        for conn in reader.connections:
            counts[conn.topic] += conn.msgcount
            types[conn.topic] = conn.msgtype
    return [Topic(name, types[name], counts[name]) for name in sorted(types)]


def image_connections(reader: AnyReader, topic: str, bag: str | Path) -> list:
    """The connections of an image topic; BagError when it is missing or not an image."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        images = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
        raise BagError(f'bag {str(bag)!r} has no topic {topic!r}; its image topics: {images}')
    wrong = sorted({c.msgtype for c in conns if c.msgtype not in IMAGE_TYPES})
    if wrong:
        raise BagError(f'topic {topic!r} in bag {str(bag)!r} has type {wrong[0]}, not '
                       f'{IMAGE} or {COMPRESSED}')
    return conns


def _stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def iter_frames(path: str | Path, topic: str, *, stats: ReadStats | None = None,
                reorder: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[BagFrame]:
    """Decoded frames of one image topic in header-stamp order; images larger than
    `max_pixels` (the node's `max_image_pixels`) are skipped as the node rejects them.

    Up to `reorder` messages are held back to sort stamps that arrive slightly out of order;
    a stamp far behind the newest one flushes the held ones first (a restart stays a restart).
    """
    stats = ReadStats() if stats is None else stats
    with open_bag(path) as reader:
        conns = image_connections(reader, topic, path)
        held: list = []
        seq = itertools.count()
        newest = last_out = None

        def pop() -> BagFrame | None:
            nonlocal last_out
            stamp, _, log_ns, msgtype, msg = heapq.heappop(held)
            if last_out is not None and stamp < last_out:
                stats.out_of_order += 1
            last_out = stamp
            try:
                image = decode_message(msg, compressed=msgtype == COMPRESSED,
                                       max_pixels=max_pixels)
                if not image.flags.writeable:  # a view of the bag's buffer: torch wants its own
                    image = image.copy()
            except ImageRejected as exc:
                stats.skip(exc.kind, str(exc))
                return None
            stats.decoded += 1
            return BagFrame(stamp, log_ns, msg.header.frame_id, image, msgtype, msg)

        try:
            for conn, log_ns, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                stats.messages += 1
                stamp = _stamp_ns(msg)
                if newest is not None and stamp < newest - MAX_DISORDER_NS:
                    while held:
                        if (frame := pop()) is not None:
                            yield frame
                    newest = None
                newest = stamp if newest is None else max(newest, stamp)
                heapq.heappush(held, (stamp, next(seq), log_ns, conn.msgtype, msg))
                if len(held) > reorder:
                    if (frame := pop()) is not None:
                        yield frame
        except BagError:
            raise
        except MemoryError as exc:
            raise BagError(f'bag {str(path)!r}, topic {topic!r}: out of memory after '
                           f'{stats.messages} messages') from exc
        except Exception as exc:  # damaged chunk or message in the middle of the bag
            raise BagError(f'bag {str(path)!r}, topic {topic!r}: reading failed after '
                           f'{stats.messages} messages ({type(exc).__name__}: {exc}); is the '
                           'bag truncated?') from exc
        while held:
            if (frame := pop()) is not None:
                yield frame


def topic_count(path: str | Path, topic: str) -> int:
    """Messages on one image topic (validates the topic)."""
    with open_bag(path) as reader:
        return sum(c.msgcount for c in image_connections(reader, topic, path))


def _time(stamp_ns: int):
    return typestore().types['builtin_interfaces/msg/Time'](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def _header(stamp_ns: int, frame_id: str):
    return typestore().types['std_msgs/msg/Header'](stamp=_time(stamp_ns), frame_id=frame_id)


class BagWriter:
    """Writes an mcap rosbag2 (zstd chunks) of Image / CompressedImage / HumanAction messages."""

    def __init__(self, path: str | Path, *, compress: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'output bag {str(self.path)!r} exists already; remove it or choose '
                           'another path')
        self.store = typestore()
        self.writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        if compress:
            self.writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self.connections: dict[str, object] = {}

    def __enter__(self) -> BagWriter:
        self.writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def _connection(self, topic: str, msgtype: str):
        conn = self.connections.get(topic)
        if conn is None:
            conn = self.writer.add_connection(topic, msgtype, typestore=self.store)
            self.connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f'topic {topic!r} is {conn.msgtype}, cannot also write {msgtype}')
        return conn

    def write(self, topic: str, msgtype: str, msg, log_ns: int) -> None:
        """Write a message object of this typestore (or one with the same fields)."""
        conn = self._connection(topic, msgtype)
        self.writer.write(conn, log_ns, self.store.serialize_cdr(msg, msgtype))

    def write_image(self, topic: str, rgb: np.ndarray, *, stamp_ns: int, frame_id: str = 'camera',
                    compressed: bool = False, log_ns: int | None = None) -> None:
        """An RGB uint8 (H, W, 3) frame as rgb8 Image or JPEG CompressedImage.

        `log_ns` is the recording time (default: the stamp).
        """
        log_ns = stamp_ns if log_ns is None else log_ns
        height, width = rgb.shape[:2]
        if compressed:
            ok, jpeg = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise BagError(f'JPEG encoding of a {width}x{height} frame failed')
            msg = self.store.types[COMPRESSED](header=_header(stamp_ns, frame_id),
                                               format='rgb8; jpeg compressed bgr8',
                                               data=np.asarray(jpeg, dtype=np.uint8).ravel())
            self.write(topic, COMPRESSED, msg, log_ns)
            return
        msg = self.store.types[IMAGE](
            header=_header(stamp_ns, frame_id), height=height, width=width, encoding='rgb8',
            is_bigendian=0, step=width * 3, data=np.ascontiguousarray(rgb).reshape(-1))
        self.write(topic, IMAGE, msg, log_ns)

    def write_action(self, topic: str, prediction, *, frame_id: str = '',
                     latency_ns: int = 0, decision=None) -> None:
        """An engine Prediction (and the Decision taken on it, if any) as a HumanAction, logged
        at its newest frame's stamp; without a decision the decided fields stay empty."""
        p = prediction
        duration = self.store.types['builtin_interfaces/msg/Duration'](
            sec=latency_ns // 1_000_000_000, nanosec=latency_ns % 1_000_000_000)
        msg = self.store.types[HUMAN_ACTION](
            header=_header(p.stamp_ns, frame_id), window_start=_time(p.window_start_ns),
            task=p.task, label=p.label, label_id=p.label_id, confidence=p.confidence,
            top_labels=list(p.top_labels),
            top_scores=np.asarray(p.top_scores, dtype=np.float32), ambiguous=p.ambiguous,
            ambiguous_with=p.ambiguous_with, ambiguity_reason=p.ambiguity_reason,
            margin=p.margin, frames=p.frames, latency=duration,
            state=decision.state.value if decision else '',
            stable_label=decision.stable_label if decision else '',
            stable_confidence=decision.stable_confidence if decision else 0.0,
            stable_since=_time(decision.stable_since_ns if decision else 0))
        self.write(topic, HUMAN_ACTION, msg, p.stamp_ns)

    def write_event(self, topic: str, event, *, frame_id: str = '') -> None:
        """A decision ActionEvent as a step_ros_msgs/ActionEvent, logged at its decision stamp."""
        duration_ns = round(event.duration_s * 1e9)
        msg = self.store.types[ACTION_EVENT](
            header=_header(event.decided_ns, frame_id),
            window_start=_time(event.window_start_ns), task=event.task, label=event.label,
            kind=event.kind, stamp=_time(event.stamp_ns), confidence=event.confidence,
            duration=self.store.types['builtin_interfaces/msg/Duration'](
                sec=duration_ns // 1_000_000_000, nanosec=duration_ns % 1_000_000_000))
        self.write(topic, ACTION_EVENT, msg, event.decided_ns)
