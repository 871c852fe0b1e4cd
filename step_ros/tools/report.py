"""`python -m step_ros report`: synth -> extract -> train every method -> eval -> the tables.

Reproduces the shape of the paper's tables on one dataset: every frozen-backbone head (Tables
I/II and the ablations), the PEFT baselines VPT-deep, AdaptFormer and ST-Adapter trained end to
end through the backbone, STEP as a head on image PEFT (Table IV) and several tasks from one
backbone pass (Table V); symmetric, non-symmetric and overall accuracy, the same with frames
reversed, trainable parameters and counted GFLOPs (torch.utils.flop_counter.FlopCounterMode) at
the tiny shape and at the ViT-B/14 shape. The dataset and the feature caches are reused when
already in --out (extraction resumes); everything is trained afresh. `--quick` shrinks every
size to a CI smoke run of the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, extract, read_clip_list
from step_ros.learn.peft_training import evaluate_peft, load_pixels, train_peft
from step_ros.learn.training import TrainConfig, save_run, train_heads
from step_ros.model.backbone import BackboneError, FrozenBackbone
from step_ros.model.checkpoint import CheckpointError, load_head
from step_ros.model.costs import Cost, count_gflops, head_cost, peft_cost, vitb14_costs
from step_ros.model.peft import PEFT_PRESETS, PeftModel
from step_ros.tools import report_tables, synth
from step_ros.tools.evaluate import evaluate_head, write_report
from step_ros.tools.train import add_train_arguments, auto_num_heads, resolve_heads, train_config

SPLITS = ('train', 'val', 'test')
MULTITASK_HEADS = ('step', 'linear')  # trained for every further task of the data
VITB_FRAMES = 16
PEFT_LR = 0.01  # the PEFT rows' peak learning rate: see docs/RESULTS.md for the choice
# --quick: a smoke run of every code path in a couple of minutes on a loaded 2-core machine.
QUICK = dict(train_clips=4, val_clips=1, test_clips=4, frames=4, image_size=56, epochs=2,
             warmup_epochs=1, head=['step', 'linear'], peft_epochs=1, peft_train_clips=2)
QUICK_SYNTH = ['--size', '64x64', '--min-frames', '8', '--max-frames', '12']


def table(rows: dict[str, dict], *, backbone_gflops: float, num_frames: int) -> str:
    """The frozen-backbone heads: accuracy forward and reversed, params, head GFLOPs."""
    pct = report_tables.pct
    lines = ['| head | params | GFLOPs / window | sym | non-sym | overall | reversed sym | '
             'reversed non-sym | reversed overall |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name, r in rows.items():
        a, v = r['accuracy'], r['reversed']
        lines.append(f"| {name} | {r['params']:,} | {r['gflops']:.4f} | {pct(a['symmetric'])} | "
                     f"{pct(a['non_symmetric'])} | {pct(a['overall'])} | {pct(v['symmetric'])} |"
                     f" {pct(v['non_symmetric'])} | {pct(v['overall'])} |")
    lines += ['', f'Accuracy in % on the test split. Backbone: {backbone_gflops:.3f} GFLOPs per '
              f'frame, paid once per sampled frame and shared by all heads ({num_frames} frames '
              'per window).']
    return '\n'.join(lines)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, required=True, help='work and report directory')
    parser.add_argument('--data', type=Path, default=None,
                        help='dataset with train.csv / val.csv / test.csv (default: synthesise '
                             'one in OUT/data)')
    parser.add_argument('--head', action='append', default=None,
                        help='head presets to compare, repeatable (default: all)')
    parser.add_argument('--peft', action='append', default=None,
                        help=f"PEFT rows, repeatable, or 'none' (default: all: "
                             f"{', '.join(PEFT_PRESETS)})")
    parser.add_argument('--quick', action='store_true',
                        help='CI smoke run: ' + ', '.join(f'{k}={v}' for k, v in QUICK.items())
                        + ' (flags given explicitly win), small synthetic clips; it trains '
                        'too little for the accuracy checks and lists those it cannot meet')
    parser.add_argument('--backbone', default='tiny', help='backbone (tiny)')
    parser.add_argument('--image-size', type=int, default=0, help="input side (0: model's)")
    parser.add_argument('--frames', type=int, default=8, help='T (8)')
    parser.add_argument('--device', default='auto')
    group = parser.add_argument_group('synthetic data (without --data)')
    group.add_argument('--synth-seed', type=int, default=0)
    group.add_argument('--train-clips', type=int, default=48, help='train clips per class (48)')
    group.add_argument('--val-clips', type=int, default=8, help='val clips per class (8)')
    group.add_argument('--test-clips', type=int, default=20, help='test clips per class (20)')
    group = parser.add_argument_group('PEFT (trained through the backbone: far costlier)')
    group.add_argument('--peft-epochs', type=int, default=12, help='epochs (12)')
    group.add_argument('--peft-lr', type=float, default=PEFT_LR,
                       help=f'peak AdamW learning rate of every PEFT row ({PEFT_LR:g}; chosen on '
                            'the validation split, docs/RESULTS.md)')
    group.add_argument('--peft-train-clips', type=int, default=0,
                       help='first train clips per class they train on (0: all, the default)')
    add_train_arguments(parser)
    return parser


def _apply_quick(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for key, value in QUICK.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def _synthesise(args: argparse.Namespace, data: Path) -> None:
    argv = ['--out', str(data), '--seed', str(args.synth_seed), '--train', str(args.train_clips),
            '--val', str(args.val_clips), '--test', str(args.test_clips)]
    if synth.main(argv + (QUICK_SYNTH if args.quick else [])):
        raise DataError(f'synth into {data} failed')


def _frozen_rows(args, backbone: FrozenBackbone, caches: dict, heads: dict, config: TrainConfig,
                 out: Path) -> tuple[dict, dict, float]:
    """Train every head (and the further tasks' heads) on one pass; evaluate on test."""
    train = caches['train']
    tasks = {name: 'action' for name in heads}
    further = [t for t in (train.tasks or {}) if t]
    for task in further:
        for preset in MULTITASK_HEADS:
            if preset in heads:
                heads = {**heads, f'{task}_{preset}': heads[preset]}
                tasks[f'{task}_{preset}'] = task
    run_dir = out / 'run'
    trained = train_heads(train, heads, config, val=caches['val'], tasks=tasks)
    save_run(run_dir, trained, train, config)
    test = caches['test']
    example = test.tokens[:1].float()  # (1, T, 1+N, D)
    frame = torch.zeros(1, backbone.info.image_size, backbone.info.image_size, 3,
                        dtype=torch.uint8)
    frame_gflops = count_gflops(backbone.forward_pixels,
                                backbone.preprocess(backbone.to_device(frame)))
    rows, task_rows = {}, {}
    for name in heads:
        module, meta = load_head(run_dir / f'{name}.safetensors')
        report = evaluate_head(module, meta, test, source=str(run_dir / f'{name}.safetensors'))
        report['gflops'] = count_gflops(module, example)
        write_report(out / 'eval' / name, report, title=f'{name} on the test split')
        report['cost'] = head_cost(module, frame_gflops=frame_gflops, num_frames=args.frames,
                                   example=example)
        if tasks[name] == 'action':
            rows[name] = report
        else:
            task_rows[(tasks[name], name[len(tasks[name]) + 1:])] = report
    return rows, task_rows, frame_gflops


def _peft_rows(args, backbone: FrozenBackbone, data: Path, names: list[str],
               config: TrainConfig, num_classes: int, out: Path) -> dict:
    """Train every PEFT row end to end through the backbone; evaluate on test."""
    if not names:
        return {}
    train = load_pixels(read_clip_list(data / 'train.csv'), backbone, num_frames=args.frames)
    train = train.subset(args.peft_train_clips)
    test = load_pixels(read_clip_list(data / 'test.csv'), backbone, num_frames=args.frames)
    peft_config = replace(config, epochs=args.peft_epochs, lr=args.peft_lr,
                          warmup_epochs=min(config.warmup_epochs, args.peft_epochs - 1))
    heads = args.num_heads or auto_num_heads(backbone.info.embed_dim)
    rows = {}
    for name in names:
        trained = train_peft(name, PEFT_PRESETS[name], backbone, train, peft_config,
                             num_heads=heads)
        report = evaluate_peft(trained.model, test)
        report['log'] = trained.log
        report['train'] = asdict(peft_config)
        write_report(out / 'eval' / name, report, title=f'{name} on the test split')
        report['cost'] = peft_cost(trained.model, example=test.pixels[:1].float())
        rows[name] = report
    return rows


def _multitask_costs(args, backbone: FrozenBackbone, rows: dict, task_rows: dict,
                     vitb: dict, vitb_frame: float, frame_gflops: float) -> dict:
    """Table V's costs: one frozen pass + a STEP head per task, or one PEFT pass per task.

    At the ViT-B/14 shape every task's head or PEFT model is counted with 10 classes.
    """
    tasks = {'action': rows['step']} | {t: r for (t, h), r in task_rows.items() if h == 'step'}
    k, t = len(tasks), args.frames
    head_gflops = sum(r['gflops'] for r in tasks.values())
    vitb_head = vitb['step'].gflops_stream - vitb_frame
    costs = {f"frozen + STEP per task ({', '.join(tasks)}): one pass": dict(
        tiny=Cost(sum(r['cost'].params for r in tasks.values()),
                  t * frame_gflops + head_gflops, frame_gflops + head_gflops),
        vitb=Cost(k * vitb['step'].params, VITB_FRAMES * vitb_frame + k * vitb_head,
                  vitb_frame + k * vitb_head))}
    heads = args.num_heads or auto_num_heads(backbone.info.embed_dim)
    size = backbone.info.image_size
    pixels = torch.zeros(1, t, 3, size, size)
    for method in [n for n in PEFT_PRESETS if n in rows]:
        per_task = [rows[method]['cost']]
        for r in list(tasks.values())[1:]:
            model = PeftModel(model=backbone.model, config=PEFT_PRESETS[method],
                              num_frames=t, num_classes=len(r['labels']), num_heads=heads)
            per_task.append(peft_cost(model.float(), example=pixels))
        v = vitb[method]
        costs[f'{method}: one pass per task'] = dict(
            tiny=Cost(sum(c.params for c in per_task), sum(c.gflops_clip for c in per_task),
                      sum(c.gflops_stream for c in per_task)),
            vitb=Cost(k * v.params, k * v.gflops_clip, k * v.gflops_stream))
    return costs


def _peft_names(args: argparse.Namespace) -> list[str]:
    """The PEFT rows asked for; bad PEFT options fail here, before any work."""
    names = list(PEFT_PRESETS) if args.peft is None else [
        n for n in dict.fromkeys(args.peft) if n != 'none']
    unknown = [n for n in names if n not in PEFT_PRESETS]
    if unknown:
        raise ValueError(f'--peft {unknown}: unknown; choose from {list(PEFT_PRESETS)} or none')
    if args.peft_epochs < 1:
        raise ValueError(f'--peft-epochs {args.peft_epochs}: must be >= 1')
    if not 0 < args.peft_lr < 1:  # also refuses nan
        raise ValueError(f'--peft-lr {args.peft_lr}: must be in (0, 1)')
    return names


def run(args: argparse.Namespace) -> dict:
    out: Path = args.out
    started = time.perf_counter()
    peft_names = _peft_names(args)
    data = args.data
    if data is None:
        data = out / 'data'
        if not (data / 'dataset.json').is_file():
            _synthesise(args, data)
    backbone = FrozenBackbone.load(args.backbone, image_size=args.image_size, device=args.device)
    caches = {}
    for split in SPLITS:
        clips = read_clip_list(data / f'{split}.csv')
        extract(clips, backbone, num_frames=args.frames, out=out / 'cache' / split)
        caches[split] = load_cache(out / 'cache' / split)
    heads = resolve_heads(args.head or ['all'], dim=caches['train'].dim,
                          num_heads=args.num_heads)
    config = train_config(args)
    rows, task_rows, frame_gflops = _frozen_rows(args, backbone, caches, heads, config, out)
    rows |= _peft_rows(args, backbone, data, peft_names, config,
                       len(caches['train'].labels), out)
    vitb_frame, vitb = vitb14_costs(heads=heads,
                                    peft={n: PEFT_PRESETS[n] for n in peft_names},
                                    num_frames=VITB_FRAMES)
    for name, r in rows.items():
        r['vitb'] = vitb[name]
    multitask = {}
    if task_rows and 'step' in rows:
        multitask = _multitask_costs(args, backbone, rows, task_rows, vitb, vitb_frame,
                                     frame_gflops)
    frozen = {n: r for n, r in rows.items() if n in heads}
    sections = [
        ('Frozen-backbone heads', table(frozen, backbone_gflops=frame_gflops,
                                        num_frames=args.frames)),
        ('Table I: every method, accuracy and cost',
         report_tables.table_costs(rows, frames=args.frames, vitb_frames=VITB_FRAMES)),
        ('Table II: forward and reversed frames', report_tables.table_order(rows)),
        ('Table IV: STEP on image PEFT', report_tables.table_image_peft(rows)),
    ]
    if task_rows:
        action = {('action', h): rows[h] for h in MULTITASK_HEADS if h in rows}
        sections.append(('Table V: several tasks from one backbone pass',
                         report_tables.table_multitask(action | task_rows, multitask)))
    results = report_tables.checks(rows)
    sections.append(("Checks of the paper's pattern", report_tables.checklist(results)))
    unmet = [c.claim for c in results if c.trained] if args.quick else []
    if args.quick:
        sections.append(('Checks --quick cannot meet',
                         'Its few clips and epochs do not train the heads to these targets; '
                         'whether they hold in this run is chance (a run without --quick '
                         'reaches them, docs/RESULTS.md):\n\n'
                         + report_tables.quick_unmet(results)))
    text = '\n\n'.join(f'## {title}\n\n{body}' for title, body in sections)
    minutes = (time.perf_counter() - started) / 60
    summary = dict(
        data=str(data), backbone=backbone.info.to_dict(), frames=args.frames,
        train=asdict(config), quick=args.quick, peft_epochs=args.peft_epochs,
        peft_lr=args.peft_lr, peft_train_clips=args.peft_train_clips,
        backbone_gflops_per_frame=frame_gflops,
        vitb14_backbone_gflops_per_frame=vitb_frame, minutes=round(minutes, 2),
        checks={c.claim: c.ok for c in results}, quick_cannot_meet=unmet,
        heads={n: _summary(r) for n, r in rows.items()},
        tasks={f'{t}/{h}': _summary(r) for (t, h), r in task_rows.items()},
        multitask={n: {k: asdict(v) for k, v in c.items()} for n, c in multitask.items()})
    (out / 'report.md').write_text('# Method comparison\n\n' + text + '\n')
    (out / 'report.json').write_text(json.dumps(summary, indent=2) + '\n')
    print(text)
    if unmet:
        print(f'\nreport: --quick cannot meet {len(unmet)} of the {len(results)} checks '
              "(listed under 'Checks --quick cannot meet')")
    print(f'\nreport: {minutes:.1f} min -> {out / "report.md"}')
    return summary


def _summary(r: dict) -> dict:
    values = dict(accuracy=r['accuracy'], reversed=r['reversed'], params=r['params'])
    for key in ('cost', 'vitb'):
        if key in r:
            values[key] = asdict(r[key])
    for key in ('gflops', 'train'):
        if key in r:
            values[key] = r[key]
    return values


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.quick:
        _apply_quick(args, parser)
    try:
        run(args)
    except (DataError, BackboneError, CheckpointError, ValueError) as exc:
        print(f'report: error: {exc}', file=sys.stderr)
        return 2
    return 0
