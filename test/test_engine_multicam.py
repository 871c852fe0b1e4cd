"""One engine, several cameras: batched backbone and heads equal one engine per camera."""

import numpy as np
import pytest
from test_engine import BASE_NS, PERIOD_NS, T, _frames, load_head_random

from step_ros.model.backbone import FrozenBackbone
from step_ros.stream.engine import EngineConfig, Head, Offer, StreamingEngine

CAMERAS = ('front', 'wrist', 'overview')


@pytest.fixture(scope='module')
def backbone():
    return FrozenBackbone.load('tiny')


def _engine(backbone, streams=('',), **config) -> StreamingEngine:
    module, meta = load_head_random(T)
    cfg = EngineConfig(**{'num_frames': T, 'window_seconds': 1.0, 'top_k': 3, **config})
    return StreamingEngine(backbone, [Head(module, meta)], cfg, streams=streams)


@pytest.mark.parametrize('order_check', [False, True])
def test_batched_cameras_equal_one_engine_per_camera(backbone, order_check):
    shared = _engine(backbone, CAMERAS, order_check=order_check)
    alone = {c: _engine(backbone, order_check=order_check) for c in CAMERAS}
    frames = {c: _frames(2 * T, seed=i) for i, c in enumerate(CAMERAS)}
    # Each camera on its own clock phase; every offer is due (one frame per period).
    offsets = {c: i * 7_000_000 for i, c in enumerate(CAMERAS)}
    predicted = 0
    for k in range(2 * T):
        offers = [Offer(c, frames[c][k], BASE_NS + offsets[c] + k * PERIOD_NS, 123)
                  for c in CAMERAS]
        results = shared.push_many(offers)
        for offer, result in zip(offers, results):
            single = alone[offer.stream].push(offer.frame, offer.stamp_ns, 123)
            assert result.sampled == single.sampled and result.reset == single.reset
            assert len(result.predictions) == len(single.predictions)
            for got, want in zip(result.predictions, single.predictions):
                assert (got.label, got.stamp_ns, got.window_start_ns, got.ambiguous) == \
                    (want.label, want.stamp_ns, want.window_start_ns, want.ambiguous)
                np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
                predicted += 1
    assert predicted == len(CAMERAS) * (T + 1)
    # One backbone pass per round for all cameras, not one per camera.
    assert shared.stats['backbone_batches'] == 2 * T
    assert shared.stats['backbone_frames'] == 2 * T * len(CAMERAS)


def test_each_camera_has_its_own_window(backbone):
    engine = _engine(backbone, CAMERAS[:2])
    frames = _frames(T + 1)
    for k in range(T):  # only the front camera fills its window
        engine.push(frames[k], BASE_NS + k * PERIOD_NS, stream='front')
    assert engine.streams['front'].ring.full and engine.streams['wrist'].ring.count == 0
    results = engine.push_many([Offer('front', frames[T], BASE_NS + T * PERIOD_NS),
                                Offer('wrist', frames[0], BASE_NS + T * PERIOD_NS)])
    assert [len(r.predictions) for r in results] == [1, 0]
    assert results[0].predictions[0].frames == T and results[1].sampled
    # A stamp jump on one camera restarts that camera's window only.
    engine.push(frames[0], BASE_NS, stream='wrist')
    assert engine.streams['wrist'].ring.count == 1 and engine.streams['front'].ring.full


def test_a_failing_decode_spoils_only_its_camera(backbone):
    engine = _engine(backbone, CAMERAS[:2])

    def broken():
        raise ValueError('corrupt frame')

    frame = _frames(1)[0]
    front, wrist = engine.push_many([Offer('front', broken, BASE_NS),
                                     Offer('wrist', lambda: frame, BASE_NS)])
    assert isinstance(front.error, ValueError) and not front.sampled
    assert wrist.error is None and wrist.sampled
    assert engine.streams['front'].ring.count == 0 and engine.streams['wrist'].ring.count == 1
    # The failed frame counts as never offered: the next one of that stamp is kept.
    assert engine.due('front', BASE_NS)
    with pytest.raises(ValueError, match='corrupt frame'):
        engine.push(broken, BASE_NS, stream='front')


def test_push_many_refuses_two_frames_of_one_camera(backbone):
    engine = _engine(backbone, CAMERAS[:2])
    frame = _frames(1)[0]
    with pytest.raises(ValueError, match='one frame per stream'):
        engine.push_many([Offer('front', frame, BASE_NS), Offer('front', frame, BASE_NS + 1)])
    with pytest.raises(ValueError, match='distinct'):
        _engine(backbone, ('a', 'a'))


def test_due_changes_nothing(backbone):
    engine = _engine(backbone)
    frame = _frames(1)[0]
    assert engine.due('', BASE_NS)
    engine.push(frame, BASE_NS)
    assert not engine.due('', BASE_NS + PERIOD_NS // 2)
    assert engine.due('', BASE_NS + PERIOD_NS)
    assert engine.due('', BASE_NS + PERIOD_NS)  # asking twice: still due
    assert engine.push(frame, BASE_NS + PERIOD_NS).sampled
