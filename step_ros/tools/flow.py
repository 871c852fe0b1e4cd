"""`python -m step_ros flow`: the documented training flow, end to end, on a synthetic world.

Renders recordings of a world (`synth --bag`, `--world actions` or `workcell`), then runs exactly
the README's flow with its defaults:

    extract --bag R1 --split train ... --bag V --split val --config params.yaml --out C
    train --cache C/train --val-cache C/val --head step --background <world's> --out RUN
    bag-eval --bag TEST --config params.yaml (naming RUN's head, no decision.*) --out EV

and writes flow.json / flow.md in --out: the held-out recordings' full-window accuracy and the
decided stream's scores against the issue's targets. `--extract-arg` / `--train-arg` pass extra
flags to extract / train (to compare a choice against the defaults); recordings and the encoded
cache are reused between runs into the same --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from step_ros.model.checkpoint import read_meta
from step_ros.stream.config import write_params_file
from step_ros.tools import bag_eval, extract, train
from step_ros.tools.synth_bag import write_synth_bag

WORLDS = ('actions', 'workcell')
BACKGROUND = {'actions': 'none', 'workcell': 'idle'}
TOPIC = '/camera/image_raw'
# The targets a user's held-out recording must meet with the defaults.
TARGETS = dict(full_window=0.85, decided_edit=75.0, decided_edit_over_raw=25.0,
               f1_at_025=0.8, start_f1=0.85, changes_ratio=1.3)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--world', choices=WORLDS, default='actions',
                        help='the synthetic world to record (actions)')
    parser.add_argument('--out', type=Path, required=True, help='output directory')
    parser.add_argument('--train-recordings', type=int, default=4,
                        help='recordings to train on (4); one more validates, --test more '
                             'are held out')
    parser.add_argument('--test', type=int, default=1, help='held-out recordings (1)')
    parser.add_argument('--seconds', type=float, default=120.0,
                        help='length of each recording (120)')
    parser.add_argument('--fps', type=float, default=10.0, help='camera frame rate (10)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the first recording; the others follow (0)')
    parser.add_argument('--num-frames', type=int, default=8, help="the node's T (8)")
    parser.add_argument('--window-seconds', type=float, default=2.0,
                        help="the node's window_seconds (2.0)")
    parser.add_argument('--backbone', default='tiny',
                        help="the node's backbone.weights: 'tiny', 'tiny-clip', "
                             "'efficientnet_lite0' or a local model directory (tiny)")
    parser.add_argument('--image-size', type=int, default=0,
                        help="the node's backbone.image_size (0: the backbone's own)")
    parser.add_argument('--cell-per-recording', action='store_true',
                        help='workcell world: every recording a cell of its own (camera pose, '
                             'light, bench), a harder check than the default, where all are '
                             "recordings of one cell (the user's own) by other operators")
    parser.add_argument('--extract-arg', default='',
                        help="extra flags for extract, one string (e.g. '--straddle drop')")
    parser.add_argument('--train-arg', default='',
                        help="extra flags for train, one string (e.g. '--epochs 20')")
    parser.add_argument('--name', default='run',
                        help='name of this run inside --out (run); recordings and the cache '
                             'are shared by every run')
    return parser


def _recordings(args: argparse.Namespace) -> list[Path]:
    count = args.train_recordings + 1 + args.test
    folder = args.out / 'recordings'
    bags = []
    one_cell = args.world == 'workcell' and not args.cell_per_recording
    # Recordings of one cell (the first seed's) are named apart from those of a cell each.
    prefix = f'{args.world}_cell{args.seed}_' if one_cell else f'{args.world}_'
    for i in range(count):
        bag = folder / f'{prefix}{args.seed + i}'
        if not (bag / 'timeline.csv').is_file():
            extra = {} if args.world == 'actions' else dict(
                world=args.world, window_seconds=args.window_seconds,
                cell=args.seed if one_cell else None)
            write_synth_bag(bag, seconds=args.seconds, seed=args.seed + i, fps=args.fps,
                            topic=TOPIC, progress=sys.stderr.isatty(), **extra)
        bags.append(bag)
    return bags


def _head_summary(checkpoint: Path) -> dict:
    """The trained head's training and balanced validation accuracy (train.accuracies), the
    epoch it kept, and train's advice on them (from the checkpoint's metadata)."""
    meta = read_meta(checkpoint)
    final = meta.training.get('final', {})
    fit, val = train.accuracies(final)
    return dict(train_acc=fit, val_balanced_acc=val, kept_epoch=final.get('kept_epoch'),
                advice=train.advice(final, backbone=meta.backbone['id']))


def _step(name: str, code: int) -> None:
    if code != 0:
        raise SystemExit(f'flow: {name} failed (exit code {code})')


def scores(report: dict) -> dict:
    """The flow's figures of one bag-eval report."""
    stream, events = report['stream'], report['events']
    raw, decided = stream['raw'], stream['decided']
    true = stream['true_changes_per_min']
    return dict(
        full_window=report['full_window']['accuracy'],
        full_window_symmetric=report['full_window']['symmetric']['accuracy'],
        raw_edit=raw['edit_score'], decided_edit=decided['edit_score'],
        f1_at_025=decided['f1_at_iou']['0.25'], start_f1=events['start_f1'],
        changes_ratio=round(decided['label_changes_per_min'] / true, 3) if true else None,
        false_starts_per_min=events.get('false_starts_per_min_background'))


