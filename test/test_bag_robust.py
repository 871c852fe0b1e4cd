"""Recordings read robustly and heads never written broken: bag caches with non-finite tokens or
windows out of range are refused, one recording cannot enter two splits by another path,
unlabelled or unstamped recordings and memory limits are named in one line, timelines are read
by header names (and with a byte-order mark), labels are drawn as plain text, and `train`
names the background label explicitly."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from node_helpers import write_params
from safetensors.torch import load_file, save_file
from test_bag_dataset import TIMELINE, TOPIC, WINDOW, T, run_extract, write_gap_bag

from step_ros.data import bag_dataset
from step_ros.data.bag_dataset import NodeSettings, label_windows
from step_ros.data.bags import BagWriter
from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, FeatureCache
from step_ros.data.synth import ActionStream
from step_ros.data.timeline import TimelineError, load_timeline, write_timeline
from step_ros.learn.training import TrainConfig, save_run, train_heads
from step_ros.model.checkpoint import read_meta
from step_ros.model.heads import PRESETS
from step_ros.stream.config import load_params_file
from step_ros.tools import train
from step_ros.tools.synth_bag import START_NS

S = 1_000_000_000


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """Two gap recordings (labels pick_up, stir, wave: no background) in one cache."""
    tmp = tmp_path_factory.mktemp('bag_robust')
    bags = [write_gap_bag(tmp / f'bag{i}', seed=i) for i in range(2)]
    params = write_params(tmp / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'num_frames': T, 'window_seconds': WINDOW})
    assert run_extract(bags, params, tmp / 'cache', '--shard-size', '8', '--straddle',
                       'drop') == 0
    return tmp, bags, params


def _copy(made, tmp_path):
    cache = tmp_path / 'cache'
    shutil.copytree(made[0] / 'cache', cache)
    return cache


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.strip() and not line.startswith('extract ')]  # progress bars
    assert len(err) == 1 and ': error: ' in err[0], err
    return err[0]


def test_windows_are_runs_of_one_recording_with_their_own_tokens(made):
    """Every window is T consecutive sampled frames of one run of its own recording, labelled
    as label_windows labels the recording's stamps; its tokens are that recording's frames."""
    tmp, bags, _ = made
    index = json.loads((tmp / 'cache' / 'index.json').read_text())
    cache = load_cache(tmp / 'cache')
    frames, offset = [], 0
    expected = []
    for number, rec in enumerate(index['recordings']):
        tokens = torch.cat([load_file(str(tmp / 'cache' / s['file']))['tokens']
                            for s in rec['shards']])
        assert len(tokens) == len(rec['stamps'])
        windows = label_windows(rec['stamps'], rec['runs'], TIMELINE, num_frames=T, stride=1)
        assert rec['windows'] == [list(w) for w in windows]
        # the same windows, derived frame by frame: every T frames of one run inside one segment
        by_frames = []
        for start in range(len(rec['stamps']) - T + 1):
            span = range(start, start + T)
            segments = {TIMELINE.segment_at(rec['stamps'][f]) for f in span}
            if len({rec['runs'][f] for f in span}) == 1 and len(segments) == 1 \
                    and None not in segments:
                by_frames.append([start, segments.pop().label])
        assert rec['windows'] == by_frames
        assert windows, rec['bag']
        for start, label in windows:
            assert rec['runs'][start] == rec['runs'][start + T - 1]
            expected.append((number, tuple(rec['stamps'][start:start + T]), label,
                             tokens[start:start + T]))
        frames.append(tokens)
        offset += len(tokens)
    assert len(cache.tokens) == len(expected)
    for i, (number, stamps, label, tokens) in enumerate(expected):
        assert cache.window_recordings[i] == number
        assert cache.window_stamps[i] == stamps
        assert cache.labels[cache.targets[i]] == label
        assert torch.equal(cache.tokens[i], tokens), i
    # the last window of the first recording ends on its last frame of its last run
    first = index['recordings'][0]
    last_start = max(s for s, _ in first['windows'])
    assert last_start + T <= len(first['stamps'])


def test_non_finite_bag_tokens_are_refused_naming_the_shard(made, tmp_path, capsys):
    cache = _copy(made, tmp_path)
    shard = cache / 'frames_00001.safetensors'
    tokens = load_file(str(shard))['tokens']
    tokens[2, 0, 0] = float('nan')
    save_file({'tokens': tokens}, str(shard))
    with pytest.raises(DataError, match='frames_00001.safetensors: tokens are not finite'):
        load_cache(cache / 'train')
    code = train.main(['--cache', str(cache / 'train'), '--head', 'linear', '--epochs', '1',
                       '--background', '', '--out', str(tmp_path / 'run')])
    line = _one_error_line(capsys)
    assert code == 2 and 'frames_00001.safetensors' in line and 'not finite' in line, line
    assert not (tmp_path / 'run').exists()


def _memory_cache(tokens: torch.Tensor) -> FeatureCache:
    targets = torch.arange(len(tokens)) % 2
    return FeatureCache(tokens=tokens, targets=targets, labels=('a', 'b'), symmetric_pairs=(),
                        backbone={}, num_frames=tokens.shape[1], window_seconds=1.0,
                        path='memory')


def test_a_non_finite_loss_or_head_is_never_written(tmp_path):
    tokens = torch.randn(8, T, 5, 16)
    tokens[3] = float('inf')
    heads = {'linear': dataclasses.replace(PRESETS['linear'], num_heads=4)}
    with pytest.raises(ValueError, match=r"'linear': the training loss became (nan|inf) in "):
        train_heads(_memory_cache(tokens), heads, TrainConfig(epochs=1, batch_size=4),
                    progress=False)
    cache = _memory_cache(torch.randn(8, T, 5, 16))
    trained = train_heads(cache, heads, TrainConfig(epochs=1, batch_size=4), progress=False)
    with torch.no_grad():
        next(trained[0].module.parameters()).fill_(float('nan'))
    with pytest.raises(ValueError, match="head 'linear': parameters .* are not finite"):
        save_run(tmp_path / 'run', trained, cache, TrainConfig(epochs=1))
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('start', [-1, 'last'])
def test_window_starts_out_of_range_are_refused(made, tmp_path, start):
    cache = _copy(made, tmp_path)
    index = json.loads((cache / 'index.json').read_text())
    rec = index['recordings'][0]
    # 'last': a window whose T frames would run into the next recording
    rec['windows'][0][0] = len(rec['stamps']) - T + 1 if start == 'last' else start
    (cache / 'index.json').write_text(json.dumps(index))
    with pytest.raises(DataError) as info:
        load_cache(cache / 'train')
    text = str(info.value)
    assert 'index.json: recording 0' in text and 'window 0 starts at frame' in text, text


def test_a_window_across_a_sampler_restart_is_refused(made, tmp_path):
    cache = _copy(made, tmp_path)
    index = json.loads((cache / 'index.json').read_text())
    rec = index['recordings'][0]
    switch = rec['runs'].index(1)  # first frame of the second run
    rec['windows'][0][0] = switch - 1
    (cache / 'index.json').write_text(json.dumps(index))
    with pytest.raises(DataError, match='window 0 starts at frame'):
        load_cache(cache)


def test_one_bag_by_another_path_is_still_given_twice(made, tmp_path, capsys):
    _, bags, params = made
    mcap = next(bags[0].glob('*.mcap'))
    link = tmp_path / 'link'
    link.symlink_to(bags[0])
    for other in (mcap, link, bags[0].parent / '.' / bags[0].name):
        code = run_extract([bags[0], other], params, tmp_path / 'c', '--split', 'train',
                           '--split', 'val')
        line = _one_error_line(capsys)
        assert code == 2 and 'given twice' in line, (other, line)


def test_a_timeline_that_labels_no_window_is_an_error(made, tmp_path, capsys):
    _, bags, params = made
    relative = tmp_path / 'rel.csv'  # seconds from the first image, given without --relative
    write_timeline(relative, [(0, 3 * S, 'wave'), (3 * S, 5 * S, 'stir')])
    # the other recording's windows do not excuse this one
    code = run_extract(bags, params, tmp_path / 'c', '--labels', str(relative), '--labels',
                       str(bags[1] / 'timeline.csv'))
    line = _one_error_line(capsys)
    assert code == 2 and 'no window is labelled: ' in line and 'pass --relative' in line, line
    assert str(bags[1]) not in line, line
    assert 'spans 0.000000000-5.000000000 s' in line and 'images 1700000000.' in line, line


def _write_bag(path, stamps):
    stream = iter(ActionStream(seed=0, fps=10.0, size=(48, 64)))
    with BagWriter(path) as writer:
        for stamp in stamps:
            writer.write_image(TOPIC, next(stream)[0], stamp_ns=stamp)
    write_timeline(path / 'timeline.csv', [(0, 3 * S, 'wave'), (3 * S, 6 * S, 'stir')])
    return path


def test_unstamped_images_are_named(made, tmp_path, capsys):
    _, _, params = made
    bag = _write_bag(tmp_path / 'zero', [0] * 30)
    assert run_extract([bag], params, tmp_path / 'c') == 2
    line = _one_error_line(capsys)
    assert 'all 30 image header stamps are 0' in line, line


def test_memory_beyond_the_available_is_refused_with_the_flag(made, tmp_path, capsys,
                                                              monkeypatch):
    _, bags, params = made
    backbone = NodeSettings.from_params(load_params_file(params)).load_backbone()
    sizes = dict(height=48, width=64, tokens=backbone.tokens_per_frame,
                 dim=backbone.info.embed_dim, batch_frames=16)
    fits = bag_dataset.estimate_bytes(shard_size=32, **sizes)
    monkeypatch.setattr(bag_dataset, 'available_bytes', lambda: fits / 0.8)  # 32 frames fit
    monkeypatch.setattr(bag_dataset, 'encode', None)  # nothing may be encoded
    assert run_extract([bags[0]], params, tmp_path / 'c') == 2
    line = _one_error_line(capsys)
    assert '64x48 images in shards of 64 frames needs about' in line, line
    assert 'lower --shard-size (--shard-size 32)' in line, line


def test_bom_and_header_names_in_a_timeline(tmp_path):
    path = tmp_path / 't.csv'
    path.write_bytes('\ufeffstart,end,label\n0,2,wave\n'.encode())
    assert [s.label for s in load_timeline(path).segments] == ['wave']
    path.write_text('label,note,END,Start\nwave,first one,2,0\nstir,,4,2\n')
    timeline = load_timeline(path)
    assert [(s.start_ns, s.end_ns, s.label) for s in timeline.segments] == [
        (0, 2 * S, 'wave'), (2 * S, 4 * S, 'stir')]
    path.write_text('begin,end,label\n0,2,wave\n')
    with pytest.raises(TimelineError, match=r"t.csv:1: the header 'begin,end,label' has no "
                                            'column start'):
        load_timeline(path)
    path.write_text('0,2,wave\n2,4,stir\n')  # no header: start, end, label
    assert len(load_timeline(path).segments) == 2


def test_labels_with_dollar_signs_are_drawn_as_plain_text(tmp_path):
    import matplotlib

    from step_ros.evaluate.metrics import plot_confusion
    from step_ros.evaluate.stream_plots import plot_sweep, plot_timeline
    from step_ros.stream.calibration import plot_reliability

    labels = ['$\\undefined{x}$', 'b$']
    matplotlib.rcParams['text.parse_math'] = True  # each plot sets what it needs
    plot_confusion(tmp_path / 'c.png', np.eye(2, dtype=int), labels, title=labels[0])
    timeline = load_timeline(_two_segments(tmp_path / 'tl.csv', labels))
    matplotlib.rcParams['text.parse_math'] = True
    plot_timeline(tmp_path / 't.png', timeline=timeline, stamps=[0, S, 2 * S],
                  raw=labels + labels[:1], decided=labels[:1] * 3, events=[], labels=labels,
                  background=None, origin_ns=0, title=labels[0])
    curve = dict(count=[1, 1], confidence=[0.2, 0.8], accuracy=[0.0, 1.0], ece=0.1)
    matplotlib.rcParams['text.parse_math'] = True
    plot_reliability(tmp_path / 'r.png', {labels[0]: curve}, title=labels[0])
    matplotlib.rcParams['text.parse_math'] = True
    plot_sweep(tmp_path / 's.png', [], chosen=None, true_changes=None, title=labels[0])
    assert all((tmp_path / f'{n}.png').stat().st_size > 0 for n in 'ctrs')


def _two_segments(path, labels):
    return write_timeline(path, [(0, S, labels[0]), (S, 2 * S, labels[1])])


def test_train_names_the_background_label(made, tmp_path, capsys):
    cache = made[0] / 'cache' / 'train'  # labels pick_up, stir, wave
    code = train.main(['--cache', str(cache), '--head', 'linear', '--epochs', '1',
                       '--out', str(tmp_path / 'run')])
    line = _one_error_line(capsys)
    assert code == 2 and "--background 'none' is not a label of" in line, line
    assert "['pick_up', 'stir', 'wave']" in line and "--background ''" in line, line
    assert not (tmp_path / 'run').exists()
    for background, recorded in (('', None), ('stir', 'stir')):
        run = tmp_path / f'run_{background}'
        assert train.main(['--cache', str(cache), '--head', 'linear', '--epochs', '1',
                           '--background', background, '--out', str(run)]) == 0
        assert read_meta(run / 'linear.safetensors').background == recorded


def test_bag_eval_takes_the_timeline_inside_the_bag(made, tmp_path, capsys, monkeypatch):
    from step_ros.data.bags import BagError
    from step_ros.tools import bag_eval

    _, bags, params = made
    seen = []

    def evaluate(args):
        seen.append(args.labels)
        raise BagError('stop here')

    monkeypatch.setattr(bag_eval, 'evaluate', evaluate)
    common = ['--topic', TOPIC, '--config', str(params), '--out', str(tmp_path / 'e')]
    assert bag_eval.main(['--bag', str(bags[0]), *common]) == 2
    assert seen == [bags[0] / 'timeline.csv'], seen
    empty = tmp_path / 'unlabelled'
    empty.mkdir()
    (empty / 'metadata.yaml').write_text('')
    # Without one the bag runs unlabelled (test_bag_eval_unlabelled.py).
    assert bag_eval.main(['--bag', str(empty), *common]) == 2
    assert seen == [bags[0] / 'timeline.csv', None], seen


def test_a_timeline_too_fine_for_any_window_is_an_error(made, tmp_path, capsys):
    _, bags, params = made
    fine = tmp_path / 'fine.csv'  # 0.5 s segments under a 1 s window: every window straddles
    write_timeline(fine, [(START_NS + k * S // 2, START_NS + (k + 1) * S // 2,
                           ('wave', 'stir')[k % 2]) for k in range(24)])
    code = run_extract([bags[0]], params, tmp_path / 'c', '--labels', str(fine), '--straddle',
                       'drop')
    line = _one_error_line(capsys)
    assert code == 2 and "no window is labelled (T=4, straddle 'drop')" in line, line
    assert 'pass --relative' not in line, line
