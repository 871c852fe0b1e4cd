"""bag-export: a video on bag time (constant rate, frames held or dropped), and the labelling
round trip: annotations in video seconds, read with --relative, land on the right frames."""

import csv

import cv2
import numpy as np
import pytest
from node_helpers import make_head, write_params

from step_ros.data.bags import BagWriter
from step_ros.data.synth import ACTIONS, SYMMETRIC_PAIRS
from step_ros.data.timeline import load_timeline, write_timeline
from step_ros.tools import bag_eval, bag_export

TOPIC = '/camera/image_raw'
FIRST = 1_700_000_000_000_000_000
MS = 1_000_000
# Bag times (ms from the first frame): 10 fps, then a faster burst, then a 0.5 s pause.
TIMES = [0, 100, 200, 250, 270, 300, 400, 900, 1000, 1100, 1200, 1300, 1400, 1500]
LABELS = ['wave'] * 7 + ['stir'] * 7  # the action each bag frame shows


def grey(i: int) -> int:
    return 20 + 15 * i


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('export') / 'bag'
    with BagWriter(path) as writer:
        for i, t in enumerate(TIMES):
            writer.write_image(TOPIC, np.full((48, 64, 3), grey(i), np.uint8),
                               stamp_ns=FIRST + t * MS)
    return path


def read_video(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def shown(k: int, fps: float) -> int:
    """The bag frame video frame k must show: the newest one at or before k / fps."""
    return max(i for i, t in enumerate(TIMES) if t <= 1000 * k / fps + 1e-6)


def test_video_time_is_bag_time_at_a_constant_rate(bag, tmp_path, capsys):
    out = tmp_path / 'v.mp4'
    assert bag_export.main(['--bag', str(bag), '--topic', TOPIC, '--out', str(out), '--fps',
                            '10', '--no-progress']) == 0
    message = capsys.readouterr().out
    frames = read_video(out)
    assert len(frames) == 16  # 0.0 .. 1.5 s at 10 fps
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    capture.release()
    for k, frame in enumerate(frames):
        assert abs(float(frame.mean()) - grey(shown(k, 10))) < 4, k
    # frames 3 and 4 (250, 270 ms) never show at 10 fps; the pause repeats frame 6 (400 ms)
    assert '2 dropped' in message and '4 repeated' in message, message


def test_annotations_in_video_seconds_read_with_relative(bag, tmp_path):
    """An annotation tool labels the video; its export, in video seconds, read with
    --relative, labels the bag frames as they were recorded."""
    fps = 10.0
    out = tmp_path / 'v.mp4'
    assert bag_export.main(['--bag', str(bag), '--topic', TOPIC, '--out', str(out), '--fps',
                            str(fps), '--no-progress']) == 0
    frames = read_video(out)
    # The annotator sees in video frame k the action of the bag frame it shows.
    seen = [LABELS[int(np.argmin([abs(float(f.mean()) - grey(i)) for i in range(len(TIMES))]))]
            for f in frames]
    export = tmp_path / 'annotations.csv'
    segments, start = [], 0
    for k in range(1, len(seen) + 1):
        if k == len(seen) or seen[k] != seen[start]:
            segments.append((int(start / fps * 1e9), int(k / fps * 1e9), seen[start]))
            start = k
    write_timeline(export, segments)  # start,end,label in video seconds
    timeline = load_timeline(export).shifted(FIRST)  # what --relative does
    for t, label in zip(TIMES, LABELS):
        assert timeline.label_at(FIRST + t * MS) == label, t

    # bag-eval --relative reads it onto the same frames as the bag-time timeline would.
    absolute = tmp_path / 'absolute.csv'
    write_timeline(absolute, [(s + FIRST, e + FIRST, label) for s, e, label in segments])
    head = make_head(tmp_path / 'head.safetensors', num_frames=2, labels=ACTIONS,
                     pairs=SYMMETRIC_PAIRS)
    params = write_params(tmp_path / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu', 'precision': 'fp32',
        'heads.checkpoints': [str(head)], 'num_frames': 2, 'window_seconds': 0.2})
    truths = []
    for name, labels, extra in (('abs', absolute, []), ('rel', export, ['--relative'])):
        assert bag_eval.main(['--bag', str(bag), '--topic', TOPIC, '--labels', str(labels),
                              '--config', str(params), '--out', str(tmp_path / name),
                              '--no-progress', *extra]) == 0
        with (tmp_path / name / 'predictions.csv').open() as f:
            truths.append([(r['stamp'], r['truth']) for r in csv.DictReader(f)])
    assert truths[0] == truths[1] and len(truths[0]) > 5


@pytest.mark.parametrize('extra, words', [
    (['--fps', '0'], '--fps 0'),
    (['--out', 'video.gif'], 'must end in'),
    (['--topic', '/nope'], "no topic '/nope'"),
])
def test_errors_are_one_line(bag, tmp_path, capsys, extra, words):
    argv = ['--bag', str(bag), '--topic', TOPIC, '--out', str(tmp_path / 'v.mp4'),
            '--no-progress']
    extra = [str(tmp_path / e) if e.endswith('.gif') else e for e in extra]
    assert bag_export.main(argv + extra) == 2  # the last of a repeated flag wins
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
