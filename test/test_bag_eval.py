"""bag-eval: the node's engine over a synthetic bag, scored against its timeline; bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from node_helpers import REPO, make_head, write_params

from step_ros.data.bags import BagWriter, iter_frames, list_topics
from step_ros.data.synth import LABELS, SYMMETRIC_PAIRS
from step_ros.data.timeline import load_timeline
from step_ros.stream.config import load_params_file
from step_ros.stream.engine import Prediction
from step_ros.tools import bag_eval, bag_score
from step_ros.tools.synth_bag import START_NS, write_synth_bag

TOPIC = '/camera/image_raw'


def test_score_counts():
    labels = ('pick_up', 'put_down', 'wave')
    records = [('pick_up', 'pick_up', False), ('pick_up', 'put_down', True),
               ('put_down', 'put_down', True), ('wave', 'wave', False),
               ('wave', 'pick_up', False)]
    s = bag_score.score(records, labels=labels, symmetric={'pick_up', 'put_down'})
    assert (s['n'], s['accuracy']) == (5, 0.6)
    assert s['symmetric'] == dict(n=3, accuracy=round(2 / 3, 6))
    assert s['non_symmetric'] == dict(n=2, accuracy=0.5)
    assert s['flagged'] == dict(n=2, accuracy=0.5) and s['ambiguity_rate'] == 0.4
    assert s['not_flagged'] == dict(n=3, accuracy=round(2 / 3, 6))
    assert s['confusion']['matrix'] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert s['per_class']['pick_up'] == dict(n=2, accuracy=0.5, most_confused='put_down')
    assert s['per_class']['put_down']['most_confused'] == ''
    assert bag_score.score([], labels=labels, symmetric=set())['accuracy'] is None


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A 6 s synthetic bag at 10 fps and a random head on the tiny backbone (T=4 over 1 s)."""
    tmp = tmp_path_factory.mktemp('bag_eval')
    bag, timeline = write_synth_bag(tmp / 'bag', seconds=6.0, fps=10.0, size=(64, 80), seed=1,
                                    progress=False)
    head = make_head(tmp / 'head.safetensors', num_frames=4, labels=LABELS,
                     pairs=SYMMETRIC_PAIRS, background='none', temperature=1.5,
                     window_seconds=1.0)
    params = write_params(tmp / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cuda',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': 4,
        'window_seconds': 1.0, 'top_k': 3})
    return tmp, bag, timeline, params


def run(setup, out: str, *extra: str, labels: Path | None = None, topic: str = TOPIC) -> int:
    tmp, bag, timeline, params = setup
    return bag_eval.main(['--bag', str(bag), '--topic', topic, '--labels',
                          str(labels or timeline), '--config', str(params), '--out',
                          str(tmp / out), '--device', 'cpu', '--no-progress', *extra])


