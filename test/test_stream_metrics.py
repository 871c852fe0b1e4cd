"""Stream metrics against hand-computed values (edit score and F1@IoU as in MS-TCN)."""

import math

import numpy as np
import pytest

from step_ros.evaluate.stream_metrics import (
    average_precision,
    changes,
    edit_score,
    event_scores,
    f1_at_iou,
    frame_map,
    levenshtein,
    segments,
)

S = 1_000_000_000


def test_segments_and_levenshtein():
    assert segments(list('AABBBA')) == [('A', 0, 2), ('B', 2, 5), ('A', 5, 6)]
    assert segments(list('nnAAn'), background='n') == [('A', 2, 4)]
    assert segments([]) == []
    assert levenshtein('ABC', 'ABAC') == 1 and levenshtein('', 'AB') == 2
    assert levenshtein('kitten', 'sitting') == 3


def test_edit_score_by_hand():
    truth = list('AAAABBBBCCCC')
    assert edit_score(truth, truth) == 100.0
    # Segments A B A C against A B C: one insertion over 4 -> 75.
    assert edit_score(list('AAABBBBACCCC'), truth) == pytest.approx(75.0)
    # Background is left out: A A against A -> 50.
    assert edit_score(list('AnAA'), list('nnAA'), background='n') == pytest.approx(50.0)


def test_f1_at_iou_by_hand():
    truth = list('AAAABBBB')
    pred = list('AABBBBBB')  # A: IoU 2/4 = 0.5, B: IoU 4/6 = 0.667
    assert f1_at_iou(pred, truth, 0.5) == pytest.approx(1.0)
    assert f1_at_iou(pred, truth, 0.55) == pytest.approx(0.5)  # A fails: P = R = 1/2
    assert f1_at_iou(pred, truth, 0.75) == 0.0
    # A second segment matching an already matched truth is a false positive.
    assert f1_at_iou(list('AABAA'), list('AAAAA'), 0.25) == pytest.approx(0.5)  # P 1/3, R 1
    assert f1_at_iou(list('AnAA'), list('nnAA'), 0.5, background='n') == pytest.approx(2 / 3)


def test_changes_and_average_precision():
    assert changes(list('AABBA')) == 2 and changes([]) == 0
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, np.zeros(4)) is None
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    # Only class 'a' counts (b is background): scores .9 .2 .6, positives frames 0 and 2 -> 1.
    assert frame_map(probs, ['a', 'b', 'a'], ('a', 'b'), background='b') == pytest.approx(1.0)


def test_event_scores_by_hand():
    true_segments = [('A', 10 * S, 12 * S), ('B', 15 * S, 17 * S)]
    starts = [('A', int(10.5 * S), 11 * S),  # true positive, latency 1 s
              ('A', int(10.6 * S), int(11.2 * S)),  # duplicate
              ('B', 18 * S, int(18.5 * S))]  # 3 s off: false, in background
    r = event_scores(starts, true_segments, tolerance_ns=S, background_ns=30 * S,
                     background_hits=[False, False, True],
                     offsets=[int(11.75 * S), None, 19 * S])
    assert (r['starts'], r['start_true_positives']) == (3, 1)
    assert r['start_precision'] == pytest.approx(1 / 3, abs=1e-4)
    assert r['start_recall'] == pytest.approx(0.5)
    assert r['start_f1'] == pytest.approx(0.4)
    assert r['onset_latency_s'] == {'p50': 1.0, 'p90': 1.0}
    # Only the true positive is dated: onset 0.5 s late, offset 0.25 s early.
    assert r['onset_error_s'] == {'p10': 0.5, 'p50': 0.5, 'p90': 0.5}
    assert r['offset_error_s'] == {'p10': -0.25, 'p50': -0.25, 'p90': -0.25}
    assert math.isclose(r['false_starts_per_min_background'], 2.0)
    with pytest.raises(ValueError, match='one of each per START'):
        event_scores(starts, true_segments, tolerance_ns=S, background_ns=30 * S,
                     background_hits=[False, False, True], offsets=[None])
    empty = event_scores([], true_segments, tolerance_ns=S, background_ns=0,
                         background_hits=[], offsets=[])
    assert empty['start_precision'] is None and empty['start_recall'] == 0.0
    assert empty['false_starts_per_min_background'] is None
    assert empty['onset_error_s'] == {'p10': None, 'p50': None, 'p90': None}
