"""torchrun with 2 CPU ranks (gloo): extract (clips and bags) and train give what a single
process gives."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from node_helpers import write_params
from safetensors.torch import load_file

from step_ros.data.caches import load_cache
from step_ros.data.features import extract, read_clip_list
from step_ros.distributed import Dist, rank_batches
from step_ros.model.backbone import FrozenBackbone
from step_ros.tools import synth as synth_cli
from step_ros.tools import train as train_cli
from step_ros.tools.synth_bag import write_synth_bag

T = 4
SHARD = 4  # 15 clips: shards of 4, 4, 4, 3; rank 0 takes shards 0 and 2, rank 1 shards 1 and 3
LAUNCH_TIMEOUT = 600  # two interpreters importing torch on a loaded machine


def torchrun(*args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m step_ros ARGS`, as a user would start it."""
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               f'--nproc-per-node={ranks}', '-m', 'step_ros', *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, f'{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    return done


@pytest.fixture(scope='module')
def clips(tmp_path_factory) -> Path:
    """A clip list of 15 clips (odd, so 2 ranks get unequal shares)."""
    root = tmp_path_factory.mktemp('synth')
    code = synth_cli.main(['--out', str(root), '--train', '2', '--val', '1', '--test', '1',
                           '--size', '48x48', '--min-frames', '6', '--max-frames', '8'])
    assert code == 0
    rows = list(csv.reader((root / 'train.csv').open()))
    with (root / 'odd.csv').open('w', newline='') as f:
        csv.writer(f).writerows(rows[:16])  # header + 15 clips
    return root / 'odd.csv'


@pytest.fixture(scope='module')
def reference(clips, tmp_path_factory) -> Path:
    """The single-process cache of the clip list."""
    out = tmp_path_factory.mktemp('single')
    extract(read_clip_list(clips), FrozenBackbone.load('tiny'), num_frames=T, out=out,
            shard_size=SHARD, progress=False)
    return out


def shard_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != 'index.json')


def assert_same_cache(cache: Path, reference: Path) -> None:
    index = json.loads((cache / 'index.json').read_text())
    expected = json.loads((reference / 'index.json').read_text())
    assert index == expected  # same clips, labels, shards (names and counts) and node windows
    assert shard_files(cache) == shard_files(reference)  # no per-rank leftovers
    got, want = load_cache(cache), load_cache(reference)
    assert torch.equal(got.targets, want.targets)
    torch.testing.assert_close(got.tokens, want.tokens, atol=2e-3, rtol=2e-3)


@pytest.mark.timeout(2 * LAUNCH_TIMEOUT)
def test_two_rank_extract_equals_single_process_and_resumes_per_rank(clips, reference,
                                                                     tmp_path):
    out = tmp_path / 'cache'
    args = ['extract', '--clips', str(clips), '--frames', str(T), '--shard-size', str(SHARD),
            '--out', str(out)]
    done = torchrun(*args)
    assert 'by 2 ranks' in done.stdout
    assert_same_cache(out, reference)

    # An interrupted run: rank 0 finished both its shards, rank 1 only shard 1; the index does
    # not list any shard yet. Rank 1 must redo shard 3 alone, nobody touches the others.
    index = json.loads((out / 'index.json').read_text())
    spans = index['spans']
    for k in (0, 1, 2):
        (out / f'shard_{k:05d}.json').write_text(json.dumps(
            dict(start=SHARD * k, count=SHARD, spans=spans[SHARD * k:SHARD * (k + 1)])))
    (out / 'shard_00003.safetensors').unlink()
    (out / 'index.json').write_text(json.dumps({**index, 'shards': [], 'spans': []}))
    kept = {k: (out / f'shard_{k:05d}.safetensors').stat().st_mtime_ns for k in (0, 1, 2)}
    torchrun(*args)
    assert {k: (out / f'shard_{k:05d}.safetensors').stat().st_mtime_ns for k in kept} == kept
    assert_same_cache(out, reference)


def test_rank_batches_split_every_global_batch_of_the_single_process():
    order = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    parts = [list(rank_batches(order, batch_size=3, dist_=Dist(
        rank=r, world_size=2, local_rank=r, backend='gloo', device='cpu'))) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 3  # ceil(15 / 6) global steps on every rank
    for j, start in enumerate(range(0, 15, 6)):
        real = [int(i) for r in (0, 1) for i, w in zip(parts[r][j][0], parts[r][j][1]) if w]
        assert sorted(real) == sorted(order[start:start + 6].tolist())
        assert parts[0][j][2] == parts[1][j][2] == len(order[start:start + 6])
    padding = [int(w) for r in (0, 1) for _, weights, _ in parts[r] for w in weights]
    assert padding.count(0) == 1  # 15 clips on 2 ranks: one padded repeat, weighted 0


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]


