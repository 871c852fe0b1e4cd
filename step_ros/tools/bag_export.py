"""`python -m step_ros bag-export`: a bag's image topic as a video on bag time, for labelling.

Video time t shows the newest frame whose header stamp is at most `first stamp + t`: the time
axis is bag time from the first frame, at a constant rate (`--fps`), so frames are repeated where
the camera was slower or paused and dropped where it was faster. Label the video in any
annotation tool, export `start,end,label` in video seconds, and read that file with
`--relative` (`extract --bag`, `bag-eval`): it counts seconds from the same first frame.
A jump between consecutive stamps longer than `--max-gap` (a glitched or unset stamp) is cut to
one frame period, with a warning naming it: video time after a cut is bag time minus the cut.
The header stamps are read once before any frame is written, and a video of more than
`--max-frames` frames is refused.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2

from step_ros.data.bags import (
    BagError,
    ReadStats,
    image_connections,
    iter_frames,
    open_bag,
    topic_count,
)
from step_ros.progress import progress_bar

FOURCC = {'.mp4': 'mp4v', '.avi': 'MJPG', '.mkv': 'mp4v'}
FPS_RANGE = (0.1, 1000.0)
MAX_GAP_S = 60.0  # default --max-gap
MAX_FRAMES = 1_000_000  # default --max-frames: over 9 hours at 30 fps
MAX_WARNINGS = 10  # cut jumps named one by one; the summary line counts them all


class VideoClock:
    """The video frame due at each bag stamp: bag time from the first stamp at `fps`, with
    jumps between consecutive stamps longer than `max_gap_ns` (either way) cut to one period."""

    def __init__(self, fps: float, max_gap_ns: int) -> None:
        self.fps, self.max_gap_ns = fps, max_gap_ns
        self.period_ns = round(1e9 / fps)
        self.anchor = self.last = None  # anchor: the stamp shown at video time 0
        self.cuts: list[tuple[int, int]] = []  # (stamp before, stamp after) of each cut jump

    def due(self, stamp_ns: int) -> int:
        """Index of the first video frame at or after this stamp's video time."""
        if self.anchor is None:
            self.anchor = stamp_ns
        elif abs(stamp_ns - self.last) > self.max_gap_ns:
            self.cuts.append((self.last, stamp_ns))
            # the frame after the jump comes one period after the one before it
            self.anchor = stamp_ns - (self.last - self.anchor) - self.period_ns
        self.last = stamp_ns
        return math.ceil((stamp_ns - self.anchor) * self.fps / 1e9 - 1e-6)


def header_stamps(bag: str | Path, topic: str):
    """The header stamps of a topic's messages in bag order, without decoding any image."""
    with open_bag(bag) as reader:
        for conn, _, raw in reader.messages(connections=image_connections(reader, topic, bag)):
            stamp = reader.deserialize(raw, conn.msgtype).header.stamp
            yield int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def plan(bag: str | Path, topic: str, *, fps: float, max_gap_s: float) -> tuple[int, VideoClock]:
    """(video frames the export writes, the clock with its cuts), from the stamps alone."""
    clock = VideoClock(fps, round(max_gap_s * 1e9))
    frames = 0
    for stamp in header_stamps(bag, topic):
        frames = max(frames, clock.due(stamp) + 1)
    return frames, clock


def _cut_warning(before: int, after: int, max_gap_s: float) -> str:
    return (f'bag-export: warning: the stamps jump by {(after - before) / 1e9:+.3f} s from '
            f'{before / 1e9:.9f} to {after / 1e9:.9f} (more than --max-gap {max_gap_s:g} s); '
            'the jump is cut to one frame: video time after it is not bag time from the first '
            'frame')


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--bag', type=Path, required=True,
                        help='rosbag2 directory (mcap or sqlite3) or ROS 1 .bag')
    parser.add_argument('--topic', required=True, help='Image or CompressedImage topic')
    parser.add_argument('--out', type=Path, required=True, help='video file (.mp4, .avi, .mkv)')
    parser.add_argument('--fps', type=float, default=30.0,
                        help='constant frame rate of the video (30); frame k shows bag time '
                             'first stamp + k / fps')
    parser.add_argument('--max-gap', type=float, default=MAX_GAP_S,
                        help='seconds: a jump between consecutive stamps longer than this is '
                             f'cut to one frame, with a warning ({MAX_GAP_S:g})')
    parser.add_argument('--max-frames', type=int, default=MAX_FRAMES,
                        help='refuse a video of more frames than this, counted from the stamps '
                             f'before writing ({MAX_FRAMES})')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def check_options(fps: float, max_gap_s: float, max_frames: int) -> None:
    """ValueError naming the first bad option."""
    low, high = FPS_RANGE
    if not low <= fps <= high:  # also refuses nan and inf
        raise ValueError(f'--fps {fps}: must be a number of frames per second in [{low:g}, '
                         f'{high:g}]')
    if not 0 < max_gap_s < math.inf:
        raise ValueError(f'--max-gap {max_gap_s}: must be a finite number of seconds > 0')
    if max_frames < 1:
        raise ValueError(f'--max-frames {max_frames}: must be >= 1')


