"""Builds the streaming engine from a PerceptionConfig: the one path the node and tools share."""

from __future__ import annotations

import logging

from step_ros.model.backbone import DTYPES, FrozenBackbone, resolve_device
from step_ros.model.checkpoint import CheckpointError, load_head, validate_pairs
from step_ros.stream.config import ConfigError, PerceptionConfig
from step_ros.stream.engine import Head, StreamingEngine

log = logging.getLogger(__name__)


def effective_precision(device: str, precision: str) -> str:
    """fp16 on a CPU is slow and partly unsupported: fall back to fp32 there, with a warning."""
    if precision == 'fp16' and resolve_device(device).type == 'cpu':
        log.warning('precision=fp16 is not used on the CPU; running fp32')
        return 'fp32'
    return precision


def build_engine(config: PerceptionConfig, *, profile: bool = False) -> StreamingEngine:
    """Load the backbone and every head, check they fit together, return the engine."""
    precision = effective_precision(config.device, config.precision)
    backbone = FrozenBackbone.load(config.backbone_weights, image_size=config.image_size,
                                   device=config.device, precision=precision)
    heads = []
    matched: set[tuple[str, str]] = set()
    for path in config.head_checkpoints:
        module, meta = load_head(path, device=backbone.device, dtype=DTYPES[precision])
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
                log.warning('symmetric_pairs=%s names none of the labels of head %r (%s): its '
                            'checkpoint pairs %s are replaced by none, so it flags no '
                            'ambiguity', [':'.join(p) for p in config.symmetric_pairs],
                            meta.task, path, [':'.join(p) for p in meta.symmetric_pairs])
        heads.append(Head(module, meta, pairs))
        window = config.engine.window_seconds
        if abs(window - meta.window_seconds) > 0.1 * meta.window_seconds:
            # The temporal embeddings learnt one spacing of frames; another one still runs,
            # but accuracy is unknown there.
            log.warning('window_seconds=%s but head %r was trained on %.3g s windows (%s): '
                        'frames are spaced %.0f%% differently from training', window, meta.task,
                        meta.window_seconds, path, 100 * abs(window / meta.window_seconds - 1))
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
