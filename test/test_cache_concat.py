"""`train --cache A --cache B`: a clip cache and a bag cache trained on as one, in order, with
one clear error when they do not share labels, T or backbone; one --cache is unchanged."""

import dataclasses
import json
import shutil

import pytest
import torch
from node_helpers import make_head, write_params

from step_ros.data.bag_cache import WindowTokens
from step_ros.data.cache_concat import concat_caches
from step_ros.data.caches import load_cache
from step_ros.data.features import FeatureCache
from step_ros.data.synth import ACTIONS, SYMMETRIC_PAIRS
from step_ros.model.checkpoint import read_meta
from step_ros.tools import extract, synth, train
from step_ros.tools.synth_bag import write_synth_bag

T, N, D = 4, 3, 8
LABELS = ('a', 'b', 'c')


def _clips(count: int, *, seed: int, labels=LABELS, num_frames: int = T,
           backbone: dict | None = None) -> FeatureCache:
    g = torch.Generator().manual_seed(seed)
    return FeatureCache(tokens=torch.randn(count, num_frames, 1 + N, D, generator=g).half(),
                        targets=torch.arange(count) % len(labels), labels=labels,
                        symmetric_pairs=(('a', 'b'),), backbone=backbone or {'id': 'tiny'},
                        num_frames=num_frames, window_seconds=1.75, path=f'clips{seed}')


def _windows(frames: int, starts: list[int], *, seed: int) -> FeatureCache:
    g = torch.Generator().manual_seed(seed)
    tokens = WindowTokens(torch.randn(frames, 1 + N, D, generator=g), torch.tensor(starts), T)
    return FeatureCache(tokens=tokens, targets=torch.tensor(starts) % 3, labels=LABELS,
                        symmetric_pairs=(('b', 'a'),), backbone={'id': 'tiny'}, num_frames=T,
                        window_seconds=2.0, path='bag')


def test_concatenated_windows_keep_order_under_any_index():
    clips, bag = _clips(5, seed=1), _windows(12, [0, 3, 6, 8], seed=2)
    both = concat_caches([clips, bag])
    whole = torch.cat([clips.tokens.float(), bag.tokens.float()])  # (9, T, 1 + N, D)
    assert both.tokens.shape == whole.shape and len(both.tokens) == 9
    assert both.tokens.dtype == torch.float32  # fp16 clips and fp32 frames: the wider
    order = torch.tensor([8, 0, 5, 4, 4, 1, 7])
    assert torch.equal(both.tokens[order], whole[order])
    assert torch.equal(both.tokens[2:7], whole[2:7])
    assert torch.equal(both.tokens[6], whole[6])
    assert torch.equal(both.tokens.float(), whole)
    assert torch.equal(both.targets, torch.cat([clips.targets, bag.targets]))
    assert both.labels == LABELS and both.num_frames == T and both.path == 'clips1 + bag'
    assert both.window_seconds == 1.75  # the median window: 5 clip windows against 4
    assert concat_caches([clips]) is clips  # one cache: the cache itself


@pytest.mark.parametrize('other, words', [
    (_clips(3, seed=3, labels=('a', 'b', 'none')), "labels ['a', 'b', 'none']"),
    (_clips(3, seed=3, num_frames=T + 2), f'T = {T + 2} frames, expected {T}'),
    (_clips(3, seed=3, backbone={'id': 'other'}), "backbone {'id': 'other'}"),
])
def test_caches_that_differ_are_refused_naming_what_differs(other, words):
    with pytest.raises(ValueError) as info:
        concat_caches([_clips(4, seed=1), other])
    message = str(info.value)
    assert words in message and '--cache clips3' in message and '\n' not in message


@pytest.fixture(scope='module')
def caches(tmp_path_factory):
    """A bag cache (extract --bag) and a clip cache (extract --clips), both T = 4, tiny."""
    tmp = tmp_path_factory.mktemp('concat')
    head = make_head(tmp / 'head.safetensors', num_frames=T, labels=ACTIONS,
                     pairs=SYMMETRIC_PAIRS)
    params = write_params(tmp / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': T,
        'window_seconds': 1.0, 'top_k': 3})
    bag = write_synth_bag(tmp / 'rec', seconds=5.0, fps=10.0, size=(48, 64), seed=0,
                          action_seconds=2.5, progress=False)[0]
    assert extract.main(['--bag', str(bag), '--topic', '/camera/image_raw', '--config',
                         str(params), '--out', str(tmp / 'bag_cache'), '--stride', '2',
                         '--straddle', 'majority']) == 0
    assert synth.main(['--out', str(tmp / 'synth'), '--train', '1', '--val', '0', '--test',
                       '0', '--size', '48x64', '--min-frames', '8', '--max-frames', '8']) == 0
    for frames, name in ((T, 'clip_cache'), (T + 2, 'clip_cache_t6')):
        assert extract.main(['--clips', str(tmp / 'synth' / 'train.csv'), '--frames',
                             str(frames), '--out', str(tmp / name)]) == 0
    return tmp


