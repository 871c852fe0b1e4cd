"""`python -m step_ros eval`: accuracy of a head on a feature cache, forward and reversed.

Writes report.json, report.md, confusion.png (forward windows) and reliability.png (top-1
confidence against accuracy, 15 bins, before and after the head's calibration temperature).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, FeatureCache
from step_ros.evaluate.metrics import accuracy_report, plot_confusion, report_markdown
from step_ros.learn.training import predict
from step_ros.model.backbone import BackboneInfo
from step_ros.model.checkpoint import CheckpointError, HeadMeta, load_head
from step_ros.stream.calibration import plot_reliability, reliability, softmax


def evaluate_head(module: nn.Module, meta: HeadMeta, cache: FeatureCache, *,
                  source: str) -> dict:
    """The report dictionary of one head on one cache (labels matched by name).

    A head of a further task of the cache (a CSV column such as `object`) is scored on that
    column; any other head on the main `label` column.
    """
    if meta.task in (cache.tasks or {}):
        labels, targets, pairs = cache.task(meta.task)
        cache = replace(cache, labels=labels, targets=targets, symmetric_pairs=pairs)
    meta.check_backbone(BackboneInfo(**cache.backbone), source=source)
    if cache.num_frames != meta.num_frames:
        raise CheckpointError(f'{source}: trained on T={meta.num_frames} frames but the cache '
                              f'{cache.path} has T={cache.num_frames}')
    unknown = [name for name in cache.labels if name not in meta.labels]
    present = {cache.labels[i] for i in cache.targets.unique().tolist()}
    if present & set(unknown):
        raise CheckpointError(f'{source}: the cache {cache.path} has labels '
                              f'{sorted(present & set(unknown))} the head does not know '
                              f'(head labels: {list(meta.labels)})')
    mapping = torch.tensor([meta.labels.index(n) if n in meta.labels else -1
                            for n in cache.labels])
    targets = mapping[cache.targets]
    module = module.float()
    logits = predict(module, cache.tokens)
    forward = logits.argmax(1)
    reverse = predict(module, cache.tokens, reverse=True).argmax(1)
    report = accuracy_report(targets=targets.numpy(), forward=forward.numpy(),
                             reverse=reverse.numpy(), labels=meta.labels,
                             pairs=meta.symmetric_pairs)
    report['params'] = sum(p.numel() for p in module.parameters())
    report['head'] = meta.head.to_dict()
    report['cache'] = cache.path
    report['checkpoint'] = source
    report['calibration'] = calibration_report(logits.numpy(), targets.numpy(),
                                               temperature=meta.temperature)
    return report


def calibration_report(logits, targets, *, temperature: float) -> dict:
    """ECE (15 bins) and reliability curves of softmax(logits) and softmax(logits / T)."""
    curves = {}
    for key, t in (('uncalibrated', 1.0), ('calibrated', temperature)):
        probs = softmax(logits, t)
        curves[key] = reliability(probs.max(1), probs.argmax(1) == targets)
    return dict(temperature=temperature, ece=curves['calibrated']['ece'],
                ece_uncalibrated=curves['uncalibrated']['ece'], curves=curves)


def write_report(out: Path, report: dict, *, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    (out / 'report.md').write_text(report_markdown(report, title=title))
    plot_confusion(out / 'confusion.png', report['confusion'], report['labels'], title=title)
    c = report.get('calibration')
    if c is None:  # heads trained end to end (PEFT rows) have no fitted temperature
        return
    plot_reliability(out / 'reliability.png',
                     {'softmax(z)': c['curves']['uncalibrated'],
                      f"softmax(z / {c['temperature']:.2f})": c['curves']['calibrated']},
                     title=title)


def _fmt(value: float | None) -> str:
    return '-' if value is None else f'{value:.3f}'


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--cache', type=Path, required=True, help='feature cache (extract)')
    parser.add_argument('--checkpoint', type=Path, required=True, help='head .safetensors')
    parser.add_argument('--out', type=Path, required=True, help='report directory')
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        module, meta = load_head(args.checkpoint)  # the quicker check first
        cache = load_cache(args.cache)
        report = evaluate_head(module, meta, cache, source=str(args.checkpoint))
    except (DataError, CheckpointError) as exc:
        print(f'eval: error: {exc}', file=sys.stderr)
        return 2
    write_report(args.out, report, title=f'{args.checkpoint.stem} on {args.cache.name}')
    parts = [f'{block} {key} {_fmt(report[block][key])}' for block in ('accuracy', 'reversed')
             for key in ('symmetric', 'non_symmetric', 'overall')]
    c = report['calibration']
    parts.append(f"ECE {c['ece_uncalibrated']:.3f} -> {c['ece']:.3f} (T {c['temperature']:.3f})")
    print('eval: ' + ', '.join(parts) + f" -> {args.out / 'report.md'}")
    return 0