def test_end_to_end(setup, capsys):
    tmp, bag, timeline_path, params = setup
    assert run(setup, 'out', '--write-bag', '--sweep') == 0
    assert 'predictions, accuracy' in capsys.readouterr().out
    out = tmp / 'out'
    report = json.loads((out / 'report.json').read_text())
    rows = list(csv.DictReader((out / 'predictions.csv').open()))
    # 60 frames at 10 fps, one kept every 0.25 s (24), the first prediction once 4 are buffered.
    assert report['images'] == dict(messages=60, decoded=60, skipped={}, reasons={},
                                    out_of_order=0)
    assert report['engine']['sampled'] == 24 and report['engine']['frames'] == 60
    assert report['predictions'] == len(rows) == 21 == report['at_stamp']['n']
    assert report['classes'] == list(LABELS)
    assert report['symmetric_pairs'] == [list(p) for p in SYMMETRIC_PAIRS]
    timeline = load_timeline(timeline_path)
    for row in rows:
        stamp = int(row['stamp'].replace('.', ''))
        start = int(row['window_start'].replace('.', ''))
        assert 0 < stamp - start <= 1_000_000_000
        assert row['truth'] == timeline.label_at(stamp)
        assert row['truth_full_window'] == (timeline.label_over(start, stamp) or '')
        assert row['correct'] == str(int(row['label'] == row['truth']))
    hits = sum(r['correct'] == '1' for r in rows)
    assert report['at_stamp']['accuracy'] == round(hits / len(rows), 6)
    full = [r for r in rows if r['truth_full_window']]
    assert 0 < report['full_window']['n'] == len(full) < len(rows)
    assert report['timing']['bag_s'] == 5.9 and report['timing']['realtime_factor'] > 0
    # The resolved parameters, with the --device override, load as a node params file.
    assert load_params_file(out / 'params.yaml')['device'] == 'cpu'
    md = (out / 'report.md').read_text()
    assert '| newest frame | 21 |' in md and '## Confusion' in md
    # The output bag holds the images and one HumanAction per prediction, at its stamp.
    topics = {t.name: t.count for t in list_topics(out / 'bag')}
    assert topics == {TOPIC: 60, '/human_action': 21}
    from step_ros.data.bags import open_bag
    with open_bag(out / 'bag') as reader:
        actions = [(reader.deserialize(raw, c.msgtype), t) for c, t, raw in reader.messages()
                   if c.topic == '/human_action']
    assert [f'{m.header.stamp.sec}.{m.header.stamp.nanosec:09d}' for m, _ in actions] == [
        r['stamp'] for r in rows]
    assert [m.label for m, _ in actions] == [r['label'] for r in rows]
    assert len(list(iter_frames(out / 'bag', TOPIC))) == 60
    check_stream_outputs(out, report, rows)


def check_stream_outputs(out, report, rows):
    """The stream metrics agree with predictions.csv / events.csv; sweep and figures exist."""
    stream = report['stream']
    for key in ('raw', 'decided'):
        assert set(stream[key]) == {'accuracy', 'label_changes_per_min', 'edit_score',
                                    'f1_at_iou'}, stream[key]
        assert set(stream[key]['f1_at_iou']) == {'0.1', '0.25', '0.5'}
        assert 0 <= stream[key]['edit_score'] <= 100
    assert stream['raw']['accuracy'] == pytest.approx(report['at_stamp']['accuracy'], abs=1e-4)
    minutes = (float(rows[-1]['stamp']) - float(rows[0]['stamp'])) / 60
    raw_changes = sum(a['label'] != b['label'] for a, b in zip(rows, rows[1:]))
    assert stream['raw']['label_changes_per_min'] == pytest.approx(raw_changes / minutes,
                                                                   abs=1e-3)
    truths = [r['truth'] for r in rows if r['truth']]
    assert stream['true_changes_per_min'] == pytest.approx(
        sum(a != b for a, b in zip(truths, truths[1:])) / minutes, abs=1e-3)
    states = {r['state'] for r in rows}
    assert states <= {'idle', 'active', 'uncertain'}, states
    assert all((r['state'] == 'active') == bool(r['stable_label']) for r in rows)
    decided = [r['stable_label'] or 'none' for r in rows]
    assert stream['decided']['label_changes_per_min'] == pytest.approx(
        sum(a != b for a, b in zip(decided, decided[1:])) / minutes, abs=1e-3)
    events = list(csv.DictReader((out / 'events.csv').open()))
    assert [e['kind'] for e in events] == (['start', 'end'] * len(events))[:len(events)]
    ev = report['events']
    assert ev['starts'] == sum(e['kind'] == 'start' for e in events)
    for key in ('start_precision', 'start_recall', 'start_f1',
                'false_starts_per_min_background'):
        assert key in ev, ev
    assert set(ev['onset_latency_s']) == {'p50', 'p90'}
    cal = report['calibration']
    assert cal['temperature'] == 1.5 and cal['ece'] is not None, cal
    assert cal['ece'] != cal['ece_uncalibrated'], cal
    assert 'frame_map' in report and report['background'] == 'none'
    for name in ('timeline.png', 'sweep.png'):
        assert (out / name).read_bytes()[:4] == b'\x89PNG', name
    sweep = list(csv.DictReader((out / 'sweep.csv').open()))
    assert len(sweep) == report['sweep']['points'] == 384
    assert sweep[0]['score'] == str(report['sweep']['best']['score'])
    # The sweep's replay of the configured parameters is bag-eval's own decided stream.
    configured = report['sweep']['configured']
    assert configured['start_f1'] == ev['start_f1']
    assert configured['edit_score'] == stream['decided']['edit_score']
    assert configured['f1_at_0.25'] == stream['decided']['f1_at_iou']['0.25']
    assert configured['false_starts_per_min_background'] == \
        ev['false_starts_per_min_background']
    assert '## The stream a planner receives' in (out / 'report.md').read_text()


