"""`python -m step_ros train`: train one or more heads on one pass over a feature cache.

Writes <out>/<head>.safetensors for every --head, config.json (the resolved settings),
log.jsonl (loss and accuracy per epoch and head) and curves.png. With several --task (columns
of the clip list, e.g. `--task action --task object` on synth's data), every head is trained
for every task on the same pass over the cache and written as <out>/<task>_<head>.safetensors.
Several --cache are concatenated (step_ros.data.cache_concat: the same labels, T and backbone).
With --val-cache, each head's temperature is fitted on the validation windows (NLL) and stored
in its checkpoint, with the ECE before and after in calibration.json. When the validation
cache holds recordings (`extract --bag ... --split val`), the decision stage's parameters are
also fitted by replaying them in stamp order (step_ros.learn.decision_fit), stored in the
checkpoint and scored in decision_fit.json.
Under torchrun the heads train with DistributedDataParallel, --batch-size is per rank (global
batch = batch x world size) and rank 0 alone writes the run (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from step_ros.data.bag_cache import BagFeatureCache
from step_ros.data.cache_concat import concat_caches
from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, FeatureCache
from step_ros.data.names import safe_name
from step_ros.distributed import rank_device, session
from step_ros.learn.decision_fit import can_fit, fit_heads
from step_ros.learn.training import TrainConfig, fit_temperatures, save_run, train_heads
from step_ros.model.backbone import TINY
from step_ros.model.heads import PRESETS, HeadConfig

_DEFAULTS = TrainConfig()
DEFAULT_BACKGROUND = 'none'  # the background label a cache of recordings must name


def auto_num_heads(dim: int) -> int:
    """Attention heads for a feature width: ViT-B style 12 for large D, 4 for the tiny D=96."""
    return 12 if dim >= 384 and dim % 12 == 0 else 4


def resolve_heads(names: list[str], *, dim: int, num_heads: int = 0) -> dict[str, HeadConfig]:
    """Preset names ('all' for every preset) -> {name: HeadConfig} with num_heads set."""
    if 'all' in names:
        names = list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValueError(f'--head {unknown}: unknown; choose from {sorted(PRESETS)} or all')
    heads = num_heads or auto_num_heads(dim)
    return {n: replace(PRESETS[n], num_heads=heads) for n in dict.fromkeys(names)}


def task_heads(presets: dict[str, HeadConfig], tasks: list[str], cache: FeatureCache
               ) -> tuple[dict[str, HeadConfig], dict[str, str]]:
    """Heads for every task: ({head name: config}, {head name: task}).

    One task keeps the preset names; several name each head <task>_<preset>. At most one task
    may be the main `label` column (a name that is not a further column of the cache).
    """
    tasks = [safe_name(t, what='--task') for t in dict.fromkeys(tasks)]  # in file names
    main = [t for t in tasks if t not in (cache.tasks or {})]
    if len(main) > 1:
        raise ValueError(f'--task {main}: all read the label column; further tasks in '
                         f'{cache.path}: {sorted(cache.tasks or {})}')
    if len(tasks) == 1:
        return dict(presets), {name: tasks[0] for name in presets}
    heads, of = {}, {}
    for task in tasks:
        for preset, config in presets.items():
            heads[f'{task}_{preset}'] = config
            of[f'{task}_{preset}'] = task
    return heads, of


def default_background(background: str | None, cache: FeatureCache, tasks: list[str], *,
                       recordings: bool) -> str:
    """--background as given; not given: 'none', or for clips without that label '' (a head
    without a background, said on stderr). Recordings always have one: check_background asks."""
    if background is not None:
        return background
    if recordings or any(DEFAULT_BACKGROUND in cache.task(t)[0] for t in tasks):
        return DEFAULT_BACKGROUND
    print(f"train: {cache.path}: no {DEFAULT_BACKGROUND!r} label among the clips' labels: the "
          "head has no background ('nothing is happening') class; name one with --background "
          'LABEL', file=sys.stderr)
    return ''


def check_background(background: str | None, cache: FeatureCache, tasks: list[str]) -> None:
    """ValueError unless `background` (None: a head without one) is a label of a trained task."""
    if not background:
        return
    labels = {task: cache.task(task)[0] for task in dict.fromkeys(tasks)}
    if not any(background in known for known in labels.values()):
        listed = '; '.join(f'{task}: {list(known)}' for task, known in labels.items())
        raise ValueError(f'--background {background!r} is not a label of {cache.path} ({listed}); '
                         "name the cache's background label with --background LABEL, or "
                         "--background '' for a head without one")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Optimisation flags shared by `train` and `report`."""
    group = parser.add_argument_group('optimisation')
    group.add_argument('--epochs', type=int, default=_DEFAULTS.epochs,
                       help=f'epochs ({_DEFAULTS.epochs})')
    group.add_argument('--batch-size', type=int, default=_DEFAULTS.batch_size,
                       help=f'clips per batch ({_DEFAULTS.batch_size})')
    group.add_argument('--lr', type=float, default=_DEFAULTS.lr,
                       help=f'peak AdamW learning rate ({_DEFAULTS.lr})')
    group.add_argument('--weight-decay', type=float, default=_DEFAULTS.weight_decay,
                       help=f'AdamW weight decay of weight matrices ({_DEFAULTS.weight_decay})')
    group.add_argument('--warmup-epochs', type=int, default=_DEFAULTS.warmup_epochs,
                       help=f'linear warmup before the cosine decay ({_DEFAULTS.warmup_epochs})')
    group.add_argument('--embed-lr-scale', type=float, default=_DEFAULTS.embed_lr_scale,
                       help='learning-rate factor of temporal embeddings and CLS / query '
                            f'tokens ({_DEFAULTS.embed_lr_scale})')
    group.add_argument('--seed', type=int, default=_DEFAULTS.seed,
                       help=f'seed of initialisation and batch order ({_DEFAULTS.seed})')
    group.add_argument('--last-epoch', dest='keep_best', action='store_false',
                       help="with --val-cache, write the last epoch's weights (default: those "
                            'of the epoch of best balanced validation accuracy, the mean recall '
                            'over classes; the latest of equals)')
    group.add_argument('--reverse-pairs', nargs='?', const='on', default='auto',
                       choices=('auto', 'on', 'off'),
                       help='each epoch, play half of the windows of a symmetric pair backwards '
                            'as their counterpart (with train, also half of the --background '
                            'windows, as the background): the pair then differs only in frame '
                            'order. auto (the default): on when a --cache holds recordings '
                            '(extract --bag), where it gave the better decided stream on '
                            'held-out recordings of both synthetic worlds (docs/TRAINING.md); '
                            'off for clips')
    group.add_argument('--token-drop', type=float, default=_DEFAULTS.token_drop,
                       help="fraction of each frame's patch tokens left out of every training "
                            'window, a fresh random subset each time (heads with a temporal '
                            f'embedding per token see all) ({_DEFAULTS.token_drop})')
    group.add_argument('--num-heads', type=int, default=0,
                       help='attention heads of every head (0: 12 for D >= 384, else 4)')


