"""Hostile names, stamps and indexes: input data never writes outside the user's folders or fills
the disk, and damaged indexes are one clear line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from node_helpers import tiny_params
from safetensors.torch import save_file

from step_ros.data import bag_cache, features
from step_ros.data.bags import BagWriter
from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, read_clip_list
from step_ros.data.names import safe_name
from step_ros.learn.training import save_run
from step_ros.model.backbone import FrozenBackbone
from step_ros.tools import bag_export, report, train
from step_ros.tools import extract as extract_cli
from step_ros.tools.bag_eval_many import recording_names

TOPIC = '/camera/image_raw'
FIRST = 1_700_000_000_000_000_000
MS = 1_000_000
HOSTILE = ['', '.', '..', '../x', '../../x', '/abs', 'a/b', 'a\\b', 'a\x00b', 'a\nb', ' x',
           'x' * 101]


@pytest.mark.parametrize('name', HOSTILE)
def test_safe_name_refuses_every_name_that_is_not_one_component(name):
    with pytest.raises(ValueError) as info:
        safe_name(name, what='split')
    assert str(info.value).startswith('split ') and 'not usable as a file or folder' in str(
        info.value), info.value
    assert safe_name('train_2.v1', what='split') == 'train_2.v1'


# --- bag-export: glitched stamps and absurd rates never fill the disk ---------------------

def _bag(path: Path, stamps: list[int]) -> Path:
    with BagWriter(path) as writer:
        for i, stamp in enumerate(stamps):
            writer.write_image(TOPIC, np.full((16, 16, 3), 20 + 10 * i, np.uint8),
                               stamp_ns=stamp)
    return path


def _export(bag: Path, out: Path, *extra: str) -> int:
    return bag_export.main(['--bag', str(bag), '--topic', TOPIC, '--out', str(out),
                            '--no-progress', *extra])


def _frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


GLITCH_2038 = [FIRST + i * 100 * MS for i in range(5)] + [2_147_483_647 * 10**9] + \
    [FIRST + i * 100 * MS for i in range(5, 10)]
FIRST_AT_ZERO = [0] + [FIRST + i * 100 * MS for i in range(1, 10)]


@pytest.mark.parametrize('stamps', [GLITCH_2038, FIRST_AT_ZERO], ids=['2038', 'zero'])
def test_export_cuts_a_glitched_stamp_jump_and_names_it(tmp_path, capsys, stamps):
    bag = _bag(tmp_path / 'bag', stamps)
    out = tmp_path / 'v.mp4'
    assert _export(bag, out, '--fps', '10') == 0
    err = capsys.readouterr().err
    assert 'bag-export: warning: the stamps jump by' in err and '--max-gap 60' in err, err
    # about 1 s of video at 10 fps, not decades
    assert 8 <= _frames(out) <= 14, _frames(out)


@pytest.mark.parametrize('fps', ['1e9', 'inf', 'nan', '0', '-5', '1e-9'])
def test_export_refuses_an_absurd_fps_in_one_line(tmp_path, capsys, fps):
    bag = _bag(tmp_path / 'bag', [FIRST + i * 100 * MS for i in range(3)])
    out = tmp_path / 'v.mp4'
    assert _export(bag, out, '--fps', fps) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith(f'bag-export: error: --fps {float(fps)}'), err
    assert not out.exists()


def test_export_refuses_a_video_over_max_frames_before_writing(tmp_path, capsys):
    # a real 50 s pause at 30 fps: 1500 frames, under the 60 s gap limit
    bag = _bag(tmp_path / 'bag', [FIRST, FIRST + 50 * 10**9])
    out = tmp_path / 'v.mp4'
    assert _export(bag, out, '--fps', '30', '--max-frames', '1000') == 2
    err = capsys.readouterr().err
    assert 'would have 1,501 frames' in err and '--max-frames 1,000' in err, err
    assert not out.exists()
    assert _export(bag, out, '--fps', '30', '--max-gap', 'inf') == 2
    assert '--max-gap inf' in capsys.readouterr().err


# --- names from data and arguments stay inside their folders -------------------------------

@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp('videos')
    for name in ('a', 'b'):
        writer = cv2.VideoWriter(str(root / f'{name}.mp4'), cv2.VideoWriter_fourcc(*'mp4v'),
                                 10.0, (32, 32))
        for i in range(10):
            writer.write(np.full((32, 32, 3), 20 * i, np.uint8))
        writer.release()
    return root


def test_task_column_of_a_clip_list_must_be_a_folder_name(videos, tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    for split in ('train', 'val', 'test'):
        (data / f'{split}.csv').write_text(
            f'path,label,../../x\n{videos}/a.mp4,wave,o\n{videos}/b.mp4,stir,o\n')
    with pytest.raises(DataError, match=r"task column '\.\./\.\./x': not usable"):
        read_clip_list(data / 'train.csv')
    out = tmp_path / 'deep' / 'out'
    assert report.main(['--out', str(out), '--data', str(data), '--peft', 'none', '--head',
                        'linear', '--quick']) == 2
    outside = [p for p in tmp_path.rglob('*') if not (
        p.is_relative_to(data) or p.is_relative_to(out) or p == out.parent)]
    assert outside == [], outside


def _clip_cache(path: Path, *, shard: str = 'shard_00000.safetensors', tasks=None,
                pairs=()) -> Path:
    path.mkdir(parents=True)
    save_file({'tokens': torch.zeros(2, 2, 2, 8, dtype=torch.float16)},
              str(path / 'shard_00000.safetensors'))
    clips = [dict(path=f'/v/{i}.mp4', label=label, start=None, end=None)
             for i, label in enumerate(('a', 'b'))]
    index = dict(format=features.FORMAT, backbone=dict(name='fake'), num_frames=2,
                 labels=['a', 'b'], symmetric_pairs=[list(p) for p in pairs], source='x.csv',
                 clips=clips, spans=[1.0, 1.0], shards=[dict(file=shard, count=2)],
                 tasks=tasks or {})
    (path / 'index.json').write_text(json.dumps(index))
    return path


def test_several_tasks_named_by_arguments_stay_inside_out(tmp_path, capsys):
    cache = _clip_cache(tmp_path / 'cache', tasks={'object': ['o', 'p']})
    out = tmp_path / 'a' / 'b' / 'run'
    assert train.main(['--cache', str(cache), '--head', 'linear', '--out', str(out), '--task',
                       'object', '--task', '../../x', '--epochs', '1']) == 2
    err = capsys.readouterr().err
    assert "train: error: --task '../../x': not usable" in err, err
    assert not (tmp_path / 'a' / 'x_linear.safetensors').exists()
    assert not out.exists()


def test_task_names_of_a_cache_index_and_head_names_stay_inside(tmp_path):
    cache = _clip_cache(tmp_path / 'cache', tasks={'../../x': ['o', 'p']})
    with pytest.raises(DataError, match=r"task '\.\./\.\./x': not usable"):
        load_cache(cache)
    with pytest.raises(ValueError, match=r"head name '\.\./evil_step': not usable"):
        head = SimpleNamespace(name='../evil_step', module=torch.nn.Linear(1, 1))
        save_run(tmp_path / 'run', [head], None, None)
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('shard', ['../../../../etc/hostname', '/dev/zero', '..'])
def test_clip_cache_shard_names_stay_inside_the_cache(tmp_path, shard):
    cache = _clip_cache(tmp_path / 'cache', shard=shard)
    with pytest.raises(DataError, match='shard entry: file .*not usable'):
        load_cache(cache)


def _bag_cache(path: Path, *, shard: str = 'frames_00000.safetensors', pairs=(),
               root: str = '..') -> Path:
    path.mkdir(parents=True)
    save_file({'tokens': torch.zeros(4, 2, 8, dtype=torch.float16)},
              str(path / 'frames_00000.safetensors'))
    rec = dict(bag='b', topic=TOPIC, labels='t.csv', split='train', relative=False, done=True,
               stamps=[1, 2, 3, 4], runs=[0, 0, 0, 0], shards=[dict(file=shard, count=4)],
               windows=[[0, 'a'], [2, 'b']])
    index = dict(format=bag_cache.FRAMES_FORMAT, backbone=dict(name='fake'), num_frames=2,
                 window_seconds=1.0, labels=['a', 'b'], symmetric_pairs=[list(p) for p in pairs],
                 recordings=[rec])
    (path / 'index.json').write_text(json.dumps(index))
    (path / 'train').mkdir()
    (path / 'train' / 'index.json').write_text(json.dumps(dict(
        format=bag_cache.WINDOWS_FORMAT, root=root, split='train')))
    return path


def test_bag_cache_reads_only_inside_the_cache(tmp_path):
    assert len(load_cache(_bag_cache(tmp_path / 'ok') / 'train').targets) == 2
    for i, shard in enumerate(['/dev/zero', '../../../../etc/hostname']):
        with pytest.raises(DataError, match='shard file .*not usable'):
            load_cache(_bag_cache(tmp_path / f'bad{i}', shard=shard))
    with pytest.raises(DataError, match="root '../..', expected '..'"):
        load_cache(_bag_cache(tmp_path / 'root', root='../..') / 'train')


def test_bag_cache_pair_with_an_unknown_label_names_the_pair_and_labels(tmp_path):
    with pytest.raises(DataError) as info:
        load_cache(_bag_cache(tmp_path / 'c', pairs=[('a', 'zzz')]))
    message = str(info.value)
    assert "symmetric pair ['a', 'zzz']: 'zzz' is not a label; labels are ['a', 'b']" in message
    assert 'index.json' in message and 'tuple.index' not in message, message


def test_bag_eval_folder_names_stay_inside_out(tmp_path):
    names = recording_names([Path('..'), Path('.'), Path('/'), Path('rec/run.bag')])
    for name in names:
        assert (tmp_path / name).resolve().parent == tmp_path.resolve(), names
    assert names[0] == Path.cwd().parent.name and names[1] == Path.cwd().name, names
    assert names[2:] == ['bag', 'run'], names


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bag')
    bag = _bag(tmp / 'bag', [FIRST + i * 100 * MS for i in range(12)])
    (bag / 'timeline.csv').write_text(f'start,end,label\n{FIRST / 1e9},{FIRST / 1e9 + 0.6},a\n'
                                      f'{FIRST / 1e9 + 0.6},{FIRST / 1e9 + 1.2},b\n')
    return bag, tiny_params(tmp, num_frames=2, window_seconds=0.4)


def _extract_bag(small_bag, out: Path, *extra: str) -> int:
    bag, params = small_bag
    return extract_cli.main(['--bag', str(bag), '--topic', TOPIC, '--config', str(params),
                             '--out', str(out), *extra])


@pytest.mark.parametrize('split', ['', '..', '../x', '/abs/x', 'a/b'])
def test_extract_bag_split_must_be_a_folder_inside_out(small_bag, tmp_path, capsys, split):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'index.json').write_text('{"keep": 1}')
    assert _extract_bag(small_bag, out, '--split', split) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and f'split {split!r}: not usable' in err, err
    assert (out / 'index.json').read_text() == '{"keep": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


# --- damaged resume indexes: one line naming the file and what to do -----------------------

@pytest.mark.parametrize('damage', ['{not json', '[]', '{"recordings": [{"bag": 1}]}',
                                    '{"recordings": "x"}'])
def test_extract_bag_resume_from_a_damaged_index_is_one_line(small_bag, tmp_path, capsys,
                                                              damage):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'index.json').write_text(damage)
    assert _extract_bag(small_bag, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'index.json: damaged cache index, cannot resume' in err \
        and 'delete the directory' in err, err


@pytest.mark.parametrize('shards', [[{'file': 'shard_00000.safetensors'}], 'abc',
                                    [{'file': '../../x', 'count': 1}]])
def test_clip_cache_resume_from_a_damaged_index_is_one_line(videos, tmp_path, shards):
    csv = videos / 'clips.csv'
    csv.write_text('path,label\na.mp4,wave\nb.mp4,stir\n')
    clip_list = read_clip_list(csv)
    backbone = FrozenBackbone.load('tiny')
    out = tmp_path / 'cache'
    features.extract(clip_list, backbone, num_frames=2, out=out, shard_size=1, progress=False)
    index = json.loads((out / 'index.json').read_text())
    (out / 'index.json').write_text(json.dumps({**index, 'shards': shards}))
    with pytest.raises(DataError) as info:
        features.extract(clip_list, backbone, num_frames=2, out=out, progress=False)
    assert 'index.json: damaged cache index, cannot resume' in str(info.value) and \
        'delete the cache directory' in str(info.value), info.value
