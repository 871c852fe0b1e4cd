"""The streaming engine: stamp sampling, resets, warm-up, infer_every, top-k, ambiguity."""

import math

import numpy as np
import pytest
import torch
from node_helpers import LABELS, PAIRS, tiny_info
from torch import nn

from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import HeadMeta, load_head
from step_ros.model.heads import PRESETS
from step_ros.stream.engine import (
    EngineConfig,
    Head,
    NonFiniteScores,
    StampSampler,
    StreamingEngine,
)

T = 4
PERIOD_NS = 250_000_000  # window_seconds=1.0 / T
BASE_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope='module')
def backbone():
    return FrozenBackbone.load('tiny')


def _meta(num_frames: int = T) -> HeadMeta:
    return HeadMeta(task='action', labels=LABELS, symmetric_pairs=PAIRS, head=PRESETS['step'],
                    num_frames=num_frames, backbone=tiny_info().to_dict())


class FixedProbs(nn.Module):
    """A head whose softmax output is `probs` whatever the window."""

    def __init__(self, probs) -> None:
        super().__init__()
        self.register_buffer('logits', torch.log(torch.tensor(probs, dtype=torch.float32)))

    def forward(self, tokens):  # (B, T, 1 + N, D) -> (B, C)
        return self.logits.expand(tokens.shape[0], -1)


class OrderSensitive(nn.Module):
    """pick_up vs put_down decided by whether features grow or shrink over the window."""

    def forward(self, tokens):  # (B, T, 1 + N, D) -> (B, C)
        feature = tokens[:, :, :, 0].float().mean(dim=2)  # (B, T): one channel, all tokens
        trend = (feature[:, -1] - feature[:, 0]) * 1e3  # (B,), flips sign when reversed
        zero = torch.zeros_like(trend)
        return torch.stack([trend, -trend, zero, zero, zero], dim=1)


def _engine(backbone, module=None, **config) -> StreamingEngine:
    if module is None:
        module, meta = load_head_random(config.get('num_frames', T))
    else:
        meta = _meta(config.get('num_frames', T))
    cfg = EngineConfig(**{'num_frames': T, 'window_seconds': 1.0, 'top_k': 3, **config})
    return StreamingEngine(backbone, [Head(module, meta)], cfg)


def load_head_random(num_frames: int):
    import tempfile
    from pathlib import Path

    from node_helpers import make_head
    with tempfile.TemporaryDirectory() as tmp:
        return load_head(make_head(Path(tmp) / 'h.safetensors', num_frames=num_frames, seed=1))


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(count)]


def _run(engine, frames, stamps, received=None):
    results = []
    for i, (frame, stamp) in enumerate(zip(frames, stamps)):
        results.append(engine.push(frame, stamp, None if received is None else received[i]))
    return results


def test_sampler_keeps_one_frame_per_period_of_header_time():
    sampler = StampSampler(period_ns=PERIOD_NS, max_gap_ns=10**9)
    stamps = [BASE_NS + round(i * 1e9 / 30) for i in range(120)]  # 30 fps for 4 s
    kept = [s for s in stamps if sampler.offer(s)[0]]
    assert len(kept) == 16, f'kept {len(kept)} of 120 frames, expected 16 (4 s / 0.25 s)'
    gaps = np.diff(kept) / 1e9
    assert gaps.min() >= 0.225 and gaps.max() <= 0.275, gaps


def test_replay_rate_does_not_change_windows(backbone):
    """Bag replay at 1x, 10x or with jittery arrival: same stamps in, same windows out."""
    frames = _frames(60)
    stamps = [BASE_NS + round(i * 1e9 / 30) for i in range(60)]
    outputs = []
    for rate in (1.0, 10.0, 0.3):
        engine = _engine(backbone)
        received = [round(i * 1e9 / 30 / rate) for i in range(60)]
        predictions = [p for r in _run(engine, frames, stamps, received) for p in r.predictions]
        outputs.append([(p.stamp_ns, p.window_start_ns, p.label, round(p.confidence, 5))
                        for p in predictions])
    assert outputs[0] and outputs[0] == outputs[1] == outputs[2], outputs


