"""The decision stage: smoothing over header time, hysteresis, dwell, abstention, events."""

import math

import numpy as np
import pytest

from step_ros.stream.decision import ActionEvent, Decider, DecisionConfig, State

LABELS = ('none', 'pick_up', 'put_down')
SEC = 1_000_000_000
W = 2 * SEC  # window
STEP = SEC // 8  # one prediction per sampled frame: 16 frames over 2 s


def decider(**overrides) -> Decider:
    values = dict(smoothing_seconds=0.0, enter_threshold=0.6, exit_threshold=0.4,
                  min_dwell_seconds=0.25, min_confidence=0.4)
    values.update(overrides)
    return Decider(task='action', labels=LABELS, background='none',
                   config=DecisionConfig(**values), window_ns=W)


def one_hot(i: int, p: float = 0.9) -> np.ndarray:
    out = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1))
    out[i] = p
    return out


def feed(d: Decider, probs: np.ndarray, t0: int, t1: int, ambiguous: bool = False):
    """Predictions every STEP in [t0, t1): -> (decisions, events)."""
    decisions, events = [], []
    for t in range(t0, t1, STEP):
        dec = d.update(probs=probs, stamp_ns=t, window_start_ns=t - W, ambiguous=ambiguous)
        decisions.append(dec)
        events += dec.events
    return decisions, events


@pytest.mark.parametrize('field,value', [
    ('smoothing_seconds', -0.1), ('enter_threshold', 1.5), ('enter_threshold', 0.0),
    ('exit_threshold', -0.2), ('min_dwell_seconds', -1.0), ('min_confidence', 2.0),
    ('smoothing_seconds', float('nan')), ('min_confidence', True)])
def test_validate_names_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=f'{field}={value!r}'):
        DecisionConfig(**{field: value}).validate()


def test_exit_above_enter_is_rejected():
    with pytest.raises(ValueError, match='exit_threshold=0.7'):
        DecisionConfig(enter_threshold=0.6, exit_threshold=0.7).validate()


def test_bad_background_and_probs_are_rejected():
    with pytest.raises(ValueError, match="background='idle'"):
        Decider(task='a', labels=LABELS, background='idle', config=DecisionConfig(),
                window_ns=W)
    for switch in (0.0, 1.5, float('nan')):
        with pytest.raises(ValueError, match=f'switch_fraction={switch}'):
            Decider(task='a', labels=LABELS, background='none', config=DecisionConfig(),
                    window_ns=W, switch_fraction=switch)
    d = decider()
    with pytest.raises(ValueError, match='3 finite'):
        d.update(probs=np.ones(2) / 2, stamp_ns=0, window_start_ns=0, ambiguous=False)
    with pytest.raises(ValueError, match='3 finite'):
        d.update(probs=np.array([np.nan, 0.5, 0.5]), stamp_ns=0, window_start_ns=0,
                 ambiguous=False)


def test_warming_up_decision():
    dec = decider().warming_up()
    assert dec.state is State.WARMING_UP and dec.state == 'warming_up'
    assert (dec.stable_label, dec.stable_since_ns, dec.events) == ('', 0, ())


def test_start_after_dwell_backdated_by_window_then_end():
    d = decider()
    t_on = 10 * SEC
    decisions, events = feed(d, one_hot(1), t_on, t_on + 2 * SEC)
    # No smoothing: the candidate appears at t_on; START once it has held 0.25 s (3rd step).
    assert [x.state for x in decisions[:2]] == [State.IDLE, State.IDLE]
    assert decisions[2].state is State.ACTIVE
    assert len(events) == 1
    start = events[0]
    assert (start.kind, start.label, start.task) == ('start', 'pick_up', 'action')
    assert start.decided_ns == t_on + 2 * STEP
    assert start.window_start_ns == t_on + 2 * STEP - W
    # Onset = first candidate stamp - half a window (no smoothing lag).
    assert start.stamp_ns == t_on - W // 2
    assert start.duration_s == 0.0
    assert math.isclose(start.confidence, 0.9)
    assert decisions[-1].stable_label == 'pick_up'
    assert decisions[-1].stable_since_ns == start.stamp_ns
    assert math.isclose(decisions[-1].stable_confidence, 0.9)

    t_off = t_on + 2 * SEC
    decisions, events = feed(d, one_hot(0), t_off, t_off + SEC)
    ends = [e for e in events if e.kind == 'end']
    assert len(events) == 1 and len(ends) == 1  # background never STARTs
    end = ends[0]
    assert end.decided_ns == t_off
    assert end.stamp_ns == t_off - W // 2
    assert math.isclose(end.duration_s, (end.stamp_ns - start.stamp_ns) / 1e9)
    assert math.isclose(end.confidence, 0.9)
    assert decisions[0].state is State.IDLE and decisions[-1].stable_label == ''


