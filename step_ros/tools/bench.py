"""`python -m step_ros bench`: streaming vs naive, per-stage latency, FLOPs, cameras, memory.

Writes bench.json and bench.md to --out and prints the markdown. Benchmarks, not tests: no
figure here is asserted anywhere. See docs/BENCHMARKS.md for the runs behind the documented
numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from step_ros.benchmark import incremental, runs
from step_ros.benchmark.measure import Clock, machine, memory
from step_ros.benchmark.report import render
from step_ros.benchmark.subjects import VITB14_RANDOM, Frames, load_backbone, make_head
from step_ros.model.backbone import DTYPES, BackboneError, resolve_device
from step_ros.progress import progress_bar
from step_ros.stream.engine import EngineConfig

SCHEMA = 'step_ros.bench/1'
ROW_MEMORY = ('rss_mib', 'cuda_max_allocated_mib')  # per precision row: RSS now, CUDA peak
TARGET_P99_MS = 15.0  # GPU target: DINOv2 ViT-B/14, T=16, 224 px, per new frame in the engine
CPU_FP16 = ('skipped: fp16 on a CPU is slow and partly unsupported; the node runs fp32 there '
            '(runtime.effective_precision)')


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='short loops, tiny backbone only: under a minute on a CPU')
    parser.add_argument('--out', type=Path, default=Path('out/bench'),
                        help='directory for bench.json and bench.md (default: out/bench)')
    parser.add_argument('--backbone', default='tiny',
                        help="comma-separated: 'none', 'tiny', 'tiny-clip', 'efficientnet_lite0', "
                             "'vitb14-random' (DINOv2 ViT-B/14 shape, random weights) or a local "
                             'Hugging Face directory')
    parser.add_argument('--image-size', type=int, default=0,
                        help="input side in px (0: the backbone's own; 224 for vitb14-random)")
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--precision', default='fp32,fp16,bf16',
                        help='comma-separated; the first usable one runs every section')
    parser.add_argument('--frames', type=int, default=16, help='T: frames per window')
    parser.add_argument('--cameras', default='1,2,4,8', help='K values of the cameras section')
    parser.add_argument('--seconds', type=float, default=None,
                        help='time budget of each timed loop (default 10, --quick 1.5)')
    parser.add_argument('--iters', type=int, default=None,
                        help='most timed calls per loop (default 200, --quick 30)')
    parser.add_argument('--min-iters', type=int, default=3, help='fewest timed calls per loop')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed calls before each loop (default 1 on CPU, 10 on CUDA)')
    parser.add_argument('--threads', type=int, default=0,
                        help="CPU threads for torch (0: torch's default); on a shared machine "
                             'fewer threads avoid OpenMP stalls')
    parser.add_argument('--compile', action='store_true',
                        help='add a torch.compile row (backbone and head)')
    parser.add_argument('--incremental-head', action='store_true',
                        help="add the section comparing the engine's incremental STEP head "
                             'with the whole head at the EfficientNet-Lite0 (D=1280, N=49) and '
                             'ViT-B/14 (D=768, N=256) shapes, head only, on the CPU; with '
                             '--backbone none it runs alone')
    parser.add_argument('--incremental-frames', default='8,16',
                        help='T values of the incremental head section (default 8,16)')
    return parser


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(',') if item.strip()]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_backbone(name: str, *, args: argparse.Namespace, device: torch.device,
                   precisions: list[str], budget: runs.Budget, clock: Clock,
                   peak: float | None, progress) -> dict:
    usable = [p for p in precisions if not (device.type == 'cpu' and p == 'fp16')]
    main = usable[0]
    T = args.frames
    config = EngineConfig(num_frames=T)
    frames = Frames.make(period_ns=config.period_ns)
    _free(device)

    def subject(precision: str):
        backbone = load_backbone(name, device=str(device), precision=precision,
                                 image_size=args.image_size)
        return backbone, make_head(backbone, num_frames=T)

    backbone, head = subject(main)
    info = backbone.info
    out = dict(backbone=dict(**info.to_dict(), tokens_per_frame=backbone.tokens_per_frame,
                             parameters=sum(p.numel() for p in backbone.parameters())),
               precision=main, num_frames=T, sample_hz=1e9 / config.period_ns)
    kw = dict(num_frames=T, budget=budget, clock=clock)

    def step(label: str) -> None:
        progress.set_postfix_str(f'{name}: {label}')

    step('streaming vs naive')
    fast = runs.streaming(backbone, head, frames, **kw)
    main_memory = memory(device)  # before the naive loop's T-frame batches raise the peak
    _free(device)
    slow = runs.naive(backbone, head, frames, **kw)
    slow['memory'] = memory(device)
    out['streaming_vs_naive'] = runs.compare(fast, slow)
    progress.update()
    step('stages')
    out['stages'] = runs.stages(backbone, head, frames, **kw)
    out['flops'] = runs.flops(backbone, head, num_frames=T)
    out['achieved'] = runs.achieved(out['flops'], stage_times=out['stages'],
                                    pairs=out['streaming_vs_naive'], num_frames=T,
                                    peak_tflops=peak, precision=main)
    progress.update()
    step('cameras')
    out['cameras'] = runs.cameras(backbone, head, frames, streams=[int(k) for k in
                                                                   _csv(args.cameras)],
                                  sample_hz=out['sample_hz'],
                                  gflops_per_frame=sum(out['flops'].values()), **kw)
    progress.update()
    step('precisions')
    rows = []
    for precision in precisions:
        if precision not in usable:
            rows.append(dict(precision=precision, status='skipped', reason=CPU_FP16))
            continue
        if precision == main:
            row = dict(precision=precision, status='ok',
                       per_prediction=out['streaming_vs_naive']['streaming']['per_prediction'])
            row.update({k: v for k, v in main_memory.items() if k in ROW_MEMORY})
        else:
            del backbone, head
            _free(device)
            backbone, head = subject(precision)
            timed = runs.streaming(backbone, head, frames, **kw)
            row = dict(precision=precision, status='ok', per_prediction=timed['per_prediction'])
            row.update({k: v for k, v in memory(device).items() if k in ROW_MEMORY})
        rows.append(row)
    out['precisions'] = rows
    progress.update()
    if args.compile:
        step('torch.compile')
        del backbone, head
        _free(device)
        backbone, head = subject(main)
        out['compile'] = runs.timed_compile(backbone, head, frames, **kw)
    progress.update()
    streaming_p99 = out['streaming_vs_naive']['streaming']['per_prediction']['p99_ms']
    applies = device.type == 'cuda' and info.embed_dim == 768 and info.patch_size == 14 \
        and info.image_size == 224 and T == 16
    out['target'] = dict(applies=applies, p99_ms=TARGET_P99_MS, measured_p99_ms=streaming_p99,
                         met=applies and streaming_p99 < TARGET_P99_MS)
    del backbone, head
    _free(device)
    out['memory'] = memory(device)
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    precisions = _csv(args.precision)
    unknown = [p for p in precisions if p not in DTYPES]
    if not precisions or unknown:
        print(f'bench: --precision {args.precision!r}: expected a comma-separated subset of '
              f'{sorted(DTYPES)}', file=sys.stderr)
        return 2
    if args.frames < 2:
        print(f'bench: --frames {args.frames}: need at least 2', file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except BackboneError as exc:
        print(f'bench: {exc}', file=sys.stderr)
        return 2
    if device.type == 'cpu' and precisions == ['fp16']:
        print('bench: --precision fp16 alone cannot run on a CPU; add fp32 or bf16',
              file=sys.stderr)
        return 2
    backbones = [] if args.backbone == 'none' else _csv(args.backbone)
    try:
        head_frames = [int(t) for t in _csv(args.incremental_frames)]
    except ValueError:
        head_frames = []
    if not head_frames or min(head_frames) < 2:
        print(f'bench: --incremental-frames {args.incremental_frames!r}: expected '
              'comma-separated integers >= 2', file=sys.stderr)
        return 2
    if not backbones and not args.incremental_head:
        print('bench: --backbone none leaves nothing to run without --incremental-head',
              file=sys.stderr)
        return 2
    if args.quick and backbones != ['tiny']:
        print(f'bench: --quick runs the tiny backbone only (not {args.backbone!r})',
              file=sys.stderr)
        return 2
    budget = runs.Budget(
        warmup=args.warmup if args.warmup is not None else (10 if device.type == 'cuda' else 1),
        min_iters=args.min_iters,
        max_iters=args.iters or (30 if args.quick else 200),
        seconds=args.seconds if args.seconds is not None else (1.5 if args.quick else 10.0))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    facts = machine(device)
    result = dict(schema=SCHEMA, created=datetime.now(timezone.utc).isoformat(timespec='seconds'),
                  command=shlex.join(['python', '-m', 'step_ros', 'bench',
                                      *(sys.argv[2:] if argv is None else argv)]),
                  machine=facts, config=dict(quick=args.quick, backbones=backbones,
                                             precisions=precisions, frames=args.frames,
                                             cameras=args.cameras, budget=vars(budget),
                                             threads=torch.get_num_threads(),
                                             compile=args.compile,
                                             incremental_head=args.incremental_head),
                  backbones=[])
    started = time.perf_counter()
    clock = Clock(device)
    sections = 5 * len(backbones) + args.incremental_head
    with progress_bar(total=sections, desc='bench', unit='section') as progress:
        for name in backbones:
            try:
                result['backbones'].append(bench_backbone(
                    name, args=args, device=device, precisions=precisions, budget=budget,
                    clock=clock, peak=facts['peak_tflops'], progress=progress))
            except BackboneError as exc:
                print(f'bench: --backbone {name!r}: {exc}', file=sys.stderr)
                return 2
        if args.incremental_head:
            result['incremental_head'] = incremental.run(
                head_frames, budget=budget, clock=Clock(torch.device('cpu')), progress=progress)
            progress.update()
    result['memory'] = memory(device)
    result['wall_s'] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'bench.json').write_text(json.dumps(result, indent=2) + '\n')
    markdown = render(result)
    (args.out / 'bench.md').write_text(markdown)
    print(markdown)
    print(f'bench: wrote {args.out / "bench.json"} and {args.out / "bench.md"} '
          f"in {result['wall_s']:.0f} s", file=sys.stderr)
    return 0


__all__ = ['main', 'VITB14_RANDOM']
