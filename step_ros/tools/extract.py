"""`python -m step_ros extract`: cache frozen-backbone tokens of T frames per clip."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from step_ros.data.features import DataError, extract, read_clip_list
from step_ros.distributed import session
from step_ros.model.backbone import BackboneError, FrozenBackbone
from step_ros.model.checkpoint import MAX_FRAMES
from step_ros.tools import extract_bags


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description='Run the frozen backbone once over T uniformly sampled frames of '
        'every clip of a CSV (path,label[,start,end]) and store the tokens as fp16 shards. '
        'Re-running on the same directory resumes. Under torchrun every rank encodes its share '
        'of the shards, of clips or of sampled frames (docs/DISTRIBUTED.md).')
    parser.add_argument('--clips', type=Path, default=None,
                        help='clip list CSV (or --bag: see below)')
    parser.add_argument('--pairs', type=Path, default=None,
                        help='pairs.yaml (default: pairs.yaml beside the CSV, if any)')
    parser.add_argument('--backbone', default='tiny',
                        help="'tiny', 'tiny-clip', 'efficientnet_lite0' (real ImageNet weights, "
                             'CPU) or a local Hugging Face directory (tiny)')
    parser.add_argument('--image-size', type=int, default=0,
                        help="backbone input side in pixels (0: the model's)")
    parser.add_argument('--frames', type=int, default=8,
                        help=f'T: frames per clip, at most {MAX_FRAMES} (8)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' (auto)")
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'fp16', 'bf16'))
    parser.add_argument('--shard-size', type=int, default=64, help='clips per shard (64)')
    parser.add_argument('--out', type=Path, required=True, help='cache directory')
    extract_bags.add_bag_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.bag:
        return extract_bags.run(args, parser)
    if args.clips is None:
        print('extract: error: give --clips CSV or --bag BAG', file=sys.stderr)
        return 2
    if not 1 <= args.frames <= MAX_FRAMES:
        print(f'extract: error: --frames {args.frames}: must be in [1, {MAX_FRAMES}]',
              file=sys.stderr)
        return 2
    if args.shard_size < 1:
        print(f'extract: error: --shard-size {args.shard_size}: must be >= 1', file=sys.stderr)
        return 2
    try:
        with session(device=args.device) as dist:  # a process group under torchrun, else None
            clip_list = read_clip_list(args.clips, pairs_path=args.pairs)
            device = args.device if dist is None else dist.device
            backbone = FrozenBackbone.load(args.backbone, image_size=args.image_size,
                                           device=device, precision=args.precision)
            extract(clip_list, backbone, num_frames=args.frames, out=args.out,
                    shard_size=args.shard_size, dist=dist)
    except (DataError, BackboneError, RuntimeError) as exc:
        print(f'extract: error: {exc}', file=sys.stderr)
        return 2
    if dist is None or dist.is_main:
        ranks = '' if dist is None else f' by {dist.world_size} ranks'
        print(f'extract: {len(clip_list.clips)} clips x {args.frames} frames{ranks} -> '
              f'{args.out}')
    return 0
