"""`python -m step_ros synth --bag OUT`: the synthetic action stream as an annotated rosbag2.

OUT is an mcap rosbag2 directory of camera images (random actions, each `--action-seconds` long,
with idle gaps of the background class `none` between them, of a length drawn from
`--idle-seconds`) with its ground truth beside the mcap file: OUT/timeline.csv
(`start,end,label` in seconds of header-stamp time), ready for `bag-eval --labels`, and
OUT/pairs.yaml (labels and symmetric pairs), which `extract --bag` reads by default.

`--world workcell` records the second, independent world instead (step_ros.data.workcell: an
assembly cell with its own classes, scenes and background `idle`; each action lasts 0.8-3x
`--window-seconds`, idle gaps 0.3-5 s unless `--idle-seconds` is given), so that defaults
chosen on one world can be checked on the other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from step_ros.data import synth, workcell
from step_ros.data.bags import BagError, BagWriter
from step_ros.data.synth import DEFAULT_SIZE, ActionStream
from step_ros.data.timeline import write_timeline
from step_ros.data.workcell import WorkcellStream
from step_ros.progress import progress_bar

TIMELINE_NAME = 'timeline.csv'
# Header stamps start here (2023-11-14, whole seconds): realistic epoch times, never 0, which
# ROS reads as 'time not set' under use_sim_time.
START_NS = 1_700_000_000_000_000_000
IDLE_SECONDS = (0.5, 4.0)
ACTION_SECONDS = 2.0
WINDOW_SECONDS = 2.0
# The synthetic worlds: name -> module with LABELS, SYMMETRIC_PAIRS, render_clip and object_of.
WORLDS = {'actions': synth, 'workcell': workcell}
# Bag size per frame pixel: rgb8 before the zstd chunks (which keep about 60-90 % of it on this
# stream), and JPEG at the writer's quality (measured on this stream at 240x320).
RGB8_BYTES_PER_PIXEL = 3
JPEG_BYTES_PER_PIXEL = 0.25


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `synth` takes for --bag (its --seed, --size and --fps are shared)."""
    group = parser.add_argument_group('rosbag output (--bag)')
    group.add_argument('--bag', type=Path, default=None,
                       help='write an mcap rosbag2 of the synthetic camera stream to this new '
                            'directory (with timeline.csv inside) instead of the clip dataset; '
                            'frames are 240x320 (the demo camera) unless --size is given')
    group.add_argument('--seconds', type=float, default=12.0,
                       help='bag length (12 s). Size: seconds x fps x H x W x 3 bytes of rgb8 '
                            'before zstd, about 60-90 %% of it on disk (12 s of 240x320 at 30 '
                            f'fps: {estimated_bytes(12, 30, DEFAULT_SIZE, False) / 1e6:.0f} MB); '
                            'about a twelfth of that with --compressed')
    group.add_argument('--topic', default=None,
                       help='image topic (/camera/image_raw, or /camera/image_raw/compressed '
                            'with --compressed)')
    group.add_argument('--action-seconds', type=float, default=None,
                       help='length of each action in the stream (2 s); actions world only')
    group.add_argument('--window-seconds', type=float, default=None,
                       help='workcell world only: the window length that scales the actions, '
                            'each lasting a length drawn from 0.8x to 3x of it (2 s)')
    group.add_argument('--cell', type=int, default=None,
                       help='workcell world only: the cell recorded (a seed); recordings of one '
                            'cell share its camera pose, light and bench, the operator, noise and '
                            'drift stay their own (default: each --seed a cell of its own)')
    group.add_argument('--idle-seconds', type=float, nargs=2, default=None,
                       metavar=('SHORTEST', 'LONGEST'),
                       help='idle gap (background) after each action, its length drawn '
                            'uniformly in [SHORTEST, LONGEST] seconds (0 0: no gaps; default '
                            '0.5 4 for the actions world, 0.3 5 for the workcell world)')
    group.add_argument('--compressed', action='store_true',
                       help='JPEG sensor_msgs/CompressedImage instead of rgb8 Image')


def estimated_bytes(seconds: float, fps: float, size: tuple[int, int], compressed: bool) -> int:
    """The image payload of a synth bag: rgb8 before zstd (an upper bound), or about JPEG's."""
    per_pixel = JPEG_BYTES_PER_PIXEL if compressed else RGB8_BYTES_PER_PIXEL
    return int(round(seconds * fps)) * round(size[0] * size[1] * per_pixel)


