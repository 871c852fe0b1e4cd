"""bag-eval's decisions end like the live node's: an action still open when the recording ends
ENDs at its last frame, as the node ends it when its input stops."""

import numpy as np

from step_ros.evaluate.stream_eval import StreamRecord, decide
from step_ros.stream.decision import Decider, DecisionConfig

S = 1_000_000_000
LABELS = ('none', 'A', 'B')
W = 2 * S


def _decider() -> Decider:
    config = DecisionConfig(smoothing_seconds=0.0, enter_threshold=0.6, exit_threshold=0.4,
                            min_dwell_seconds=0.0, min_confidence=0.4)
    return Decider(task='t', labels=LABELS, background='none', config=config, window_ns=W)


def _records() -> list[StreamRecord]:
    probs = np.array([0.05, 0.9, 0.05])  # A, held to the end
    return [StreamRecord(stamp_ns=t, window_start_ns=t - W, label='A', probs=probs,
                         ambiguous=False) for t in range(2 * S, 6 * S + 1, S // 4)]


def test_an_action_open_at_the_end_ends_at_the_last_frame():
    records = _records()
    last_frame = 6 * S + S // 10  # frames after the last sampled one
    _, events = decide(records, decider=_decider(), last_frame_ns=last_frame)
    assert [(e.kind, e.label) for e in events] == [('start', 'A'), ('end', 'A')], events
    end = events[-1]
    assert (end.stamp_ns, end.decided_ns) == (last_frame, last_frame), end
    assert end.duration_s == (last_frame - events[0].stamp_ns) / 1e9
    # Without the recording's end, the action stays open.
    _, events = decide(records, decider=_decider())
    assert [e.kind for e in events] == ['start'], events
