"""Datasets from bags: `extract --bag` stores what the live engine sees (same stamps, same
tokens), windows by the node's grid, splits by recording, resumes, and `train` reads it."""

import json
import re

import numpy as np
import pytest
import torch
from node_helpers import make_head, write_params

from step_ros.data import bag_dataset
from step_ros.data.bag_dataset import label_windows, window_starts
from step_ros.data.bags import BagWriter, iter_frames
from step_ros.data.caches import load_cache
from step_ros.data.synth import ACTIONS, LABELS, SYMMETRIC_PAIRS, ActionStream
from step_ros.data.timeline import Segment, Timeline, write_timeline
from step_ros.stream.config import PerceptionConfig, load_params_file
from step_ros.stream.runtime import build_engine
from step_ros.tools import evaluate, extract, train
from step_ros.tools.synth_bag import START_NS, write_synth_bag

TOPIC = '/camera/image_raw'
T = 4
WINDOW = 1.0  # s: one frame kept every 0.25 s
S = 1_000_000_000


def write_gap_bag(path, *, seed: int = 0):
    """10 fps frames with stamp jitter, a 1.6 s gap (a restart of the node's window) and a
    second stretch; a timeline of three segments (the gap unlabelled)."""
    stream = iter(ActionStream(seed=seed, fps=10.0, size=(48, 64)))
    rng = np.random.default_rng(seed)
    stamps = [START_NS + i * S // 10 + int(rng.integers(-15, 15)) * 1_000_000 for i in range(50)]
    stamps += [START_NS + 6_600_000_000 + i * S // 10 for i in range(40)]
    with BagWriter(path) as writer:
        for stamp in stamps:
            frame, _, _ = next(stream)
            writer.write_image(TOPIC, frame, stamp_ns=stamp)
    write_timeline(path / 'timeline.csv', [
        (START_NS, START_NS + 3 * S, 'wave'), (START_NS + 3 * S, START_NS + 5 * S, 'stir'),
        (START_NS + 6 * S, START_NS + 11 * S, 'pick_up')])
    return path


TIMELINE = Timeline([Segment(START_NS, START_NS + 3 * S, 'wave'),
                     Segment(START_NS + 3 * S, START_NS + 5 * S, 'stir'),
                     Segment(START_NS + 6 * S, START_NS + 11 * S, 'pick_up')])


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bag_dataset')
    bag = write_gap_bag(tmp / 'bag')
    head = make_head(tmp / 'head.safetensors', num_frames=T, labels=ACTIONS,
                     pairs=SYMMETRIC_PAIRS)
    params = write_params(tmp / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': T,
        'window_seconds': WINDOW, 'top_k': 3})
    return tmp, bag, params


def run_extract(bag_args, params, out, *extra):
    argv = [a for b in bag_args for a in ('--bag', str(b))]
    return extract.main([*argv, '--topic', TOPIC, '--config', str(params), '--out', str(out),
                         *extra])


def test_window_starts_follow_runs_and_stride():
    runs = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert window_starts(runs, num_frames=3, stride=1) == [0, 1, 2, 5]
    assert window_starts(runs, num_frames=3, stride=2) == [0, 2, 5]
    assert window_starts(runs, num_frames=6, stride=1) == []


def test_straddling_windows_are_dropped():
    timeline = Timeline([Segment(0, 10, 'a'), Segment(10, 20, 'b'), Segment(25, 40, 'a')])
    stamps = list(range(0, 40, 3))  # 0 3 6 ... 39
    runs = [0] * len(stamps)
    windows = label_windows(stamps, runs, timeline, num_frames=3, stride=1)
    # [0,6] a, [3,9] a, [6,12] straddles, [9,15] straddles, [12,18] b, [15,21] gap...
    assert windows[:3] == [(0, 'a'), (1, 'a'), (4, 'b')]
    for start, label in windows:
        first, last = stamps[start], stamps[start + 2]
        assert timeline.label_at(first) == timeline.label_at(last) == label
    assert (5, 'b') not in windows  # 15..21 leaves segment b


def test_majority_rule_labels_straddling_windows_by_most_frames():
    timeline = Timeline([Segment(0, 10, 'a'), Segment(10, 20, 'b'), Segment(25, 40, 'a')])
    stamps = list(range(0, 40, 3))  # 0 3 6 ... 39
    runs = [0] * len(stamps)
    drop = label_windows(stamps, runs, timeline, num_frames=3, stride=1)
    windows = dict(label_windows(stamps, runs, timeline, num_frames=3, stride=1,
                                 straddle='majority'))
    assert set(drop) <= set(windows.items())  # windows inside one segment keep their label
    assert windows[2] == 'a'  # 6 9 | 12: two frames of a
    assert windows[3] == 'b'  # 9 | 12 15: two of b
    assert windows[5] == 'b'  # 15 18 | 21 (outside): two of b
    assert 6 not in windows and 7 not in windows  # 18 | 21 24 and 21 24 | 27: one labelled
    assert windows[8] == 'a'  # 24 | 27 30
    tie = label_windows(stamps, runs, timeline, num_frames=4, stride=1, straddle='majority')
    assert (1, 'a') in tie  # 3 6 9 | 12: three of four
    assert not [w for w in tie if w[0] == 2]  # 6 9 | 12 15: two of four is no majority
    with pytest.raises(ValueError, match='straddle rule'):
        label_windows(stamps, runs, timeline, num_frames=3, stride=1, straddle='vote')


def test_newest_rule_names_a_new_segment_once_three_of_eight_frames_show_it():
    timeline = Timeline([Segment(0, 30, 'a'), Segment(30, 60, 'b'), Segment(60, 64, 'c'),
                         Segment(64, 100, 'a')])
    stamps = list(range(0, 100, 3))  # 0 3 ... 99: frames 0-9 in a, 10-19 in b, 20-21 in c
    runs = [0] * len(stamps)
    newest = dict(label_windows(stamps, runs, timeline, num_frames=8, stride=1,
                                straddle='newest'))
    majority = dict(label_windows(stamps, runs, timeline, num_frames=8, stride=1,
                                  straddle='majority'))
    assert newest[0] == majority[0] == 'a'  # inside one segment
    assert newest[4] == 'a'  # frames 4-11: two frames of b are too few, six of a the majority
    assert newest[5] == 'b' and majority[5] == 'a'  # frames 5-12: three of b name it
    assert newest[7] == majority[7] == 'b'  # frames 7-14: b both ways
    assert newest[13] == 'b'  # frames 13-20: seven of b, the newest (c) holds one
    assert newest[15] == 'b'  # frames 15-22: five of b, two of c, the newest (a) one
    assert 16 not in newest and 16 not in majority  # frames 16-23: 4 b, 2 c, 2 a: neither
    assert newest[17] == 'a' and 17 not in majority  # frames 17-24: 3 b, 2 c, 3 a
    # Only where the newest label holds 3 or 4 of the 8 frames do the rules differ:
    assert {k: v for k, v in newest.items() if majority.get(k) != v} == {
        5: 'b', 6: 'b', 17: 'a', 18: 'a'}  # 6: 4 a | 4 b; 18: 2 b, 2 c, 4 a
    assert set(majority) <= set(newest)  # every window the majority labels keeps a label


def test_straddle_rule_relabels_a_finished_cache_without_encoding(setup, tmp_path):
    _, bag, params = setup
    out = tmp_path / 'cache'
    assert run_extract([bag], params, out, '--straddle', 'drop') == 0
    dropped = load_cache(out / 'train')
    shards = {p: p.stat().st_mtime_ns for p in out.glob('frames_*.safetensors')}
    assert run_extract([bag], params, out, '--straddle', 'majority') == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob('frames_*.safetensors')} == shards
    majority = load_cache(out / 'train')
    assert len(majority.tokens) > len(dropped.tokens)
    kept = dict(zip(majority.window_stamps, majority.targets.tolist()))
    for stamps, target in zip(dropped.window_stamps, dropped.targets.tolist()):
        assert kept[stamps] == target
    index = json.loads((out / 'index.json').read_text())
    assert index['straddle'] == 'majority'
    for start, label in index['recordings'][0]['windows']:
        labels = [TIMELINE.label_at(s) for s in index['recordings'][0]['stamps'][start:start + T]]
        assert 2 * labels.count(label) > T, (start, labels)