def _stream(world: str, *, seed: int, fps: float, size: tuple[int, int],
            action_seconds: float | None, window_seconds: float | None,
            idle_seconds: tuple[float, float] | None, cell: int | None = None
            ) -> tuple[ActionStream | WorkcellStream, dict]:
    """The world's camera stream and its options for the bag metadata (None: the default)."""
    if world == 'actions':
        given = [name for name, value in (('--window-seconds', window_seconds),
                                          ('--cell', cell)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)}: the workcell world's; the actions world "
                             'takes --action-seconds')
        action = ACTION_SECONDS if action_seconds is None else action_seconds
        idle = IDLE_SECONDS if idle_seconds is None else tuple(idle_seconds)
        stream = ActionStream(seed=seed, fps=fps, size=size, action_seconds=action,
                              idle_seconds=idle)
        # The metadata of actions-world bags as before worlds existed (no `world`: actions).
        return stream, dict(seed=seed, fps=fps, size=list(size), action_seconds=action,
                            idle_seconds=list(idle))
    if world == 'workcell':
        if action_seconds is not None:
            raise ValueError('--action-seconds: the workcell world draws each action from 0.8x '
                             'to 3x --window-seconds')
        window = WINDOW_SECONDS if window_seconds is None else window_seconds
        idle = workcell.IDLE_SECONDS if idle_seconds is None else tuple(idle_seconds)
        stream = WorkcellStream(seed=seed, fps=fps, size=size, window_seconds=window,
                                idle_seconds=idle, cell=cell)
        return stream, dict(world=world, seed=seed, fps=fps, size=list(size),
                            window_seconds=window, idle_seconds=list(idle),
                            **({} if cell is None else dict(cell=cell)))
    raise ValueError(f'--world {world!r}: choose from {list(WORLDS)}')


def write_synth_bag(out: str | Path, *, seconds: float, seed: int = 0, fps: float = 30.0,
                    size: tuple[int, int] = DEFAULT_SIZE, topic: str = '/camera/image_raw',
                    action_seconds: float | None = None,
                    idle_seconds: tuple[float, float] | None = None,
                    compressed: bool = False, start_ns: int = START_NS, progress: bool = True,
                    world: str = 'actions',
                    window_seconds: float | None = None,
                    cell: int | None = None) -> tuple[Path, Path]:
    """Render `seconds` of the world's stream into a bag; -> (bag directory, timeline CSV).

    None takes the world's default: actions of ACTION_SECONDS and gaps of IDLE_SECONDS (actions
    world), actions of 0.8-3x WINDOW_SECONDS and gaps of workcell.IDLE_SECONDS (workcell world).
    """
    if not seconds > 0:
        raise ValueError(f'--seconds {seconds}: must be > 0')
    out = Path(out)
    stream, options = _stream(world, seed=seed, fps=fps, size=size,
                              action_seconds=action_seconds, window_seconds=window_seconds,
                              idle_seconds=idle_seconds, cell=cell)
    count = int(round(seconds * fps))

    def stamp(index: int) -> int:
        return start_ns + int(round(index * 1e9 / fps))

    with BagWriter(out) as writer:
        writer.writer.set_custom_data('step_ros.synth', json.dumps(dict(
            **options, seconds=seconds, topic=topic, compressed=compressed,
            timeline=TIMELINE_NAME)))
        frames = zip(range(count), stream)
        for index, (frame, _, _) in progress_bar(frames, total=count, desc='synth bag',
                                                 unit='frame', disable=not progress):
            writer.write_image(topic, frame, stamp_ns=stamp(index), frame_id='camera',
                               compressed=compressed)
    segments = []
    for start, end, label in stream.segments():
        first, stop = int(round(start * fps)), min(int(round(end * fps)), count)
        if first < count:
            segments.append((stamp(first), stamp(stop), label))
    # The world's label set and symmetric pairs, for `extract --bag` (its default --pairs).
    (out / 'pairs.yaml').write_text(yaml.safe_dump(dict(
        labels=list(WORLDS[world].LABELS),
        symmetric_pairs=[list(p) for p in WORLDS[world].SYMMETRIC_PAIRS])))
    return out, write_timeline(out / TIMELINE_NAME, segments)


def size_given(argv: list[str] | None) -> bool:
    """Whether the command line set --size (the dataset's default size is not the camera's)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument('--size')
    known, _ = probe.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.size is not None


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """`synth --bag`: exit code 2 with a one-line message on bad options."""
    size = args.size if size_given(argv) else DEFAULT_SIZE
    topic = args.topic or ('/camera/image_raw/compressed' if args.compressed
                           else '/camera/image_raw')
    try:
        bag, timeline = write_synth_bag(args.bag, seconds=args.seconds, seed=args.seed,
                                        fps=args.fps, size=size, topic=topic,
                                        action_seconds=args.action_seconds,
                                        idle_seconds=args.idle_seconds,
                                        compressed=args.compressed, world=args.world,
                                        window_seconds=args.window_seconds,
                                        cell=args.cell)
    except (ValueError, BagError) as exc:
        print(f'synth: error: {exc}', file=sys.stderr)
        return 2
    print(f'synth: wrote {bag} ({topic}, {size[0]}x{size[1]}, {args.seconds:g} s at '
          f'{args.fps:g} fps) and {timeline}')
    written = sum(f.stat().st_size for f in Path(bag).rglob('*') if f.is_file())
    estimate = estimated_bytes(args.seconds, args.fps, size, args.compressed)
    kind = 'JPEG, estimated' if args.compressed else 'rgb8 before zstd'
    print(f'synth: {written} bytes ({written / 1e6:.1f} MB) written; image payload '
          f'{estimate / 1e6:.1f} MB ({kind})')
    return 0
