"""`python -m step_ros synth`: write the procedural nearly-symmetric action dataset.

Layout of --out: videos/<split>/<label>_<k>.mp4 (the actions and the background class `none`),
train.csv / val.csv / test.csv (header `path,label,object[,start,end]`, paths relative to the
CSV; `object`, the object handled, is a second task), pairs.yaml (labels and symmetric_pairs)
and dataset.json (the resolved options). Each clip has its own seed derived from (seed, split,
class, k), so the same seed gives the same dataset whatever the order clips are written in.
`--world workcell` renders the second world's classes (step_ros.data.workcell; background
`idle`) instead of the actions world's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from step_ros.progress import progress_bar
from step_ros.tools import synth_bag

SPLITS = ('train', 'val', 'test')
FOURCC = 'mp4v'  # decodes back with opencv-python-headless (checked); H.264 encoders may be absent


def parse_size(text: str) -> tuple[int, int]:
    """'240x320' (H x W) -> (240, 320)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'size {text!r}: expected HxW, e.g. 240x320') from exc
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f'size {text!r}: at least 32x32')
    return h, w


def write_video(path: Path, frames: np.ndarray, *, fps: float) -> None:
    """RGB uint8 frames (n, H, W, 3) -> a video file that cv2.VideoCapture reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _, h, w, _ = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f'{path}: OpenCV cannot write {FOURCC} video here')
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, help='output directory (required without --bag)')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed (default 0)')
    parser.add_argument('--world', choices=tuple(synth_bag.WORLDS), default='actions',
                        help='actions (default): pick_up/put_down, open_drawer/close_drawer, '
                             'screw_lid/unscrew_lid, wave, stir, background none; workcell: '
                             'push/pull, raise/lower, insert/remove, polish, hammer, background '
                             'idle, its own scenes, per-recording viewpoint and noise, gain '
                             'drift and camera shake (with --bag: actions of 0.8-3x '
                             '--window-seconds, idle gaps 0.3-5 s)')
    parser.add_argument('--train', type=int, default=40, help='train clips per class (40)')
    parser.add_argument('--val', type=int, default=8, help='val clips per class (8)')
    parser.add_argument('--test', type=int, default=20, help='test clips per class (20)')
    parser.add_argument('--size', type=parse_size, default=(160, 160),
                        help='frame size HxW (default 160x160; the demo camera is 240x320)')
    parser.add_argument('--fps', type=float, default=30.0, help='video frame rate (30)')
    parser.add_argument('--min-frames', type=int, default=30,
                        help='shortest clip in frames (30)')
    parser.add_argument('--max-frames', type=int, default=60, help='longest clip in frames (60)')
    parser.add_argument('--window', type=float, default=0.0,
                        help='if > 0: each CSV row gets start/end of a random sub-window of this '
                             'many seconds (like a live window of the demo stream)')
    synth_bag.add_bag_arguments(parser)
    return parser


def write_dataset(args: argparse.Namespace) -> dict:
    """Render every split; returns the resolved options written to dataset.json."""
    if not 2 <= args.min_frames <= args.max_frames:
        raise ValueError(f'--min-frames {args.min_frames} / --max-frames {args.max_frames}: '
                         'need 2 <= min <= max')
    if args.window and args.window > args.min_frames / args.fps:
        raise ValueError(f'--window {args.window}: longer than the shortest clip '
                         f'({args.min_frames / args.fps:.2f} s)')
    out: Path = args.out
    world = synth_bag.WORLDS[args.world]
    out.mkdir(parents=True, exist_ok=True)
    counts = dict(train=args.train, val=args.val, test=args.test)
    jobs = [(s, c, k) for s in SPLITS for c in range(len(world.LABELS))
            for k in range(counts[s])]
    rows: dict[str, list[list]] = {s: [] for s in SPLITS}
    for split, c, k in progress_bar(jobs, desc='synth', unit='clip'):
        label = world.LABELS[c]
        rng = np.random.default_rng([args.seed, SPLITS.index(split), c, k])
        n = int(rng.integers(args.min_frames, args.max_frames + 1))
        frames = world.render_clip(label, rng=rng, num_frames=n, size=args.size)
        rel = Path('videos') / split / f'{label}_{k:04d}.mp4'
        write_video(out / rel, frames, fps=args.fps)
        row = [rel.as_posix(), label, world.object_of(label)]
        if args.window:
            start = float(rng.uniform(0.0, n / args.fps - args.window))
            row += [f'{start:.4f}', f'{start + args.window:.4f}']
        rows[split].append(row)
    header = ['path', 'label', 'object'] + (['start', 'end'] if args.window else [])
    for split in SPLITS:
        with (out / f'{split}.csv').open('w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows[split])
    pairs = dict(labels=list(world.LABELS),
                 symmetric_pairs=[list(p) for p in world.SYMMETRIC_PAIRS])
    (out / 'pairs.yaml').write_text(yaml.safe_dump(pairs, sort_keys=False))
    resolved = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()}
    (out / 'dataset.json').write_text(json.dumps(resolved, indent=2) + '\n')
    return resolved


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.bag is not None:
        return synth_bag.run(args, argv)
    if args.out is None:
        parser.error('--out is required (or --bag)')
    try:
        write_dataset(args)
    except (ValueError, RuntimeError) as exc:
        print(f'synth: error: {exc}', file=sys.stderr)
        return 2
    labels = synth_bag.WORLDS[args.world].LABELS
    total = len(labels) * (args.train + args.val + args.test)
    print(f'synth: wrote {total} clips of {len(labels)} classes ({args.world} world) to '
          f'{args.out}')
    return 0