def test_relative_timeline(setup, tmp_path):
    labels = tmp_path / 'relative.csv'
    labels.write_text('start,end,label\n0,1,wave\n1,2.5,stir\n')
    assert run(setup, 'relative', '--relative', labels=labels) == 0
    report = json.loads((setup[0] / 'relative' / 'report.json').read_text())
    rows = list(csv.DictReader((setup[0] / 'relative' / 'predictions.csv').open()))
    # Predictions start at 0.75 s; those up to 2.5 s are labelled, the rest not.
    labelled = [r for r in rows if r['truth']]
    assert [r['truth'] for r in labelled][:2] == ['wave', 'stir']
    assert report['unlabelled'] == len(rows) - len(labelled) > 0
    assert all(int(r['stamp'].replace('.', '')) - START_NS < 2_500_000_000 for r in labelled)


def test_a_timeline_that_scores_nothing_fails(setup, tmp_path, capsys):
    labels = tmp_path / 'relative.csv'
    labels.write_text('start,end,label\n0,1,wave\n1,2.5,stir\n')
    # Seconds from the first image, but without --relative: they lie decades before the bag.
    assert run(setup, 'unscored', labels=labels) == 2
    line = one_error_line(capsys)
    assert 'nothing was scored: none of the 21 predictions' in line, line
    assert '0.000000000-2.500000000 s' in line and '--relative' in line, line
    report = json.loads((setup[0] / 'unscored' / 'report.json').read_text())
    assert report['at_stamp']['n'] == 0 and report['predictions'] == 21, report


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('bag-eval: error: '), err
    return err[0]


