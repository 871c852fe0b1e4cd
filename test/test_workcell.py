"""The second synthetic world (workcell): its own classes, exact reversal of pairs, seeding,
per-action durations and idle gaps, motion that sets actions apart from idle, and its bags and
clip dataset through `synth --world workcell`, read back by `extract --bag`."""

from __future__ import annotations

import csv
import itertools
import json

import cv2
import numpy as np
import pytest
import yaml
from node_helpers import write_params

from step_ros.data import synth as actions_world
from step_ros.data.bags import iter_frames
from step_ros.data.caches import load_cache
from step_ros.data.timeline import load_timeline
from step_ros.data.workcell import (
    ACTIONS,
    BACKGROUND,
    DURATION_RANGE,
    IDLE_SECONDS,
    LABELS,
    NON_SYMMETRIC,
    SYMMETRIC_PAIRS,
    WorkcellStream,
    object_of,
    render_clip,
)
from step_ros.tools import extract
from step_ros.tools import synth as synth_cli
from step_ros.tools.synth_bag import write_synth_bag

TOPIC = '/camera/image_raw'


def test_classes_differ_from_the_actions_world():
    in_pairs = {a for pair in SYMMETRIC_PAIRS for a in pair}
    assert len(SYMMETRIC_PAIRS) >= 2 and in_pairs <= set(ACTIONS), SYMMETRIC_PAIRS
    assert set(ACTIONS) - in_pairs == set(NON_SYMMETRIC) and len(NON_SYMMETRIC) == 2, ACTIONS
    assert LABELS == ACTIONS + (BACKGROUND,) and BACKGROUND == 'idle', LABELS
    shared = set(LABELS) & set(actions_world.LABELS)
    assert not shared, f'labels shared with the actions world: {shared}'
    assert {object_of(a) for a, b in SYMMETRIC_PAIRS} == {object_of(b) for a, b in
                                                          SYMMETRIC_PAIRS}
    assert object_of(BACKGROUND) == 'none'


@pytest.mark.parametrize('pair', SYMMETRIC_PAIRS)
def test_counterpart_is_the_action_played_backwards(pair):
    a, b = pair
    forward = render_clip(a, rng=np.random.default_rng(3), num_frames=12, size=(48, 64))
    backward = render_clip(b, rng=np.random.default_rng(3), num_frames=12, size=(48, 64))
    assert forward.shape == (12, 48, 64, 3) and forward.dtype == np.uint8, forward.shape
    assert np.array_equal(forward[::-1], backward), f'{b} is not {a} reversed frame for frame'
    change = np.abs(forward[0].astype(int) - forward[-1].astype(int)).mean()
    assert change > 2.0, f'{a}: first and last frames differ by only {change:.2f}'


def test_render_and_stream_are_seeded():
    one = render_clip('hammer', rng=np.random.default_rng(5), num_frames=5, size=(32, 48))
    same = render_clip('hammer', rng=np.random.default_rng(5), num_frames=5, size=(32, 48))
    other = render_clip('hammer', rng=np.random.default_rng(6), num_frames=5, size=(32, 48))
    assert np.array_equal(one, same) and not np.array_equal(one, other)

    def take(seed: int):
        stream = WorkcellStream(seed=seed, fps=10.0, size=(32, 48), window_seconds=0.5)
        frames = np.stack([f for f, _, _ in itertools.islice(stream, 40)])
        return frames, stream.segments()

    (a, segments_a), (b, segments_b), (c, _) = take(7), take(7), take(8)
    assert np.array_equal(a, b) and segments_a == segments_b, 'same seed, other stream'
    assert not np.array_equal(a, c)


def test_durations_and_idle_gaps_over_a_long_stream():
    window, fps = 1.0, 10.0
    stream = WorkcellStream(seed=4, fps=fps, size=(32, 32), window_seconds=window)
    items = list(itertools.islice(stream, 1500))
    segments = stream.segments()[:-1]  # the last one may be unfinished
    actions = [e - s for s, e, label in segments if label != BACKGROUND]
    gaps = [e - s for s, e, label in segments if label == BACKGROUND]
    assert [label for _, _, label in segments[1::2]] == [BACKGROUND] * len(segments[1::2])
    lo, hi = (r * window for r in DURATION_RANGE)
    assert all(lo - 1e-9 <= d <= hi + 1e-9 for d in actions), actions
    assert min(actions) < lo + 0.3 and max(actions) > hi - 0.3, actions  # the whole range
    assert all(IDLE_SECONDS[0] - 1e-9 <= g <= IDLE_SECONDS[1] + 1e-9 for g in gaps), gaps
    assert min(gaps) < 1.0 and max(gaps) > 4.0, gaps
    assert {label for _, _, label in segments} == set(LABELS), segments
    for _, t, label in items[::7]:
        assert label == next(s[2] for s in stream.segments() if s[0] <= t + 1e-9 < s[1])
    back_to_back = WorkcellStream(seed=4, fps=fps, size=(32, 32), idle_seconds=(0, 0))
    list(itertools.islice(back_to_back, 200))
    assert BACKGROUND not in {label for _, _, label in back_to_back.segments()}