def test_warming_up_until_t_sampled_frames(backbone):
    engine = _engine(backbone)
    stamps = [BASE_NS + i * PERIOD_NS for i in range(T + 1)]
    results = _run(engine, _frames(T + 1), stamps)
    for k, result in enumerate(results[:T - 1], start=1):
        assert result.sampled and not result.predictions, f'prediction after {k} frames'
    assert engine.buffered == T and not engine.warming_up
    first = results[T - 1].predictions
    assert len(first) == 1 and first[0].frames == T
    assert first[0].stamp_ns == stamps[T - 1] and first[0].window_start_ns == stamps[0]
    assert results[T].predictions[0].window_start_ns == stamps[1]


def test_backwards_stamps_and_gaps_restart_the_window(backbone):
    engine = _engine(backbone)
    stamps = [BASE_NS + i * PERIOD_NS for i in range(T)]
    _run(engine, _frames(T), stamps)
    assert not engine.warming_up
    loop = stamps[0] - 5 * 10**9
    # Bag loop: 5 s back. The first frame back is held until a second one confirms the restart.
    held = engine.push(_frames(1)[0], loop)
    assert held.held and not held.reset and not held.sampled and not engine.warming_up
    back = engine.push(_frames(1)[0], loop + PERIOD_NS)
    assert back.reset and back.sampled and not back.held and not back.predictions
    assert back.outlier_ns is None
    assert engine.warming_up and engine.buffered == 1
    _run(engine, _frames(T - 1), [loop + (i + 2) * PERIOD_NS for i in range(T - 1)])
    assert not engine.warming_up
    gap_ns = loop + 10 * 10**9  # 10 s later: more than a window
    assert engine.push(_frames(1)[0], gap_ns).held
    gap = engine.push(_frames(1)[0], gap_ns + PERIOD_NS)
    assert gap.reset and engine.buffered == 1 and not gap.predictions
    assert engine.stats['resets'] == 2 and engine.stats['outliers'] == 0


@pytest.mark.parametrize('glitch', [0, 2_177_452_800 * 10**9, BASE_NS - 50 * 10**9],
                         ids=['zero', 'year 2038', '50 s back'])
def test_one_outlying_stamp_is_dropped_not_a_restart(backbone, glitch):
    engine = _engine(backbone)
    stamps = [BASE_NS + i * PERIOD_NS for i in range(T + 3)]
    results = _run(engine, _frames(T), stamps[:T])
    results.append(engine.push(_frames(1)[0], glitch))
    results += _run(engine, _frames(3), stamps[T:])
    assert not any(r.reset for r in results), [i for i, r in enumerate(results) if r.reset]
    assert results[T].held and not results[T].sampled
    assert results[T + 1].outlier_ns == glitch and results[T + 1].sampled
    assert [len(r.predictions) for r in results[T + 1:]] == [1, 1, 1]
    assert engine.stats['outliers'] == 1 and engine.stats['resets'] == 0
    # The window after the outlier is the one the stream would have had without it.
    assert results[-1].predictions[0].window_start_ns == stamps[3]


def test_infer_every_k_sampled_frames(backbone):
    engine = _engine(backbone, infer_every=3)
    stamps = [BASE_NS + i * PERIOD_NS for i in range(T + 7)]
    results = _run(engine, _frames(T + 7), stamps)
    with_output = [i for i, r in enumerate(results) if r.predictions]
    assert with_output == [T - 1, T + 2, T + 5], with_output


def test_one_backbone_pass_per_sampled_frame(backbone, monkeypatch):
    engine = _engine(backbone)
    batches = []
    forward = backbone.forward_pixels

    def counting(pixels):
        batches.append(pixels.shape[0])
        return forward(pixels)

    monkeypatch.setattr(backbone, 'forward_pixels', counting)
    stamps = [BASE_NS + round(i * 1e9 / 30) for i in range(90)]  # 3 s at 30 fps
    results = _run(engine, _frames(90), stamps)
    sampled = sum(r.sampled for r in results)
    predictions = sum(len(r.predictions) for r in results)
    assert sampled == 12 and predictions == sampled - T + 1
    assert batches == [1] * sampled, f'{len(batches)} backbone calls for {sampled} sampled frames'
    assert engine.stats['backbone_frames'] == sampled


def test_top_k_is_sorted_and_starts_with_the_label(backbone):
    probs = [0.1, 0.05, 0.5, 0.15, 0.2]
    engine = _engine(backbone, FixedProbs(probs), top_k=3)
    p = _run(engine, _frames(T), [BASE_NS + i * PERIOD_NS for i in range(T)])[-1].predictions[0]
    assert p.top_labels == ('open_drawer', 'wave', 'close_drawer'), p.top_labels
    assert p.label == p.top_labels[0] and p.label_id == 2
    assert list(p.top_scores) == sorted(p.top_scores, reverse=True)
    assert math.isclose(p.confidence, 0.5, abs_tol=1e-5)
    assert math.isclose(p.margin, 0.3, abs_tol=1e-5)