def test_bad_topics_and_bags(setup, tmp_path, capsys):
    assert run(setup, 'e1', topic='/nope') == 2
    assert "has no topic '/nope'; its image topics: ['/camera/image_raw']" in one_error_line(
        capsys)
    wrong = tmp_path / 'wrong'
    with BagWriter(wrong) as writer:
        writer.write_action('/human_action', Prediction(
            task='a', label='wave', label_id=0, confidence=1.0, top_labels=('wave',),
            top_scores=(1.0,), ambiguous=False, ambiguous_with='', ambiguity_reason='',
            margin=1.0, frames=4, stamp_ns=START_NS, window_start_ns=START_NS, received_ns=0))
    tmp, _, timeline, params = setup
    base = ['--labels', str(timeline), '--config', str(params), '--no-progress']
    assert bag_eval.main(['--bag', str(wrong), '--topic', '/human_action', '--out',
                          str(tmp_path / 'o2'), *base]) == 2
    assert 'has type step_ros_msgs/msg/HumanAction, not sensor_msgs/msg/Image' in \
        one_error_line(capsys)
    cut = tmp_path / 'cut'
    cut.mkdir()
    for f in setup[1].iterdir():
        data = f.read_bytes()
        (cut / f.name).write_bytes(data[: len(data) // 3] if f.suffix == '.mcap' else data)
    assert bag_eval.main(['--bag', str(cut), '--topic', TOPIC, '--out', str(tmp_path / 'o3'),
                          *base]) == 2
    assert 'truncated' in one_error_line(capsys)


@pytest.mark.parametrize('text, expected', [
    ('0,1,wave\n1,2,moonwalk\n', "relative.csv:2: unknown label 'moonwalk'"),
    ('0,2,wave\n1,3,stir\n', 'relative.csv:2: segment 1.000000000-3.000000000 '),
])
def test_bad_timelines(setup, tmp_path, capsys, text, expected):
    labels = tmp_path / 'relative.csv'
    labels.write_text(text)
    assert run(setup, 'bad', '--relative', labels=labels) == 2
    assert expected in one_error_line(capsys)


def test_bad_config(setup, tmp_path, capsys):
    params = tmp_path / 'params.yaml'
    params.write_text(setup[3].read_text().replace('num_frames: 4', 'num_frames: 0'))
    tmp, bag, timeline, _ = setup
    assert bag_eval.main(['--bag', str(bag), '--topic', TOPIC, '--labels', str(timeline),
                          '--config', str(params), '--out', str(tmp_path / 'o')]) == 2
    assert 'num_frames=0: must be >= 1' in one_error_line(capsys)


def test_cli_exit_code_without_traceback(setup, tmp_path):
    tmp, bag, timeline, params = setup
    done = subprocess.run(
        [sys.executable, '-m', 'step_ros', 'bag-eval', '--bag', str(bag), '--topic',
         '/camera/depth', '--labels', str(timeline), '--config', str(params), '--out',
         str(tmp_path / 'o')], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "bag-eval: error: bag '" + str(bag) + "' has no topic '/camera/depth'; its image "
        "topics: ['/camera/image_raw']"]


def test_the_params_files_image_size_limit_applies_as_in_the_node(setup, tmp_path, capsys):
    """max_image_pixels of the params file, not the built-in default, rejects the 80x64 frames
    (5,120 pixels), as the node given that file would."""
    tmp, bag, timeline, params = setup
    tree = yaml.safe_load(params.read_text())
    tree['/**']['ros__parameters']['max_image_pixels'] = 5000
    small = tmp_path / 'small.yaml'
    small.write_text(yaml.safe_dump(tree))
    assert bag_eval.main(['--bag', str(bag), '--topic', TOPIC, '--labels', str(timeline),
                          '--config', str(small), '--out', str(tmp_path / 'o'), '--device',
                          'cpu', '--no-progress']) == 2
    line = one_error_line(capsys)
    assert 'no decodable image (60 messages' in line and 'max_image_pixels=5000' in line, line


def test_events_are_backdated_by_the_heads_own_switch_point(setup, tmp_path, monkeypatch):
    """A head trained on `--straddle newest` labels switches 3/8 of its window back, and its
    checkpoint says so: bag-eval's Decider (and the sweep's) must date events by that."""
    import dataclasses

    from step_ros.model.checkpoint import load_head, save_head
    from step_ros.stream.decision import Decider

    _, _, _, params = setup
    module, meta = load_head(load_params_file(params)['heads.checkpoints'][0])
    head = save_head(tmp_path / 'newest.safetensors', module,
                     dataclasses.replace(meta, switch_fraction=3 / 8))
    values = yaml.safe_load(params.read_text())
    values['/**']['ros__parameters']['heads']['checkpoints'] = [str(head)]
    newest = tmp_path / 'params.yaml'
    newest.write_text(yaml.safe_dump(values))
    made = []

    class Recording(Decider):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append(self.switch_ns)

    monkeypatch.setattr(bag_score, 'Decider', Recording)
    monkeypatch.setattr('step_ros.evaluate.stream_eval.Decider', Recording)
    tmp, bag, timeline, _ = setup
    assert bag_eval.main(['--bag', str(bag), '--topic', TOPIC, '--labels', str(timeline),
                          '--config', str(newest), '--out', str(tmp_path / 'out'), '--device',
                          'cpu', '--no-progress', '--sweep']) == 0
    assert len(made) > 2 and set(made) == {3 / 8 * 1e9}, set(made)  # window_seconds = 1.0