def meets(values: dict) -> dict[str, bool]:
    """Each target: met or not."""
    t = TARGETS
    edit = values['decided_edit'] or 0.0
    return dict(
        full_window=(values['full_window'] or 0.0) >= t['full_window'],
        decided_edit=edit >= max(t['decided_edit'],
                                 (values['raw_edit'] or 0.0) + t['decided_edit_over_raw']),
        f1_at_025=(values['f1_at_025'] or 0.0) >= t['f1_at_025'],
        start_f1=(values['start_f1'] or 0.0) >= t['start_f1'],
        changes_ratio=values['changes_ratio'] is not None
        and values['changes_ratio'] <= t['changes_ratio'])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.train_recordings < 1 or args.test < 1 or not args.seconds > 0:
        print('flow: error: --train-recordings and --test must be >= 1 and --seconds > 0',
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    bags = _recordings(args)
    train_bags, val_bag, test_bags = (bags[:args.train_recordings], bags[args.train_recordings],
                                      bags[args.train_recordings + 1:])
    node = {'backbone.weights': args.backbone, 'backbone.image_size': args.image_size,
            'device': 'cpu', 'precision': 'fp32', 'num_frames': args.num_frames,
            'window_seconds': args.window_seconds}
    # One cache per backbone and image size: every run on them shares it.
    features = ('' if (args.backbone, args.image_size) == ('tiny', 0)
                else f'_{Path(args.backbone).name}_{args.image_size}')
    extract_params = args.out / f'extract{features}.yaml'
    write_params_file(extract_params, node)
    cache, run = args.out / f'cache{features}', args.out / args.name
    argv_extract = []
    for bag in train_bags:
        argv_extract += ['--bag', str(bag), '--split', 'train']
    argv_extract += ['--bag', str(val_bag), '--split', 'val']
    _step('extract', extract.main([*argv_extract, '--topic', TOPIC, '--config',
                                   str(extract_params), '--out', str(cache),
                                   *shlex.split(args.extract_arg)]))
    _step('train', train.main(['--cache', str(cache / 'train'), '--val-cache', str(cache / 'val'),
                               '--head', 'step', '--background', BACKGROUND[args.world],
                               '--out', str(run), *shlex.split(args.train_arg)]))
    head = _head_summary(run / 'step.safetensors')
    params = run / 'params.yaml'
    write_params_file(params, {**node, 'heads.checkpoints': [
        str((run / 'step.safetensors').resolve())]})
    rows = []
    for bag in test_bags:
        out = run / 'eval' / bag.name
        _step('bag-eval', bag_eval.main(['--bag', str(bag), '--topic', TOPIC, '--config',
                                         str(params), '--out', str(out), '--no-progress']))
        report = json.loads((out / 'report.json').read_text())
        rows.append(dict(bag=bag.name, **scores(report),
                         decision_source=report.get('decision_source')))
    summary = dict(world=args.world, name=args.name, backbone=args.backbone,
                   image_size=args.image_size, extract_arg=args.extract_arg,
                   cells=None if args.world != 'workcell' else (
                       'one per recording' if args.cell_per_recording else 'one'),
                   train_arg=args.train_arg, seconds=args.seconds, fps=args.fps,
                   train_recordings=args.train_recordings, num_frames=args.num_frames,
                   window_seconds=args.window_seconds, targets=TARGETS, head=head,
                   held_out=rows)
    (run / 'flow.json').write_text(json.dumps(summary, indent=2) + '\n')
    (run / 'flow.md').write_text(markdown(summary))
    print(markdown(summary), end='')
    return 0


def _cell(value, ok: bool | None = None) -> str:
    text = '-' if value is None else (f'{value:.3g}' if isinstance(value, float) else str(value))
    return text if ok is None else f'{text} {"ok" if ok else "MISSED"}'


def _head_lines(head: dict | None) -> list[str]:
    if not head or head.get('train_acc') is None:
        return []
    text = f"The head fits {head['train_acc']:.2f} of its training windows"
    if head.get('val_balanced_acc') is not None:
        kept = f", epoch {head['kept_epoch']}" if head.get('kept_epoch') else ''
        text += (f" and reads {head['val_balanced_acc']:.2f} of the validation windows "
                 f'(balanced accuracy{kept})')
    lines = [text + '.', '']
    if head['advice']:
        lines += [f'- {line[0].upper()}{line[1:]}.' for line in head['advice']] + ['']
    return lines


def markdown(summary: dict) -> str:
    lines = [f"# flow on the {summary['world']} world ({summary['name']})", '',
             f"{summary['train_recordings']} training recordings, 1 validation, "
             f"{len(summary['held_out'])} held out"
             + (f" (cells: {summary['cells']})" if summary.get('cells') else '') + '; '
             f"{summary['seconds']:g} s each at "
             f"{summary['fps']:g} fps; T={summary['num_frames']} over "
             f"{summary['window_seconds']:g} s; backbone {summary.get('backbone', 'tiny')}"
             + (f" at {summary['image_size']} px" if summary.get('image_size') else '')
             + f"; extract {summary['extract_arg'] or '(defaults)'}"
             f"; train {summary['train_arg'] or '(defaults)'}.", '',
             *_head_lines(summary.get('head')),
             '| held out | full windows | symmetric | edit raw -> decided | F1@0.25 | START F1 '
             '| changes / true | false starts / min |', '|---|---|---|---|---|---|---|---|']
    for r in summary['held_out']:
        ok = meets(r)
        lines.append(
            f"| {r['bag']} | {_cell(r['full_window'], ok['full_window'])} | "
            f"{_cell(r['full_window_symmetric'])} | {_cell(r['raw_edit'])} -> "
            f"{_cell(r['decided_edit'], ok['decided_edit'])} | "
            f"{_cell(r['f1_at_025'], ok['f1_at_025'])} | {_cell(r['start_f1'], ok['start_f1'])} "
            f"| {_cell(r['changes_ratio'], ok['changes_ratio'])} | "
            f"{_cell(r['false_starts_per_min'])} |")
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    sys.exit(main())