@pytest.mark.timeout(2 * LAUNCH_TIMEOUT)
@pytest.mark.parametrize('flags', [[], ['--reverse-pairs']], ids=['plain', 'reverse_pairs'])
def test_two_rank_ddp_training_matches_a_single_process(reference, tmp_path, flags):
    common = ['--cache', str(reference), '--val-cache', str(reference), '--head', 'step',
              '--head', 'linear', '--epochs', '3', '--warmup-epochs', '1', '--seed', '5', *flags]
    single, ranked = tmp_path / 'single', tmp_path / 'ranked'
    assert train_cli.main([*common, '--batch-size', '6', '--out', str(single)]) == 0
    torchrun('train', *common, '--batch-size', '3', '--out', str(ranked))
    got, want = read_log(ranked), read_log(single)
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        assert (g['head'], g['epoch']) == (w['head'], w['epoch'])
        assert g['train_acc'] == w['train_acc'] and g['val_acc'] == w['val_acc']
        assert g['lr'] == pytest.approx(w['lr'], rel=1e-12)
        assert g['loss'] == pytest.approx(w['loss'], rel=1e-4)
    config = json.loads((ranked / 'config.json').read_text())
    assert config['world_size'] == 2 and config['global_batch_size'] == 6
    for head in ('step', 'linear'):
        a = load_file(str(ranked / f'{head}.safetensors'))
        b = load_file(str(single / f'{head}.safetensors'))
        assert a.keys() == b.keys()
        for key in a:  # equal up to the order of float additions (see docs/DISTRIBUTED.md)
            got, want = a[key], b[key]
            if key.endswith('qkv.bias'):
                # The key bias adds q.b to every logit of a query: softmax ignores it, so its
                # true gradient is 0 and what it gets is rounding noise, which AdamW scales up
                # to steps of about lr. It is compared loosely, the query / value biases not.
                d = len(got) // 3
                torch.testing.assert_close(got[d:2 * d], want[d:2 * d], atol=1e-3, rtol=0)
                got, want = torch.cat([got[:d], got[2 * d:]]), torch.cat([want[:d], want[2 * d:]])
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.fixture(scope='module')
def bags(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two short recordings (one action every 1 s) and the node parameters for T=4 over 1 s."""
    root = tmp_path_factory.mktemp('bags')
    recordings = [write_synth_bag(root / f'rec{i}', seconds=secs, fps=10.0, size=(48, 64),
                                  seed=i, action_seconds=1.0, progress=False)[0]
                  for i, secs in enumerate((5.0, 3.0))]
    params = write_params(root / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'num_frames': T, 'window_seconds': 1.0})
    return recordings, params


def bag_args(bags, out: Path) -> list[str]:
    recordings, params = bags
    return ['extract', *[a for b in recordings for a in ('--bag', str(b))], '--split', 'train',
            '--split', 'val', '--topic', '/camera/image_raw', '--config', str(params),
            '--shard-size', str(SHARD), '--straddle', 'majority', '--out', str(out)]


def assert_same_bag_cache(cache: Path, reference: Path) -> None:
    index = json.loads((cache / 'index.json').read_text())
    expected = json.loads((reference / 'index.json').read_text())
    assert index == expected  # same sampled stamps, runs, shards (names, counts) and windows
    files = sorted(str(p.relative_to(cache)) for p in cache.rglob('*') if p.is_file())
    assert files == sorted(str(p.relative_to(reference)) for p in reference.rglob('*')
                           if p.is_file())  # no per-rank records left
    for split in ('train', 'val'):
        got, want = load_cache(cache / split), load_cache(reference / split)
        assert got.window_stamps == want.window_stamps
        assert torch.equal(got.targets, want.targets)
        torch.testing.assert_close(got.tokens.frames, want.tokens.frames, atol=2e-3, rtol=2e-3)


@pytest.mark.timeout(3 * LAUNCH_TIMEOUT)
def test_two_rank_extract_bag_equals_single_process_and_resumes_per_rank(bags, tmp_path):
    from step_ros.tools import extract as extract_cli

    reference = tmp_path / 'single'
    assert extract_cli.main(bag_args(bags, reference)[1:]) == 0
    shards = sorted(p.name for p in reference.glob('frames_*.safetensors'))
    assert len(shards) >= 4  # 5 s + 3 s at 4 sampled frames / s in shards of 4: both ranks work
    out = tmp_path / 'ranked'
    done = torchrun(*bag_args(bags, out))
    assert 'by 2 ranks' in done.stdout
    assert_same_bag_cache(out, reference)
    for rank in (0, 1):  # each rank encoded every other shard, nothing else
        mine = [name for name in shards if int(name[7:12]) % 2 == rank]
        assert f'rank {rank} of 2 encoded {len(mine)} shard(s) {mine}' in done.stdout, done.stdout

    # An interrupted run: no index yet (rank 0 writes it last), every shard finished with its
    # record except shard 1 (rank 1's). Only shard 1 is encoded again.
    index = json.loads((out / 'index.json').read_text())
    record = {k: index[k] for k in ('backbone', 'num_frames', 'window_seconds', 'shard_size')}
    for entry in index['recordings']:
        begin = 0
        for shard in entry['shards']:
            stamps = entry['stamps'][begin:begin + shard['count']]
            begin += shard['count']
            (out / shard['file'].replace('.safetensors', '.done.json')).write_text(
                json.dumps(dict(key=record, file=shard['file'], stamps=stamps)))
    (out / 'index.json').unlink()
    (out / 'frames_00001.safetensors').unlink()
    (out / 'frames_00001.done.json').unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob('frames_*.safetensors')}
    done = torchrun(*bag_args(bags, out))
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
    assert "rank 1 of 2 encoded 1 shard(s) ['frames_00001.safetensors']" in done.stdout
    assert 'rank 0 of 2 encoded 0 shard(s) []' in done.stdout
    assert_same_bag_cache(out, reference)
