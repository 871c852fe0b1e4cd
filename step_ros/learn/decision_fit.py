"""Fitting the decision stage to a head: its validation recordings replayed in stamp order.

`train --val-cache` on a cache of `extract --bag` recordings runs the trained head over every
window the node would classify in each validation recording (T consecutive sampled frames, one
window per sampled frame, a restart of the sampler clearing the buffer as in the node), turns
the calibrated probabilities into the records the node's decision stage sees, and replays them
through a `Decider` for every point of the decision grid (evaluate.decision_sweep). The point
with the best mean score over the recordings wins (score: the mean of START F1, F1@0.25 and
edit score / 100), among the points whose decided label changes stay within
MAX_CHANGES_RATIO of the true ones when any does. Its values go into the checkpoint; the node,
`bag-eval` and the demo decide with them unless the parameters file sets `decision.*`.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch import nn

from step_ros.data.bag_cache import BagFeatureCache, WindowTokens
from step_ros.data.bag_dataset import window_starts
from step_ros.data.timeline import Segment, Timeline
from step_ros.evaluate.decision_sweep import grid, mean_row, row
from step_ros.evaluate.stream_eval import StreamRecord, replay
from step_ros.learn.training import predict
from step_ros.progress import progress_bar
from step_ros.stream.calibration import softmax
from step_ros.stream.decision import DecisionConfig
from step_ros.stream.engine import EngineConfig, ambiguity

MAX_CHANGES_RATIO = 1.3  # decided label changes per true change a fitted point may make


def can_fit(cache) -> str | None:
    """Why the decision stage cannot be fitted on `cache`, or None when it can."""
    if not isinstance(cache, BagFeatureCache) or not cache.streams:
        return 'the validation cache holds clips, not recordings (extract --bag)'
    if any(s.get('segments') is None for s in cache.streams):
        return ('the validation cache was extracted before timelines were kept in it; run the '
                'same extract command again (nothing is encoded again)')
    return None


def recording_records(module: nn.Module, cache: BagFeatureCache, *, labels: tuple[str, ...],
                      pairs, temperature: float, margin: float = EngineConfig.ambiguity_margin
                      ) -> list[tuple[list[StreamRecord], Timeline, int]]:
    """(records, timeline, last frame stamp) of every recording in `cache`."""
    counterpart = {}
    for a, b in pairs:
        counterpart[a], counterpart[b] = b, a
    out = []
    T = cache.num_frames
    for stream in cache.streams:
        stamps, runs = stream['stamps'], stream['runs']
        starts = window_starts(runs, num_frames=T, stride=1)
        if not starts:
            continue
        windows = WindowTokens(cache.tokens.frames,
                               torch.tensor(starts, dtype=torch.long) + stream['offset'], T)
        with torch.no_grad():
            probs = softmax(predict(module, windows).numpy(), temperature)
        records, previous = [], None
        for start, p in zip(starts, probs):
            best, second = (int(i) for i in np.argsort(-p, kind='stable')[:2])
            records.append(StreamRecord(
                stamp_ns=int(stamps[start + T - 1]), window_start_ns=int(stamps[start]),
                label=labels[best], probs=p,
                ambiguous=bool(ambiguity(p, None, best=best, second=second, labels=labels,
                                          counterpart=counterpart, margin=margin)),
                reset_before=previous is not None and runs[start] != previous))
            previous = runs[start]
        timeline = Timeline([Segment(int(a), int(b), str(label))
                             for a, b, label in stream['segments']], source='validation cache')
        out.append((records, timeline, int(stamps[-1])))
    return out


def fit_decision(recordings: list[tuple[list[StreamRecord], Timeline, int]], *,
                 labels: tuple[str, ...], background: str | None, window_seconds: float,
                 switch_fraction: float, temperature: float, task: str = 'action',
                 base: DecisionConfig = DecisionConfig(), progress: bool = True
                 ) -> tuple[DecisionConfig, dict]:
    """The grid point with the best mean score over `recordings`; -> (config, its row of
    scores with the number of recordings and windows, and the base config's row)."""
    window_ns = int(round(window_seconds * 1e9))
    kwargs = dict(task=task, labels=labels, background=background, window_ns=window_ns,
                  temperature=temperature, switch_fraction=switch_fraction)

    def scored(config: DecisionConfig) -> dict:
        rows = []
        for records, timeline, last in recordings:
            report = replay(records, config, timeline=timeline, last_frame_ns=last, **kwargs)
            values = row(config, report)
            true = report['stream']['true_changes_per_min']
            decided = values['label_changes_per_min']
            values['changes_ratio'] = (decided / true) if true and decided is not None else None
            rows.append(values)
        return mean_row(rows)

    points = grid(base)
    rows = [scored(c) for c in progress_bar(points, desc='fit decision', unit='point',
                                            disable=not progress, mininterval=2.0)]
    calm = [i for i, r in enumerate(rows)
            if r['changes_ratio'] is not None and r['changes_ratio'] <= MAX_CHANGES_RATIO]
    pool = calm or list(range(len(rows)))
    best = max(pool, key=lambda i: (rows[i]['score'],
                                    -(rows[i]['onset_latency_p50'] or float('inf'))))
    chosen = points[best]
    # The base point is usually on the grid: its row is not replayed a second time.
    base_row = rows[points.index(base)] if base in points else scored(base)
    summary = dict(recordings=len(recordings), windows=sum(len(r) for r, _, _ in recordings),
                   points=len(points), chosen=_rounded(rows[best]),
                   defaults=_rounded(base_row),
                   values={f.name: getattr(chosen, f.name) for f in fields(DecisionConfig)})
    return chosen, summary


def _rounded(values: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def fit_heads(trained, val: BagFeatureCache, *, temperatures: dict[str, float],
              background: str | None, switch_fraction: float, progress: bool = True
              ) -> dict[str, dict]:
    """Per trained head: the fitted decision parameters and their scores (fit_decision), for
    a head that names a new segment at `switch_fraction` (its checkpoint's)."""
    out = {}
    for head in trained:
        labels, _, pairs = val.task(head.task or 'label')
        temperature = float(temperatures.get(head.name, 1.0))
        recordings = recording_records(head.module, val, labels=tuple(labels), pairs=pairs,
                                       temperature=temperature)
        if not recordings:
            continue
        _, summary = fit_decision(
            recordings, labels=tuple(labels),
            background=background if background in labels else None,
            window_seconds=val.window_seconds, switch_fraction=switch_fraction,
            temperature=temperature, task=head.task or 'action', progress=progress)
        out[head.name] = summary
    return out
