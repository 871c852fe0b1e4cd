"""Builds the streaming engine from a PerceptionConfig: the one path the node and tools share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields

from step_ros.model.backbone import DTYPES, BackboneInfo, FrozenBackbone, resolve_device
from step_ros.model.checkpoint import CheckpointError, HeadMeta, load_head, validate_pairs
from step_ros.stream.config import ConfigError, PerceptionConfig
from step_ros.stream.decision import DecisionConfig
from step_ros.stream.engine import Head, StreamingEngine

log = logging.getLogger(__name__)


def effective_precision(device: str, precision: str) -> str:
    """fp16 on a CPU is slow and partly unsupported: fall back to fp32 there, with a warning."""
    if precision == 'fp16' and resolve_device(device).type == 'cpu':
        log.warning('precision=fp16 is not used on the CPU; running fp32')
        return 'fp32'
    return precision


def head_misfit(config: PerceptionConfig, info: BackboneInfo, meta: HeadMeta, path: str
                ) -> str | None:
    """Why the head cannot run with these parameters (T, image size), naming the fix."""
    if meta.num_frames != config.engine.num_frames:
        return (f'num_frames={config.engine.num_frames} but head {meta.task!r} was trained on '
                f'{meta.num_frames} frames ({path}): set num_frames to {meta.num_frames}')
    trained = meta.backbone
    same_model = all(trained[k] == getattr(info, k) for k in ('embed_dim', 'patch_size', 'family'))
    if same_model and trained['image_size'] != info.image_size:
        return (f'backbone.image_size={config.image_size} gives {info.image_size} px images but '
                f"head {meta.task!r} was trained on {trained['image_size']} px ({path}): set "
                f"backbone.image_size to {trained['image_size']}")
    return None


def window_mismatch(config: PerceptionConfig, meta: HeadMeta, path: str) -> str | None:
    """A warning when the window differs from the head's training window by over 10 %."""
    window = config.engine.window_seconds
    if abs(window - meta.window_seconds) <= 0.1 * meta.window_seconds:
        return None
    # The temporal embeddings learnt one spacing of frames; another one still runs, but
    # accuracy is unknown there.
    return (f'window_seconds={window} but head {meta.task!r} was trained on '
            f'{meta.window_seconds:g} s windows ({path}): frames are spaced '
            f'{100 * abs(window / meta.window_seconds - 1):.0f}% differently from training; '
            f'set window_seconds to {meta.window_seconds}')


def decision_for(config: PerceptionConfig, meta: HeadMeta, path: str
                 ) -> tuple[DecisionConfig, str]:
    """The decision parameters a head is decided with, and where they come from: the
    parameters file's `decision.*` when it sets any, else those `train --val-cache` fitted into
    the checkpoint, else the defaults. CheckpointError when the fitted ones are not valid."""
    if config.decision_set:
        return config.decision, 'the parameters (decision.*)'
    if meta.decision is None:
        return config.decision, 'the defaults (the head has no fitted decision parameters)'
    names = {f.name for f in fields(DecisionConfig)}
    unknown = sorted(set(meta.decision) - names)
    try:
        if unknown:
            raise ValueError(f'unknown {unknown}')
        fitted = DecisionConfig(**{**vars(config.decision), **meta.decision}).validate()
    except ValueError as exc:
        raise CheckpointError(f'{path}: fitted decision parameters: {exc}; train the head '
                              'again or set decision.* in the parameters') from None
    fit = meta.training.get('decision_fit') or {}
    where = f" on {fit['recordings']} validation recording(s)" if 'recordings' in fit else ''
    return fitted, f'fitted by train{where}: {path}'


def describe_decision(decision: DecisionConfig) -> str:
    """The decision parameters on one line."""
    return ', '.join(f'{f.name} {getattr(decision, f.name):g}' for f in fields(DecisionConfig))


def build_engine(config: PerceptionConfig, *, profile: bool = False,
                 warn: Callable[[str], None] = log.warning) -> StreamingEngine:
    """Load the backbone and every head, check they fit together, return the engine; each
    warning (one line) goes to `warn` (the node passes its ROS logger's)."""
    precision = effective_precision(config.device, config.precision)
    backbone = FrozenBackbone.load(config.backbone_weights, image_size=config.image_size,
                                   device=config.device, precision=precision)
    heads = []
    matched: set[tuple[str, str]] = set()
    for path in config.head_checkpoints:
        module, meta = load_head(path, device=backbone.device, dtype=DTYPES[precision])
        misfit = head_misfit(config, backbone.info, meta, path)
        if misfit is not None:
            raise ConfigError(misfit)
        pairs = None
        if config.symmetric_pairs is not None:
            wanted = [p for p in config.symmetric_pairs
                      if p[0] in meta.labels or p[1] in meta.labels]
            matched.update(wanted)
            try:
                pairs = validate_pairs(meta.labels, wanted)
            except ValueError as exc:
                raise ConfigError(f'symmetric_pairs: {exc} (head {path})') from exc
            if not pairs and meta.symmetric_pairs:
                warn(f'symmetric_pairs={[":".join(p) for p in config.symmetric_pairs]} names '
                     f'none of the labels of head {meta.task!r} ({path}): its checkpoint pairs '
                     f'{[":".join(p) for p in meta.symmetric_pairs]} are replaced by none, so '
                     'it flags no ambiguity')
        heads.append(Head(module, meta, pairs))
        mismatch = window_mismatch(config, meta, path)
        if mismatch is not None:
            warn(mismatch)
    unmatched = [':'.join(p) for p in config.symmetric_pairs or () if p not in matched]
    if unmatched:
        # A typo would otherwise silently switch ambiguity flagging off.
        labels = sorted({label for h in heads for label in h.labels})
        raise ConfigError(f'symmetric_pairs: {unmatched} name no label of any head; labels '
                          f'are {labels}')
    tasks = [h.task for h in heads]
    if len(set(tasks)) != len(tasks):
        raise CheckpointError(f'heads.checkpoints: two heads share a task name: {tasks}')
    return StreamingEngine(backbone, heads, config.engine, profile=profile,
                           streams=config.camera_names)