def test_extract_bag_equals_live_engine(setup, capsys):
    """The skew test: every window of the cache is a window of the live engine, frame for frame
    (same header stamps) and value for value; the engine's windows inside one segment are all
    in the cache."""
    tmp, bag, params = setup
    assert run_extract([bag], params, tmp / 'cache', '--straddle', 'drop') == 0, \
        capsys.readouterr().err
    cache = load_cache(tmp / 'cache' / 'train')

    engine = build_engine(PerceptionConfig.from_params(load_params_file(params)))
    live = {}
    for frame in iter_frames(bag, TOPIC):
        if engine.push(frame.image, frame.stamp_ns).predictions:
            ring = engine.ring
            order = [(ring.next + i) % ring.capacity for i in range(ring.capacity)]
            live[tuple(ring.stamps[i] for i in order)] = ring.window().clone()
    assert engine.stats['resets'] == 1  # the gap restarted the window, as in the node

    timeline = Timeline([Segment(START_NS, START_NS + 3 * S, 'wave'),
                         Segment(START_NS + 3 * S, START_NS + 5 * S, 'stir'),
                         Segment(START_NS + 6 * S, START_NS + 11 * S, 'pick_up')])
    inside = {s: timeline.label_over(s[0], s[-1]) for s in live}
    inside = {s: label for s, label in inside.items() if label is not None}
    assert len(cache.tokens) == len(inside) >= 10
    assert set(cache.window_stamps) == set(inside)
    worst = 0.0
    for i, stamps in enumerate(cache.window_stamps):
        assert cache.labels[cache.targets[i]] == inside[stamps]
        cached = cache.tokens[i].float()  # (T, 1 + N, D)
        reference = live[stamps].float()
        torch.testing.assert_close(cached, reference, rtol=2e-3, atol=2e-3)
        worst = max(worst, float((cached - reference).abs().max()))
    print(f'skew: {len(inside)} windows identical in stamps, max token difference {worst:.2e}')