@pytest.mark.parametrize('probs, ambiguous, counterpart', [
    ([0.45, 0.40, 0.05, 0.05, 0.05], True, 'put_down'),  # pair, margin 0.05 < 0.15
    ([0.40, 0.45, 0.05, 0.05, 0.05], True, 'pick_up'),
    ([0.60, 0.30, 0.05, 0.03, 0.02], False, ''),  # pair, margin 0.30 >= 0.15
    ([0.45, 0.05, 0.40, 0.05, 0.05], False, ''),  # close, but not a symmetric pair
    ([0.05, 0.05, 0.05, 0.40, 0.45], False, ''),  # wave has no counterpart
])
def test_ambiguity_margin_rule(backbone, probs, ambiguous, counterpart):
    engine = _engine(backbone, FixedProbs(probs), ambiguity_margin=0.15)
    p = _run(engine, _frames(T), [BASE_NS + i * PERIOD_NS for i in range(T)])[-1].predictions[0]
    assert (p.ambiguous, p.ambiguous_with) == (ambiguous, counterpart), (probs, p)
    assert p.ambiguity_reason == ('margin' if ambiguous else '')


def test_order_check_flags_order_blind_predictions(backbone):
    stamps = [BASE_NS + i * PERIOD_NS for i in range(T)]
    blind = _engine(backbone, FixedProbs([0.9, 0.04, 0.02, 0.02, 0.02]), order_check=True)
    p = _run(blind, _frames(T), stamps)[-1].predictions[0]
    assert (p.label, p.ambiguous, p.ambiguity_reason, p.ambiguous_with) == \
        ('pick_up', True, 'order', 'put_down')
    # Frames that brighten over the window: the order-sensitive head flips when reversed.
    ramp = [np.full((48, 64, 3), 40 + 50 * i, dtype=np.uint8) for i in range(T)]
    grounded = _engine(backbone, OrderSensitive(), order_check=True)
    p = _run(grounded, ramp, stamps)[-1].predictions[0]
    # The label the head gives the frames in their true order (oldest first), and not the
    # other one of the pair: a window handed over newest first would flip it.
    expected = LABELS[int(OrderSensitive()(backbone(np.stack(ramp))[None]).argmax())]
    backwards = LABELS[int(OrderSensitive()(backbone(np.stack(ramp[::-1]))[None]).argmax())]
    assert {expected, backwards} == {'pick_up', 'put_down'}, (expected, backwards)
    assert p.label == expected and p.confidence > 0.9, (expected, p)
    assert not p.ambiguous and p.ambiguity_reason == '', p
    off = _engine(backbone, FixedProbs([0.9, 0.04, 0.02, 0.02, 0.02]), order_check=False)
    assert not _run(off, _frames(T), stamps)[-1].predictions[0].ambiguous


