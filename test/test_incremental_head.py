"""The incremental STEP head equals the whole head, alone and inside the streaming engine."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from node_helpers import LABELS, PAIRS, tiny_info

from step_ros.model import incremental
from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import HeadMeta
from step_ros.model.heads import PRESETS, build_head
from step_ros.model.incremental import IncrementalStep, exact
from step_ros.stream.engine import EngineConfig, Head, Offer, StreamingEngine

ATOL = 1e-5  # fp32 logits of order 1
EXACT = ('step', 'step_no_cls', 'step_sinusoidal', 'step_hybrid', 'step_token_wise',
         'step_pool_cls', 'step_pool_patches')
WHOLE = ('sa_probe', 'step_full_block', 'step_ln_skip', 'linear', 'attentive')
PERIOD_NS = 250_000_000
BASE_NS = 1_700_000_000_000_000_000


def random_head(name: str, *, dim: int, frames: int, patches: int, heads: int, seed: int = 0):
    """A head whose every weight is random at a scale that gives logits of order 1."""
    config = replace(PRESETS[name], num_heads=heads)
    torch.manual_seed(seed)
    module = build_head(config, dim=dim, num_frames=frames, num_patches=patches,
                        num_classes=len(LABELS))
    with torch.no_grad():
        for param in module.parameters():
            fan_in = param.shape[-1] if param.dim() > 1 else 1
            param.normal_(0.0, fan_in ** -0.5)
    return module.eval().requires_grad_(False)


def ring_of(inc: IncrementalStep, window: torch.Tensor, oldest: int) -> torch.Tensor:
    """Projections of a window (T, 1 + N, D) stored as a ring whose oldest frame is in slot
    `oldest` (a ring that has wrapped when oldest > 0)."""
    t = window.shape[0]
    projected = inc.project(window)  # (T, N, 3D), oldest to newest
    ring = torch.empty_like(projected)
    for position in range(t):
        ring[(oldest + position) % t] = projected[position]
    return ring


def whole(module, windows: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(windows)


@pytest.mark.parametrize('attention', ['fused', 'pooled-weights'])
@pytest.mark.parametrize('name', EXACT)
def test_exact_configs_equal_the_whole_head_with_wrapped_rings_and_reversal(name, attention,
                                                                            monkeypatch):
    # Both ways of computing the pooled attention: the fused kernel, and the weights averaged
    # over queries before V (used from a head width on; forced here at width 24).
    monkeypatch.setattr(incremental, 'POOLED_SCORES_HEAD_DIM',
                        10**6 if attention == 'fused' else 1)
    t, n, d = 4, 16, 96
    module = random_head(name, dim=d, frames=t, patches=n, heads=4)
    inc = IncrementalStep(module)
    torch.manual_seed(1)
    windows = torch.randn(3, t, 1 + n, d)  # three streams
    rings = [(ring_of(inc, w, oldest), oldest) for w, oldest in zip(windows, (0, 1, 3))]
    got = inc.predict(rings, reverse=True)  # (6, C): forward windows, then reversed
    want = whole(module, torch.cat([windows, windows.flip(1)]))
    err = (got - want).abs().max().item()
    assert err < ATOL, f'{name}: incremental differs from the whole head by {err:.3g}'
    assert want.abs().max() > 0.1, f'{name}: logits {want} too small to compare'
    # Order matters to these heads: reversal changes the logits by far more than ATOL.
    assert (want[:3] - want[3:]).abs().max() > 100 * ATOL, (name, want)


@pytest.mark.parametrize('dim, patches, heads, frames', [
    (96, 64, 4, 2), (96, 64, 4, 16),  # tiny ViT
    (1280, 49, 8, 3), (1280, 49, 8, 8),  # efficientnet_lite0: 49 patches + mean-CLS
    (768, 256, 12, 2),  # DINOv2 ViT-B/14 at 224 px
])
def test_backbone_shapes_equal_the_whole_head(dim, patches, heads, frames):
    module = random_head('step', dim=dim, frames=frames, patches=patches, heads=heads)
    inc = IncrementalStep(module)
    torch.manual_seed(2)
    windows = torch.randn(2, frames, 1 + patches, dim)
    rings = [(ring_of(inc, windows[0], frames - 1), frames - 1), (ring_of(inc, windows[1], 0), 0)]
    got = inc.predict(rings, reverse=True)
    want = whole(module, torch.cat([windows, windows.flip(1)]))
    err = (got - want).abs().max().item()
    assert err < ATOL, f'D={dim} N={patches} T={frames}: differs by {err:.3g}'


def test_exact_configs_are_recognised():
    for name in EXACT:
        assert exact(random_head(name, dim=24, frames=2, patches=4, heads=2)), name
    for name in WHOLE:
        module = random_head(name, dim=24, frames=2, patches=4, heads=2)
        assert not exact(module), f'{name} would be computed incrementally, but is not exact'
        if name.startswith(('step', 'sa')):
            with pytest.raises(ValueError, match='block=bare'):
                IncrementalStep(module)


def test_weights_changed_in_place_are_picked_up():
    t, n, d = 3, 4, 24
    module = random_head('step', dim=d, frames=t, patches=n, heads=2)
    inc = IncrementalStep(module)
    window = torch.randn(t, 1 + n, d)
    inc.predict([(ring_of(inc, window, 1), 1)])  # tables computed from the first weights
    module.load_state_dict(random_head('step', dim=d, frames=t, patches=n, heads=2,
                                       seed=5).state_dict())
    got = inc.predict([(ring_of(inc, window, 1), 1)])
    err = (got - whole(module, window[None])).abs().max().item()
    assert err < ATOL, f'stale projected embeddings after new weights: differs by {err:.3g}'


# Through the real StreamingEngine (tiny backbone: D=96, N=64).

T = 4


@pytest.fixture(scope='module')
def backbone():
    return FrozenBackbone.load('tiny')


def engine_of(backbone, name: str, *, streams=('',), order_check=False, seed=0):
    info = backbone.info
    module = random_head(name, dim=info.embed_dim, frames=T, patches=info.num_patches,
                         heads=4, seed=seed)
    meta = HeadMeta(task='action', labels=LABELS, symmetric_pairs=PAIRS, head=module.config,
                    num_frames=T, backbone=tiny_info().to_dict())
    config = EngineConfig(num_frames=T, window_seconds=1.0, order_check=order_check)
    return StreamingEngine(backbone, [Head(module, meta)], config, streams=streams)


def frames_of(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(count)]


class Spy:
    """Records the logits IncrementalStep.predict returns and the rings' raw windows."""

    def __init__(self, engine: StreamingEngine) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.engine = engine
        inc = engine.incremental[0]
        original = inc.predict

        def predict(rings, *, reverse=False):
            logits = original(rings, reverse=reverse)
            window = torch.stack([s.ring.window() for s in self.due()])
            self.calls.append((logits.clone(), window.clone()))
            return logits

        inc.predict = predict
        self.pending: list[str] = []

    def due(self):
        return [self.engine.streams[name] for name in self.pending]