def test_tokens_are_stored_once_per_sampled_frame(setup):
    tmp, bag, params = setup
    if not (tmp / 'cache' / 'index.json').is_file():
        assert run_extract([bag], params, tmp / 'cache') == 0
    index = json.loads((tmp / 'cache' / 'index.json').read_text())
    rec = index['recordings'][0]
    frames = sum(s['count'] for s in rec['shards'])
    assert frames == len(rec['stamps']) < 90  # 90 images at 10 fps, one kept every 0.25 s
    assert rec['runs'][0] == 0 and rec['runs'][-1] == 1  # the gap began a second run
    period = np.diff(rec['stamps'])[np.diff(rec['runs']) == 0]
    assert np.all(np.abs(period - 0.25 * S) <= 0.1 * S)


def test_split_by_recording_and_train_eval_read_it(tmp_path, setup, capsys):
    _, _, params = setup
    bags = [write_synth_bag(tmp_path / f'rec{i}', seconds=5.0, fps=10.0, size=(48, 64),
                            seed=i, action_seconds=2.5, progress=False)[0] for i in range(3)]
    out = tmp_path / 'cache'
    code = run_extract(bags, params, out, '--split', 'train', '--split', 'train', '--split',
                       'val', '--stride', '2')
    assert code == 0, capsys.readouterr().err
    # The default straddle rule: the one the flow's measurements chose (docs/TRAINING.md).
    assert json.loads((out / 'index.json').read_text())['straddle'] == 'majority'
    train_cache, val_cache = load_cache(out / 'train'), load_cache(out / 'val')
    everything = load_cache(out)
    assert [r['bag'] for r in train_cache.recordings] == [str(b) for b in bags[:2]]
    assert [r['bag'] for r in val_cache.recordings] == [str(bags[2])]
    assert set(train_cache.window_recordings) == {0, 1} and set(val_cache.window_recordings) == {2}
    assert len(everything.tokens) == len(train_cache.tokens) + len(val_cache.tokens)
    assert train_cache.labels == LABELS  # pairs.yaml of synth --bag: the full label set
    assert train_cache.tokens[:3].shape == (3, T, *train_cache.tokens.frames.shape[1:])
    run = tmp_path / 'run'
    assert train.main(['--cache', str(out / 'train'), '--val-cache', str(out / 'val'),
                       '--head', 'step', '--epochs', '1', '--out', str(run)]) == 0
    assert evaluate.main(['--cache', str(out / 'val'), '--checkpoint',
                          str(run / 'step.safetensors'), '--out', str(tmp_path / 'eval')]) == 0
    meta = json.loads((run / 'config.json').read_text())
    assert meta['window_seconds'] == WINDOW  # the node's window, from the parameters file


