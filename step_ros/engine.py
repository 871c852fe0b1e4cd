"""The streaming engine: stamp-based sampling, a feature ring buffer, heads, ambiguity.

The node, `bag-eval` and the benchmarks all drive this one class. Each sampled frame costs one
backbone pass; its tokens go into a ring of the last T frames on the inference device, and the
heads run over the ring. A naive recogniser would re-encode all T frames for every prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from step_ros.backbone import FrozenBackbone
from step_ros.checkpoint import CheckpointError, HeadMeta

# Stamps at most this far behind the newest one are transport reordering (or a raw and a
# compressed copy of one stream): the late frame is skipped. Further back is a restart (bag loop,
# simulator reset). bag-eval sorts bags with the same tolerance.
MAX_DISORDER_NS = 1_000_000_000
# A symmetric prediction is order-grounded when reversing the window moves probability towards
# its counterpart by at least this much (see `Head.order_shift`).
ORDER_MIN_SHIFT = 0.1


class NonFiniteScores(RuntimeError):
    """A head gave NaN / Inf scores for a window: no prediction is made from it."""


@dataclass(frozen=True)
class EngineConfig:
    num_frames: int = 16  # T: frames in a window
    window_seconds: float = 2.0  # time the T frames span; one frame kept every window_seconds/T
    infer_every: int = 1  # run the heads every k-th sampled frame once the window is full
    top_k: int = 5
    ambiguity_margin: float = 0.15  # symmetric top-2 closer than this are flagged ambiguous
    order_check: bool = False  # also run heads on the reversed window (no backbone cost)

    @property
    def period_ns(self) -> int:
        return int(round(self.window_seconds / self.num_frames * 1e9))


@dataclass(frozen=True)
class Prediction:
    task: str
    label: str
    label_id: int
    confidence: float
    top_labels: tuple[str, ...]
    top_scores: tuple[float, ...]
    ambiguous: bool
    ambiguous_with: str
    ambiguity_reason: str  # '' | 'margin' | 'order'
    margin: float
    frames: int
    stamp_ns: int  # newest frame
    window_start_ns: int  # oldest frame
    received_ns: int  # host clock when the newest frame was received
    timings: dict = field(default_factory=dict)  # seconds per stage of the newest frame
    probs: tuple[float, ...] = ()  # calibrated probability of every label, in label order


@dataclass
class StepResult:
    """What one pushed frame did."""

    sampled: bool
    reset: bool = False  # the buffer was cleared (stamp went back, or a gap)
    predictions: list[Prediction] = field(default_factory=list)
    frame: np.ndarray | None = None  # the decoded RGB frame, when sampled


class StampSampler:
    """Keeps one frame per period of header time, on a fixed grid, whatever the arrival rate.

    Stamps that go backwards by more than MAX_DISORDER_NS (bag loop, simulator reset) or leave a
    gap longer than `max_gap_ns` start a new sequence; the caller clears its buffer then. A frame
    slightly older than the newest one seen is late, not a restart: it is skipped.
    """

    def __init__(self, *, period_ns: int, max_gap_ns: int) -> None:
        self.period_ns = period_ns
        self.max_gap_ns = max_gap_ns
        # Stamp jitter: a frame a little early for its slot still takes the slot.
        self.tolerance_ns = period_ns // 10
        self.reset()

    def reset(self) -> None:
        self.last_seen: int | None = None
        self.last_kept: int | None = None
        self.next_due = 0

    def state(self) -> tuple:
        return self.last_seen, self.last_kept, self.next_due

    def restore(self, state: tuple) -> None:
        self.last_seen, self.last_kept, self.next_due = state

    def offer(self, stamp_ns: int) -> tuple[bool, bool]:
        """-> (keep this frame, the sequence restarted with it)."""
        if self.last_seen is not None and self.last_seen - MAX_DISORDER_NS <= stamp_ns \
                < self.last_seen:
            return False, False  # late: the window already moved past it
        restart = self.last_seen is not None and (
            stamp_ns < self.last_seen or stamp_ns - self.last_kept > self.max_gap_ns)
        if restart:
            self.reset()
        if self.last_seen is None:
            keep = True
            self.next_due = stamp_ns + self.period_ns
        elif stamp_ns >= self.next_due - self.tolerance_ns:
            keep = True
            self.next_due += self.period_ns
            if self.next_due <= stamp_ns:  # fell more than a period behind: re-anchor the grid
                self.next_due = stamp_ns + self.period_ns
        else:
            keep = False
        self.last_seen = stamp_ns
        if keep:
            self.last_kept = stamp_ns
        return keep, restart


class FeatureRing:
    """The tokens of the last T sampled frames, kept on the inference device."""

    def __init__(self, *, capacity: int, tokens: int, dim: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.buffer = torch.zeros(capacity, tokens, dim, device=device, dtype=dtype)
        self.stamps = [0] * capacity
        self.capacity = capacity
        self.clear()

    def clear(self) -> None:
        self.count = 0
        self.next = 0

    @property
    def full(self) -> bool:
        return self.count == self.capacity

    def append(self, tokens: torch.Tensor, stamp_ns: int) -> None:
        self.buffer[self.next].copy_(tokens)  # (1 + N, D), no host sync
        self.stamps[self.next] = stamp_ns
        self.next = (self.next + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def window(self) -> torch.Tensor:
        """Oldest-to-newest tokens (T, 1 + N, D) of a full ring."""
        if self.next == 0:
            return self.buffer
        return torch.cat([self.buffer[self.next:], self.buffer[:self.next]])

    def oldest_stamp(self) -> int:
        return self.stamps[self.next % self.capacity] if self.full else self.stamps[0]


class Head:
    """A loaded head with its labels and symmetric pairs."""

    def __init__(self, module: nn.Module, meta: HeadMeta,
                 pairs: tuple[tuple[str, str], ...] | None = None) -> None:
        self.module = module
        self.meta = meta
        self.task = meta.task
        self.labels = meta.labels
        self.pairs = meta.symmetric_pairs if pairs is None else pairs
        self.temperature = meta.temperature
        self.background = meta.background
        self.counterpart: dict[str, str] = {}
        for a, b in self.pairs:
            self.counterpart[a] = b
            self.counterpart[b] = a

    @staticmethod
    def order_shift(forward: np.ndarray, reverse: np.ndarray, i: int, j: int) -> float:
        """How far reversing the window moved probability from class i towards class j."""
        return float((reverse[j] - reverse[i]) - (forward[j] - forward[i]))


class StreamingEngine:
    """Frames in, predictions out: one backbone pass per sampled frame, heads over the ring."""

    def __init__(self, backbone: FrozenBackbone, heads: list[Head], config: EngineConfig,
                 *, profile: bool = False) -> None:
        if not heads:
            raise ValueError('at least one head is needed')
        for head in heads:
            if head.meta.num_frames != config.num_frames:
                raise CheckpointError(
                    f'num_frames={config.num_frames}: head {head.task!r} was trained on '
                    f'{head.meta.num_frames} frames; set num_frames to {head.meta.num_frames}')
            head.meta.check_backbone(backbone.info, source=f'head {head.task!r}')
        self.backbone = backbone
        self.heads = heads
        self.config = config
        self.profile = profile  # synchronise the device per stage to time it (benchmarks)
        self.sampler = StampSampler(period_ns=config.period_ns,
                                    max_gap_ns=int(config.window_seconds * 1e9))
        self.ring = FeatureRing(capacity=config.num_frames, tokens=backbone.tokens_per_frame,
                                dim=backbone.info.embed_dim, device=backbone.device,
                                dtype=backbone.dtype)
        self.sampled_since_full = 0
        self.stats = dict(frames=0, sampled=0, backbone_frames=0, predictions=0, resets=0,
                          non_finite=0)

    @property
    def warming_up(self) -> bool:
        return not self.ring.full

    @property
    def buffered(self) -> int:
        return self.ring.count

    def reset(self) -> None:
        self.sampler.reset()
        self.ring.clear()
        self.sampled_since_full = 0

    def _sync(self) -> float:
        if self.profile and self.backbone.device.type == 'cuda':
            torch.cuda.synchronize(self.backbone.device)
        return time.perf_counter()

    def push(self, frame: np.ndarray | Callable[[], np.ndarray], stamp_ns: int,
             received_ns: int | None = None) -> StepResult:
        """Offer one RGB uint8 frame (H, W, 3) with its header stamp.

        `frame` may be a function that decodes it: it is then called only for frames the
        sampler keeps (most camera frames are not), and if it raises, the frame counts as never
        offered, exactly as a frame rejected before `push`.
        """
        received_ns = time.time_ns() if received_ns is None else received_ns
        before = self.sampler.state()
        keep, restart = self.sampler.offer(stamp_ns)
        if keep and callable(frame):
            try:
                frame = frame()
            except BaseException:
                self.sampler.restore(before)
                raise
        self.stats['frames'] += 1
        if restart:
            self.ring.clear()
            self.sampled_since_full = 0
            self.stats['resets'] += 1
        if not keep:
            return StepResult(sampled=False, reset=restart)
        self.stats['sampled'] += 1
        t0 = self._sync()
        pixels = self.backbone.preprocess(self.backbone.to_device(frame[None]))
        t1 = self._sync()
        tokens = self.backbone.forward_pixels(pixels)  # (1, 1 + N, D)
        t2 = self._sync()
        self.stats['backbone_frames'] += 1
        self.ring.append(tokens[0], stamp_ns)
        result = StepResult(sampled=True, reset=restart, frame=frame)
        if not self.ring.full:
            return result
        self.sampled_since_full += 1
        if (self.sampled_since_full - 1) % self.config.infer_every:
            return result
        timings = dict(preprocess=t1 - t0, backbone=t2 - t1)
        result.predictions = self.predict(stamp_ns=stamp_ns, received_ns=received_ns,
                                          timings=timings)
        return result

    def predict(self, *, stamp_ns: int, received_ns: int, timings: dict | None = None
                ) -> list[Prediction]:
        """Run every head over the full ring."""
        timings = dict(timings or {})
        t0 = self._sync()
        window = self.ring.window()[None]  # (1, T, 1 + N, D)
        if self.config.order_check:
            window = torch.cat([window, window.flip(1)])  # (2, T, 1 + N, D): + reversed
        with torch.inference_mode():
            probs = [(h.module(window).float() / h.temperature).softmax(dim=-1)
                     for h in self.heads]
        probs = [p.cpu().numpy() for p in probs]  # the one host sync per prediction
        for head, p in zip(self.heads, probs):
            if not np.isfinite(p).all():  # never hand a NaN confidence to a planner
                self.stats['non_finite'] += 1
                raise NonFiniteScores(
                    f'head {head.task!r} gave non-finite scores (NaN / Inf) for the window '
                    f'ending at stamp {stamp_ns} ns: no prediction; features or weights are '
                    'broken (fp16 overflow?)')
        t1 = time.perf_counter()
        out = [self._decide(head, p, stamp_ns, received_ns) for head, p in zip(self.heads, probs)]
        t2 = time.perf_counter()
        timings.update(head=t1 - t0, post=t2 - t1)
        self.stats['predictions'] += 1
        return [_with_timings(p, timings) for p in out]

    def _decide(self, head: Head, probs: np.ndarray, stamp_ns: int, received_ns: int
                ) -> Prediction:
        forward = probs[0]
        order = np.argsort(-forward, kind='stable')
        top = order[: max(self.config.top_k, 2)]
        best, second = int(top[0]), int(top[1])
        label = head.labels[best]
        margin = float(forward[best] - forward[second])
        counterpart = head.counterpart.get(label, '')
        reason = ''
        if counterpart and head.labels[second] == counterpart and \
                margin < self.config.ambiguity_margin:
            reason = 'margin'
        elif counterpart and self.config.order_check:
            j = head.labels.index(counterpart)
            if Head.order_shift(forward, probs[1], best, j) < ORDER_MIN_SHIFT:
                reason = 'order'
        k = self.config.top_k
        return Prediction(
            task=head.task, label=label, label_id=best, confidence=float(forward[best]),
            top_labels=tuple(head.labels[i] for i in top[:k]),
            top_scores=tuple(float(forward[i]) for i in top[:k]), ambiguous=bool(reason),
            ambiguous_with=counterpart if reason else '', ambiguity_reason=reason,
            margin=margin, frames=self.ring.count, stamp_ns=stamp_ns,
            window_start_ns=self.ring.oldest_stamp(), received_ns=received_ns,
            probs=tuple(float(p) for p in forward))


def _with_timings(prediction: Prediction, timings: dict) -> Prediction:
    prediction.timings.update(timings)
    return prediction