def test_a_blip_shorter_than_the_dwell_starts_nothing():
    d = decider(min_dwell_seconds=0.5)
    feed(d, one_hot(0), 0, SEC)
    _, events = feed(d, one_hot(2), SEC, SEC + 3 * STEP)  # 0.375 s of put_down
    _, more = feed(d, one_hot(0), SEC + 3 * STEP, 3 * SEC)
    assert events + more == []


def test_hysteresis_keeps_the_label_between_exit_and_enter():
    d = decider()
    feed(d, one_hot(1), 0, SEC)
    # pick_up at 0.45 (below enter, above exit): still active, no event.
    wobble = np.array([0.3, 0.45, 0.25])
    decisions, events = feed(d, wobble, SEC, 2 * SEC)
    assert events == []
    assert all(x.stable_label == 'pick_up' for x in decisions)
    # Below exit: END.
    _, events = feed(d, np.array([0.35, 0.3, 0.35]), 2 * SEC, 3 * SEC)
    assert [e.kind for e in events] == ['end']


def test_switch_ends_the_old_action_at_the_new_onset():
    d = decider(exit_threshold=0.02)  # the old label never fades below exit on its own
    feed(d, one_hot(1), 0, 2 * SEC)
    _, events = feed(d, one_hot(2), 2 * SEC, 4 * SEC)
    assert [(e.kind, e.label) for e in events] == [('end', 'pick_up'), ('start', 'put_down')]
    assert events[0].stamp_ns == events[1].stamp_ns == 2 * SEC - W // 2
    assert events[0].decided_ns == events[1].decided_ns == 2 * SEC + 2 * STEP


def test_low_confidence_and_ambiguity_are_uncertain_and_start_nothing():
    d = decider()
    decisions, events = feed(d, np.array([0.34, 0.33, 0.33]), 0, SEC)
    assert events == [] and all(x.state is State.UNCERTAIN for x in decisions)
    decisions, events = feed(d, one_hot(1), SEC, 2 * SEC, ambiguous=True)
    assert events == [] and all(x.state is State.UNCERTAIN for x in decisions)
    # Once no longer ambiguous, the candidate (held since 1 s) starts at once, backdated.
    dec = d.update(probs=one_hot(1), stamp_ns=2 * SEC, window_start_ns=0, ambiguous=False)
    assert [e.kind for e in dec.events] == ['start']
    assert dec.events[0].stamp_ns == SEC - W // 2


