"""`python -m step_ros report`: synth -> extract -> train every head -> eval -> one table.

Reproduces the shape of the paper's Tables I/II on one dataset: symmetric, non-symmetric and
overall accuracy, the same with frames reversed, trainable parameters and head GFLOPs per window
(counted with torch.utils.flop_counter.FlopCounterMode). The dataset and the feature caches are
reused when already in --out (extraction resumes); the heads are trained afresh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from step_ros.backbone import BackboneError, FrozenBackbone
from step_ros.checkpoint import CheckpointError, load_head
from step_ros.features import DataError, FeatureCache, extract, read_clip_list
from step_ros.tools import synth
from step_ros.tools.evaluate import evaluate_head, write_report
from step_ros.tools.train import add_train_arguments, resolve_heads, train_config
from step_ros.training import save_run, train_heads

SPLITS = ('train', 'val', 'test')
PROBES = ('linear', 'attentive')


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The CPU flash-attention kernel has no entry in FlopCounterMode's table: count it like the GPU
# kernels (QK^T and AV matmuls), or attention would be missing from the CPU numbers.
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                 _cpu_sdpa_flops}


def count_gflops(module: nn.Module, example: torch.Tensor) -> float:
    """GFLOPs of one forward pass (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    with counter, torch.no_grad():
        module(example)
    return counter.get_total_flops() / 1e9


def checks(rows: dict[str, dict]) -> list[tuple[str, bool]]:
    """The order-sensitivity claims of the issue, evaluated on this table.

    They are about symmetric classes: data without symmetric pairs has none to check.
    """
    out = []
    if any(r['accuracy']['symmetric'] is None for r in rows.values()):
        return out
    if 'step' in rows:
        step = rows['step']
        out.append((f"STEP symmetric accuracy {step['accuracy']['symmetric']:.3f} >= 0.95",
                    step['accuracy']['symmetric'] >= 0.95))
        out.append((f"STEP reversed symmetric accuracy {step['reversed']['symmetric']:.3f} "
                    '<= 0.20', step['reversed']['symmetric'] <= 0.20))
    for name in PROBES:
        if name in rows:
            acc, rev = rows[name]['accuracy'], rows[name]['reversed']
            out.append((f"{name} symmetric accuracy {acc['symmetric']:.3f} <= 0.70",
                        acc['symmetric'] <= 0.70))
            gap = abs(rev['overall'] - acc['overall'])
            out.append((f"{name} reversed overall accuracy {rev['overall']:.3f} within 0.02 "
                        f"of forward {acc['overall']:.3f}", gap <= 0.02))
    return out


def table(rows: dict[str, dict], *, backbone_gflops: float, num_frames: int) -> str:
    def pct(v: float | None) -> str:
        return '-' if v is None else f'{100 * v:.1f}'

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
    parser.add_argument('--backbone', default='tiny', help='backbone (tiny)')
    parser.add_argument('--image-size', type=int, default=0, help="input side (0: model's)")
    parser.add_argument('--frames', type=int, default=8, help='T (8)')
    parser.add_argument('--device', default='auto')
    group = parser.add_argument_group('synthetic data (without --data)')
    group.add_argument('--synth-seed', type=int, default=0)
    group.add_argument('--train-clips', type=int, default=48, help='train clips per class (48)')
    group.add_argument('--val-clips', type=int, default=8, help='val clips per class (8)')
    group.add_argument('--test-clips', type=int, default=20, help='test clips per class (20)')
    add_train_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    out: Path = args.out
    started = time.perf_counter()
    data = args.data
    if data is None:
        data = out / 'data'
        if not (data / 'dataset.json').is_file():
            code = synth.main(['--out', str(data), '--seed', str(args.synth_seed),
                               '--train', str(args.train_clips), '--val', str(args.val_clips),
                               '--test', str(args.test_clips)])
            if code:
                raise DataError(f'synth into {data} failed')
    backbone = FrozenBackbone.load(args.backbone, image_size=args.image_size, device=args.device)
    caches = {}
    for split in SPLITS:
        clips = read_clip_list(data / f'{split}.csv')
        extract(clips, backbone, num_frames=args.frames, out=out / 'cache' / split)
        caches[split] = FeatureCache.load(out / 'cache' / split)
    heads = resolve_heads(args.head or ['all'], dim=caches['train'].dim,
                          num_heads=args.num_heads)
    config = train_config(args)
    run_dir = out / 'run'
    trained = train_heads(caches['train'], heads, config, val=caches['val'])
    save_run(run_dir, trained, caches['train'], config)
    cache = caches['test']
    example = cache.tokens[:1].float()  # (1, T, 1+N, D)
    frame = torch.zeros(1, backbone.info.image_size, backbone.info.image_size, 3,
                        dtype=torch.uint8)
    pixels = backbone.preprocess(backbone.to_device(frame))
    backbone_gflops = count_gflops(backbone.forward_pixels, pixels)
    rows = {}
    for name in heads:
        module, meta = load_head(run_dir / f'{name}.safetensors')
        report = evaluate_head(module, meta, cache, source=str(run_dir / f'{name}.safetensors'))
        report['gflops'] = count_gflops(module, example)
        write_report(out / 'eval' / name, report, title=f'{name} on the test split')
        rows[name] = report
    text = table(rows, backbone_gflops=backbone_gflops, num_frames=args.frames)
    results = checks(rows)
    text += '\n\n' + ('\n'.join(f"- [{'x' if ok else ' '}] {claim}" for claim, ok in results)
                       or '(no symmetric classes in this data: the order checks do not apply)')
    minutes = (time.perf_counter() - started) / 60
    summary = dict(data=str(data), backbone=backbone.info.to_dict(), frames=args.frames,
                   train=asdict(config),
                   backbone_gflops_per_frame=backbone_gflops, minutes=round(minutes, 2),
                   checks={claim: ok for claim, ok in results},
                   heads={n: dict(accuracy=r['accuracy'], reversed=r['reversed'],
                                  params=r['params'], gflops=r['gflops'])
                          for n, r in rows.items()})
    (out / 'report.md').write_text('# Head comparison\n\n' + text + '\n')
    (out / 'report.json').write_text(json.dumps(summary, indent=2) + '\n')
    print(text)
    print(f'\nreport: {minutes:.1f} min -> {out / "report.md"}')
    return summary


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        run(args)
    except (DataError, BackboneError, CheckpointError, ValueError) as exc:
        print(f'report: error: {exc}', file=sys.stderr)
        return 2
    return 0
