"""`python -m step_ros bag-export`: a bag's image topic as a video on bag time, for labelling.

Video time t shows the newest frame whose header stamp is at most `first stamp + t`: the time
axis is bag time from the first frame, at a constant rate (`--fps`), so frames are repeated where
the camera was slower or paused and dropped where it was faster. Label the video in any
annotation tool, export `start,end,label` in video seconds, and read that file with
`--relative` (`extract --bag`, `bag-eval`): it counts seconds from the same first frame.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from step_ros.data.bags import BagError, ReadStats, iter_frames, topic_count

FOURCC = {'.mp4': 'mp4v', '.avi': 'MJPG', '.mkv': 'mp4v'}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--bag', type=Path, required=True,
                        help='rosbag2 directory (mcap or sqlite3) or ROS 1 .bag')
    parser.add_argument('--topic', required=True, help='Image or CompressedImage topic')
    parser.add_argument('--out', type=Path, required=True, help='video file (.mp4, .avi, .mkv)')
    parser.add_argument('--fps', type=float, default=30.0,
                        help='constant frame rate of the video (30); frame k shows bag time '
                             'first stamp + k / fps')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def export(bag: str | Path, topic: str, out: str | Path, *, fps: float = 30.0,
           progress: bool = True) -> dict:
    """Write the video; -> dict(frames written, bag frames, repeated, dropped, first stamp)."""
    out = Path(out)
    if not fps > 0:
        raise ValueError(f'--fps {fps}: must be > 0')
    if out.suffix.lower() not in FOURCC:
        raise ValueError(f'--out {str(out)!r}: the video must end in {sorted(FOURCC)}')
    total = topic_count(bag, topic)
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
        for frame in tqdm(iter_frames(bag, topic, stats=stats), total=total, desc='bag-export',
                          unit='frame', disable=not progress):
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
            due = math.ceil((frame.stamp_ns - first) * fps / 1e9 - 1e-6)
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
                skipped=dict(stats.skipped))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        result = export(args.bag, args.topic, args.out, fps=args.fps,
                        progress=not args.no_progress)
    except (BagError, ValueError) as exc:
        print(f'bag-export: error: {exc}', file=sys.stderr)
        return 2
    print(f"bag-export: {result['bag_frames']} bag frames -> {result['frames']} video frames at "
          f"{args.fps:g} fps ({result['repeated']} repeated, {result['dropped']} dropped); video "
          f"time 0 = stamp {result['first_ns'] / 1e9:.9f}; wrote {args.out}")
    return 0