def test_bad_options_are_named():
    with pytest.raises(ValueError, match='fly'):
        render_clip('fly', rng=np.random.default_rng(0), num_frames=4)
    with pytest.raises(ValueError, match='num_frames=1'):
        render_clip('push', rng=np.random.default_rng(0), num_frames=1)
    with pytest.raises(ValueError, match='idle_seconds'):
        WorkcellStream(idle_seconds=(2.0, 1.0))
    with pytest.raises(ValueError, match='wave'):
        WorkcellStream(actions=('push', 'wave'))
    with pytest.raises(ValueError, match='window_seconds=0.01'):
        WorkcellStream(fps=10.0, window_seconds=0.01)


def test_recordings_differ_in_noise_and_drift_slowly_with_short_shakes():
    noise, measured = [], []
    for seed in range(5):
        stream = WorkcellStream(seed=seed, fps=10.0, size=(64, 64))
        f0, f1 = (f.astype(np.float32) for f, _, _ in itertools.islice(stream, 2))
        change = np.sort(np.abs(f1 - f0).ravel())
        measured.append(float(change[:int(0.9 * change.size)].mean()))  # without the motion
        noise.append(stream.recording.noise)
        times = np.arange(0.0, 60.0, 0.1)
        gain = np.array([stream.recording.gain(t) for t in times])
        shifts = np.array([np.hypot(*stream.recording.shake(t)) for t in times])
        assert gain.max() - gain.min() > 0.03, f'seed {seed}: no drift {gain.min():.3f}'
        assert np.abs(np.diff(gain)).max() < 0.01, f'seed {seed}: the gain jumps'
        assert 0 < np.count_nonzero(shifts) < 0.15 * len(times), np.count_nonzero(shifts)
        assert shifts.max() < 0.02 * 64, shifts.max()  # small: about 1 % of the frame
    assert max(noise) > 2 * min(noise), noise
    assert np.argsort(measured).tolist() == np.argsort(noise).tolist(), (measured, noise)


def test_every_action_moves_more_than_idle_in_the_same_recording():
    """Learnable at all: mean change between consecutive frames (at 16x16, which averages the
    sensor noise) is larger during each action than during idle gaps. A seed gives one
    recording (camera, noise level, drift) whatever the actions drawn; seed 1's is noisy."""
    def change(label: str) -> tuple[float, float]:
        stream = WorkcellStream(seed=1, fps=10.0, size=(64, 64), window_seconds=1.0,
                                actions=(label,))
        moving: dict[str, list[float]] = {label: [], BACKGROUND: []}
        previous = None
        for frame, _, name in itertools.islice(stream, 120):
            small = cv2.resize(frame, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
            if previous is not None and previous[1] == name:
                moving[name].append(float(np.abs(small - previous[0]).mean()))
            previous = small, name
        return float(np.mean(moving[label])), float(np.mean(moving[BACKGROUND]))

    for label in ACTIONS:
        action, idle = change(label)
        assert action > 1.3 * idle, f'{label}: {action:.2f} vs idle {idle:.2f}'


@pytest.fixture(scope='module')
def workcell_bag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('workcell')
    bag, timeline = write_synth_bag(tmp / 'bag', world='workcell', seconds=6.0, fps=10.0,
                                    size=(48, 64), seed=1, window_seconds=1.0, progress=False)
    return tmp, bag, timeline


def test_bag_has_the_worlds_timeline_pairs_and_metadata(workcell_bag):
    _, bag, timeline = workcell_bag
    segments = load_timeline(timeline, labels=LABELS).segments
    labels = [s.label for s in segments]
    assert BACKGROUND in labels and set(labels) <= set(LABELS), labels
    assert segments[-1].end_ns - segments[0].start_ns == 6 * 10**9, segments
    pairs = yaml.safe_load((bag / 'pairs.yaml').read_text())
    assert pairs == dict(labels=list(LABELS), symmetric_pairs=[list(p) for p in
                                                               SYMMETRIC_PAIRS]), pairs
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())
    options = json.loads(meta['rosbag2_bagfile_information']['custom_data']['step_ros.synth'])
    assert options['world'] == 'workcell' and options['window_seconds'] == 1.0, options
    assert options['idle_seconds'] == list(IDLE_SECONDS), options
    frames = list(iter_frames(bag, TOPIC))
    assert len(frames) == 60 and frames[0].image.shape == (48, 64, 3)


def test_extract_reads_a_workcell_bag(workcell_bag, capsys):
    tmp, bag, _ = workcell_bag
    params = write_params(tmp / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'num_frames': 4, 'window_seconds': 1.0})
    code = extract.main(['--bag', str(bag), '--topic', TOPIC, '--config', str(params),
                         '--out', str(tmp / 'cache')])
    assert code == 0, capsys.readouterr().err
    cache = load_cache(tmp / 'cache' / 'train')
    assert cache.labels == LABELS, cache.labels  # from the pairs.yaml beside the bag
    assert len(cache.targets) > 0 and {LABELS[int(t)] for t in cache.targets} <= set(LABELS)