def test_smoothing_is_over_header_time_not_prediction_count():
    """Predictions twice as dense reach the same smoothed value at the same stamp."""
    results = []
    for step in (SEC // 4, SEC // 8):
        d = decider(smoothing_seconds=0.5, min_dwell_seconds=0.0)
        d.update(probs=one_hot(0, 1.0), stamp_ns=0, window_start_ns=0, ambiguous=False)
        for t in range(step, SEC + 1, step):
            dec = d.update(probs=one_hot(1, 1.0), stamp_ns=t, window_start_ns=0,
                           ambiguous=False)
        results.append(d.smoothed.copy())
        assert dec.state is State.ACTIVE
    expected = 1 - math.exp(-1 / 0.5)
    assert np.allclose(results[0], results[1])
    assert math.isclose(results[0][1], expected, rel_tol=1e-9)


def test_smoothing_adds_its_step_response_to_the_backdating():
    d = decider(smoothing_seconds=0.5, enter_threshold=0.7, exit_threshold=0.2,
                min_dwell_seconds=0.0)
    # The EMA rises from 0 to 0.7 in 0.5 ln(1 / 0.3) s and falls from 1 to 0.2 in 0.5 ln 5 s.
    assert d.start_lag_ns() == round(W / 2 + 0.5 * SEC * math.log(1 / 0.3))
    assert d.end_lag_ns() == round(W / 2 + 0.5 * SEC * math.log(5))


def test_reset_ends_an_open_action_and_time_going_back_restarts():
    d = decider()
    feed(d, one_hot(1), 0, SEC)
    events = d.reset()
    assert [(e.kind, e.label, e.stamp_ns) for e in events] == [('end', 'pick_up', SEC - STEP)]
    assert d.reset() == []
    feed(d, one_hot(1), 5 * SEC, 6 * SEC)
    dec = d.update(probs=one_hot(0), stamp_ns=SEC, window_start_ns=0, ambiguous=False)
    assert [(e.kind, e.label) for e in dec.events] == [('end', 'pick_up')]
    assert dec.state is State.IDLE


def test_no_background_head_works():
    d = Decider(task='t', labels=('a', 'b'), background=None,
                config=DecisionConfig(smoothing_seconds=0.0, min_dwell_seconds=0.0),
                window_ns=W)
    dec = d.update(probs=np.array([0.9, 0.1]), stamp_ns=0, window_start_ns=0, ambiguous=False)
    assert [e.label for e in dec.events] == ['a']
    assert isinstance(dec.events[0], ActionEvent)


def test_events_alternate_and_never_overlap_on_a_noisy_stream():
    rng = np.random.default_rng(0)
    d = decider(smoothing_seconds=0.3)
    events = []
    for k in range(400):
        truth = (k // 24) % 3
        p = rng.dirichlet(np.ones(3) * 0.5) * 0.5 + one_hot(truth, 1.0) * 0.5
        events += d.update(probs=p, stamp_ns=k * STEP, window_start_ns=k * STEP - W,
                           ambiguous=False).events
    events += d.reset()
    assert events, 'no events on a stream with 16 actions'
    kinds = [e.kind for e in events]
    assert kinds == ['start', 'end'] * (len(kinds) // 2)
    stamps = [e.stamp_ns for e in events]
    assert stamps == sorted(stamps)
    assert all(e.stamp_ns <= e.decided_ns for e in events)


@pytest.mark.parametrize('switch', [0.5, 3 / 8])
@pytest.mark.parametrize('enter,exit_', [(0.6, 0.4), (0.8, 0.2), (0.5, 0.5)])
def test_events_are_dated_at_the_truth_for_a_head_naming_its_switch_point(enter, exit_, switch):
    """A head names the label `switch` of its window back from the newest frame: the window's
    middle for `extract --straddle majority` labels, 3/8 for `--straddle newest`."""
    step = SEC // 40
    d = Decider(task='action', labels=LABELS, background='none', window_ns=W,
                switch_fraction=switch,
                config=DecisionConfig(smoothing_seconds=0.5, enter_threshold=enter,
                                      exit_threshold=exit_, min_dwell_seconds=0.25))
    onset, offset = 10 * SEC + 7 * step // 3, 14 * SEC + 7 * step // 3
    events = []
    for t in range(0, 20 * SEC, step):
        middle = t - round(W * switch)
        events += d.update(probs=one_hot(1 if onset <= middle < offset else 0, 1.0), stamp_ns=t,
                           window_start_ns=t - W, ambiguous=False).events
    assert [(e.kind, e.label) for e in events] == [('start', 'pick_up'), ('end', 'pick_up')]
    # Dated within two predictions of the truth, however late they were decided.
    assert abs(events[0].stamp_ns - onset) <= 2 * step
    assert abs(events[1].stamp_ns - offset) <= 2 * step
    assert events[0].decided_ns - onset > W * switch + SEC // 4