def test_interrupted_extract_resumes_to_the_same_cache(tmp_path, setup, monkeypatch):
    _, bag, params = setup
    assert run_extract([bag], params, tmp_path / 'whole', '--shard-size', '4') == 0
    calls = {'n': 0}
    real = bag_dataset.encode

    def failing(*args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bag_dataset, 'encode', failing)
    with pytest.raises(KeyboardInterrupt):
        run_extract([bag], params, tmp_path / 'part', '--shard-size', '4')
    index = json.loads((tmp_path / 'part' / 'index.json').read_text())
    assert len(index['recordings'][0]['shards']) == 2 and not index['recordings'][0]['done']
    monkeypatch.setattr(bag_dataset, 'encode', real)
    assert run_extract([bag], params, tmp_path / 'part', '--shard-size', '4') == 0
    whole, part = (load_cache(tmp_path / name / 'train') for name in ('whole', 'part'))
    assert part.window_stamps == whole.window_stamps
    assert torch.equal(part.tokens.frames, whole.tokens.frames)
    assert torch.equal(part.targets, whole.targets)


@pytest.mark.parametrize('extra, words', [
    (['--frames', '16'], '--frames: with --bag the parameters file'),
    (['--labels', 'a.csv', '--labels', 'b.csv'], '--labels is given 2 times for 1 --bag'),
    (['--split', 'train', '--split', 'val'], '--split is given 2 times'),
])
def test_bad_options_fail_with_one_line(setup, tmp_path, capsys, extra, words):
    _, bag, params = setup
    assert run_extract([bag], params, tmp_path / 'c', *extra) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_one_recording_in_two_splits_is_refused(setup, tmp_path, capsys):
    _, bag, params = setup
    assert run_extract([bag, bag], params, tmp_path / 'c', '--split', 'train', '--split',
                       'val') == 2
    assert 'given twice' in capsys.readouterr().err


def test_bad_node_setting_names_the_parameter(tmp_path, setup, capsys):
    _, bag, _ = setup
    params = write_params(tmp_path / 'p.yaml', {'backbone.weights': 'tiny', 'num_frames': 0})
    assert run_extract([bag], params, tmp_path / 'c') == 2
    assert 'num_frames=0' in capsys.readouterr().err


def test_unknown_timeline_label_is_refused(tmp_path, setup, capsys):
    _, bag, params = setup
    (tmp_path / 'pairs.yaml').write_text('labels: [wave, stir]\nsymmetric_pairs: []\n')
    code = run_extract([bag], params, tmp_path / 'c', '--pairs', str(tmp_path / 'pairs.yaml'))
    assert code == 2 and "['pick_up']" in capsys.readouterr().err


def test_relative_timeline_counts_from_the_first_frame(tmp_path, setup):
    _, bag, params = setup
    first = next(iter_frames(bag, TOPIC)).stamp_ns
    rel = tmp_path / 'rel.csv'
    write_timeline(rel, [(s.start_ns - first, s.end_ns - first, s.label) for s in
                         Timeline([Segment(START_NS, START_NS + 3 * S, 'wave'),
                                   Segment(START_NS + 3 * S, START_NS + 5 * S, 'stir'),
                                   Segment(START_NS + 6 * S, START_NS + 11 * S, 'pick_up')]
                                  ).segments])
    assert run_extract([bag], params, tmp_path / 'abs') == 0
    assert run_extract([bag], params, tmp_path / 'rel', '--labels', str(rel), '--relative') == 0
    a, r = (load_cache(tmp_path / n) for n in ('abs', 'rel'))
    assert a.window_stamps == r.window_stamps and torch.equal(a.targets, r.targets)



