"""Bag I/O without ROS: written bags read back exactly, real ROS 1 bags, and damaged input."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from step_ros.data import bags
from step_ros.data.bags import BagError, BagWriter, ReadStats, iter_frames, list_topics
from step_ros.data.synth import LABELS
from step_ros.data.timeline import load_timeline
from step_ros.stream.engine import Prediction
from step_ros.tools import synth

REAL = Path(__file__).parents[1].parent / 'shared' / 'testdata' / 'real_bags'
BASE = 1_700_000_000_000_000_000
MS = 1_000_000


def frame(value: int, shape=(24, 32)) -> np.ndarray:
    img = np.zeros((*shape, 3), dtype=np.uint8)
    img[..., 0] = value
    img[..., 1] = np.arange(shape[1], dtype=np.uint8)[None, :]  # (H, W): content, not only colour
    img[..., 2] = 255 - value
    return img


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('bags') / 'small'
    with BagWriter(path) as writer:
        for i in range(10):
            stamp = BASE + i * 100 * MS
            writer.write_image('/cam/image_raw', frame(i * 20), stamp_ns=stamp, frame_id='cam')
            writer.write_image('/cam/image_raw/compressed', frame(i * 20), stamp_ns=stamp,
                               compressed=True)
    return path


def test_topics_and_exact_round_trip(small_bag):
    topics = {t.name: (t.msgtype, t.count) for t in list_topics(small_bag)}
    assert topics == {'/cam/image_raw': (bags.IMAGE, 10),
                      '/cam/image_raw/compressed': (bags.COMPRESSED, 10)}
    stats = ReadStats()
    frames = list(iter_frames(small_bag, '/cam/image_raw', stats=stats))
    assert [f.stamp_ns - BASE for f in frames] == [i * 100 * MS for i in range(10)]
    assert all(np.array_equal(f.image, frame(i * 20)) for i, f in enumerate(frames))
    assert frames[0].frame_id == 'cam' and frames[0].image.flags.writeable
    assert stats.to_dict() == dict(messages=10, decoded=10, skipped={}, reasons={},
                                   out_of_order=0)
    # JPEG is lossy: close, not equal. The .mcap file itself also opens the bag.
    mcap = next(small_bag.glob('*.mcap'))
    jpeg = list(iter_frames(mcap, '/cam/image_raw/compressed'))
    assert len(jpeg) == 10
    assert np.abs(jpeg[3].image.astype(int) - frame(60)).mean() < 3.0


def test_stamp_order_jitter_sorted_restart_kept(tmp_path):
    """Recording order != stamp order: jitter is sorted, a jump back (loop) stays a restart."""
    offsets = [0, 200, 100, 300, 500, 400, 600, -5000, -4900, -4950]  # ms after BASE
    path = tmp_path / 'jitter'
    with BagWriter(path) as writer:
        for i, off in enumerate(offsets):
            writer.write_image('/cam', frame(i), stamp_ns=BASE + off * MS,
                               log_ns=BASE + 10_000 * MS + i * MS)
    stats = ReadStats()
    got = [(f.stamp_ns - BASE) // MS for f in iter_frames(path, '/cam', stats=stats)]
    assert got == [0, 100, 200, 300, 400, 500, 600, -5000, -4950, -4900]
    assert stats.out_of_order == 1


def test_human_action_written_with_every_field(tmp_path):
    p = Prediction(task='action', label='pick_up', label_id=0, confidence=0.5,
                   top_labels=('pick_up', 'put_down'), top_scores=(0.5, 0.4), ambiguous=True,
                   ambiguous_with='put_down', ambiguity_reason='margin', margin=0.1, frames=8,
                   stamp_ns=BASE + 1_500 * MS, window_start_ns=BASE, received_ns=0)
    with BagWriter(tmp_path / 'actions') as writer:
        writer.write_action('/human_action', p, frame_id='cam', latency_ns=2_500 * MS)
    with bags.open_bag(tmp_path / 'actions') as reader:
        (conn, log_ns, raw), = list(reader.messages())
        msg = reader.deserialize(raw, conn.msgtype)
    assert (conn.topic, conn.msgtype, log_ns) == ('/human_action', bags.HUMAN_ACTION, p.stamp_ns)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_001, 500_000_000)
    assert (msg.window_start.sec, msg.window_start.nanosec) == (1_700_000_000, 0)
    assert (msg.label, msg.ambiguous_with, msg.ambiguity_reason, msg.frames) == (
        'pick_up', 'put_down', 'margin', 8)
    assert msg.top_labels == ['pick_up', 'put_down']
    assert np.allclose(msg.top_scores, [0.5, 0.4]) and abs(msg.margin - 0.1) < 1e-6
    assert (msg.latency.sec, msg.latency.nanosec) == (2, 500_000_000)


def test_sqlite3_rosbag2_and_depth_counted(tmp_path):
    """A sqlite3 rosbag2 reads too; a 16UC1 image is skipped with its reason, not a crash."""
    store = bags.typestore()
    Image = store.types[bags.IMAGE]
    header = store.types['std_msgs/msg/Header']
    time = store.types['builtin_interfaces/msg/Time']
    with Writer(tmp_path / 'db', version=9) as writer:  # sqlite3 is the default storage
        conn = writer.add_connection('/cam', bags.IMAGE, typestore=store)
        for i, (enc, step, data) in enumerate([
                ('mono8', 4, np.arange(12, dtype=np.uint8)),
                ('16UC1', 8, np.zeros(24, dtype=np.uint8)),
                ('bgr8', 12, np.tile(np.array([1, 2, 3], np.uint8), 12))]):
            msg = Image(header=header(stamp=time(sec=10 + i, nanosec=0), frame_id='c'),
                        height=3, width=4, encoding=enc, is_bigendian=0, step=step, data=data)
            writer.write(conn, 10 + i, store.serialize_cdr(msg, bags.IMAGE))
    stats = ReadStats()
    frames = list(iter_frames(tmp_path / 'db', '/cam', stats=stats))
    assert [f.stamp_ns for f in frames] == [10_000_000_000, 12_000_000_000]
    assert frames[0].image[0, 1].tolist() == [1, 1, 1]  # mono8 -> grey RGB
    assert frames[1].image[0, 0].tolist() == [3, 2, 1]  # bgr8 -> RGB
    assert dict(stats.skipped) == {'encoding': 1}
    assert "'16UC1'" in stats.reasons['encoding']


def test_missing_and_wrong_topics(small_bag, tmp_path):
    with pytest.raises(BagError, match=r"has no topic '/nope'; its image topics: "
                                       r"\['/cam/image_raw', '/cam/image_raw/compressed'\]"):
        list(iter_frames(small_bag, '/nope'))
    path = tmp_path / 'actions'
    p = Prediction(task='a', label='x', label_id=0, confidence=1.0, top_labels=('x',),
                   top_scores=(1.0,), ambiguous=False, ambiguous_with='', ambiguity_reason='',
                   margin=1.0, frames=2, stamp_ns=BASE, window_start_ns=BASE, received_ns=0)
    with BagWriter(path) as writer:
        writer.write_action('/human_action', p)
    with pytest.raises(BagError, match="topic '/human_action' .* has type "
                                       'step_ros_msgs/msg/HumanAction, not sensor_msgs'):
        list(iter_frames(path, '/human_action'))


def test_damaged_bags(small_bag, tmp_path):
    cut = tmp_path / 'cut'
    shutil.copytree(small_bag, cut)
    mcap = next(cut.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError, match=r"bag '.*cut' cannot be read .*truncated"):
        list(iter_frames(cut, '/cam/image_raw'))
    with pytest.raises(BagError, match='does not exist'):
        list_topics(tmp_path / 'absent')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='without metadata.yaml is not a rosbag2'):
        list_topics(tmp_path / 'empty')
    with pytest.raises(BagError, match='exists already'):
        BagWriter(small_bag)


def test_synth_bag_cli(tmp_path, capsys):
    out = tmp_path / 'synth'
    assert synth.main(['--bag', str(out), '--seconds', '4.5', '--fps', '10',
                       '--size', '64x80', '--seed', '3', '--idle-seconds', '0', '0']) == 0
    timeline = load_timeline(out / 'timeline.csv', labels=LABELS)
    spans = [(s.start_ns - BASE, s.end_ns - BASE) for s in timeline.segments]
    assert spans == [(0, 2 * 10**9), (2 * 10**9, 4 * 10**9), (4 * 10**9, 45 * 10**8)]
    frames = list(iter_frames(out, '/camera/image_raw'))
    assert len(frames) == 45 and frames[0].image.shape == (64, 80, 3)
    assert frames[-1].stamp_ns - BASE == 4_400_000_000
    assert synth.main(['--bag', str(out)]) == 2  # never overwrites
    assert 'exists already' in capsys.readouterr().err


def test_synth_bag_has_idle_gaps_by_default(tmp_path):
    out = tmp_path / 'synth'
    assert synth.main(['--bag', str(out), '--seconds', '12', '--fps', '5',
                       '--size', '48x64', '--seed', '3']) == 0
    timeline = load_timeline(out / 'timeline.csv', labels=LABELS)
    labels = [s.label for s in timeline.segments]
    gaps = [s.end_ns - s.start_ns for s in timeline.segments if s.label == 'none']
    assert labels[1::2] == ['none'] * len(labels[1::2]) and 'none' not in labels[::2], labels
    assert gaps and all(0.4e9 <= g <= 4e9 for g in gaps), gaps
    assert all(a.end_ns == b.start_ns for a, b in zip(timeline.segments, timeline.segments[1:]))
    assert synth.main(['--bag', str(tmp_path / 'camera'), '--seconds', '0.1']) == 0
    assert [f.image.shape for f in iter_frames(tmp_path / 'camera', '/camera/image_raw')] == [
        (240, 320, 3)] * 3  # the demo camera's size unless --size is given


REAL_SKIP = pytest.mark.skipif(not (REAL / 'raw.bag').is_file(),
                               reason=f'real camera bags not found in {REAL}')


@REAL_SKIP
@pytest.mark.parametrize('name, topic, shape', [
    ('raw.bag', '/spot/camera/hand_color/image', (480, 640, 3)),
    ('raw.bag', '/spot/camera/frontleft/image', (480, 640, 3)),
    ('raw.bag', '/spot/camera/hand_mono/image', (171, 224, 3)),
    ('compressed.bag', '/spot/camera/hand_color/image/compressed', (480, 640, 3)),
    ('compressed.bag', '/spot/camera/hand_mono/image/compressed', (171, 224, 3)),
])
def test_real_colour_and_mono(name, topic, shape):
    stats = ReadStats()
    frames = list(iter_frames(REAL / name, topic, stats=stats))
    assert [f.image.shape for f in frames] == [shape] and stats.decoded == 1
    assert frames[0].stamp_ns > 1_648_000_000 * 10**9  # the header stamp, not the log time
    assert frames[0].image.std() > 5  # a real picture, not a constant


@REAL_SKIP
@pytest.mark.parametrize('name, topic, reason', [
    ('raw.bag', '/spot/depth/frontleft/image', "unsupported encoding '16UC1'"),
    ('compressed.bag', '/spot/depth/frontleft/image/compressed', '16UC1; png compressed'),
    ('compressedDepth.bag', '/spot/depth/frontleft/image/compressedDepth', 'compressedDepth'),
])
def test_real_depth_skipped_with_reason(name, topic, reason):
    stats = ReadStats()
    assert list(iter_frames(REAL / name, topic, stats=stats)) == []
    assert stats.messages == 1 and dict(stats.skipped) == {'encoding': 1}
    assert reason in stats.reasons['encoding']


@REAL_SKIP
def test_real_topics_listed():
    topics = {t.name: t.msgtype for t in list_topics(REAL / 'raw.bag')}
    assert len(topics) == 4 and set(topics.values()) == {bags.IMAGE}
    assert '/spot/depth/frontleft/image' in topics
    compressed = {t.name: t.msgtype for t in list_topics(REAL / 'compressed.bag')}
    assert set(compressed.values()) == {bags.COMPRESSED} and len(compressed) == 4


@REAL_SKIP
def test_real_truncated(tmp_path):
    cut = tmp_path / 'cut.bag'
    cut.write_bytes((REAL / 'raw.bag').read_bytes()[:700_000])
    with pytest.raises(BagError, match=r"cut.bag' cannot be read .*truncated or not a bag"):
        list_topics(cut)
