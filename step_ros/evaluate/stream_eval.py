"""Decide a recorded prediction stream and score raw and decided streams against a timeline.

`bag-eval` records the scored head's raw predictions once, then runs a `Decider` over them
exactly as the node does per prediction (reset where the engine's buffer was cleared), and
scores both streams with step_ros.evaluate.stream_metrics. The sweep replays the same records under
other decision parameters without running the model again. ROS-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from step_ros.data.timeline import Timeline
from step_ros.evaluate.stream_metrics import (
    IOU_THRESHOLDS,
    changes,
    edit_score,
    event_scores,
    f1_at_iou,
    frame_map,
)
from step_ros.stream.calibration import reliability, softmax
from step_ros.stream.decision import (
    END,
    START,
    ActionEvent,
    Decider,
    Decision,
    DecisionConfig,
    State,
)


@dataclass(frozen=True)
class StreamRecord:
    """One raw prediction of the scored head."""

    stamp_ns: int
    window_start_ns: int
    label: str
    probs: np.ndarray  # calibrated, every label
    ambiguous: bool
    reset_before: bool = False  # the engine's buffer was cleared since the previous one


def decide(records: Sequence[StreamRecord], *, decider: Decider,
           last_frame_ns: int | None = None) -> tuple[list[Decision], list[ActionEvent]]:
    """Feed every record to `decider` (as the node does); -> decisions and the events emitted.

    With `last_frame_ns` (the stamp of the recording's last frame), an action still open at the
    end ENDs there, as the live node ends it when its input stops (input_timeout_seconds);
    without it, it stays open.
    """
    decisions, events = [], []
    for r in records:
        if r.reset_before:
            events += decider.reset()
        d = decider.update(probs=r.probs, stamp_ns=r.stamp_ns, window_start_ns=r.window_start_ns,
                           ambiguous=r.ambiguous)
        decisions.append(d)
        events += d.events
    if last_frame_ns is not None:
        events += decider.reset(last_frame_ns=last_frame_ns)
    return decisions, events


def decided_label(decision: Decision, background: str | None) -> str:
    return decision.stable_label if decision.state is State.ACTIVE else (background or '')


def event_intervals(events: Sequence[ActionEvent], *, end_ns: int) -> list[tuple[int, int, str]]:
    """(onset, offset, label) of every action; one still open runs to `end_ns`."""
    out, open_start = [], None
    for e in events:
        if e.kind == START:
            open_start = e
        elif e.kind == END and open_start is not None:
            out.append((open_start.stamp_ns, e.stamp_ns, e.label))
            open_start = None
    if open_start is not None:
        out.append((open_start.stamp_ns, max(end_ns, open_start.stamp_ns), open_start.label))
    return out


def _label_at(intervals: list[tuple[int, int, str]], t_ns: int, background: str) -> str:
    for start, end, label in intervals:
        if start <= t_ns < end:
            return label
    return background


def _stream_block(at_stamp: list[str], truth_at_stamp: list[str | None], grid: list[str],
                  truth_grid: list[str | None], *, minutes: float,
                  background: str | None) -> dict:
    scored = [(p, t) for p, t in zip(at_stamp, truth_at_stamp) if t is not None]
    seg = [(p, t) for p, t in zip(grid, truth_grid) if t is not None]
    pred_seq, true_seq = [p for p, _ in seg], [t for _, t in seg]
    return dict(
        accuracy=round(sum(p == t for p, t in scored) / len(scored), 4) if scored else None,
        label_changes_per_min=round(changes(at_stamp) / minutes, 3) if minutes else None,
        edit_score=round(edit_score(pred_seq, true_seq, background=background), 3),
        f1_at_iou={str(th): round(f1_at_iou(pred_seq, true_seq, th, background=background), 4)
                   for th in IOU_THRESHOLDS})


def stream_report(records: Sequence[StreamRecord], decisions: Sequence[Decision],
                  events: Sequence[ActionEvent], *, timeline: Timeline, labels: Sequence[str],
                  background: str | None, window_ns: int, temperature: float) -> dict:
    """The `stream`, `events`, `calibration` and `frame_map` blocks of bag-eval's report."""
    if not records:
        raise ValueError('no predictions to score')
    bg = background or ''
    first, last = records[0].stamp_ns, records[-1].stamp_ns
    minutes = (last - first) / 60e9
    raw_lag = window_ns // 2  # a raw window's label describes about its middle
    stamps = [r.stamp_ns for r in records]
    truth_at = [timeline.label_at(t) for t in stamps]
    grid = [t - raw_lag for t in stamps]
    truth_grid = [timeline.label_at(t) for t in grid]
    raw_at = [r.label for r in records]
    decided_at = [decided_label(d, background) for d in decisions]
    intervals = event_intervals(events, end_ns=last)
    decided_grid = [_label_at(intervals, t, bg) for t in grid]
    truth_seq = [t for t in truth_at if t is not None]
    stream = dict(
        raw=_stream_block(raw_at, truth_at, raw_at, truth_grid, minutes=minutes,
                          background=background),
        decided=_stream_block(decided_at, truth_at, decided_grid, truth_grid, minutes=minutes,
                              background=background),
        true_changes_per_min=round(changes(truth_seq) / minutes, 3) if minutes else None,
        minutes=round(minutes, 3), raw_backdating_s=raw_lag / 1e9)

    starts = [e for e in events if e.kind == START]
    true_segments = [(s.label, s.start_ns, s.end_ns) for s in timeline.segments
                     if s.label != background
                     and records[0].window_start_ns <= s.start_ns <= last - window_ns]
    background_ns = sum(max(0, min(s.end_ns, last) - max(s.start_ns, first))
                        for s in timeline.segments if background and s.label == background)
    offsets: list[int | None] = []  # the offset estimate of the END that closed each START
    for e in events:
        if e.kind == START:
            offsets.append(None)
        elif e.kind == END and offsets and offsets[-1] is None:
            offsets[-1] = e.stamp_ns
    event_block = event_scores(
        [(e.label, e.stamp_ns, e.decided_ns) for e in starts], true_segments, offsets=offsets,
        tolerance_ns=window_ns // 2, background_ns=background_ns,
        # A false START counts on background when it was raised while nothing was happening:
        # its decision stamp, not its onset estimate, which depends on the backdating model.
        background_hits=[bool(background) and timeline.label_at(e.decided_ns) == background
                         for e in starts])
    event_block['ends'] = sum(e.kind == END for e in events)

    pure = [(r, timeline.label_over(r.window_start_ns, r.stamp_ns)) for r in records]
    pure = [(r, t) for r, t in pure if t is not None]
    calibration = dict(temperature=temperature, windows=len(pure), ece=None,
                       ece_uncalibrated=None)
    if pure:
        index = {name: i for i, name in enumerate(labels)}
        probs = np.stack([r.probs for r, _ in pure])
        targets = np.array([index[t] for _, t in pure])
        # softmax(T * log p) = softmax(logits): the probabilities before calibration.
        raw = softmax(temperature * np.log(np.maximum(probs, 1e-38)))
        for key, p in (('ece', probs), ('ece_uncalibrated', raw)):
            curve = reliability(p.max(1), p.argmax(1) == targets)
            calibration[key] = round(curve['ece'], 4)
            calibration[f'curve_{key}'] = curve
    labelled = [(r, t) for r, t in zip(records, truth_at) if t is not None]
    fmap = None
    if labelled:
        fmap = frame_map(np.stack([r.probs for r, _ in labelled]), [t for _, t in labelled],
                         labels, background=background)
    return dict(stream=stream, events=event_block, calibration=calibration,
                frame_map=None if fmap is None else round(fmap, 4))


def stream_counts(records: Sequence[StreamRecord], decisions: Sequence[Decision],
                  events: Sequence[ActionEvent], *, labels: Sequence[str],
                  background: str | None) -> dict:
    """What a stream did, without a timeline to score it against (the `counts` block of an
    unlabelled bag-eval): windows, label changes per minute, START / END counts and the
    seconds each label was active (between its START and END)."""
    if not records:
        raise ValueError('no predictions to count')
    first, last = records[0].stamp_ns, records[-1].stamp_ns
    minutes = (last - first) / 60e9
    raw = [r.label for r in records]
    decided = [decided_label(d, background) for d in decisions]
    actions = [name for name in labels if name != background]
    active_ns = dict.fromkeys(actions, 0)
    for start, end, label in event_intervals(events, end_ns=last):
        active_ns[label] += end - start
    flagged = sum(r.ambiguous for r in records)
    return dict(
        windows=len(records), minutes=round(minutes, 3),
        ambiguous=flagged, ambiguity_rate=round(flagged / len(records), 4),
        raw=dict(label_changes_per_min=round(changes(raw) / minutes, 3) if minutes else None,
                 windows={name: raw.count(name) for name in labels}),
        decided=dict(label_changes_per_min=round(changes(decided) / minutes, 3)
                     if minutes else None,
                     states={s.value: sum(d.state is s for d in decisions) for s in State}),
        starts=sum(e.kind == START for e in events), ends=sum(e.kind == END for e in events),
        starts_per_label={name: sum(e.kind == START and e.label == name for e in events)
                          for name in actions},
        active_s={name: round(ns / 1e9, 3) for name, ns in active_ns.items()})


def replay(records: Sequence[StreamRecord], config: DecisionConfig, *, task: str,
           labels: Sequence[str], background: str | None, window_ns: int, timeline: Timeline,
           temperature: float, switch_fraction: float = 0.5,
           last_frame_ns: int | None = None) -> dict:
    """Decide the records under `config` (for a head switching at `switch_fraction` of its
    window) and score them; with `last_frame_ns`, an action open at the end ENDs there."""
    decider = Decider(task=task, labels=labels, background=background, config=config,
                      window_ns=window_ns, switch_fraction=switch_fraction)
    decisions, events = decide(records, decider=decider, last_frame_ns=last_frame_ns)
    return stream_report(records, decisions, events, timeline=timeline, labels=labels,
                         background=background, window_ns=window_ns, temperature=temperature)