def test_engine_single_camera_equals_the_whole_head_and_skips_its_forward(backbone):
    engine = engine_of(backbone, 'step', order_check=True)
    module = engine.heads[0].module
    forwards = []
    module.register_forward_pre_hook(lambda *_: forwards.append(1))
    assert engine.incremental[0] is not None, 'an exact STEP config is run whole'
    spy = Spy(engine)
    spy.pending = ['']
    predicted = 0
    for k, frame in enumerate(frames_of(3 * T + 1, seed=3)):  # the ring wraps several times
        result = engine.push(frame, BASE_NS + k * PERIOD_NS)
        predicted += bool(result.predictions)
    assert not forwards, f'the whole head ran {len(forwards)} times for an exact STEP config'
    assert predicted == 2 * T + 2 and len(spy.calls) == predicted, (predicted, len(spy.calls))
    for logits, window in spy.calls:
        want = whole(module, torch.cat([window, window.flip(1)]))  # forward and reversed rows
        err = (logits - want).abs().max().item()
        assert err < ATOL, f'engine logits differ from the whole head by {err:.3g}'
    probs = np.array(result.predictions[0].probs)
    last = spy.calls[-1][1]
    want = whole(module, last).softmax(-1)[0].numpy()
    assert np.abs(probs - want).max() < ATOL, (probs, want)


def test_engine_cameras_batched_equal_the_whole_head(backbone):
    cameras = ('front', 'wrist', 'overview')
    engine = engine_of(backbone, 'step_token_wise', streams=cameras, order_check=True)
    module = engine.heads[0].module
    spy = Spy(engine)
    frames = {c: frames_of(3 * T, seed=10 + i) for i, c in enumerate(cameras)}
    for k in range(3 * T):
        # The wrist camera starts two frames late: its ring is at another slot than the others.
        offers = [Offer(c, frames[c][k], BASE_NS + k * PERIOD_NS + i * 7_000_000)
                  for i, c in enumerate(cameras) if not (c == 'wrist' and k < 2)]
        spy.pending = [o.stream for o in offers
                       if engine.streams[o.stream].ring.count >= T - 1]
        results = engine.push_many(offers)
        assert [o.stream for o, r in zip(offers, results) if r.predictions] == spy.pending
    batches = [window.shape[0] for _, window in spy.calls]
    assert 3 in batches and 2 in batches, f'batches of due cameras: {batches}'
    assert {s.ring.next for s in engine.streams.values()} != {0}, 'no ring wrapped off slot 0'
    for logits, window in spy.calls:
        want = whole(module, torch.cat([window, window.flip(1)]))
        err = (logits - want).abs().max().item()
        assert err < ATOL, f'batched engine logits differ from the whole head by {err:.3g}'


@pytest.mark.parametrize('name', ['step_ln_skip', 'attentive'])
def test_engine_runs_inexact_configs_whole(backbone, name):
    engine = engine_of(backbone, name)
    assert engine.incremental == [None], name
    forwards = []
    engine.heads[0].module.register_forward_pre_hook(lambda *_: forwards.append(1))
    predicted = sum(bool(engine.push(f, BASE_NS + k * PERIOD_NS).predictions)
                    for k, f in enumerate(frames_of(T + 2, seed=4)))
    assert predicted == 3 and len(forwards) == 3, (predicted, len(forwards))