def test_train_on_a_clip_cache_and_a_bag_cache(caches, capsys):
    bag, clips = load_cache(caches / 'bag_cache'), load_cache(caches / 'clip_cache')
    run = caches / 'run'
    assert train.main(['--cache', str(caches / 'clip_cache'), '--cache',
                       str(caches / 'bag_cache'), '--head', 'step', '--epochs', '1',
                       '--out', str(run)]) == 0, capsys.readouterr().err
    meta = json.loads((run / 'config.json').read_text())
    assert meta['cache'] == f'{caches / "clip_cache"} + {caches / "bag_cache"}'
    log = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert len(log) == 1 and 0.0 <= log[0]['train_acc'] <= 1.0
    trained_on = read_meta(run / 'step.safetensors').training['clips']
    assert trained_on == len(clips.tokens) + len(bag.tokens) and len(bag.tokens) > 0


def test_the_head_records_where_its_straddle_rule_switches_labels(caches, capsys):
    """Clips teach no switch point; --straddle majority windows the window's middle (0.5),
    --straddle newest 3/8: the checkpoint keeps it for the decision stage's stamps."""
    newest = caches / 'bag_cache_newest'
    shutil.copytree(caches / 'bag_cache', newest)
    assert extract.main(['--bag', str(caches / 'rec'), '--topic', '/camera/image_raw',
                         '--config', str(caches / 'params.yaml'), '--out', str(newest),
                         '--stride', '2', '--straddle', 'newest']) == 0  # relabels only
    assert load_cache(caches / 'clip_cache').switch_fraction is None
    assert load_cache(caches / 'bag_cache').switch_fraction == 0.5
    assert load_cache(newest).switch_fraction == 3 / 8
    run = caches / 'run_newest'
    assert train.main(['--cache', str(caches / 'clip_cache'), '--cache', str(newest),
                       '--head', 'step', '--epochs', '1', '--out', str(run)]) == 0, \
        capsys.readouterr().err
    assert read_meta(run / 'step.safetensors').switch_fraction == 3 / 8
    capsys.readouterr()
    code = train.main(['--cache', str(caches / 'bag_cache'), '--cache', str(newest), '--head',
                       'step', '--epochs', '1', '--out', str(caches / 'mixed')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and '\n' not in err and 'different rules' in err, err
    majority = concat_caches([load_cache(caches / 'clip_cache'),
                              load_cache(caches / 'bag_cache')])
    assert majority.switch_fraction == 0.5
    meta = read_meta(run / 'step.safetensors')
    with pytest.raises(ValueError, match='switch_fraction=0.0'):
        type(meta).from_json(dataclasses.replace(meta, switch_fraction=0.0).to_json())


def test_train_refuses_caches_of_another_t_in_one_line(caches, capsys):
    code = train.main(['--cache', str(caches / 'clip_cache_t6'), '--cache',
                       str(caches / 'bag_cache'), '--head', 'step', '--epochs', '1',
                       '--out', str(caches / 'bad_run')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and '\n' not in err
    assert err.startswith('train: error: --cache ') and 'T = 4 frames, expected 6' in err
    assert not (caches / 'bad_run').exists()


def test_only_the_further_tasks_of_every_cache_are_kept():
    a, b, c = _clips(2, seed=1), _clips(3, seed=2), _clips(1, seed=3)
    a.tasks = {'object': ['x', 'y'], 'hand': ['l', 'r']}
    b.tasks = {'object': ['z', 'x', 'x']}
    c.tasks = {'object': ['y'], 'hand': ['l']}
    assert concat_caches([a, b, c]).tasks == {'object': ['x', 'y', 'z', 'x', 'x', 'y']}
    assert concat_caches([a, _windows(8, [0, 4], seed=4)]).tasks == {}