def test_actions_world_bag_is_unchanged(tmp_path):
    bag, _ = write_synth_bag(tmp_path / 'bag', seconds=0.5, fps=10.0, size=(32, 32),
                             progress=False)
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())
    options = json.loads(meta['rosbag2_bagfile_information']['custom_data']['step_ros.synth'])
    assert list(options) == ['seed', 'fps', 'size', 'action_seconds', 'idle_seconds', 'seconds',
                             'topic', 'compressed', 'timeline'], options  # no `world` key
    assert options['action_seconds'] == 2.0 and options['idle_seconds'] == [0.5, 4.0], options
    pairs = yaml.safe_load((bag / 'pairs.yaml').read_text())
    assert pairs['labels'] == list(actions_world.LABELS), pairs
    stream = actions_world.ActionStream(seed=0, fps=10.0, size=(32, 32), idle_seconds=(0.5, 4))
    expected = [f for f, _, _ in itertools.islice(stream, 5)]
    assert all(np.array_equal(f.image, e) for f, e in zip(iter_frames(bag, TOPIC), expected))


def test_recordings_of_one_cell_share_camera_and_bench_not_operator():
    def static(seed: int, cell: int | None) -> tuple[np.ndarray, np.ndarray]:
        recording = WorkcellStream(seed=seed, fps=10.0, size=(96, 96), cell=cell).recording
        return recording.background.astype(np.float32), recording.glove

    def apart(a: np.ndarray, b: np.ndarray) -> float:  # mean grey-level difference
        return float(np.abs(a - b).mean())

    (one_a, glove_a), (one_b, glove_b) = static(1, cell=7), static(2, cell=7)
    (own_a, _), (own_b, _) = static(1, cell=None), static(2, cell=None)
    (other, _) = static(1, cell=8)
    # The camera moves a little between recordings of one cell; other cells look elsewhere.
    assert apart(one_a, one_b) < 0.5 * min(apart(own_a, own_b), apart(one_a, other)), (
        apart(one_a, one_b), apart(own_a, own_b), apart(one_a, other))
    assert apart(one_a, one_b) > 0  # not bolted to the pixel
    assert not np.array_equal(glove_a, glove_b)  # another operator
    # Without a cell, a recording is its own cell, as before cells existed.
    assert np.array_equal(own_a, static(1, cell=None)[0])


def test_synth_cli_world_options(tmp_path, capsys):
    out = tmp_path / 'gaps'
    assert synth_cli.main(['--bag', str(out), '--world', 'workcell', '--seconds', '12',
                           '--fps', '5', '--size', '32x32', '--window-seconds', '0.5',
                           '--idle-seconds', '1', '2']) == 0
    segments = load_timeline(out / 'timeline.csv', labels=LABELS).segments[:-1]
    gaps = [(s.end_ns - s.start_ns) / 1e9 for s in segments if s.label == BACKGROUND]
    actions = [(s.end_ns - s.start_ns) / 1e9 for s in segments if s.label != BACKGROUND]
    assert gaps and all(1.0 <= g <= 2.0 for g in gaps), gaps
    assert actions and all(0.4 <= a <= 1.5 for a in actions), actions
    capsys.readouterr()
    for argv, words in ((['--world', 'workcell', '--action-seconds', '3'], '--action-seconds'),
                        (['--window-seconds', '3'], '--window-seconds'),
                        (['--cell', '3'], '--cell'),
                        (['--world', 'workcell', '--cell', '-1'], 'cell=-1')):
        assert synth_cli.main(['--bag', str(tmp_path / 'bad'), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / 'bad').exists()


def test_synth_cli_writes_a_workcell_clip_dataset(tmp_path):
    assert synth_cli.main(['--out', str(tmp_path), '--world', 'workcell', '--train', '1',
                           '--val', '0', '--test', '0', '--size', '32x32', '--min-frames', '6',
                           '--max-frames', '6']) == 0
    rows = list(csv.DictReader((tmp_path / 'train.csv').open()))
    assert [r['label'] for r in rows] == list(LABELS), rows
    assert [r['object'] for r in rows] == [object_of(label) for label in LABELS], rows
    pairs = yaml.safe_load((tmp_path / 'pairs.yaml').read_text())
    assert pairs['symmetric_pairs'] == [list(p) for p in SYMMETRIC_PAIRS], pairs
    assert json.loads((tmp_path / 'dataset.json').read_text())['world'] == 'workcell'


@pytest.mark.parametrize('kwargs', [dict(window_seconds=float('nan')),
                                    dict(window_seconds=float('inf')), dict(fps=float('nan')),
                                    dict(idle_seconds=(0.3, float('inf')))],
                         ids=['nan-window', 'inf-window', 'nan-fps', 'inf-idle'])
def test_non_finite_durations_are_refused_in_one_line(kwargs):
    with pytest.raises(ValueError, match='finite|idle_seconds'):
        WorkcellStream(**kwargs)
