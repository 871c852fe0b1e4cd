"""`bench --incremental-head`: the streaming engine's incremental STEP head against the whole head.

Head only, random weights, at the shapes of the CPU robot's backbone (EfficientNet-Lite0: D=1280,
49 patches) and of DINOv2 ViT-B/14 at 224 px (D=768, 256 patches). Each timed iteration runs the
whole head over a window, then the incremental path: one new frame's projections (what the
engine does per sampled frame) and the attention over the ring (per prediction), so both see the
same machine load.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from step_ros.benchmark.measure import Clock, count_flops, summary
from step_ros.benchmark.subjects import LABELS, SEED, attention_heads
from step_ros.model.heads import PRESETS, build_head
from step_ros.model.incremental import POOLED_SCORES_HEAD_DIM, IncrementalStep

# (name, D, N): feature width and patches per frame of each backbone shape.
SHAPES = (('efficientnet_lite0', 1280, 49), ('vitb14', 768, 256))
# Incremental per prediction (with its new frame's projections) at least this much faster.
TARGETS = {('efficientnet_lite0', 8): 2.0, ('efficientnet_lite0', 16): 3.0,
           ('vitb14', 8): 1.0, ('vitb14', 16): 1.0}
PREDICTIONS_PER_S = 4.0  # per camera; one sampled frame per prediction (infer_every = 1)
CAMERAS_FORMULA = ('cameras = 1 s / (R * (t_project + t_predict)), R = 4 predictions/s per '
                   "camera with one sampled frame each; a 30 fps camera's other frames are "
                   'dropped by the stamp sampler before the backbone. Head only: the backbone '
                   'adds t_backbone per sampled frame to the bracket.')


def _subject(dim: int, patches: int, frames: int):
    config = replace(PRESETS['step'], num_heads=attention_heads(dim))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = build_head(config, dim=dim, num_frames=frames,
                            num_patches=patches, num_classes=len(LABELS))
        tokens = torch.randn(frames, 1 + patches, dim)  # (T, 1 + N, D)
    return module.eval().requires_grad_(False), tokens


def compare(name: str, dim: int, patches: int, frames: int, *, budget, clock: Clock) -> dict:
    """Whole head vs incremental path at one shape, timed side by side in one loop."""
    module, tokens = _subject(dim, patches, frames)
    inc = IncrementalStep(module)
    window = tokens[None]  # (1, T, 1 + N, D)
    ring = inc.project(tokens).clone()  # (T, N, 3D): slots 0..T-1 hold positions 0..T-1
    times = dict(full=[], project=[], predict=[])

    def once(i: int, record: bool) -> None:
        t0 = clock.now()
        with torch.inference_mode():
            module(window).softmax(-1)
        t1 = clock.now()
        slot = i % frames  # the new frame overwrites the oldest slot
        ring[slot].copy_(inc.project(tokens[slot][None])[0])
        t2 = clock.now()
        inc.predict([(ring, (slot + 1) % frames)]).softmax(-1)
        t3 = clock.now()
        if record:
            times['full'].append(t1 - t0)
            times['project'].append(t2 - t1)
            times['predict'].append(t3 - t2)

    for i in range(budget.warmup):
        once(i, False)
    started = time.perf_counter()
    i = budget.warmup
    while len(times['full']) < budget.max_iters and (
            len(times['full']) < budget.min_iters
            or time.perf_counter() - started < budget.seconds):
        once(i, True)
        i += 1
    incremental = [a + b for a, b in zip(times['project'], times['predict'])]
    stats = {k: summary(v) for k, v in times.items()}
    stats['incremental'] = summary(incremental)
    length = 1 + frames * patches
    pooled = dim // inc.num_heads >= POOLED_SCORES_HEAD_DIM
    # q k^T, then A v for all queries (fused) or the queries' mean of A times v (pooled)
    attention = 2 * length * length * dim + (2 * length * dim if pooled
                                             else 2 * length * length * dim)
    flops = dict(full=count_flops(lambda: module(window)),
                 project=count_flops(lambda: inc.project(tokens[:1])),
                 predict=count_flops(lambda: inc.predict([(ring, 0)])),
                 attention=attention)
    speedup = stats['full']['p50_ms'] / stats['incremental']['p50_ms']
    target = TARGETS.get((name, frames))

    def cameras(ms: float) -> float:
        return 1e3 / (PREDICTIONS_PER_S * ms)

    return dict(shape=name, embed_dim=dim, patches=patches, num_frames=frames,
                num_heads=inc.num_heads, tokens=length, times=stats,
                attention_path='pooled weights' if pooled else 'fused',
                speedup_p50=speedup,
                speedup_mean=stats['full']['mean_ms'] / stats['incremental']['mean_ms'],
                gflops={k: v / 1e9 for k, v in flops.items()},
                cameras_full=cameras(stats['full']['p50_ms']),
                cameras_incremental=cameras(stats['incremental']['p50_ms']),
                target_speedup=target, met=None if target is None else speedup >= target)


def run(frames: list[int], *, budget, clock: Clock, progress=None) -> dict:
    rows = []
    for name, dim, patches in SHAPES:
        for t in frames:
            if progress is not None:
                progress.set_postfix_str(f'incremental head: {name} T={t}')
            rows.append(compare(name, dim, patches, t, budget=budget, clock=clock))
    return dict(rows=rows, threads=torch.get_num_threads(),
                predictions_per_s=PREDICTIONS_PER_S, cameras_formula=CAMERAS_FORMULA)


def render(section: dict) -> list[str]:
    lines = [f"## Incremental STEP head vs the whole head (head only, random weights, "
             f"{section['threads']} threads)", '',
             '| shape | T | tokens L | whole p50 ms | incremental p50 ms | of which project '
             '(1 frame) | predict | speedup p50 (mean) | attention GFLOPs | GFLOPs whole / '
             'project / predict | cameras whole | cameras incremental | target |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in section['rows']:
        s, g = r['times'], r['gflops']
        target = '-' if r['target_speedup'] is None else \
            f"{r['target_speedup']:g}x {'met' if r['met'] else 'NOT met'}"
        lines.append(
            f"| {r['shape']} D={r['embed_dim']} N={r['patches']} | {r['num_frames']} | "
            f"{r['tokens']} | {s['full']['p50_ms']:.1f} | {s['incremental']['p50_ms']:.1f} | "
            f"{s['project']['p50_ms']:.1f} | {s['predict']['p50_ms']:.1f} | "
            f"{r['speedup_p50']:.2f}x ({r['speedup_mean']:.2f}x) | {g['attention']:.3g} "
            f"({r['attention_path']}) | "
            f"{g['full']:.3g} / {g['project']:.3g} / {g['predict']:.3g} | "
            f"{r['cameras_full']:.1f} | {r['cameras_incremental']:.1f} | {target} |")
    lines += ['', f"Cameras at {section['predictions_per_s']:g} predictions/s: "
              f"{section['cameras_formula']}"]
    return lines
