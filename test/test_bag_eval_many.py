"""bag-eval over several recordings: parallel workers, per-recording outputs, one merged report."""

import json
from pathlib import Path

import numpy as np
import pytest
from node_helpers import make_head, write_params

from step_ros.data.synth import LABELS, SYMMETRIC_PAIRS
from step_ros.evaluate.decision_sweep import PARAMETERS, mean_rows, read_sweep
from step_ros.tools import bag_eval
from step_ros.tools.bag_eval_many import recording_names
from step_ros.tools.synth_bag import write_synth_bag

TOPIC = '/camera/image_raw'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Two different 5 s synthetic bags, their timelines and a random head (T=4 over 1 s)."""
    tmp = tmp_path_factory.mktemp('bag_eval_many')
    recordings = [write_synth_bag(tmp / name, seconds=5.0, fps=10.0, size=(48, 64), seed=seed,
                                  progress=False) for name, seed in (('hall', 1), ('desk', 2))]
    head = make_head(tmp / 'head.safetensors', num_frames=4, labels=LABELS,
                     pairs=SYMMETRIC_PAIRS)
    params = write_params(tmp / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': 4,
        'window_seconds': 1.0, 'top_k': 3})
    return tmp, recordings, params


def run(setup, out: Path, recordings, *extra: str) -> int:
    _, _, params = setup
    argv = ['--topic', TOPIC, '--config', str(params), '--out', str(out), '--no-progress']
    for bag, timeline in recordings:
        argv += ['--bag', str(bag), '--labels', str(timeline)]
    return bag_eval.main([*argv, *extra])


@pytest.mark.timeout(600)
def test_parallel_recordings_merge_into_one_report(setup, capsys):
    tmp, recordings, _ = setup
    assert run(setup, tmp / 'many', recordings, '--workers', '2') == 0
    assert '2 recordings' in capsys.readouterr().out
    merged = json.loads((tmp / 'many' / 'report.json').read_text())
    assert [r['name'] for r in merged['recordings']] == ['hall', 'desk']
    matrices = []
    for (bag, timeline), entry in zip(recordings, merged['recordings']):
        # Each worker's outputs are what a plain single-bag run of that recording writes.
        assert run(setup, tmp / f'single_{bag.name}', [(bag, timeline)]) == 0
        alone = json.loads((tmp / f'single_{bag.name}' / 'report.json').read_text())
        own = json.loads((tmp / 'many' / entry['name'] / 'report.json').read_text())
        for key in ('predictions', 'at_stamp', 'full_window', 'images'):
            assert own[key] == alone[key], key
        assert entry['at_stamp'] == alone['at_stamp'] and entry['bag'] == str(bag)
        assert (tmp / 'many' / entry['name'] / 'predictions.csv').is_file()
        matrices.append(np.array(alone['at_stamp']['confusion']['matrix']))
    overall = merged['overall']
    assert overall['predictions'] == sum(r['predictions'] for r in merged['recordings'])
    total = sum(matrices)
    assert overall['at_stamp']['confusion']['matrix'] == total.tolist()
    assert overall['at_stamp']['n'] == total.sum() > 0
    assert overall['at_stamp']['accuracy'] == round(np.trace(total) / total.sum(), 6)
    text = (tmp / 'many' / 'report.md').read_text()
    assert '| hall |' in text and '| desk |' in text and '| **all** |' in text


def test_one_timeline_for_all_bags_or_one_each(setup, capsys):
    tmp, recordings, params = setup
    (a, timeline), (b, _) = recordings
    argv = ['--topic', TOPIC, '--config', str(params), '--out', str(tmp / 'bad'),
            '--no-progress', '--bag', str(a), '--bag', str(b), '--bag', str(a)]
    assert bag_eval.main([*argv, '--labels', str(timeline), '--labels', str(timeline)]) == 2
    assert '--labels given 2 times for 3 --bag' in capsys.readouterr().err
    assert not (tmp / 'bad').exists()


def test_a_failing_recording_is_named_and_nothing_merged(setup, capsys):
    tmp, recordings, _ = setup
    (bag, timeline), _ = recordings
    missing = tmp / 'no_such_bag'
    assert run(setup, tmp / 'failing', [(bag, timeline), (missing, timeline)],
               '--workers', '2') == 2
    assert f'bag-eval: error: {missing}:' in capsys.readouterr().err
    assert not (tmp / 'failing' / 'report.json').exists()


def test_recording_names_are_distinct():
    assert recording_names([Path('a/run'), Path('b/run'), Path('c/x.bag')]) == [
        '00_run', '01_run', 'x']


@pytest.mark.timeout(600)
def test_several_recordings_average_their_stream_scores_and_sweeps(setup):
    tmp, recordings, _ = setup
    out = tmp / 'many_sweep'
    assert run(setup, out, recordings, '--workers', '2', '--sweep') == 0
    merged = json.loads((out / 'report.json').read_text())
    for entry in merged['recordings']:
        own = json.loads((out / entry['name'] / 'report.json').read_text())
        assert entry['stream']['edit_score'] == own['stream']['decided']['edit_score']
        assert entry['stream']['start_f1'] == own['events']['start_f1']
        assert entry['stream']['ece'] == own['calibration']['ece']

    def mean(values):
        known = [v for v in values if v is not None]
        return round(sum(known) / len(known), 4) if known else None

    streams = [r['stream'] for r in merged['recordings']]
    for key in ('score', 'edit_score', 'label_changes_per_min', 'ece', 'onset_latency_p50'):
        assert merged['overall']['stream_mean'][key] == mean([s[key] for s in streams]), key

    per_recording = [read_sweep(out / r['name'] / 'sweep.csv') for r in merged['recordings']]
    rows = read_sweep(out / 'sweep.csv')
    assert len(rows) == merged['overall']['sweep']['points'] == 384
    assert merged['overall']['sweep']['best'] == rows[0]

    def point(r):
        return tuple(r[k] for k in PARAMETERS)

    for row in rows:
        parts = [next(r for r in sweep if point(r) == point(row)) for sweep in per_recording]
        for key in ('score', 'edit_score', 'start_f1', 'false_starts_per_min_background'):
            assert row[key] == mean([p[key] for p in parts]), (point(row), key)
    assert [r['score'] for r in rows] == sorted((r['score'] for r in rows), reverse=True)
    assert (out / 'sweep.png').stat().st_size > 0
    assert 'mean over 2 recordings' in (out / 'sweep.md').read_text()
    assert '| **mean** |' in (out / 'report.md').read_text()


def test_sweeps_of_different_grids_are_not_averaged():
    a = [dict(zip(PARAMETERS, (0.5, 0.6, 0.4, 0.25, 0.4)), score=0.5, onset_latency_p50=1.0)]
    b = [dict(zip(PARAMETERS, (0.5, 0.6, 0.3, 0.25, 0.4)), score=0.7, onset_latency_p50=None)]
    with pytest.raises(ValueError, match='not in every sweep'):
        mean_rows([a, b])
    assert mean_rows([a, a])[0]['score'] == 0.5
