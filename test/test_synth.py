"""The procedural dataset: classes, exact reversal of symmetric pairs, seeding, the stream, CLI."""

from __future__ import annotations

import csv
import itertools

import cv2
import numpy as np
import pytest
import yaml

from step_ros.data.synth import ACTIONS, LABELS, SYMMETRIC_PAIRS, ActionStream, render_clip
from step_ros.tools import synth as synth_cli


def test_classes_have_pairs_and_non_symmetric_actions():
    in_pairs = {a for pair in SYMMETRIC_PAIRS for a in pair}
    assert len(SYMMETRIC_PAIRS) >= 3, SYMMETRIC_PAIRS
    assert in_pairs <= set(ACTIONS), (in_pairs, ACTIONS)
    assert len(set(ACTIONS) - in_pairs) >= 2, ACTIONS
    assert len(set(ACTIONS)) == len(ACTIONS), ACTIONS


@pytest.mark.parametrize('pair', SYMMETRIC_PAIRS)
def test_counterpart_is_the_action_played_backwards(pair):
    a, b = pair
    forward = render_clip(a, rng=np.random.default_rng(3), num_frames=12, size=(64, 96))
    backward = render_clip(b, rng=np.random.default_rng(3), num_frames=12, size=(64, 96))
    assert forward.shape == (12, 64, 96, 3) and forward.dtype == np.uint8, forward.shape
    assert np.array_equal(forward[::-1], backward), f'{b} is not {a} reversed'
    # ...and the action really moves: first and last frames differ.
    change = np.abs(forward[0].astype(int) - forward[-1].astype(int)).mean()
    assert change > 2.0, f'{a}: first and last frames differ by only {change:.2f}'


def test_render_is_seeded_and_varied():
    one = render_clip('wave', rng=np.random.default_rng(5), num_frames=6, size=(48, 48))
    same = render_clip('wave', rng=np.random.default_rng(5), num_frames=6, size=(48, 48))
    other = render_clip('wave', rng=np.random.default_rng(6), num_frames=6, size=(48, 48))
    assert np.array_equal(one, same)
    assert not np.array_equal(one, other)


def test_bad_action_and_sizes_are_named():
    with pytest.raises(ValueError, match='fly'):
        render_clip('fly', rng=np.random.default_rng(0), num_frames=4)
    with pytest.raises(ValueError, match='num_frames=1'):
        render_clip('wave', rng=np.random.default_rng(0), num_frames=1)


def test_action_stream_timeline():
    stream = ActionStream(seed=1, fps=10.0, size=(60, 80), action_seconds=0.5)
    items = list(itertools.islice(stream, 23))
    frame, t, label = items[-1]
    assert frame.shape == (60, 80, 3) and frame.dtype == np.uint8, frame.shape
    assert [round(t, 6) for _, t, _ in items] == [round(i / 10.0, 6) for i in range(23)]
    segments = stream.segments()
    assert [round(s, 6) for s, _, _ in segments] == [0.0, 0.5, 1.0, 1.5, 2.0], segments
    for _, t, label in items:
        start, end, truth = next(s for s in segments if s[0] <= t + 1e-9 < s[1])
        assert truth == label, (t, label, segments)


def test_action_stream_idle_gaps_are_background_of_varied_length():
    stream = ActionStream(seed=2, fps=10.0, size=(48, 64), action_seconds=1.0,
                          idle_seconds=(0.5, 3.0))
    items = list(itertools.islice(stream, 200))
    segments = stream.segments()
    gaps = [round(e - s, 6) for s, e, label in segments if label == 'none']
    assert [label for _, _, label in segments[1::2]] == ['none'] * len(segments[1::2])
    assert len(set(gaps)) > 2 and all(0.5 <= g <= 3.0 for g in gaps), gaps
    for _, t, label in items:
        assert label == next(s[2] for s in segments if s[0] <= t + 1e-9 < s[1])
    with pytest.raises(ValueError, match='idle_seconds'):
        ActionStream(idle_seconds=(2.0, 1.0))


def test_background_clip_is_a_scene_at_rest_with_small_motion():
    """`none`: frames barely change (noise and a small distractor), unlike an action."""
    def change(label: str) -> float:
        """Mean first-to-last frame change over 8 clips, at 8x8 (averages the noise out)."""
        total = 0.0
        for seed in range(8):
            frames = render_clip(label, rng=np.random.default_rng(seed), num_frames=12,
                                 size=(64, 64))
            small = [cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32)
                     for f in (frames[0], frames[-1])]
            total += float(np.abs(small[1] - small[0]).mean()) / 8
        return total

    assert 0 < change('none') < 0.5 * min(change(a) for a in ('pick_up', 'open_drawer'))
    assert 'none' in LABELS and 'none' not in ACTIONS


def test_synth_cli_writes_a_seeded_decodable_dataset(tmp_path):
    argv = ['--train', '1', '--val', '1', '--test', '1', '--size', '48x64', '--min-frames', '6',
            '--max-frames', '9', '--seed', '4']
    assert synth_cli.main(argv + ['--out', str(tmp_path / 'a')]) == 0
    assert synth_cli.main(argv + ['--out', str(tmp_path / 'b')]) == 0
    pairs = yaml.safe_load((tmp_path / 'a' / 'pairs.yaml').read_text())
    assert pairs['symmetric_pairs'] == [list(p) for p in SYMMETRIC_PAIRS], pairs
    for split in ('train', 'val', 'test'):
        rows = list(csv.DictReader((tmp_path / 'a' / f'{split}.csv').open()))
        assert [r['label'] for r in rows] == list(LABELS), rows
        assert (tmp_path / 'a' / f'{split}.csv').read_text() == \
            (tmp_path / 'b' / f'{split}.csv').read_text()
    video = tmp_path / 'a' / rows[0]['path']
    frames = []
    capture = cv2.VideoCapture(str(video))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert 6 <= len(frames) <= 9 and frames[0].shape == (48, 64, 3), (len(frames), video)


def test_synth_cli_rejects_bad_options(tmp_path, capsys):
    code = synth_cli.main(['--out', str(tmp_path), '--min-frames', '9', '--max-frames', '5'])
    assert code == 2
    assert '--min-frames 9' in capsys.readouterr().err


@pytest.mark.parametrize('kwargs', [dict(action_seconds=float('nan')), dict(fps=float('inf')),
                                    dict(idle_seconds=(0.5, float('inf')))],
                         ids=['nan-action', 'inf-fps', 'inf-idle'])
def test_non_finite_durations_are_refused(kwargs):
    with pytest.raises(ValueError, match='finite|idle_seconds'):
        ActionStream(**kwargs)