def test_lazy_frames_are_decoded_only_when_sampled(backbone):
    engine = _engine(backbone)
    frames = _frames(12)
    decoded = []

    def lazy(i):
        def decode():
            decoded.append(i)
            return frames[i]
        return decode

    stamps = [BASE_NS + i * PERIOD_NS // 3 for i in range(12)]  # 3 frames per sampling period
    results = [engine.push(lazy(i), s) for i, s in enumerate(stamps)]
    kept = [i for i, r in enumerate(results) if r.sampled]
    assert decoded == kept == [0, 3, 6, 9], (decoded, kept)
    assert all(r.frame is frames[i] for i, r in zip(kept, (results[i] for i in kept)))


def test_a_failing_decode_leaves_the_engine_as_if_the_frame_never_came(backbone):
    frames = _frames(10)
    stamps = [BASE_NS + i * PERIOD_NS // 2 for i in range(10)]

    def broken():
        raise ValueError('undecodable')

    failing = _engine(backbone)
    raised, outcomes = [], []
    for i, stamp in enumerate(stamps):
        if i in (2, 5):
            try:
                outcomes.append(failing.push(broken, stamp))  # decoded only if sampled
            except ValueError:
                raised.append(i)
            continue
        outcomes.append(failing.push(frames[i], stamp))
    # Frame 2 takes a sampling slot and fails; frame 3 then takes that slot, so frame 5 is
    # skipped without being decoded.
    assert raised == [2], raised
    reference = _engine(backbone)
    expected = [reference.push(frames[i], s) for i, s in enumerate(stamps) if i not in raised]
    assert [r.sampled for r in outcomes] == [r.sampled for r in expected]
    assert [[p.stamp_ns for p in r.predictions] for r in outcomes] == \
        [[p.stamp_ns for p in r.predictions] for r in expected]
    assert any(r.predictions for r in expected), 'the sequence must reach full windows'
    assert failing.stats == reference.stats, (failing.stats, reference.stats)


def test_slightly_late_frames_are_skipped_not_a_restart(backbone):
    engine = _engine(backbone)
    step = PERIOD_NS // 8  # a 32 Hz camera
    stamps = [BASE_NS + i * step for i in range(8 * (T + 2))]
    stamps[20], stamps[21] = stamps[21], stamps[20]  # two frames swapped in transport
    results = _run(engine, _frames(len(stamps)), stamps)
    assert not any(r.reset for r in results), [i for i, r in enumerate(results) if r.reset]
    assert engine.stats['resets'] == 0 and not engine.warming_up
    late = engine.push(_frames(1)[0], stamps[-1] - 900_000_000)  # 0.9 s behind the newest
    assert not late.sampled and not late.reset and not engine.warming_up


def test_the_ring_hands_the_heads_its_frames_oldest_first(backbone):
    engine = _engine(backbone)
    frames = _frames(T + 3, seed=5)  # the ring wraps: its write position is not 0
    _run(engine, frames, [BASE_NS + i * PERIOD_NS for i in range(T + 3)])
    assert engine.ring.next != 0
    expected = backbone(np.stack(frames[-T:]))  # (T, 1 + N, D), oldest first
    assert torch.allclose(engine.ring.window(), expected, atol=1e-5), \
        'ring window is not the last T frames, oldest first'
    assert engine.ring.oldest_stamp() == BASE_NS + 3 * PERIOD_NS


def test_top_k_of_one_gives_exactly_one_label(backbone):
    engine = _engine(backbone, FixedProbs([0.1, 0.05, 0.5, 0.15, 0.2]), top_k=1)
    p = _run(engine, _frames(T), [BASE_NS + i * PERIOD_NS for i in range(T)])[-1].predictions[0]
    assert p.top_labels == ('open_drawer',) and len(p.top_scores) == 1, p
    assert math.isclose(p.margin, 0.3, abs_tol=1e-5), p  # margin still uses the runner-up


class NonFinite(nn.Module):
    """A broken head: NaN logits."""

    def forward(self, tokens):  # (B, T, 1 + N, D) -> (B, C)
        return torch.full((tokens.shape[0], len(LABELS)), float('nan'))


def test_a_non_finite_score_is_never_returned(backbone):
    engine = _engine(backbone, NonFinite())
    stamps = [BASE_NS + i * PERIOD_NS for i in range(T)]
    results = _run(engine, _frames(T - 1), stamps[:-1])
    assert not any(r.predictions for r in results)
    with pytest.raises(NonFiniteScores, match="head 'action' gave non-finite scores"):
        engine.push(_frames(1)[0], stamps[-1])
    assert engine.stats['non_finite'] == 1 and engine.stats['predictions'] == 0


def test_head_temperature_scales_the_logits_and_probs_cover_every_label(backbone):
    import dataclasses

    probs = np.array([0.6, 0.2, 0.1, 0.05, 0.05])
    meta = dataclasses.replace(_meta(), temperature=2.0)
    cfg = EngineConfig(num_frames=T, window_seconds=1.0, top_k=3)
    engine = StreamingEngine(backbone, [Head(FixedProbs(probs), meta)], cfg)
    out = [p for r in _run(engine, _frames(T), [BASE_NS + i * PERIOD_NS for i in range(T)])
           for p in r.predictions]
    expected = np.sqrt(probs) / np.sqrt(probs).sum()  # softmax(log(p) / 2)
    assert len(out) == 1 and len(out[0].probs) == len(LABELS)
    assert np.allclose(out[0].probs, expected, atol=1e-6), out[0].probs
    assert math.isclose(out[0].confidence, expected[0], rel_tol=1e-5)