def train_config(args: argparse.Namespace, *, recordings: bool = False) -> TrainConfig:
    """The TrainConfig of the options; `recordings`: a training cache holds recordings (for
    --reverse-pairs auto)."""
    reverse = args.reverse_pairs == 'on' or (args.reverse_pairs == 'auto' and recordings)
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                       embed_lr_scale=args.embed_lr_scale, seed=args.seed,
                       reverse_pairs=reverse, keep_best=args.keep_best,
                       token_drop=args.token_drop)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--cache', type=Path, action='append', required=True,
                        help='training feature cache; repeatable: several caches (e.g. one of '
                             'clips and one of recordings) with the same labels, T and backbone '
                             'are trained on as one')
    parser.add_argument('--val-cache', type=Path, default=None,
                        help='validation cache: accuracy per epoch in the log; also fits each '
                             "head's temperature on it (stored in the checkpoint; ECE before / "
                             'after in calibration.json) and, for recordings, the decision '
                             'parameters (see --no-fit-decision)')
    parser.add_argument('--no-fit-decision', dest='fit_decision', action='store_false',
                        help='with a --val-cache of recordings (extract --bag), do not fit the '
                             "decision stage's parameters on it (by default they are fitted by "
                             'replaying its recordings and stored in the checkpoint, where the '
                             'node, bag-eval and the demo use them unless their parameters set '
                             'decision.*; scores in decision_fit.json)')
    parser.add_argument('--head', action='append', required=True,
                        help=f"head preset, repeatable, or 'all': {', '.join(PRESETS)}")
    parser.add_argument('--out', type=Path, required=True, help='run directory')
    parser.add_argument('--task', action='append', default=None,
                        help='task, repeatable: a further column of the clip list (e.g. object) '
                             "or the name of the main `label` column's task (default: action)")
    parser.add_argument('--background', default=None,
                        help="the 'nothing is happening' label recorded in the checkpoint "
                             "(default none); it must be a label of the cache (of one of the "
                             "--task, the others' heads get none); '' for a head without one. "
                             "Not given, a cache of clips without a 'none' label trains a head "
                             'without one (said in one line)')
    parser.add_argument('--window-seconds', type=float, default=None,
                        help='window length recorded in the checkpoint (default: the median '
                             'node window of the cached clips)')
    parser.add_argument('--device', default='cpu',
                        help="'cpu', 'cuda' or 'auto'; under torchrun CPU ranks use gloo, CUDA "
                             'ranks NCCL with one GPU each (cpu)')
    add_train_arguments(parser)
    return parser


# What `advice` calls a head that fits its own windows, and one that carries over to new ones.
FITS_TRAINING = 0.9  # training accuracy of the last epoch
CARRIES_OVER = 0.15  # largest drop from training to balanced validation accuracy


def accuracies(final: dict) -> tuple[float | None, float | None]:
    """(training accuracy of the last epoch, balanced validation accuracy of the epoch whose
    weights were written: the kept one, else the last) from a head's last log entry."""
    val = final.get('kept_val_balanced_acc')
    return final.get('train_acc'), final.get('val_balanced_acc') if val is None else val


