"""The decided stream of a recorded prediction stream, scored by hand."""

import numpy as np
import pytest

from step_ros.data.timeline import Segment, Timeline
from step_ros.evaluate.stream_eval import StreamRecord, decide, event_intervals, stream_report
from step_ros.stream.decision import ActionEvent, Decider, DecisionConfig

S = 1_000_000_000
LABELS = ('none', 'A', 'B')
W = 2 * S


def _truth() -> Timeline:
    return Timeline([Segment(0, 4 * S, 'A'), Segment(4 * S, 6 * S, 'none'),
                     Segment(6 * S, 10 * S, 'B')])


def _records() -> list[StreamRecord]:
    """A head that is exactly half a window late: at stamp t it reports the truth at t - 1 s."""
    truth = _truth()
    out = []
    for t in range(2 * S, 12 * S + 1, S // 4):
        label = truth.label_at(t - S) or 'B'
        probs = np.full(3, 0.05)
        probs[LABELS.index(label)] = 0.9
        out.append(StreamRecord(stamp_ns=t, window_start_ns=t - W, label=label, probs=probs,
                                ambiguous=False))
    return out


def test_hand_computed_stream_report():
    records = _records()
    config = DecisionConfig(smoothing_seconds=0.0, enter_threshold=0.6, exit_threshold=0.4,
                            min_dwell_seconds=0.0, min_confidence=0.4)
    decider = Decider(task='t', labels=LABELS, background='none', config=config, window_ns=W)
    decisions, events = decide(records, decider=decider)
    # Backdated by half a window (no smoothing): START A decided at 2 s, onset 1 s (A was under
    # way before the first window); END at 5 s, offset 4 s; START B decided at 7 s, onset 6 s,
    # still open at the end. The head is half a window late, so these are B's and A's end exactly.
    assert [(e.kind, e.label, e.stamp_ns, e.decided_ns) for e in events] == [
        ('start', 'A', S, 2 * S), ('end', 'A', 4 * S, 5 * S), ('start', 'B', 6 * S, 7 * S)]
    assert event_intervals(events, end_ns=12 * S) == [(S, 4 * S, 'A'), (6 * S, 12 * S, 'B')]
    r = stream_report(records, decisions, events, timeline=_truth(), labels=LABELS,
                      background='none', window_ns=W, temperature=1.0)
    st = r['stream']
    # 32 labelled stamps in [2, 10): both streams are wrong over [4, 5) and [6, 7) -> 24 / 32.
    assert st['raw']['accuracy'] == st['decided']['accuracy'] == 0.75
    # Two changes in 10 s of stream, for the truth and both streams: 12 per minute.
    assert st['true_changes_per_min'] == st['raw']['label_changes_per_min'] == 12.0
    assert st['decided']['label_changes_per_min'] == 12.0
    # Backdated by half a window, the raw stream is exactly the truth.
    assert st['raw_backdating_s'] == 1.0
    assert st['raw']['edit_score'] == 100.0 and st['raw']['f1_at_iou']['0.5'] == 1.0
    assert st['decided']['edit_score'] == 100.0 and st['decided']['f1_at_iou']['0.25'] == 1.0
    ev = r['events']
    assert (ev['starts'], ev['true_segments'], ev['start_true_positives']) == (2, 2, 2)
    assert ev['start_f1'] == 1.0 and ev['false_starts_per_min_background'] == 0.0
    assert ev['onset_latency_s'] == {'p50': 1.5, 'p90': 1.9}  # latencies 2.0 s and 1.0 s
    # Onsets dated 1 s (A, under way before the first window) and 0 s late; A's END exactly.
    assert ev['onset_error_s'] == {'p10': 0.1, 'p50': 0.5, 'p90': 0.9}
    assert ev['offset_error_s'] == {'p10': 0.0, 'p50': 0.0, 'p90': 0.0}
    assert ev['background_s'] == 2.0 and ev['ends'] == 1
    cal = r['calibration']
    assert cal['ece'] == pytest.approx(cal['ece_uncalibrated'])  # T = 1 changes nothing
    assert r['frame_map'] is not None and 0 < r['frame_map'] <= 1


def test_flicker_is_removed_by_the_decision_stage():
    records = _records()
    flicker = []
    for i, r in enumerate(records):  # every 5th window flips to the wrong action
        if i % 5 == 3:
            wrong = 'B' if r.label != 'B' else 'A'
            probs = np.full(3, 0.05)
            probs[LABELS.index(wrong)] = 0.9
            r = StreamRecord(stamp_ns=r.stamp_ns, window_start_ns=r.window_start_ns,
                             label=wrong, probs=probs, ambiguous=False)
        flicker.append(r)
    config = DecisionConfig(smoothing_seconds=0.5, min_dwell_seconds=0.25)
    decider = Decider(task='t', labels=LABELS, background='none', config=config, window_ns=W)
    decisions, events = decide(flicker, decider=decider)
    r = stream_report(flicker, decisions, events, timeline=_truth(), labels=LABELS,
                      background='none', window_ns=W, temperature=1.0)
    raw, decided = r['stream']['raw'], r['stream']['decided']
    assert raw['label_changes_per_min'] > 3 * r['stream']['true_changes_per_min']
    # none -> A (the first window waits out the dwell), A -> none, none -> B: 3 in 10 s.
    assert decided['label_changes_per_min'] == 18.0
    assert decided['edit_score'] == 100.0 > raw['edit_score']
    assert r['events']['start_f1'] == 1.0


def test_false_starts_on_background_are_those_decided_while_nothing_happens():
    records = _records()
    decider = Decider(task='t', labels=LABELS, background='none', config=DecisionConfig(),
                      window_ns=W)
    decisions, _ = decide(records, decider=decider)

    def start(label: str, onset_s: float, decided_s: float) -> ActionEvent:
        return ActionEvent(task='t', label=label, kind='start', stamp_ns=int(onset_s * S),
                           decided_ns=int(decided_s * S), window_start_ns=int(decided_s * S) - W,
                           confidence=0.9, duration_s=0.0)

    events = [
        start('A', 5.5, 6.5),  # wrong label named during B, its onset dated into the idle gap
        start('B', 3.5, 4.5),  # raised during the idle gap (onset dated into A): a false alarm
        start('B', 3.6, 5.5)]  # another
    r = stream_report(records, decisions, events, timeline=_truth(), labels=LABELS,
                      background='none', window_ns=W, temperature=1.0)
    ev = r['events']
    assert ev['start_true_positives'] == 0 and ev['background_s'] == 2.0
    assert ev['false_starts_per_min_background'] == 60.0  # 2 in 2 s of background