def export(bag: str | Path, topic: str, out: str | Path, *, fps: float = 30.0,
           max_gap_s: float = MAX_GAP_S, max_frames: int = MAX_FRAMES,
           progress: bool = True) -> dict:
    """Write the video; -> dict(frames written, bag frames, repeated, dropped, first stamp,
    cut jumps)."""
    out = Path(out)
    check_options(fps, max_gap_s, max_frames)
    if out.suffix.lower() not in FOURCC:
        raise ValueError(f'--out {str(out)!r}: the video must end in {sorted(FOURCC)}')
    total = topic_count(bag, topic)
    planned, _ = plan(bag, topic, fps=fps, max_gap_s=max_gap_s)
    if planned > max_frames:
        raise ValueError(f'the video would have {planned:,} frames ({planned / fps / 3600:.1f} '
                         f'h at {fps:g} fps) from {total} messages, more than --max-frames '
                         f'{max_frames:,}: lower --fps or --max-gap, or raise --max-frames')
    clock = VideoClock(fps, round(max_gap_s * 1e9))
    stats = ReadStats()
    writer = None
    size = first = held = None  # held: the newest bag frame, shown until a newer one is due
    written = distinct = dropped = resized = 0
    held_shown = False

    def emit() -> None:
        nonlocal written, distinct, held_shown
        writer.write(cv2.cvtColor(held, cv2.COLOR_RGB2BGR))
        written += 1
        distinct += not held_shown
        held_shown = True

    try:
        for frame in progress_bar(iter_frames(bag, topic, stats=stats), total=total,
                                  desc='bag-export', unit='frame', disable=not progress):
            image = frame.image
            if first is None:
                first = frame.stamp_ns
                size = (image.shape[1], image.shape[0])
                out.parent.mkdir(parents=True, exist_ok=True)
                codec = FOURCC[out.suffix.lower()]
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), fps, size)
                if not writer.isOpened():
                    raise BagError(f'OpenCV cannot write {str(out)!r} (codec {codec})')
            elif (image.shape[1], image.shape[0]) != size:  # a video has one size
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                resized += 1
            # Video frames k with k / fps before this frame's bag time show the held frame.
            cuts = len(clock.cuts)
            due = clock.due(frame.stamp_ns)
            if cuts < len(clock.cuts) <= MAX_WARNINGS:
                print(_cut_warning(*clock.cuts[-1], max_gap_s), file=sys.stderr)
            if due > max_frames:  # the stamps changed since they were counted
                raise BagError(f'frame stamped {frame.stamp_ns / 1e9:.9f} is due at video frame '
                               f'{due:,}, beyond --max-frames {max_frames:,}')
            while held is not None and written < due:
                emit()
            if held is not None and not held_shown:
                dropped += 1  # a faster camera: replaced before a video frame was due
            held, held_shown = image, False
        if held is not None:
            emit()  # the last frame, at its own time
    finally:
        if writer is not None:
            writer.release()
    if first is None:
        raise BagError(f'topic {topic!r} in bag {str(bag)!r}: no decodable image '
                       f'({stats.messages} messages, skipped {dict(stats.skipped)})')
    return dict(frames=written, bag_frames=stats.decoded, dropped=dropped,
                repeated=written - distinct, resized=resized, first_ns=first,
                skipped=dict(stats.skipped), cuts=list(clock.cuts))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        result = export(args.bag, args.topic, args.out, fps=args.fps, max_gap_s=args.max_gap,
                        max_frames=args.max_frames, progress=not args.no_progress)
    except (BagError, ValueError) as exc:
        print(f'bag-export: error: {exc}', file=sys.stderr)
        return 2
    print(f"bag-export: {result['bag_frames']} bag frames -> {result['frames']} video frames at "
          f"{args.fps:g} fps ({result['repeated']} repeated, {result['dropped']} dropped); video "
          f"time 0 = stamp {result['first_ns'] / 1e9:.9f}; {len(result['cuts'])} stamp jumps "
          f'over --max-gap cut; wrote {args.out}')
    return 0