def advice(final: dict, *, backbone: str = 'tiny') -> list[str]:
    """Why a head trained on recordings may disappoint, from its last log entry (see
    `accuracies`) and the id of the backbone its features came from: one plain sentence per
    finding."""
    lines = []
    fit, val = accuracies(final)
    random_weights = backbone in TINY
    if fit is not None and fit < FITS_TRAINING:
        remedy = ('a pretrained backbone helps (backbone.weights: efficientnet_lite0 on a CPU, '
                  'DINOv2 / CLIP on a GPU)' if random_weights else
                  'a larger backbone.image_size or a larger backbone (DINOv2 / CLIP on a GPU) '
                  'may')
        lines.append(f"it fits only {fit:.2f} of its own training windows: the backbone's "
                     'features hardly tell these classes apart, and more epochs will not fix '
                     f'that; {remedy}')
    if fit is not None and val is not None and fit - val > CARRIES_OVER:
        lines.append(f'it reads {val:.2f} of the validation windows (balanced accuracy) '
                     f'against {fit:.2f} of its training windows: it does not carry over to a '
                     'recording it has not seen; record more, and more varied, recordings '
                     '(other operators, light, days)'
                     + (', or use a pretrained backbone' if random_weights else ''))
    return lines


def _num(value) -> str:
    return '-' if value is None else f'{value:.3g}'


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        with session(device=args.device) as dist:  # a process group under torchrun, else None
            caches = [load_cache(path) for path in args.cache]
            cache = concat_caches(caches)
            val = load_cache(args.val_cache) if args.val_cache else None
            presets = resolve_heads(args.head, dim=cache.dim, num_heads=args.num_heads)
            heads, tasks = task_heads(presets, args.task or ['action'], cache)
            recordings = any(isinstance(c, BagFeatureCache) for c in caches)
            args.background = default_background(args.background, cache, list(tasks.values()),
                                                  recordings=recordings)
            check_background(args.background, cache, list(tasks.values()))
            config = train_config(args, recordings=recordings)
            device = rank_device(args.device, local_rank=0) if dist is None else dist.device
            trained = train_heads(cache, heads, config, val=val, tasks=tasks, dist=dist,
                                  device=device, background=args.background or None)
            calibration = fit_temperatures(trained, val) if val is not None else {}
            temperatures = {k: v['temperature'] for k, v in calibration.items()}
            decisions, why_not = {}, None
            if val is not None and args.fit_decision and (dist is None or dist.is_main):
                why_not = can_fit(val)
                if why_not is None:
                    decisions = fit_heads(trained, val, temperatures=temperatures,
                                          background=args.background or None,
                                          switch_fraction=cache.switch_fraction or 0.5)
            extra = dict(val_cache=str(args.val_cache) if val else None)
            if dist is not None:
                extra.update(world_size=dist.world_size,
                             global_batch_size=config.batch_size * dist.world_size)
            if dist is not None and not dist.is_main:  # rank 0 alone writes the run
                return 0
            paths = save_run(args.out, trained, cache, config,
                             task=(args.task or ['action'])[0],
                             window_seconds=args.window_seconds, extra=extra,
                             temperatures=temperatures, background=args.background or None,
                             decisions=decisions)
    except (DataError, ValueError, RuntimeError) as exc:
        print(f'train: error: {exc}', file=sys.stderr)
        return 2
    if calibration:
        (args.out / 'calibration.json').write_text(json.dumps(calibration, indent=2) + '\n')
    if decisions:
        (args.out / 'decision_fit.json').write_text(json.dumps(decisions, indent=2) + '\n')
    elif why_not:
        print(f'train: decision parameters not fitted ({why_not}): the node decides with '
              'the defaults or the decision.* of its parameters', file=sys.stderr)
    for head, path in zip(trained, paths):
        final = head.log[-1]
        score = ', '.join(f'{k} {v:.3f}' for k, v in final.items()
                          if k.endswith('acc') and not k.startswith('kept'))
        if 'kept_epoch' in final:
            score += (f", kept epoch {final['kept_epoch']} (balanced val_acc "
                      f"{final['kept_val_balanced_acc']:.3f})")
        c = calibration.get(head.name)
        if c:
            score += (f", T {c['temperature']:.3f} (val ECE {c['ece_uncalibrated']:.3f} -> "
                      f"{c['ece_calibrated']:.3f})")
        print(f'train: {head.name}: {score} -> {path}')
        for line in advice(final, backbone=cache.backbone['id']) if val is not None else ():
            print(f'train: {head.name}: {line}')
        fit = decisions.get(head.name)
        if fit:
            chosen, defaults = fit['chosen'], fit['defaults']
            print(f"train: {head.name}: decision fitted on {fit['recordings']} validation "
                  f"recording(s), {fit['windows']} windows: "
                  + ', '.join(f'{k} {v:g}' for k, v in fit['values'].items())
                  + f"; score {chosen['score']:.3f} (defaults {defaults['score']:.3f}), "
                  f"START F1 {_num(chosen['start_f1'])}, edit {_num(chosen['edit_score'])}")
    return 0
