"""The decision stage at its edges: the abstention threshold and its two terms, the exact
backdating of START / END, onsets never before the stream's first frame, and the END of a
stream that stops."""

import math

import numpy as np

from step_ros.stream.decision import Decider, DecisionConfig, State

LABELS = ('none', 'pick_up', 'put_down')
SEC = 1_000_000_000
W = 2 * SEC
STEP = SEC // 8


def decider(switch_fraction: float = 0.5, **overrides) -> Decider:
    values = dict(smoothing_seconds=0.0, enter_threshold=0.5, exit_threshold=0.4,
                  min_dwell_seconds=0.0, min_confidence=0.5)
    values.update(overrides)
    return Decider(task='action', labels=LABELS, background='none',
                   config=DecisionConfig(**values), window_ns=W,
                   switch_fraction=switch_fraction)


def update(d: Decider, probs, t: int, window_start: int | None = None):
    return d.update(probs=np.asarray(probs, dtype=float), stamp_ns=t,
                    window_start_ns=t - W if window_start is None else window_start,
                    ambiguous=False)


def test_a_top_1_exactly_at_min_confidence_decides_just_below_abstains():
    at = update(decider(), [0.25, 0.5, 0.25], 10 * SEC)
    assert at.state is State.ACTIVE and [e.kind for e in at.events] == ['start'], at
    below = update(decider(), [0.25, 0.4999, 0.2501], 10 * SEC)
    assert below.state is State.UNCERTAIN and below.events == (), below


def test_a_low_raw_top_1_abstains_although_the_smoothed_one_is_high():
    d = decider(smoothing_seconds=1.0, enter_threshold=0.9, exit_threshold=0.1,
                min_confidence=0.4)
    for t in range(0, 5 * SEC, STEP):  # smoothed pick_up ~0.8: below enter, nothing starts
        dec = update(d, [0.1, 0.8, 0.1], t)
    assert dec.state is State.IDLE, dec
    dec = update(d, [0.34, 0.33, 0.33], 5 * SEC)
    assert d.smoothed.max() > 0.7 and dec.state is State.UNCERTAIN, (d.smoothed, dec)


def test_a_low_smoothed_top_1_abstains_although_the_raw_one_is_high():
    d = decider(smoothing_seconds=1.0, enter_threshold=0.5, exit_threshold=0.1,
                min_confidence=0.4)
    for t in range(0, 5 * SEC, STEP):
        update(d, [0.34, 0.33, 0.33], t)
    dec = update(d, [0.05, 0.9, 0.05], 5 * SEC)
    assert d.smoothed.max() < 0.4 and dec.state is State.UNCERTAIN, (d.smoothed, dec)


def test_start_and_end_are_backdated_by_the_switch_point_and_their_own_ema_delay():
    """Thresholds chosen so that the START and END delays differ: each event uses its own."""
    tau, enter, exit_, switch = 0.5, 0.7, 0.1, 3 / 8
    d = decider(switch_fraction=switch, smoothing_seconds=tau, enter_threshold=enter,
                exit_threshold=exit_, min_confidence=0.0, min_dwell_seconds=0.25)
    start_lag = switch * W + tau * SEC * math.log(1 / (1 - enter))
    end_lag = switch * W + tau * SEC * math.log(1 / exit_)
    assert abs(start_lag - end_lag) > 0.3 * SEC
    events, candidate_at = [], None
    for t in range(0, 20 * SEC, STEP):
        # Afterwards no label reaches enter: the END comes from pick_up fading below exit.
        dec = update(d, [0.0, 1.0, 0.0] if 5 * SEC <= t < 12 * SEC else [0.5, 0.0, 0.5], t,
                     window_start=0)
        if candidate_at is None and d.smoothed[1] >= enter:
            candidate_at = t  # the candidate's first stamp; START follows after the dwell
        events += dec.events
    start, end = events
    assert (start.kind, end.kind) == ('start', 'end'), events
    assert start.stamp_ns == candidate_at - round(start_lag), (start, candidate_at)
    assert end.stamp_ns == end.decided_ns - round(end_lag), end


def test_onsets_never_precede_the_streams_first_frame():
    """Sim time from 0 and 2 s of smoothing would backdate the START to a negative stamp."""
    d = decider(smoothing_seconds=2.0, enter_threshold=0.5, exit_threshold=0.2,
                min_confidence=0.0)
    first = 50_000_000  # the stream's first frame: 0.05 s of sim time
    decisions = [update(d, [0.0, 1.0, 0.0], first + W + k * STEP, window_start=first + k * STEP)
                 for k in range(40)]
    starts = [e for dec in decisions for e in dec.events]
    assert [e.kind for e in starts] == ['start'], starts
    assert d.start_lag_ns() > starts[0].decided_ns - first  # unclamped, it would be earlier
    assert starts[0].stamp_ns == first, starts[0]
    assert decisions[-1].stable_since_ns == first, decisions[-1]
    # After a restart, the new stream's first frame bounds the onsets again.
    d.reset()
    again = [update(d, [0.0, 1.0, 0.0], 100 * SEC + W + k * STEP,
                    window_start=100 * SEC + k * STEP) for k in range(40)]
    assert [e.stamp_ns for dec in again for e in dec.events] == [100 * SEC]


def test_a_stream_that_stops_ends_its_action_at_its_last_frame():
    d = decider()
    for t in range(0, 2 * SEC, STEP):
        update(d, [0.0, 1.0, 0.0], t)
    last_decided = 2 * SEC - STEP
    events = d.reset(last_frame_ns=last_decided + 40_000_000)  # a frame after the last window
    assert [(e.kind, e.label, e.stamp_ns, e.decided_ns) for e in events] == [
        ('end', 'pick_up', last_decided + 40_000_000, last_decided + 40_000_000)]
    assert d.active is None and d.reset(last_frame_ns=5 * SEC) == []
    # An older frame stamp never dates the END before the last decision.
    for t in range(3 * SEC, 5 * SEC, STEP):
        update(d, [0.0, 1.0, 0.0], t)
    assert [e.stamp_ns for e in d.reset(last_frame_ns=SEC)] == [5 * SEC - STEP]
