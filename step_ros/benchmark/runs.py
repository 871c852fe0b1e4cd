"""The measurements of `bench`, one function per section of the report.

Timed loops drive the real StreamingEngine (profile=False) from the outside; only the per-stage
section turns on the engine's profiling, which synchronises the device between stages.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from step_ros.benchmark.measure import Clock, count_flops, repeat, summary
from step_ros.benchmark.subjects import Frames, make_engine
from step_ros.model.backbone import FrozenBackbone
from step_ros.stream.decode import decode_compressed, decode_raw
from step_ros.stream.engine import EngineConfig, Head, Offer, StreamingEngine

STAGES = ('preprocess', 'backbone', 'head', 'post')


@dataclass(frozen=True)
class Budget:
    """How long each timed loop runs: warm-up calls, then min..max timed calls within seconds."""

    warmup: int
    min_iters: int
    max_iters: int
    seconds: float

    def run(self, fn, clock: Clock) -> list[float]:
        return repeat(fn, clock=clock, warmup=self.warmup, min_iters=self.min_iters,
                      max_iters=self.max_iters, budget_s=self.seconds)


def _filled_engine(backbone: FrozenBackbone, head: Head, frames: Frames, *, num_frames: int,
                   profile: bool = False) -> StreamingEngine:
    """An engine whose ring holds T-1 frames: every later push predicts."""
    engine = make_engine(backbone, head, num_frames=num_frames, profile=profile)
    for i in range(num_frames - 1):
        engine.push(frames.frame(i), frames.stamp(i))
    return engine


def _streaming_loop(engine: StreamingEngine, frames: Frames, *, offset: int, sink: list):
    def step(i: int) -> None:
        result = engine.push(frames.frame(offset + i), frames.stamp(offset + i))
        if not result.predictions:
            raise RuntimeError(f'bench: push {offset + i} did not predict ({engine.stats})')
        sink.append(result.predictions[0])
    return step


def streaming(backbone: FrozenBackbone, head: Head, frames: Frames, *, num_frames: int,
              budget: Budget, clock: Clock) -> dict:
    """Per-prediction (= per new sampled frame) time of the engine, end to end."""
    engine = _filled_engine(backbone, head, frames, num_frames=num_frames)
    before = dict(engine.stats)
    times = budget.run(_streaming_loop(engine, frames, offset=num_frames - 1, sink=[]), clock)
    predictions = engine.stats['predictions'] - before['predictions']
    passes = engine.stats['backbone_frames'] - before['backbone_frames']
    return dict(per_prediction=summary(times), predictions=predictions,
                backbone_passes_per_prediction=passes / predictions)


def naive(backbone: FrozenBackbone, head: Head, frames: Frames, *, num_frames: int,
          budget: Budget, clock: Clock) -> dict:
    """The baseline: keep the last T frames and re-encode all of them for every prediction.

    The T frames go through the backbone as one batch (the baseline's best case) and stay on the
    device as uint8, so only the re-encoding differs from the engine.
    """
    window: deque[torch.Tensor] = deque(maxlen=num_frames)
    for i in range(num_frames - 1):
        window.append(backbone.to_device(frames.frame(i)[None]))  # (1, H, W, 3)
    count = dict(backbone_frames=0, predictions=0)

    def step(i: int) -> None:
        window.append(backbone.to_device(frames.frame(num_frames - 1 + i)[None]))
        batch = torch.cat(list(window))  # (T, H, W, 3) uint8
        tokens = backbone.forward_pixels(backbone.preprocess(batch))  # (T, 1 + N, D)
        with torch.inference_mode():
            probs = head.module(tokens[None]).float().softmax(dim=-1)  # (1, C)
        probs.cpu().numpy()
        count['backbone_frames'] += tokens.shape[0]
        count['predictions'] += 1

    times = budget.run(step, clock)
    return dict(per_prediction=summary(times), predictions=count['predictions'],
                backbone_passes_per_prediction=count['backbone_frames'] / count['predictions'])


def compare(fast: dict, slow: dict) -> dict:
    """Streaming and naive results side by side, with the ratios."""
    return dict(streaming=fast, naive=slow,
                speedup_mean=slow['per_prediction']['mean_ms'] / fast['per_prediction']['mean_ms'],
                speedup_p50=slow['per_prediction']['p50_ms'] / fast['per_prediction']['p50_ms'],
                passes_ratio=(slow['backbone_passes_per_prediction']
                              / fast['backbone_passes_per_prediction']))


def stages(backbone: FrozenBackbone, head: Head, frames: Frames, *, num_frames: int,
           budget: Budget, clock: Clock) -> dict:
    """p50 / p99 of decode and of each engine stage (profiled engine: device synced per stage)."""
    h, w = frames.pool.shape[1:3]
    raw = frames.frame(0).tobytes()
    jpeg = frames.jpeg()
    cpu = Clock(torch.device('cpu'))
    out = {
        f'decode_rgb8_{w}x{h}': summary(budget.run(
            lambda i: decode_raw('rgb8', h, w, w * 3, raw), cpu)),
        f'decode_jpeg_{w}x{h}': summary(budget.run(
            lambda i: decode_compressed('jpeg', jpeg), cpu)),
    }
    engine = _filled_engine(backbone, head, frames, num_frames=num_frames, profile=True)
    predictions: list = []
    pushes = budget.run(_streaming_loop(engine, frames, offset=num_frames - 1,
                                        sink=predictions), clock)
    timed = predictions[budget.warmup:]
    for stage in STAGES:
        out[stage] = summary([p.timings[stage] for p in timed])
    out['engine_push_profiled'] = summary(pushes)
    out['jpeg_bytes'] = len(jpeg)
    return out


def flops(backbone: FrozenBackbone, head: Head, *, num_frames: int) -> dict:
    """Counted GFLOPs of one backbone frame and of one head prediction."""
    frame = torch.zeros(1, 480, 640, 3, dtype=torch.uint8)
    pixels = backbone.preprocess(backbone.to_device(frame))  # (1, 3, S, S)
    window = torch.zeros(1, num_frames, backbone.tokens_per_frame, backbone.info.embed_dim,
                         device=backbone.device, dtype=backbone.dtype)  # (1, T, 1 + N, D)
    return dict(backbone_gflops_per_frame=count_flops(lambda: backbone.forward_pixels(pixels))
                / 1e9,
                head_gflops_per_prediction=count_flops(lambda: head.module(window)) / 1e9)


def achieved(counted: dict, *, stage_times: dict, pairs: dict, num_frames: int,
             peak_tflops: float | None, precision: str) -> dict:
    """Achieved TFLOP/s of each part from counted FLOPs and p50 times; fraction of the peak."""
    bb, hd = counted['backbone_gflops_per_frame'], counted['head_gflops_per_prediction']

    def rate(gflops: float, ms: float | None) -> float | None:
        return None if not ms else gflops / ms  # GFLOP per ms == TFLOP/s

    out = dict(backbone=rate(bb, stage_times['backbone']['p50_ms']),
               head=rate(hd, stage_times['head']['p50_ms']),
               streaming_end_to_end=rate(bb + hd,
                                         pairs['streaming']['per_prediction']['p50_ms']),
               naive_end_to_end=rate(num_frames * bb + hd,
                                     pairs['naive']['per_prediction']['p50_ms']))
    fraction = None
    if peak_tflops and precision in ('fp16', 'bf16'):
        fraction = {k: (None if v is None else v / peak_tflops) for k, v in out.items()}
    return dict(tflops=out, peak_tflops=peak_tflops, fraction_of_peak=fraction)


def cameras(backbone: FrozenBackbone, head: Head, frames: Frames, *, num_frames: int,
            streams: list[int], budget: Budget, clock: Clock, sample_hz: float,
            gflops_per_frame: float) -> list[dict]:
    """Throughput of the engine serving K cameras: each step offers one due frame per camera
    (`push_many`), one batched backbone pass and one batched head pass over the K windows."""
    rows = []
    for k in streams:
        names = tuple(f'cam{j}' for j in range(k))
        engine = StreamingEngine(backbone, [head], EngineConfig(num_frames=num_frames),
                                 streams=names)
        for t in range(num_frames - 1):  # T - 1 frames in every ring: each later step predicts
            engine.push_many([Offer(n, frames.frame(t + j), frames.stamp(t))
                              for j, n in enumerate(names)])

        def step(i: int, engine: StreamingEngine = engine, names: tuple = names) -> None:
            i += num_frames - 1
            batch = frames.batch(i, len(names))
            results = engine.push_many([Offer(n, batch[j], frames.stamp(i))
                                        for j, n in enumerate(names)])
            if not all(r.predictions for r in results):
                raise RuntimeError(f'bench: step {i} did not predict on every camera')

        times = budget.run(step, clock)
        stats = summary(times)
        fps = k / (stats['mean_ms'] / 1e3)
        rows.append(dict(streams=k, step=stats, frames_per_s=fps, cameras_at_30fps=fps / 30,
                         tflops=fps * gflops_per_frame / 1e3,
                         cameras_at_sample_rate=fps / sample_hz,
                         step_p99_within_33ms=stats['p99_ms'] <= 1000 / 30))
    return rows


def timed_compile(backbone: FrozenBackbone, head: Head, frames: Frames, *, num_frames: int,
                  budget: Budget, clock: Clock) -> dict:
    """torch.compile the backbone model and the head; first-call cost, then the engine's times."""
    started = time.perf_counter()
    try:
        backbone.model = torch.compile(backbone.model)
        head.module = torch.compile(head.module)
        engine = _filled_engine(backbone, head, frames, num_frames=num_frames)
        engine.push(frames.frame(num_frames - 1), frames.stamp(num_frames - 1))
    except Exception as exc:  # inductor needs a compiler and a supported platform
        return dict(status='failed', reason=f'{type(exc).__name__}: {exc}'[:300])
    compile_s = time.perf_counter() - started
    times = budget.run(_streaming_loop(engine, frames, offset=num_frames, sink=[]), clock)
    return dict(status='ok', compile_s=compile_s, per_prediction=summary(times))
