"""Hostile clip lists, pair lists and feature caches: extract and train refuse them clearly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from step_ros.data import features
from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, extract, read_clip_list
from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import MAX_FRAMES
from step_ros.tools import extract as extract_cli
from step_ros.tools import train

T = 4
FPS = 10.0
FRAMES = 20  # 2 s videos


@pytest.fixture(scope='module')
def backbone():
    return FrozenBackbone.load('tiny')


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    """Two 2 s videos (20 frames at 10 fps, 48x64) whose frame i has brightness 10 * i."""
    root = tmp_path_factory.mktemp('videos')
    for name in ('a', 'b'):
        writer = cv2.VideoWriter(str(root / f'{name}.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), FPS,
                                 (64, 48))
        for i in range(FRAMES):
            writer.write(np.full((48, 64, 3), 10 * i, dtype=np.uint8))
        writer.release()
    return root


def _csv(root, rows: str, name: str = 'clips.csv'):
    path = root / name
    path.write_text('path,label,start,end\n' + rows)
    return path


@pytest.mark.parametrize('value', ['nan', 'NaN', 'inf', '-inf', '-1'])
def test_non_finite_or_negative_seconds_name_the_row(videos, value):
    path = _csv(videos, f'a.mp4,wave,0,1\nb.mp4,stir,{value},1.5\n', name='bad.csv')
    with pytest.raises(DataError) as info:
        read_clip_list(path)
    assert f'{path}:3 start' in str(info.value) and value in str(info.value), info.value
    path = _csv(videos, f'a.mp4,wave,0,1\nb.mp4,stir,0.5,{value}\n', name='bad_end.csv')
    with pytest.raises(DataError, match='bad_end.csv:3 end'):
        read_clip_list(path)


def test_nan_start_through_the_cli_is_one_error_line(videos, tmp_path, capsys):
    path = _csv(videos, 'a.mp4,wave,nan,1\nb.mp4,stir,0,1\n', name='nan.csv')
    assert extract_cli.main(['--clips', str(path), '--out', str(tmp_path / 'c')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'nan.csv:2 start' in err[0], err


@pytest.mark.parametrize('start, end, words', [
    ('2.5', '3', 'start 2.5 s is not inside the video'),
    ('2.0', '', 'start 2.0 s is not inside the video'),
    ('0.5', '4', 'end 4.0 s is beyond the end of the video'),
])
def test_seconds_beyond_the_video_are_refused(videos, backbone, tmp_path, start, end, words):
    path = _csv(videos, f'a.mp4,wave,{start},{end}\nb.mp4,stir,0,1\n', name='beyond.csv')
    clips = read_clip_list(path)
    with pytest.raises(DataError) as info:
        extract(clips, backbone, num_frames=T, out=tmp_path / 'cache', progress=False)
    assert words in str(info.value) and 'a.mp4' in str(info.value), info.value
    assert '20 frames at 10 fps' in str(info.value), info.value


def test_seconds_inside_the_video_sample_that_span(videos):
    # Frame i has brightness 10 * i: the sampled frames show which indices were read.
    clip = features.Clip(str(videos / 'a.mp4'), 'wave', 0.5, 2.0)  # frames 5..19
    frames, _ = features.read_frames(clip, T)
    brightness = [int(round(float(f.mean()) / 10)) for f in frames]
    assert brightness == [5, 10, 14, 19], brightness


def test_frames_are_bounded(videos, backbone, tmp_path, capsys):
    path = _csv(videos, 'a.mp4,wave,,\nb.mp4,stir,,\n', name='ok.csv')
    code = extract_cli.main(['--clips', str(path), '--frames', '100000', '--out',
                             str(tmp_path / 'c')])
    assert code == 2
    err = capsys.readouterr().err
    assert f'--frames 100000: must be in [1, {MAX_FRAMES}]' in err, err
    assert not (tmp_path / 'c').exists()
    with pytest.raises(DataError, match=r'num_frames=1025: must be in \[1, 1024\]'):
        extract(read_clip_list(path), backbone, num_frames=MAX_FRAMES + 1, out=tmp_path / 'd',
                progress=False)


def test_memory_is_estimated_before_allocating(videos, backbone, tmp_path, monkeypatch):
    path = _csv(videos, 'a.mp4,wave,,\nb.mp4,stir,,\n', name='ok.csv')
    clips = read_clip_list(path)
    need = features.check_memory(clips.clips[0], backbone, num_frames=512, shard_size=2,
                                 batch_clips=2)
    tokens, dim = backbone.tokens_per_frame, backbone.info.embed_dim
    frame = 48 * 64 * 3
    assert need == 512 * (2 * tokens * dim * 2 + 2 * (5 * frame + 4 * tokens * dim)), need
    monkeypatch.setattr(features, 'available_bytes', lambda: need)  # 80 % of it is too little
    with pytest.raises(DataError) as info:
        extract(clips, backbone, num_frames=512, out=tmp_path / 'c', shard_size=2,
                progress=False)
    assert 'needs about' in str(info.value) and '--frames' in str(info.value), info.value
    assert not (tmp_path / 'c').exists(), 'refused only after starting'


def test_a_flat_pair_in_pairs_yaml_is_a_clear_message(videos):
    path = _csv(videos, 'a.mp4,pick_up,,\nb.mp4,put_down,,\n', name='pairs.csv')
    pairs = videos / 'flat.yaml'
    pairs.write_text('symmetric_pairs: [pick_up]\n')
    with pytest.raises(DataError) as info:
        read_clip_list(path, pairs_path=pairs)
    message = str(info.value)
    assert "symmetric pair 'pick_up': expected a list of two label names" in message, message
    assert "'p', 'i'" not in message, message
    pairs.write_text('labels: [pick_up, put_down, pick_up]\n')
    with pytest.raises(DataError, match='appear more than once'):
        read_clip_list(path, pairs_path=pairs)


@pytest.fixture(scope='module')
def cache(videos, backbone, tmp_path_factory):
    path = _csv(videos, 'a.mp4,wave,,\nb.mp4,stir,,\na.mp4,stir,0,1\n', name='cache.csv')
    out = tmp_path_factory.mktemp('cache')
    extract(read_clip_list(path), backbone, num_frames=T, out=out, shard_size=2, progress=False)
    return out


def _damage(cache, tmp_path, *, index=None, shard=None):
    """A copy of the cache with its index edited (a function of it) or shard 0 replaced."""
    copy = tmp_path / 'damaged'
    copy.mkdir()
    for file in cache.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    if index is not None:
        text = index(json.loads((copy / 'index.json').read_text()))
        (copy / 'index.json').write_text(text if isinstance(text, str) else json.dumps(text))
    if shard is not None:
        shard(copy / 'shard_00000.safetensors')
    return copy


def _drop(key):
    def edit(index):
        del index[key]
        return index
    return edit


def _set(key, value):
    def edit(index):
        index[key] = value
        return index
    return edit


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _nan(path):
    save_file({'tokens': torch.full((2, T, 65, 96), float('nan'), dtype=torch.float16)},
              str(path))


def _wrong_shape(path):
    save_file({'tokens': torch.zeros(2, T + 1, 65, 96, dtype=torch.float16)}, str(path))


@pytest.mark.parametrize('name, damage, words', [
    ('bad_json', dict(index=lambda i: '{"format": '), ['index.json', 'damaged cache index']),
    ('json_list', dict(index=lambda i: '[1, 2]'), ['index.json', 'a JSON list']),
    ('no_shards', dict(index=_drop('shards')), ['index.json', "'shards'"]),
    ('no_labels', dict(index=_drop('labels')), ['index.json', "'labels'"]),
    ('labels_string', dict(index=_set('labels', 'wave')), ['index.json', 'labels']),
    ('num_frames_float', dict(index=_set('num_frames', 4.5)), ['index.json', 'num_frames 4.5']),
    ('shard_entry', dict(index=_set('shards', [{'file': '../x', 'count': 2}])),
     ['index.json', 'shard entry']),
    ('spans', dict(index=_set('spans', [1.0])), ['index.json', 'spans']),
    ('clip_label', dict(index=lambda i: {**i, 'clips': [{**c, 'label': 'fly'}
                                                        for c in i['clips']]}),
     ['index.json', 'clip 0']),
    ('truncated_shard', dict(shard=_truncate), ['shard_00000.safetensors', 'damaged shard']),
    ('missing_shard', dict(shard=lambda p: p.unlink()), ['shard_00000.safetensors', 'missing']),
    ('nan_tokens', dict(shard=_nan), ['shard_00000.safetensors', 'not finite']),
    ('wrong_shape', dict(shard=_wrong_shape), ['shard_00000.safetensors', '2 clips x 4 frames']),
])
def test_damaged_caches_name_the_index_or_the_shard(cache, tmp_path, capsys, name, damage,
                                                    words):
    damaged = _damage(cache, tmp_path, **damage)
    with pytest.raises(DataError) as info:
        load_cache(damaged)
    assert all(w in str(info.value) for w in words), (words, info.value)
    code = train.main(['--cache', str(damaged), '--head', 'linear', '--out',
                       str(tmp_path / 'run'), '--epochs', '1'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith('train: error: '), err
    assert all(w in err[0] for w in words), err


def test_resuming_into_a_damaged_index_is_refused(cache, backbone, videos, tmp_path):
    damaged = _damage(cache, tmp_path, index=lambda i: 'not json')
    path = videos / 'cache.csv'
    with pytest.raises(DataError, match='index.json: damaged cache index'):
        extract(read_clip_list(path), backbone, num_frames=T, out=damaged, progress=False)


def test_the_intact_cache_loads(cache):
    loaded = load_cache(cache)
    assert loaded.tokens.shape == (3, T, 65, 96) and loaded.labels == ('stir', 'wave')
    assert loaded.targets.tolist() == [1, 0, 0]
