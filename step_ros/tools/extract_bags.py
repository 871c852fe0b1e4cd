"""`python -m step_ros extract --bag ...`: a training cache from rosbags, on the node's path.

The options `extract` takes for --bag and the run of that branch; the work is in
`step_ros.data.bag_dataset`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from step_ros.data.bag_cache import split_counts
from step_ros.data.bag_dataset import (
    STRADDLE_RULES,
    NodeSettings,
    Recording,
    default_timeline,
    extract_bags,
)
from step_ros.data.bags import BagError
from step_ros.data.features import DataError
from step_ros.data.timeline import TimelineError
from step_ros.distributed import session
from step_ros.model.backbone import BackboneError
from step_ros.stream.config import ConfigError, load_params_file

# Flags of the clip branch that the node's parameters file sets for --bag.
CLIP_ONLY = {'frames': 'num_frames', 'backbone': 'backbone.weights',
             'image_size': 'backbone.image_size', 'precision': 'precision'}


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'rosbag input (--bag)',
        "Frames take the node's path: decode, the stamp sampler on the node's grid "
        '(window_seconds / num_frames of --config), preprocess, frozen backbone; their tokens are '
        'stored once per sampled frame. Every T consecutive sampled frames form a window labelled '
        'by the timeline segment holding it; --straddle decides the others. Splits are by '
        'recording: '
        'OUT/<split> holds the windows of the recordings of that split (train --cache OUT/train '
        '--val-cache OUT/val). Re-running on the same directory resumes. Under torchrun every '
        'rank reads every recording and encodes every N-th shard of sampled frames.')
    group.add_argument('--bag', type=Path, action='append', default=[],
                       help='rosbag2 directory (mcap or sqlite3) or ROS 1 .bag; repeatable')
    group.add_argument('--topic', default=None, help='Image or CompressedImage topic')
    group.add_argument('--config', type=Path, default=None,
                       help="the node's ROS parameters YAML: backbone, image size, precision, "
                            'num_frames, window_seconds, device')
    group.add_argument('--labels', type=Path, action='append', default=[],
                       help='timeline CSV (start,end,label) once per --bag, same order '
                            '(default: timeline.csv inside each bag directory)')
    group.add_argument('--split', action='append', default=[],
                       help='split of each --bag, same order: train (default), val, test, ...')
    group.add_argument('--stride', type=int, default=1,
                       help='keep every N-th window of a run of sampled frames (1: all, as the '
                            'node with infer_every 1)')
    group.add_argument('--straddle', choices=tuple(STRADDLE_RULES), default='majority',
                       help='windows not inside one segment: ' + '; '.join(
                           f'{name}: {rule}' for name, rule in STRADDLE_RULES.items())
                       + ' (majority: its heads gave the best decided stream on held-out '
                       'recordings, docs/TRAINING.md). Stride and rule can be changed on a '
                       'finished cache: the windows are relabelled, nothing is encoded again')
    group.add_argument('--relative', action='store_true',
                       help="timeline seconds count from each bag's first image stamp (the "
                            'time axis of bag-export videos)')


def _recordings(args: argparse.Namespace) -> list[Recording]:
    bags = args.bag
    for flag, values in (('--labels', args.labels), ('--split', args.split)):
        if values and len(values) != len(bags):
            raise DataError(f'{flag} is given {len(values)} times for {len(bags)} --bag; give it '
                            'once per --bag, in the same order, or not at all')
    labels = args.labels or [default_timeline(b) for b in bags]
    splits = args.split or ['train'] * len(bags)
    return [Recording(bag=str(b), topic=args.topic, labels=str(t), split=s,
                      relative=args.relative) for b, t, s in zip(bags, labels, splits)]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The --bag branch of `extract`: exit code 2 with one line on bad input."""
    for name, param in CLIP_ONLY.items():
        if getattr(args, name) != parser.get_default(name):
            print(f'extract: error: --{name.replace("_", "-")}: with --bag the parameters file '
                  f'(--config) sets {param}', file=sys.stderr)
            return 2
    if args.clips is not None or args.topic is None or args.config is None:
        print('extract: error: --bag needs --topic and --config, and excludes --clips',
              file=sys.stderr)
        return 2
    try:
        params = load_params_file(args.config)
        if args.device != parser.get_default('device'):
            params['device'] = args.device  # --device replaces the config's (e.g. cpu)
        settings = NodeSettings.from_params(params)
        recordings = _recordings(args)
        pairs = args.pairs
        if pairs is None and (Path(recordings[0].labels).parent / 'pairs.yaml').is_file():
            pairs = Path(recordings[0].labels).parent / 'pairs.yaml'
        with session(device=settings.device) as dist:  # a process group under torchrun
            backbone = None if dist is None else replace(
                settings, device=dist.device).load_backbone()  # CUDA ranks: GPU LOCAL_RANK
            encoded = extract_bags(recordings, settings, out=args.out, pairs_path=pairs,
                                   stride=args.stride, straddle=args.straddle,
                                   shard_size=args.shard_size, backbone=backbone, dist=dist)
        if dist is not None:
            print(f'extract: rank {dist.rank} of {dist.world_size} encoded {len(encoded)} '
                  f'shard(s) {encoded}', flush=True)
            if not dist.is_main:
                return 0
        counts = split_counts(args.out)
    except (DataError, BackboneError, BagError, ConfigError, TimelineError,
            RuntimeError) as exc:
        print(f'extract: error: {exc}', file=sys.stderr)
        return 2
    except MemoryError:
        print(f'extract: error: out of memory while encoding shards of {args.shard_size} '
              'frames; lower --shard-size', file=sys.stderr)
        return 2
    ranks = '' if dist is None else f' by {dist.world_size} ranks'
    parts = ', '.join(f'{split} {windows} windows of {n} recording(s)'
                      for split, (windows, n) in counts.items())
    print(f'extract: {parts} (T={settings.num_frames} over {settings.window_seconds:g} s)'
          f'{ranks} -> {args.out}')
    return 0
