"""Several tasks on one cache: synth's object column, `train --task action --task object`."""

from __future__ import annotations

import csv
import json

import pytest

from step_ros.data.caches import load_cache
from step_ros.data.features import DataError, read_clip_list
from step_ros.data.synth import LABELS, SYMMETRIC_PAIRS, object_of
from step_ros.model.checkpoint import read_meta
from step_ros.tools import evaluate, train
from step_ros.tools import extract as extract_cli
from step_ros.tools import synth as synth_cli

T = 2
OBJECTS = tuple(sorted({object_of(a) for a in LABELS}))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('multitask')
    assert synth_cli.main(['--out', str(root / 'data'), '--train', '2', '--val', '1', '--test',
                           '1', '--size', '48x48', '--min-frames', '4',
                           '--max-frames', '6']) == 0
    for split in ('train', 'test'):
        assert extract_cli.main(['--clips', str(root / 'data' / f'{split}.csv'), '--frames',
                                 str(T), '--out', str(root / split)]) == 0
    return root


def test_synth_writes_a_column_per_task(data):
    with (data / 'data' / 'train.csv').open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['path', 'label', 'object'], list(rows[0])
    assert {(r['label'], r['object']) for r in rows} == {(a, object_of(a)) for a in LABELS}
    # a symmetric pair handles the same object: order tells the actions apart, not the object
    assert all(object_of(a) == object_of(b) for a, b in SYMMETRIC_PAIRS)


def test_cache_keeps_every_task(data):
    cache = load_cache(data / 'train')
    labels, targets, pairs = cache.task('object')
    assert labels == OBJECTS and pairs == (), (labels, pairs)
    assert [labels[i] for i in targets] == [object_of(cache.labels[i]) for i in cache.targets]
    main = cache.task('action')
    assert main[0] == LABELS and main[2] == SYMMETRIC_PAIRS, main


def test_train_one_head_per_task_on_one_cache(data, tmp_path, capsys):
    run = tmp_path / 'run'
    code = train.main(['--cache', str(data / 'train'), '--val-cache', str(data / 'test'),
                       '--task', 'action', '--task', 'object', '--head', 'linear',
                       '--out', str(run), '--epochs', '2', '--batch-size', '8'])
    assert code == 0, capsys.readouterr().err
    action, obj = read_meta(run / 'action_linear.safetensors'), read_meta(
        run / 'object_linear.safetensors')
    assert (action.task, action.labels, action.symmetric_pairs) == (
        'action', LABELS, SYMMETRIC_PAIRS), action
    assert (obj.task, obj.labels, obj.symmetric_pairs) == ('object', OBJECTS, ()), obj
    log = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert {e['head'] for e in log} == {'action_linear', 'object_linear'}, log
    out = tmp_path / 'eval'
    code = evaluate.main(['--cache', str(data / 'test'), '--checkpoint',
                          str(run / 'object_linear.safetensors'), '--out', str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / 'report.json').read_text())
    assert report['labels'] == list(OBJECTS) and set(report['per_class']) == set(OBJECTS)
    assert report['accuracy']['symmetric'] is None, report['accuracy']  # objects have no pairs


def test_tasks_that_cannot_work_are_refused(data, tmp_path, capsys):
    code = train.main(['--cache', str(data / 'train'), '--task', 'action', '--task', 'gesture',
                       '--head', 'linear', '--out', str(tmp_path / 'run')])
    assert code == 2
    assert "['action', 'gesture']: all read the label column" in capsys.readouterr().err
    bad = tmp_path / 'bad.csv'
    video = next((data / 'data' / 'videos' / 'train').iterdir())
    bad.write_text(f'path,label,object\n{video},wave,hand\n{video},stir,\n')
    with pytest.raises(DataError, match=r"bad.csv:3: empty 'object'"):
        read_clip_list(bad)
