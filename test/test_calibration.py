"""Temperature scaling, ECE and the reliability diagram, against hand-computed values."""

import math

import numpy as np
import pytest

from step_ros.stream.calibration import (
    ece,
    fit_temperature,
    nll,
    plot_reliability,
    reliability,
    softmax,
)


def test_ece_by_hand():
    # Bins of width 1/15: 0.95 and 0.99 share the last bin, 0.5 and 0.52 share bin 7.
    conf = np.array([0.95, 0.99, 0.5, 0.52])
    correct = np.array([1, 0, 1, 1])
    # last bin: mean conf 0.97, accuracy 0.5 -> |0.47| * 2/4; bin 7: conf 0.51, acc 1 -> 0.49 * 2/4
    assert math.isclose(ece(conf, correct), 0.47 * 0.5 + 0.49 * 0.5, rel_tol=1e-9)
    r = reliability(conf, correct)
    assert r['bins'] == 15 and sum(r['count']) == 4 and r['count'][14] == 2 and r['count'][7] == 2
    assert ece(np.array([1 / 15, 0.0]), np.array([1, 1])) == pytest.approx((1 - 1 / 30))
    assert ece(np.array([]), np.array([])) is None


def test_perfectly_calibrated_bins_have_zero_ece():
    conf = np.full(10, 0.7)
    correct = np.array([1] * 7 + [0] * 3)
    assert ece(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_fitted_temperature_recovers_the_one_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    true_t = 2.5  # labels drawn from softmax(logits / 2.5): the raw logits are overconfident
    probs = softmax(logits, true_t)
    targets = np.array([rng.choice(5, p=p) for p in probs])
    t = fit_temperature(logits, targets)
    assert abs(t - true_t) < 0.2, t
    assert nll(logits, targets, t) <= min(nll(logits, targets, v) for v in (1.0, 2.0, 3.0))
    before = ece(softmax(logits).max(1), softmax(logits).argmax(1) == targets)
    after = ece(softmax(logits, t).max(1), softmax(logits, t).argmax(1) == targets)
    assert after < 0.03 < before, (before, after)


def test_fit_temperature_rejects_bad_shapes():
    with pytest.raises(ValueError, match='logits'):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, dtype=int))


def test_reliability_png(tmp_path):
    curve = reliability(np.array([0.9, 0.6]), np.array([1, 0]))
    path = plot_reliability(tmp_path / 'r.png', {'a': curve}, title='t')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
