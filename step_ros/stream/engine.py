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

from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import CheckpointError, HeadMeta
from step_ros.model.incremental import IncrementalStep, exact

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
    held: bool = False  # off the time line: kept back until the next frame confirms a restart
    outlier_ns: int | None = None  # stamp of a held frame this one showed to be a lone outlier
    predictions: list[Prediction] = field(default_factory=list)
    frame: np.ndarray | None = None  # the decoded RGB frame, when sampled
    error: Exception | None = None  # push_many: the frame's decode raised this (not offered)


class StampSampler:
    """Keeps one frame per period of header time, on a fixed grid, whatever the arrival rate.

    Stamps that go backwards by more than MAX_DISORDER_NS (bag loop, simulator reset) or leave a
    gap longer than `max_gap_ns` start a new sequence; the caller clears its buffer then. Such a
    break needs confirmation: the first frame off the time line is held back, and only a second
    one off the old line, not before the held one, restarts the sequence (with that second
    frame). When the next frame is back on the old line instead, the held one was a lone outlier
    (a glitched stamp): it is dropped (`dropped_outlier_ns`) and the sequence goes on. A frame
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
        self.held: int | None = None  # a frame off the time line, awaiting confirmation
        self.dropped_outlier_ns: int | None = None  # set by the offer that dropped one

    def state(self) -> tuple:
        return self.last_seen, self.last_kept, self.next_due, self.held, self.dropped_outlier_ns

    def restore(self, state: tuple) -> None:
        self.last_seen, self.last_kept, self.next_due, self.held, self.dropped_outlier_ns = state

    def offer(self, stamp_ns: int) -> tuple[bool, bool]:
        """-> (keep this frame, the sequence restarted with it)."""
        held, self.held, self.dropped_outlier_ns = self.held, None, None
        breaks = self.last_seen is not None and (
            stamp_ns < self.last_seen - MAX_DISORDER_NS
            or stamp_ns - self.last_kept > self.max_gap_ns)
        restart = breaks and held is not None and stamp_ns >= held - MAX_DISORDER_NS
        if not restart:
            self.dropped_outlier_ns = held
            if breaks:
                self.held = stamp_ns
                return False, False
        if self.last_seen is not None and self.last_seen - MAX_DISORDER_NS <= stamp_ns \
                < self.last_seen:
            return False, False  # late: the window already moved past it
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
        self.switch_fraction = meta.switch_fraction
        self.counterpart: dict[str, str] = {}
        for a, b in self.pairs:
            self.counterpart[a] = b
            self.counterpart[b] = a

    @staticmethod
    def order_shift(forward: np.ndarray, reverse: np.ndarray, i: int, j: int) -> float:
        """How far reversing the window moved probability from class i towards class j."""
        return float((reverse[j] - reverse[i]) - (forward[j] - forward[i]))


@dataclass(frozen=True)
class Offer:
    """One frame offered to one stream of a StreamingEngine.push_many call."""

    stream: str
    frame: np.ndarray | Callable[[], np.ndarray]  # RGB uint8 (H, W, 3), or a function decoding it
    stamp_ns: int
    received_ns: int | None = None


class Stream:
    """What one camera keeps: its stamp sampler and its feature ring."""

    def __init__(self, name: str, *, config: EngineConfig, tokens: int, dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.name = name
        self.sampler = StampSampler(period_ns=config.period_ns,
                                    max_gap_ns=int(config.window_seconds * 1e9))
        self.ring = FeatureRing(capacity=config.num_frames, tokens=tokens, dim=dim,
                                device=device, dtype=dtype)
        # Per head computed incrementally: its patch projections (T, N, 3D), in the ring's slots.
        self.projected: list[torch.Tensor | None] = []
        self.sampled_since_full = 0

    def reset(self) -> None:
        self.sampler.reset()
        self.ring.clear()
        self.sampled_since_full = 0


class StreamingEngine:
    """Frames in, predictions out: one backbone pass per sampled frame, heads over the ring.

    One engine serves several cameras (`streams`): each has its own sampler and ring, and the
    frames of several cameras offered together (`push_many`) go through the backbone as one
    batch, the heads as one batch over the cameras whose windows are due.
    """

    def __init__(self, backbone: FrozenBackbone, heads: list[Head], config: EngineConfig,
                 *, profile: bool = False, streams: tuple[str, ...] = ('',)) -> None:
        if not heads:
            raise ValueError('at least one head is needed')
        if not streams or len(set(streams)) != len(streams):
            raise ValueError(f'streams={streams!r}: need at least one, all distinct')
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
        self.streams = {name: Stream(name, config=config, tokens=backbone.tokens_per_frame,
                                     dim=backbone.info.embed_dim, device=backbone.device,
                                     dtype=backbone.dtype)
                        for name in streams}
        # Exact STEP heads run incrementally: each frame projected once, attention per window.
        self.incremental = [IncrementalStep(h.module) if exact(h.module) else None
                            for h in heads]
        for stream in self.streams.values():
            stream.projected = [
                None if inc is None else torch.zeros(
                    config.num_frames, backbone.tokens_per_frame - 1,
                    3 * backbone.info.embed_dim, device=backbone.device, dtype=inc.dtype)
                for inc in self.incremental]
        self.default_stream = streams[0]
        self.stats = dict(frames=0, sampled=0, backbone_frames=0, predictions=0, resets=0,
                          non_finite=0, backbone_batches=0, outliers=0)

    # The first stream's state, for the single-camera users (node, bag-eval, demo, tests).
    @property
    def sampler(self) -> StampSampler:
        return self.streams[self.default_stream].sampler

    @property
    def ring(self) -> FeatureRing:
        return self.streams[self.default_stream].ring

    @property
    def warming_up(self) -> bool:
        return not self.ring.full

    @property
    def buffered(self) -> int:
        return self.ring.count

    def reset(self) -> None:
        for stream in self.streams.values():
            stream.reset()

    def end_stream(self, stream: str) -> int | None:
        """A camera stopped sending: clear its window; -> the stamp of its newest frame, or None
        when it had no frame since it last (re)started. Its next frame starts a new window."""
        last = self.streams[stream].sampler.last_seen
        self.streams[stream].reset()
        return last

    def due(self, stream: str, stamp_ns: int) -> bool:
        """Whether `stream`'s sampler would keep a frame of this stamp (nothing changes)."""
        sampler = self.streams[stream].sampler
        before = sampler.state()
        keep, _ = sampler.offer(stamp_ns)
        sampler.restore(before)
        return keep

    def _sync(self) -> float:
        if self.profile and self.backbone.device.type == 'cuda':
            torch.cuda.synchronize(self.backbone.device)
        return time.perf_counter()

    def push(self, frame: np.ndarray | Callable[[], np.ndarray], stamp_ns: int,
             received_ns: int | None = None, *, stream: str | None = None) -> StepResult:
        """Offer one RGB uint8 frame (H, W, 3) with its header stamp.

        `frame` may be a function that decodes it: it is then called only for frames the
        sampler keeps (most camera frames are not), and if it raises, the frame counts as never
        offered, exactly as a frame rejected before `push`.
        """
        offer = Offer(self.default_stream if stream is None else stream, frame, stamp_ns,
                      received_ns)
        result = self.push_many([offer])[0]
        if result.error is not None:
            raise result.error
        return result

    def push_many(self, offers: list[Offer]) -> list[StepResult]:
        """Offer one frame to each of several streams; one result per offer, in order.

        The kept frames go through the backbone as one batch, and the heads run as one batch
        over the streams whose windows are then due. A frame whose decode function raises gets
        a result with `error` set and counts as never offered; the other offers go on.
        """
        now_ns = time.time_ns()
        names = [offer.stream for offer in offers]
        if len(set(names)) != len(names):
            raise ValueError(f'push_many: one frame per stream at a time, got streams {names}')
        results: list[StepResult] = []
        kept: list[tuple[Stream, Offer, np.ndarray, StepResult]] = []
        for offer in offers:
            stream = self.streams[offer.stream]
            before = stream.sampler.state()
            keep, restart = stream.sampler.offer(offer.stamp_ns)
            frame = offer.frame
            if keep and callable(frame):
                try:
                    frame = frame()
                except Exception as exc:
                    stream.sampler.restore(before)
                    results.append(StepResult(sampled=False, error=exc))
                    continue
            self.stats['frames'] += 1
            if restart:
                stream.ring.clear()
                stream.sampled_since_full = 0
                self.stats['resets'] += 1
            outlier = stream.sampler.dropped_outlier_ns
            self.stats['outliers'] += outlier is not None
            result = StepResult(sampled=keep, reset=restart, frame=frame if keep else None,
                                held=stream.sampler.held is not None, outlier_ns=outlier)
            results.append(result)
            if keep:
                kept.append((stream, offer, frame, result))
        if not kept:
            return results
        self.stats['sampled'] += len(kept)
        t0 = self._sync()
        frames = [frame for _, _, frame, _ in kept]
        if all(f.shape == frames[0].shape for f in frames):  # one upload, one preprocess call
            batch = frames[0][None] if len(frames) == 1 else np.stack(frames)
            pixels = self.backbone.preprocess(self.backbone.to_device(batch))
        else:  # cameras of different sizes: each resized to the model's input on its own
            pixels = torch.cat([self.backbone.preprocess(self.backbone.to_device(f[None]))
                                for f in frames])
        t1 = self._sync()
        tokens = self.backbone.forward_pixels(pixels)  # (B, 1 + N, D)
        t2 = self._sync()
        self.stats['backbone_frames'] += len(kept)
        self.stats['backbone_batches'] += 1
        projected = [None if inc is None else inc.project(tokens)  # (B, N, 3D) per head
                     for inc in self.incremental]
        t3 = self._sync()
        due = []
        for i, (stream, offer, _, result) in enumerate(kept):
            for ring, rows in zip(stream.projected, projected):
                if rows is not None:
                    ring[stream.ring.next].copy_(rows[i])  # the slot the tokens go to
            stream.ring.append(tokens[i], offer.stamp_ns)
            if not stream.ring.full:
                continue
            stream.sampled_since_full += 1
            if (stream.sampled_since_full - 1) % self.config.infer_every == 0:
                due.append((stream, offer, result))
        if due:
            timings = dict(preprocess=t1 - t0, backbone=t2 - t1, project=t3 - t2)
            predictions = self._predict([stream for stream, _, _ in due],
                                        stamps_ns=[offer.stamp_ns for _, offer, _ in due],
                                        received_ns=[now_ns if offer.received_ns is None
                                                     else offer.received_ns
                                                     for _, offer, _ in due],
                                        timings=timings)
            for (_, _, result), prediction in zip(due, predictions):
                result.predictions = prediction
        return results

    def predict(self, *, stamp_ns: int, received_ns: int, timings: dict | None = None
                ) -> list[Prediction]:
        """Run every head over the default stream's full ring."""
        return self._predict([self.streams[self.default_stream]], stamps_ns=[stamp_ns],
                             received_ns=[received_ns], timings=timings)[0]

    def _predict(self, streams: list[Stream], *, stamps_ns: list[int],
                 received_ns: list[int], timings: dict | None = None
                 ) -> list[list[Prediction]]:
        """Every head over the full rings of `streams`, as one batch: per stream, per head."""
        timings = dict(timings or {})
        t0 = self._sync()
        reverse = self.config.order_check
        window = None
        if not all(self.incremental):  # some head runs whole, over the raw tokens
            if len(streams) == 1:
                window = streams[0].ring.window()[None]  # (1, T, 1 + N, D), no copy if aligned
            else:
                window = torch.stack([stream.ring.window() for stream in streams])  # (B, T, ..)
            if reverse:
                window = torch.cat([window, window.flip(1)])  # (2B, T, 1 + N, D): + reversed
        with torch.inference_mode():
            # The ring's next slot holds its oldest frame; rows as the window's (+ reversed).
            logits = [h.module(window) if inc is None else
                      inc.predict([(s.projected[j], s.ring.next) for s in streams],
                                  reverse=reverse)
                      for j, (h, inc) in enumerate(zip(self.heads, self.incremental))]
            probs = [(z.float() / h.temperature).softmax(dim=-1)
                     for h, z in zip(self.heads, logits)]
        probs = [p.cpu().numpy() for p in probs]  # the one host sync per batch
        for head, p in zip(self.heads, probs):
            if not np.isfinite(p).all():  # never hand a NaN confidence to a planner
                self.stats['non_finite'] += 1
                raise NonFiniteScores(
                    f'head {head.task!r} gave non-finite scores (NaN / Inf) for the window '
                    f'ending at stamp {max(stamps_ns)} ns: no prediction; features or weights '
                    'are broken (fp16 overflow?)')
        t1 = time.perf_counter()
        batch = len(streams)
        out = []
        for b, stream in enumerate(streams):
            out.append([self._decide(head, p[b::batch], stream.ring, stamps_ns[b],
                                     received_ns[b])
                        for head, p in zip(self.heads, probs)])
        t2 = time.perf_counter()
        # head: the new frames' projections (incremental heads) and the heads over the windows
        timings.update(head=timings.pop('project', 0.0) + t1 - t0, post=t2 - t1)
        self.stats['predictions'] += batch
        return [[_with_timings(p, timings) for p in per_stream] for per_stream in out]

    def _decide(self, head: Head, probs: np.ndarray, ring: FeatureRing, stamp_ns: int,
                received_ns: int) -> Prediction:
        forward = probs[0]
        order = np.argsort(-forward, kind='stable')
        top = order[: max(self.config.top_k, 2)]
        best, second = int(top[0]), int(top[1])
        label = head.labels[best]
        margin = float(forward[best] - forward[second])
        counterpart = head.counterpart.get(label, '')
        reason = ambiguity(forward, probs[1] if self.config.order_check else None,
                           best=best, second=second, labels=head.labels,
                           counterpart=head.counterpart,
                           margin=self.config.ambiguity_margin)
        k = self.config.top_k
        return Prediction(
            task=head.task, label=label, label_id=best, confidence=float(forward[best]),
            top_labels=tuple(head.labels[i] for i in top[:k]),
            top_scores=tuple(float(forward[i]) for i in top[:k]), ambiguous=bool(reason),
            ambiguous_with=counterpart if reason else '', ambiguity_reason=reason,
            margin=margin, frames=ring.count, stamp_ns=stamp_ns,
            window_start_ns=ring.oldest_stamp(), received_ns=received_ns,
            probs=tuple(float(p) for p in forward))


def ambiguity(forward: np.ndarray, reverse: np.ndarray | None, *, best: int, second: int,
              labels: tuple[str, ...], counterpart: dict[str, str], margin: float) -> str:
    """Why a window's top-1 (`best`; `second` the runner-up) is ambiguous: 'margin' (its
    symmetric counterpart is second and closer than `margin`), 'order' (with the reversed
    window's probabilities: reversing the frames does not move probability towards the
    counterpart), or '' when it is not."""
    other = counterpart.get(labels[best], '')
    if not other:
        return ''
    if labels[second] == other and float(forward[best] - forward[second]) < margin:
        return 'margin'
    if reverse is not None and Head.order_shift(
            forward, reverse, best, labels.index(other)) < ORDER_MIN_SHIFT:
        return 'order'
    return ''


def _with_timings(prediction: Prediction, timings: dict) -> Prediction:
    prediction.timings.update(timings)
    return prediction
