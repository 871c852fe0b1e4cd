"""synth -> extract -> train -> eval end to end (tiny backbone), resumable caches, bad inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, extract, read_clip_list, sample_indices
from step_ros.data.synth import ACTIONS, LABELS, SYMMETRIC_PAIRS, render_clip
from step_ros.learn.training import predict
from step_ros.model import efficientnet
from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import load_head, read_meta
from step_ros.tools import evaluate, train
from step_ros.tools import extract as extract_cli
from step_ros.tools import synth as synth_cli

T = 4


@pytest.fixture(scope='module')
def backbone():
    return FrozenBackbone.load('tiny')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    code = synth_cli.main(['--out', str(root), '--train', '2', '--val', '1', '--test', '1',
                           '--size', '64x64', '--min-frames', '8', '--max-frames', '12'])
    assert code == 0
    return root


@pytest.fixture(scope='module')
def caches(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp('cache')
    for split in ('train', 'test'):
        code = extract_cli.main(['--clips', str(dataset / f'{split}.csv'), '--frames', str(T),
                                 '--out', str(out / split), '--shard-size', '5'])
        assert code == 0
    return out


def test_cache_holds_fp16_tokens_labels_and_pairs(caches, backbone):
    cache = load_cache(caches / 'train')
    assert cache.tokens.shape == (2 * len(LABELS), T, 1 + backbone.info.num_patches, 96)
    assert cache.tokens.dtype == torch.float16
    assert cache.labels == LABELS and cache.symmetric_pairs == SYMMETRIC_PAIRS
    assert [cache.labels[i] for i in cache.targets[::2]] == list(LABELS)
    assert cache.backbone['fingerprint'] == backbone.info.fingerprint


def test_extract_resumes_where_it_stopped(dataset, caches, backbone, tmp_path):
    clips = read_clip_list(dataset / 'train.csv')
    extract(clips, backbone, num_frames=T, out=tmp_path, shard_size=5, progress=False)
    index = json.loads((tmp_path / 'index.json').read_text())
    assert len(index['shards']) == 4, index['shards']  # 18 clips in shards of 5
    # Simulate an interruption after the first shard: the index only lists that one.
    index['shards'], index['spans'] = index['shards'][:1], index['spans'][:5]
    (tmp_path / 'index.json').write_text(json.dumps(index))
    with pytest.raises(DataError, match='incomplete cache'):
        load_cache(tmp_path)
    extract(clips, backbone, num_frames=T, out=tmp_path, shard_size=5, progress=False)
    resumed = load_cache(tmp_path)
    reference = load_cache(caches / 'train')
    assert torch.equal(resumed.tokens, reference.tokens)
    with pytest.raises(DataError, match='other clips, backbone or T'):
        extract(clips, backbone, num_frames=T + 1, out=tmp_path, progress=False)


def test_train_eval_and_checkpoint_round_trip(caches, tmp_path, capsys):
    run = tmp_path / 'run'
    code = train.main(['--cache', str(caches / 'train'), '--val-cache', str(caches / 'test'),
                       '--head', 'step', '--head', 'linear', '--out', str(run),
                       '--epochs', '2', '--batch-size', '8'])
    assert code == 0, capsys.readouterr().err
    for name in ('step.safetensors', 'linear.safetensors', 'config.json', 'log.jsonl',
                 'curves.png'):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert {(e['head'], e['epoch']) for e in log} == {(h, e) for h in ('step', 'linear')
                                                       for e in (1, 2)}, log
    meta = read_meta(run / 'step.safetensors')
    assert meta.task == 'action' and meta.labels == LABELS, meta
    calibration = json.loads((run / 'calibration.json').read_text())
    assert meta.temperature == calibration['step']['temperature'] > 0, (meta, calibration)
    assert meta.temperature != 1.0 and meta.background == 'none', meta
    assert calibration['step']['nll_calibrated'] <= calibration['step']['nll_uncalibrated']
    assert meta.symmetric_pairs == SYMMETRIC_PAIRS and meta.num_frames == T, meta
    assert meta.head.num_heads == 4, meta.head  # tiny backbone: D=96 -> 4 attention heads
    module, _ = load_head(run / 'step.safetensors')
    test = load_cache(caches / 'test')
    again, _ = load_head(run / 'step.safetensors')
    assert torch.equal(predict(module, test.tokens), predict(again, test.tokens))

    out = tmp_path / 'eval'
    code = evaluate.main(['--cache', str(caches / 'test'), '--checkpoint',
                          str(run / 'linear.safetensors'), '--out', str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / 'report.json').read_text())
    for block in ('accuracy', 'reversed'):
        assert set(report[block]) == {'overall', 'symmetric', 'non_symmetric'}, report[block]
    assert set(report['per_class']) == set(LABELS), report['per_class']
    assert report['params'] == 96 * len(LABELS) + len(LABELS), report['params']
    c = report['calibration']
    assert c['temperature'] == read_meta(run / 'linear.safetensors').temperature, c
    assert 0 <= c['ece'] <= 1 and 0 <= c['ece_uncalibrated'] <= 1, c
    assert (out / 'reliability.png').stat().st_size > 1000
    # What reversal does to a head that reads order is pinned in test_order_sensitivity (a
    # probe is order-blind, so its reversed block says nothing about eval reversing frames).
    assert (out / 'confusion.png').stat().st_size > 1000
    assert 'most confused with' in (out / 'report.md').read_text()


def test_sample_indices_cover_the_window():
    assert sample_indices(60, 8, fps=30.0, start=None, end=None).tolist() == \
        [0, 8, 17, 25, 34, 42, 51, 59]
    window = sample_indices(60, 8, fps=30.0, start=0.1, end=0.1 + 1.7833)
    assert window[0] == 3 and window[-1] == 55, window
    assert np.all(np.diff(window) >= 7), window


def _csv(path, text: str):
    path.write_text(text)
    return path


def test_bad_inputs_give_clear_errors(dataset, tmp_path, backbone, capsys):
    video = dataset / 'videos' / 'train' / 'wave_0000.mp4'
    with pytest.raises(DataError, match='missing.mp4.*not found'):
        read_clip_list(_csv(tmp_path / 'a.csv', 'path,label\nmissing.mp4,wave\n'))
    with pytest.raises(DataError, match='empty clip list'):
        read_clip_list(_csv(tmp_path / 'b.csv', ''))
    with pytest.raises(DataError, match='header but no clips'):
        read_clip_list(_csv(tmp_path / 'c.csv', 'path,label\n'))
    with pytest.raises(DataError, match=r"lacks \['label'\]"):
        read_clip_list(_csv(tmp_path / 'd.csv', f'path\n{video}\n'))
    rows = f'path,label\n{video},wave\n{video},stir\n'
    (tmp_path / 'pairs.yaml').write_text('symmetric_pairs: [[wave, fly]]\n')
    with pytest.raises(DataError, match="'fly' is not a label"):
        read_clip_list(_csv(tmp_path / 'e.csv', rows))
    (tmp_path / 'pairs.yaml').write_text('symmetric_pairs: [[wave, stir]]\n')
    assert read_clip_list(tmp_path / 'e.csv').symmetric_pairs == (('wave', 'stir'),)
    (tmp_path / 'broken.mp4').write_bytes(b'this is not a video')
    clips = read_clip_list(_csv(tmp_path / 'f.csv', 'path,label\nbroken.mp4,wave\n'
                                f'{video},stir\n'))
    with pytest.raises(DataError, match='broken.mp4'):
        extract(clips, backbone, num_frames=T, out=tmp_path / 'cache', progress=False)
    # The CLI reports the same errors on stderr with exit status 2, no traceback.
    code = extract_cli.main(['--clips', str(tmp_path / 'a.csv'), '--out', str(tmp_path / 'x')])
    assert code == 2 and 'missing.mp4' in capsys.readouterr().err
    code = evaluate.main(['--cache', str(tmp_path / 'nowhere'), '--checkpoint',
                          str(tmp_path / 'none.safetensors'), '--out', str(tmp_path / 'y')])
    assert code == 2 and 'no such head checkpoint' in capsys.readouterr().err
    demo = Path(__file__).parents[1] / 'models' / 'demo_action.safetensors'
    code = evaluate.main(['--cache', str(tmp_path / 'nowhere'), '--checkpoint', str(demo),
                          '--out', str(tmp_path / 'y')])
    assert code == 2 and 'not a feature cache' in capsys.readouterr().err


_NO_EFFICIENTNET = importlib.util.find_spec(efficientnet.PACKAGE) is None


@pytest.mark.parametrize('head, weights, image_size', [
    ('demo_action.safetensors', 'tiny', 0),
    pytest.param('demo_action_efficientnet.safetensors', 'efficientnet_lite0', 128,
                 marks=pytest.mark.skipif(_NO_EFFICIENTNET, reason='weights package not '
                                          f'installed ({efficientnet.INSTALL})'))])
def test_committed_demo_heads_recognise_live_windows(backbone, head, weights, image_size):
    """models/demo_action*.safetensors read 2 s windows of the demo camera, in order: the
    `tiny` head of `make demo` and the EfficientNet-Lite0 one of `make demo-real`."""
    if weights != 'tiny':
        backbone = FrozenBackbone.load(weights, image_size=image_size)
    path = Path(__file__).parents[1] / 'models' / head
    module, meta = load_head(path)
    meta.check_backbone(backbone.info, source=str(path))
    assert (meta.task, meta.labels, meta.symmetric_pairs) == ('action', LABELS, SYMMETRIC_PAIRS)
    assert meta.background == 'none' and meta.temperature != 1.0, meta
    assert (meta.num_frames, meta.window_seconds, meta.head.num_heads) == (8, 2.0, 4), meta
    hits = flips = 0
    for c, action in enumerate(ACTIONS):
        clip = render_clip(action, rng=np.random.default_rng([77, c]), num_frames=60,
                           size=(240, 320))
        frames = clip[np.round(np.arange(8) * 7.5).astype(int)]  # one frame every 0.25 s
        tokens = backbone(frames)[None]  # (1, T, 1+N, D)
        hits += meta.labels[int(module(tokens).argmax())] == action
        flipped = meta.labels[int(module(tokens.flip(1)).argmax())]
        flips += flipped == dict(SYMMETRIC_PAIRS + tuple(p[::-1] for p in SYMMETRIC_PAIRS)
                                 ).get(action, action)
    assert hits >= 7, f'{hits}/8 live windows recognised'
    assert flips >= 7, f'{flips}/8 reversed windows read as the counterpart (or same class)'


def test_node_window_matches_the_nodes_frame_spacing():
    from step_ros.data.features import node_window
    # 8 frames 0.25 s apart at 30 fps (every 7.5th frame): the node keeps them with a 2 s window.
    index = sample_indices(60, 8, fps=30.0, start=0.0, end=(7 * 7.5 + 1) / 30.0)
    assert abs(node_window(index, 30.0) - 2.0) < 0.02, (index, node_window(index, 30.0))
    assert node_window(np.array([3]), 30.0) == pytest.approx(1 / 30)


def test_a_resumed_cache_takes_the_edited_pairs(dataset, backbone, tmp_path):
    extract(read_clip_list(dataset / 'train.csv'), backbone, num_frames=T, out=tmp_path,
            progress=False)
    edited = tmp_path / 'pairs.yaml'
    edited.write_text('symmetric_pairs: [[pick_up, put_down]]\n')
    extract(read_clip_list(dataset / 'train.csv', pairs_path=edited), backbone, num_frames=T,
            out=tmp_path, progress=False)
    assert load_cache(tmp_path).symmetric_pairs == (('pick_up', 'put_down'),)


def test_extract_rejects_a_shard_size_below_one(dataset, tmp_path, capsys):
    code = extract_cli.main(['--clips', str(dataset / 'train.csv'), '--out', str(tmp_path),
                             '--shard-size', '0'])
    assert code == 2
    assert '--shard-size 0: must be >= 1' in capsys.readouterr().err


def test_clips_without_a_none_label_train_a_head_without_one_unless_one_is_named(
        dataset, tmp_path, capsys):
    lines = (dataset / 'train.csv').read_text().splitlines()
    rows = [line.split(',') for line in lines[1:]]
    kept = [[str(dataset / r[0]), *r[1:]] for r in rows if r[1] in ('pick_up', 'put_down')]
    (tmp_path / 'clips.csv').write_text(
        '\n'.join([lines[0]] + [','.join(r) for r in kept]) + '\n')
    (tmp_path / 'pairs.yaml').write_text('labels: [pick_up, put_down]\n'
                                         'symmetric_pairs: [[pick_up, put_down]]\n')
    assert extract_cli.main(['--clips', str(tmp_path / 'clips.csv'), '--frames', str(T),
                             '--out', str(tmp_path / 'cache')]) == 0
    capsys.readouterr()
    argv = ['--cache', str(tmp_path / 'cache'), '--head', 'linear', '--epochs', '1']
    assert train.main([*argv, '--out', str(tmp_path / 'run')]) == 0
    err = capsys.readouterr().err
    assert "no 'none' label" in err and '--background LABEL' in err, err
    assert read_meta(tmp_path / 'run' / 'linear.safetensors').background is None
    # Named, the background must be a label.
    assert train.main([*argv, '--background', 'none', '--out', str(tmp_path / 'named')]) == 2
    assert "--background 'none' is not a label of" in capsys.readouterr().err
    assert not (tmp_path / 'named').exists()
