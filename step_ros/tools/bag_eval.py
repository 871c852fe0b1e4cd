"""`python -m step_ros bag-eval`: run the node's streaming engine over a rosbag and score it.

The engine is built from the node's own parameters file by the node's own code path
(`load_params_file` -> `PerceptionConfig.from_params` -> `runtime.build_engine`), and fed every
image of one topic in header-stamp order, as fast as it goes. Each prediction is scored against
a timeline CSV (`start,end,label`, seconds of header-stamp time) at the stamp of its newest
frame, and again over 'full windows' (oldest and newest frame inside one segment); the decision
stage runs over the same predictions and both streams are scored as streams (bag_score).
Several --bag (each with its timeline) run in parallel worker processes (bag_eval_many).
A bag given no --labels and holding no timeline.csv runs unlabelled: its raw predictions, decided
stream, START / END events and timeline picture are written with counts, and nothing is scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from step_ros.data.bag_dataset import TIMELINE_NAME, default_timeline
from step_ros.tools.bag_eval_many import run_many
from step_ros.tools.bag_score import ERRORS, _num, _pct, evaluate


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--bag', type=Path, required=True, action='append',
                        help='rosbag2 directory (sqlite3 or mcap) or ROS 1 .bag file; repeat '
                             'it to evaluate several recordings in parallel workers')
    parser.add_argument('--topic', required=True, help='Image or CompressedImage topic')
    parser.add_argument('--labels', type=Path, default=[], action='append',
                        help='timeline CSV: start,end,label in seconds of header-stamp time; '
                             'one per --bag, in the same order, or one for all of them '
                             '(default: timeline.csv inside each bag directory; a bag '
                             'without one is run unlabelled: its predictions, decided stream, '
                             'events and timeline.png are written, nothing is scored)')
    parser.add_argument('--workers', type=int, default=0,
                        help='worker processes for several --bag (0: one per bag, at most one '
                             'per CPU core)')
    parser.add_argument('--config', type=Path, required=True,
                        help="the node's ROS parameters YAML, e.g. config/demo.yaml")
    parser.add_argument('--out', type=Path, required=True, help='output directory')
    parser.add_argument('--write-bag', action='store_true',
                        help='also write OUT/bag: the images with the HumanAction stream')
    parser.add_argument('--task', default=None,
                        help='head scored against the timeline (default: the first head)')
    parser.add_argument('--device', default=None,
                        help="override the config's device (e.g. cpu on a machine without GPU)")
    parser.add_argument('--relative', action='store_true',
                        help="timeline seconds count from the first image's stamp")
    parser.add_argument('--sweep', action='store_true',
                        help='also replay the predictions under a grid of decision.* '
                             'parameters: OUT/sweep.csv, sweep.md, sweep.png (needs labels)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.labels:  # as extract --bag: the timeline inside each bag directory, if any
        timelines = [default_timeline(b) for b in args.bag]
        missing = [str(b) for b, t in zip(args.bag, timelines) if not t.is_file()]
        if missing and args.sweep:
            print(f'bag-eval: error: --sweep needs labels: no --labels and no {TIMELINE_NAME} '
                  f'in {missing}: give each --bag its timeline with --labels, or leave out '
                  '--sweep', file=sys.stderr)
            return 2
        # A bag without one is evaluated unlabelled: its streams are written, not scored.
        args.labels = [t if t.is_file() else None for t in timelines]
    if len(args.labels) not in (1, len(args.bag)):
        print(f'bag-eval: error: --labels given {len(args.labels)} times for {len(args.bag)} '
              '--bag: give one timeline per bag (same order) or one for all', file=sys.stderr)
        return 2
    if args.workers < 0:
        print(f'bag-eval: error: --workers {args.workers}: must be >= 0', file=sys.stderr)
        return 2
    if len(args.bag) > 1:
        return run_many(args)
    args.bag, args.labels = args.bag[0], args.labels[0]
    try:
        report = evaluate(args)
    except ERRORS as exc:
        print(f'bag-eval: error: {exc}', file=sys.stderr)
        return 2
    print(f"bag-eval: decision parameters ({report['decision_source']}): "
          + ', '.join(f'{k} {v:g}' for k, v in report['decision'].items()))
    if report['labels'] is None:
        c = report['counts']
        print(f"bag-eval: no labels given (no --labels, no {TIMELINE_NAME} in {args.bag}): "
              f"nothing scored; {report['predictions']} predictions, decided label changes / "
              f"min {_num(c['decided']['label_changes_per_min'])}, {c['starts']} STARTs; "
              f"{report['timing']['realtime_factor']}x real time; wrote {args.out}")
        return 0
    s = report['at_stamp']
    t = report['timing']
    raw, decided = report['stream']['raw'], report['stream']['decided']
    print(f"bag-eval: stream edit score raw {_num(raw['edit_score'])} -> decided "
          f"{_num(decided['edit_score'])}, label changes / min "
          f"{_num(raw['label_changes_per_min'])} -> "
          f"{_num(decided['label_changes_per_min'])} (true "
          f"{_num(report['stream']['true_changes_per_min'])}), START F1 "
          f"{_num(report['events']['start_f1'])}")
    print(f"bag-eval: {report['predictions']} predictions, accuracy {_pct(s['accuracy'])} "
          f"(symmetric {_pct(s['symmetric']['accuracy'])}, non-symmetric "
          f"{_pct(s['non_symmetric']['accuracy'])}), ambiguity rate "
          f"{_pct(s['ambiguity_rate'])}; {t['realtime_factor']}x real time; wrote {args.out}")
    return 0
