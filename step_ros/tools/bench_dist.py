"""`python -m step_ros bench-dist`: extraction throughput with 1 and with N ranks.

A benchmark, not a test: it writes bench_dist.json + bench_dist.md to --out and prints the
markdown; nothing asserts its figures. Both runs encode the same clip list (the synthetic
dataset unless --clips is given) into fresh caches, every rank with one torch thread. The single
run is plain `extract` (no process group); the N-rank run is `extract` under a gloo process
group, its ranks started with the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). Time is measured inside the ranks, from a barrier after the backbone
is loaded and warmed up to the return of `extract` (which ends with the index written), so
interpreter start-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from step_ros.benchmark.measure import cpu_model
from step_ros.data.features import extract, read_clip_list, read_frames
from step_ros.data.synth import ACTIONS
from step_ros.distributed import session
from step_ros.model.backbone import FrozenBackbone
from step_ros.tools import synth as synth_cli


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--clips', type=Path, default=None,
                        help='clip list CSV (default: a synthetic dataset written to a '
                             'temporary directory)')
    parser.add_argument('--per-class', type=int, default=12,
                        help='synthetic clips per class without --clips (12: '
                             f'{12 * (len(ACTIONS) + 1)} clips, {len(ACTIONS)} actions and the '
                             'background class)')
    parser.add_argument('--ranks', type=int, default=2, help='N of the distributed run (2)')
    parser.add_argument('--frames', type=int, default=8, help='T: frames per clip (8)')
    parser.add_argument('--backbone', default='tiny', help='backbone of extract (tiny)')
    parser.add_argument('--shard-size', type=int, default=8, help='clips per shard (8)')
    parser.add_argument('--out', type=Path, default=Path('out/bench_dist'),
                        help='directory for bench_dist.json and bench_dist.md')
    return parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, cache: str,
          result: str) -> None:
    """One rank (spawned): load, warm up, barrier, time extract, rank 0 writes the seconds."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    with session(device='cpu') as dist:
        clip_list = read_clip_list(args.clips)
        backbone = FrozenBackbone.load(args.backbone, device='cpu')
        backbone(read_frames(clip_list.clips[0], args.frames)[0])  # warm-up pass
        if dist is not None:
            dist.barrier()
        start = time.perf_counter()
        extract(clip_list, backbone, num_frames=args.frames, out=cache,
                shard_size=args.shard_size, progress=False, dist=dist)
        seconds = time.perf_counter() - start
    if rank == 0:
        Path(result).write_text(json.dumps(dict(seconds=seconds)))


def timed_run(world: int, args: argparse.Namespace, work: Path) -> float:
    cache, result = work / f'cache_{world}', work / f'result_{world}.json'
    mp.start_processes(_rank, args=(world, free_port(), args, str(cache), str(result)),
                       nprocs=world, start_method='spawn')
    return json.loads(result.read_text())['seconds']


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.ranks < 2 or args.per_class < 1:
        print(f'bench-dist: error: --ranks {args.ranks} / --per-class {args.per_class}: need '
              '--ranks >= 2 and --per-class >= 1', file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix='bench_dist_') as tmp:
        work = Path(tmp)
        if args.clips is None:
            synth_cli.main(['--out', str(work / 'synth'), '--train', str(args.per_class),
                            '--val', '0', '--test', '0'])
            args.clips = work / 'synth' / 'train.csv'
        clips = len(read_clip_list(args.clips).clips)
        one = timed_run(1, args, work)
        many = timed_run(args.ranks, args, work)
    report = dict(clips=clips, frames=args.frames, backbone=args.backbone,
                  ranks=args.ranks, seconds_1=round(one, 3), seconds_n=round(many, 3),
                  clips_per_s_1=round(clips / one, 2), clips_per_s_n=round(clips / many, 2),
                  ratio=round(one / many, 3), threads_per_rank=1, nproc=os.cpu_count(),
                  cpu=cpu_model(), loadavg_1m_at_start=load, torch=torch.__version__,
                  command=' '.join(['python -m step_ros bench-dist', *(argv or [])]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'bench_dist.json').write_text(json.dumps(report, indent=2) + '\n')
    text = markdown(report)
    (args.out / 'bench_dist.md').write_text(text)
    print(text, end='')
    return 0


def markdown(r: dict) -> str:
    return '\n'.join([
        f"Extraction of {r['clips']} clips x {r['frames']} frames, backbone {r['backbone']}, "
        f"one torch thread per rank; {r['cpu']} ({r['nproc']} cores, load average "
        f"{r['loadavg_1m_at_start']:.1f} at the start), torch {r['torch']}.", '',
        '| ranks | seconds | clips/s |', '|---|---|---|',
        f"| 1 (plain extract) | {r['seconds_1']} | {r['clips_per_s_1']} |",
        f"| {r['ranks']} (gloo) | {r['seconds_n']} | {r['clips_per_s_n']} |", '',
        f"Throughput ratio {r['ranks']} ranks / 1: **{r['ratio']}x**.", ''])
