"""`python -m step_ros replay --bag PATH`: publish a bag's camera images with rclpy.

For machines without `ros2 bag play` (rosbag2_py is not on PyPI). Messages go out in recording
order at real time x --rate with their original header stamps; /clock (rosgraph_msgs/Clock)
carries the bag's recording time, so nodes started with use_sim_time follow the bag. Reads
ROS 1 and rosbag2 (sqlite3, mcap) bags through `step_ros.data.bags`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from step_ros.data.bags import COMPRESSED, IMAGE_TYPES, BagError, image_connections, open_bag

QOS = {
    'reliable': QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
    'sensor_data': qos_profile_sensor_data,
}
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
SETTLE_S = 0.5  # after subscribers appear, let them discover us too before the first message
FLUSH_S = 2.0  # at the end, wait this long at most for reliable subscribers to acknowledge


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split('\n\n')[0],
        epilog='ROS arguments go after --ros-args, e.g. --ros-args -r '
               '/camera/image_raw:=/my/image')
    parser.add_argument('--bag', type=Path, required=True,
                        help='rosbag2 directory (sqlite3 or mcap) or ROS 1 .bag file')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (1.0: real time; 0.5: half speed)')
    parser.add_argument('--topic', action='append', default=None,
                        help='image topic to publish (repeatable; default: every Image and '
                             'CompressedImage topic in the bag)')
    parser.add_argument('--loop', action='store_true', help='start again at the end, forever')
    parser.add_argument('--clock-hz', type=float, default=100.0,
                        help='/clock messages per second of wall time (100; 0: no /clock)')
    parser.add_argument('--qos', choices=sorted(QOS), default='reliable',
                        help='image publisher QoS (reliable also reaches best-effort '
                             'subscribers)')
    parser.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='SECONDS',
                        help='wait up to this long for a subscriber on every image topic '
                             'before playing (0: start at once)')
    return parser


def to_ros(msgtype: str, msg) -> Image | CompressedImage:
    """A rosbags-deserialized image message -> the rclpy message, header untouched."""
    stamp = msg.header.stamp
    header = Header(stamp=Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec)),
                    frame_id=msg.header.frame_id)
    data = msg.data.tobytes() if hasattr(msg.data, 'tobytes') else bytes(msg.data)
    if msgtype == COMPRESSED:
        out = CompressedImage(header=header, format=msg.format)
    else:
        out = Image(header=header, height=int(msg.height), width=int(msg.width),
                    encoding=msg.encoding, is_bigendian=int(msg.is_bigendian),
                    step=int(msg.step))
    out.data = data
    return out


def select_topics(bag: Path, topics: list[str] | None) -> dict[str, str]:
    """{topic: msgtype} to publish; BagError for missing or non-image topics."""
    with open_bag(bag) as reader:
        if topics:
            return {t: image_connections(reader, t, bag)[0].msgtype for t in topics}
        found = {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}
    if not found:
        raise BagError(f'bag {str(bag)!r} has no Image or CompressedImage topic')
    return dict(sorted(found.items()))


class Replayer(Node):
    """Publishes the bag's images on schedule and /clock in between."""

    def __init__(self, *, bag: Path, topics: dict[str, str], rate: float, clock_hz: float,
                 qos: str) -> None:
        super().__init__('step_ros_replay')
        self.bag = bag
        self.rate = rate
        self.clock_period = 1.0 / clock_hz if clock_hz > 0 else None
        self.image_publishers = {
            t: self.create_publisher(CompressedImage if m == COMPRESSED else Image, t, QOS[qos])
            for t, m in topics.items()}
        self.clock_publisher = (self.create_publisher(Clock, '/clock', CLOCK_QOS)
                                if clock_hz > 0 else None)
        self.counts = dict.fromkeys(topics, 0)
        self._last_clock = 0.0

    def wait_for_subscribers(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() for p in self.image_publishers.values()):
                time.sleep(SETTLE_S)
                return True
            time.sleep(0.05)
        return False

    def _check_running(self) -> None:
        # rclpy's SIGINT handler shuts the context down instead of raising KeyboardInterrupt.
        if not self.context.ok():
            raise ExternalShutdownException()

    def _publish_clock(self, bag_ns: int) -> None:
        self._check_running()
        if self.clock_publisher is not None:
            sec, nanosec = divmod(int(bag_ns), 1_000_000_000)
            self.clock_publisher.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))
            self._last_clock = time.monotonic()

    def _wait_until(self, due: float, wall0: float, bag0: int) -> None:
        """Sleep until wall time `due`, publishing /clock every clock period meanwhile."""
        while (now := time.monotonic()) < due:
            if self.clock_period is not None and now - self._last_clock >= self.clock_period:
                self._publish_clock(bag0 + int((now - wall0) * self.rate * 1e9))
            step = due - now
            if self.clock_period is not None:
                step = min(step, self.clock_period)
            time.sleep(step)

    def play_once(self) -> None:
        with open_bag(self.bag) as reader:
            conns = [c for c in reader.connections if c.topic in self.image_publishers]
            wall0 = bag0 = None
            for conn, log_ns, raw in reader.messages(connections=conns):
                msg = to_ros(conn.msgtype, reader.deserialize(raw, conn.msgtype))
                if wall0 is None:
                    wall0, bag0 = time.monotonic(), log_ns
                self._wait_until(wall0 + (log_ns - bag0) / 1e9 / self.rate, wall0, bag0)
                self._publish_clock(log_ns)  # checks for shutdown first
                self.image_publishers[conn.topic].publish(msg)
                self.counts[conn.topic] += 1

    def flush(self) -> None:
        """Let the last messages reach reliable subscribers before the publishers go away."""
        for publisher in self.image_publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=FLUSH_S))


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if '--ros-args' in argv:
        i = argv.index('--ros-args')
        return argv[:i], argv[i:]
    return argv, []


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, ros_args = split_ros_args(list(argv))
    parser = build_parser(prog)
    args = parser.parse_args(own)
    if not args.rate > 0:
        parser.error(f'--rate {args.rate}: must be > 0')
    try:
        topics = select_topics(args.bag, args.topic)
    except BagError as exc:
        print(f'replay: error: {exc}', file=sys.stderr)
        return 2
    rclpy.init(args=['replay', *ros_args])
    node = None
    start = time.monotonic()
    try:
        node = Replayer(bag=args.bag, topics=topics, rate=args.rate, clock_hz=args.clock_hz,
                        qos=args.qos)
        if args.wait_for_subscribers > 0 and not node.wait_for_subscribers(
                args.wait_for_subscribers):
            node.get_logger().warning(f'no subscriber on every topic of {list(topics)} after '
                                      f'{args.wait_for_subscribers:g} s; playing anyway')
        node.get_logger().info(f'playing {args.bag} {list(topics)} at x{args.rate:g}')
        while True:
            node.play_once()
            if not args.loop:
                break
        node.flush()
    except BagError as exc:
        print(f'replay: error: {exc}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            print(f'replay: published {node.counts} in {time.monotonic() - start:.1f} s',
                  flush=True)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