def test_images_over_the_node_pixel_limit_are_skipped_as_the_node_does(setup, tmp_path, capsys):
    _, bag, _ = setup  # 48x64 frames: 3072 pixels
    params = write_params(tmp_path / 'p.yaml', {'backbone.weights': 'tiny', 'device': 'cpu',
                                                'num_frames': T, 'window_seconds': WINDOW,
                                                'max_image_pixels': 3000})
    assert run_extract([bag], params, tmp_path / 'c') == 2
    err = capsys.readouterr().err
    assert 'no decodable image' in err and 'max_image_pixels=3000' in err, err


def test_one_process_finishes_what_torchrun_ranks_left(setup, tmp_path, monkeypatch):
    """Records of an interrupted torchrun (no index yet) are kept by a plain re-run."""
    _, bag, params = setup
    whole = tmp_path / 'whole'
    assert run_extract([bag], params, whole, '--shard-size', '4') == 0
    index = json.loads((whole / 'index.json').read_text())
    rec = index['recordings'][0]
    key = {k: index[k] for k in ('backbone', 'num_frames', 'window_seconds', 'shard_size')}
    part = tmp_path / 'part'
    part.mkdir()
    begin = 0
    for shard in rec['shards']:
        stamps = rec['stamps'][begin:begin + shard['count']]
        begin += shard['count']
        if shard['file'] != 'frames_00002.safetensors':  # the one shard left unfinished
            (part / shard['file']).write_bytes((whole / shard['file']).read_bytes())
            (part / shard['file'].replace('.safetensors', '.done.json')).write_text(
                json.dumps(dict(key=key, file=shard['file'], stamps=stamps)))
    calls = []
    real = bag_dataset.encode

    def counting(backbone, images, **kwargs):
        calls.append(len(images))
        return real(backbone, images, **kwargs)

    monkeypatch.setattr(bag_dataset, 'encode', counting)
    assert run_extract([bag], params, part, '--shard-size', '4') == 0
    assert calls == [4]  # shard 2 only
    assert not list(part.glob('*.done.json'))  # folded into the index
    assert json.loads((part / 'index.json').read_text()) == index
    a, b = (load_cache(d / 'train') for d in (whole, part))
    assert a.window_stamps == b.window_stamps and torch.equal(a.tokens.frames, b.tokens.frames)


@pytest.mark.parametrize('text', ['{"key": {}, "stam', '{"file": "x"}', '[1, 2]'],
                         ids=['truncated', 'no-key', 'not-an-object'])
def test_a_damaged_torchrun_shard_record_is_one_line(setup, tmp_path, capsys, text):
    """A rank's shard record cut short (a killed rank, a full disk) or otherwise damaged: one
    line naming it and what to delete, no traceback, nothing encoded over it."""
    _, bag, params = setup
    whole = tmp_path / 'whole'
    assert run_extract([bag], params, whole, '--shard-size', '4') == 0
    shard = json.loads((whole / 'index.json').read_text())['recordings'][0]['shards'][0]['file']
    part = tmp_path / 'part'
    part.mkdir()
    (part / shard).write_bytes((whole / shard).read_bytes())
    record = part / shard.replace('.safetensors', '.done.json')
    record.write_text(text)
    capsys.readouterr()
    assert run_extract([bag], params, part, '--shard-size', '4') == 2
    err = capsys.readouterr().err
    lines = re.findall(r'extract: error: [^\r\n]*', err)  # beside the progress bar's text
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith(f'extract: error: {record}: damaged shard record'), lines
    assert 'delete it and its shard' in lines[0], lines
    assert record.read_text() == text and not (part / 'index.json').exists()
