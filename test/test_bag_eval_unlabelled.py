"""bag-eval on recordings nobody has labelled yet: no --labels and no timeline.csv in the bag.

The streams are written (predictions, decided stream, events, a timeline picture without a
truth band) and counted, and nothing is scored; several such bags each get their outputs and
the merged summary says they are unlabelled; --sweep, which needs labels, says so in one line.
"""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import matplotlib.figure
import pytest
import test_bag_eval
import yaml
from test_bag_eval import TOPIC, one_error_line

from step_ros.tools import bag_eval, bag_eval_many

setup = test_bag_eval.setup  # the fixture: a 6 s synthetic bag, its timeline, head, params

SCORES = ('at_stamp', 'full_window', 'stream', 'events', 'calibration', 'frame_map', 'sweep')
LABEL_COLUMNS = ('truth', 'truth_full_window', 'correct')


def unlabelled_copy(setup, name: str):
    """The setup's bag in a directory of its own, without its timeline.csv."""
    tmp, bag, _, _ = setup
    copy = tmp / name
    if not copy.exists():
        copy.mkdir()
        for f in bag.iterdir():
            if f.name != 'timeline.csv':
                shutil.copy(f, copy / f.name)
    return copy


def eager_params(setup):
    """The setup's parameters with a decision stage that acts on its random head's flat
    probabilities (top-1 about 0.12 of 8 classes), so that the stream has START / END events
    (and, by the dwell, a decided stream that differs from the raw one)."""
    tmp, _, _, params = setup
    path = tmp / 'eager.yaml'
    if not path.exists():
        tree = yaml.safe_load(params.read_text())
        tree['/**']['ros__parameters']['decision'] = dict(
            smoothing_seconds=0.0, enter_threshold=0.1, exit_threshold=0.05,
            min_dwell_seconds=0.25, min_confidence=0.0)
        path.write_text(yaml.safe_dump(tree))
    return path


def evaluate(setup, bags, out, *extra: str, labels=()) -> int:
    argv = ['--topic', TOPIC, '--config', str(eager_params(setup)), '--out',
            str(setup[0] / out), '--device', 'cpu', '--no-progress', *extra]
    for bag in bags:
        argv += ['--bag', str(bag)]
    for timeline in labels:
        argv += ['--labels', str(timeline)]
    return bag_eval.main(argv)


@pytest.fixture(scope='module')
def runs(setup):
    """One bag evaluated with its timeline and, copied without it, unlabelled; the y-axis
    rows of each run's timeline picture."""
    drawn = {}
    save = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        drawn[Path(path)] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return save(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, 'savefig', savefig)
        tmp, bag, timeline, _ = setup
        assert evaluate(setup, [bag], 'labelled', labels=[timeline]) == 0
        assert evaluate(setup, [unlabelled_copy(setup, 'hall')], 'unlabelled') == 0
    return (tmp / 'labelled', tmp / 'unlabelled', drawn[tmp / 'labelled' / 'timeline.png'],
            drawn[tmp / 'unlabelled' / 'timeline.png'])


def read_csv(path):
    return list(csv.DictReader(path.open()))


def test_a_bag_without_labels_writes_its_streams_unscored(runs):
    labelled, out, labelled_rows, rows_drawn = runs
    assert sorted(p.name for p in out.iterdir()) == [
        'events.csv', 'params.yaml', 'predictions.csv', 'report.json', 'report.md',
        'timeline.png'], sorted(p.name for p in out.iterdir())
    assert (out / 'timeline.png').read_bytes()[:4] == b'\x89PNG'
    # The picture: predictions and decided stream, no truth band.
    assert rows_drawn == ['decided', 'raw', 'events'], rows_drawn
    assert labelled_rows == ['decided', 'raw', 'truth', 'events'], labelled_rows
    report = json.loads((out / 'report.json').read_text())
    assert report['labels'] is None and report['predictions'] == 21, report
    assert not set(SCORES) & set(report), sorted(report)
    # The same predictions, decided stream and events as the labelled run, without truth.
    rows, scored = read_csv(out / 'predictions.csv'), read_csv(labelled / 'predictions.csv')
    assert len(rows) == len(scored) == 21
    for row, other in zip(rows, scored):
        assert all(row[k] == '' for k in LABEL_COLUMNS), row
        assert {k: v for k, v in row.items() if k not in LABEL_COLUMNS} == \
            {k: v for k, v in other.items() if k not in LABEL_COLUMNS}
    assert (out / 'events.csv').read_text() == (labelled / 'events.csv').read_text()


def test_the_counts_agree_with_the_written_streams(runs):
    _, out, _, _ = runs
    c = json.loads((out / 'report.json').read_text())['counts']
    rows, events = read_csv(out / 'predictions.csv'), read_csv(out / 'events.csv')
    minutes = (float(rows[-1]['stamp']) - float(rows[0]['stamp'])) / 60
    raw = [r['label'] for r in rows]
    decided = [r['stable_label'] or 'none' for r in rows]  # background 'none' when not active
    assert c['windows'] == 21 and c['minutes'] == round(minutes, 3), c
    assert c['raw']['windows'] == {k: raw.count(k) for k in c['raw']['windows']}, c
    assert sum(c['raw']['windows'].values()) == 21
    assert raw != decided
    for key, labels in (('raw', raw), ('decided', decided)):
        changes = sum(a != b for a, b in zip(labels, labels[1:]))
        assert c[key]['label_changes_per_min'] == pytest.approx(changes / minutes, abs=1e-3), key
    states = Counter(r['state'] for r in rows)
    assert {k: v for k, v in c['decided']['states'].items() if v} == dict(states), c
    starts = Counter(e['label'] for e in events if e['kind'] == 'start')
    assert len(starts) >= 2, events  # the eager decision stage switches between labels
    assert c['starts'] == sum(starts.values()) and c['ends'] == len(events) - c['starts']
    assert 'none' not in c['starts_per_label'] and 'none' not in c['active_s']
    assert {k: v for k, v in c['starts_per_label'].items() if v} == dict(starts), c
    active = Counter()
    for e in events:
        if e['kind'] == 'end':
            active[e['label']] += float(e['duration_s'])
    assert {k: v for k, v in c['active_s'].items() if v} == pytest.approx(dict(active), abs=1e-3)
    assert c['ambiguous'] == sum(r['ambiguous'] == '1' for r in rows)


def test_the_report_says_no_labels_were_given(runs, setup, capsys):
    _, out, _, _ = runs
    md = (out / 'report.md').read_text()
    assert 'No labels were given' in md and 'nothing is scored' in md, md
    for scored in ('| newest frame', '## Confusion', 'F1@', 'START F1', 'precision', 'ECE'):
        assert scored not in md, scored
    counts = json.loads((out / 'report.json').read_text())['counts']
    for label, n in counts['starts_per_label'].items():
        assert f"| {label} | {counts['raw']['windows'][label]} | {n} | " \
            f"{counts['active_s'][label]} |" in md, label
    # The command line says it too, and exits 0.
    assert evaluate(setup, [unlabelled_copy(setup, 'hall')], 'again') == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith('bag-eval: no labels given') and 'nothing scored' in line, line
    assert '21 predictions' in line and 'accuracy' not in line, line


def test_sweep_without_labels_says_it_needs_them(setup, capsys):
    tmp = setup[0]
    hall = unlabelled_copy(setup, 'hall')
    assert evaluate(setup, [hall], 'sweep', '--sweep') == 2
    line = one_error_line(capsys)
    assert f"--sweep needs labels: no --labels and no timeline.csv in ['{hall}']" in line, line
    assert not (tmp / 'sweep').exists()
    # Several bags: only the unlabelled one is named.
    assert evaluate(setup, [setup[1], hall], 'sweep', '--sweep') == 2
    assert f"timeline.csv in ['{hall}']:" in one_error_line(capsys)


@pytest.mark.timeout(600)
def test_several_unlabelled_bags_each_get_their_outputs(setup, capsys):
    bags = [unlabelled_copy(setup, 'hall'), unlabelled_copy(setup, 'desk')]
    assert evaluate(setup, bags, 'many', '--workers', '2') == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert 'no labels given for any' in line and 'nothing scored' in line, line
    out = setup[0] / 'many'
    merged = json.loads((out / 'report.json').read_text())
    assert merged['overall']['unlabelled_recordings'] == ['hall', 'desk'], merged['overall']
    assert not set(SCORES + ('stream_mean',)) & set(merged['overall']), merged['overall']
    for entry in merged['recordings']:
        own = json.loads((out / entry['name'] / 'report.json').read_text())
        assert entry['labels'] is None and entry['counts'] == own['counts'], entry
        assert not set(SCORES) & set(entry), entry
        assert (out / entry['name'] / 'timeline.png').is_file()
        assert (out / entry['name'] / 'events.csv').is_file()
    md = (out / 'report.md').read_text()
    assert '## Unlabelled recordings' in md and 'No recording has labels' in md, md
    assert '| hall | 21 |' in md and '| desk | 21 |' in md, md
    assert '| **all** |' not in md and '| **mean** |' not in md, md


def test_a_mixed_summary_scores_only_the_labelled(runs):
    """One labelled and one unlabelled recording: the scores are the labelled one's alone,
    and the unlabelled one is listed as such with its counts."""
    labelled, unlabelled, _, _ = runs
    reports = [json.loads((p / 'report.json').read_text()) for p in (labelled, unlabelled)]
    records = []
    for r in read_csv(labelled / 'predictions.csv'):
        if r['truth']:
            records.append((r['truth'], r['label'], r['ambiguous'] == '1'))
    merged = bag_eval_many.merge(reports, [records, []], [[], []], names=['lab', 'new'],
                                 wall_s=1.0, workers=1)
    overall = merged['overall']
    assert overall['unlabelled_recordings'] == ['new'], overall
    assert overall['at_stamp'] == reports[0]['at_stamp'], overall['at_stamp']
    assert overall['stream_mean'] == merged['recordings'][0]['stream']
    assert merged['recordings'][1]['counts'] == reports[1]['counts']
    md = bag_eval_many.markdown(merged)
    assert '| lab | 21 |' in md and '| **all** |' in md, md
    assert '## Unlabelled recordings' in md and 'These recordings have no labels' in md, md
    scored = md.split('## Unlabelled recordings')[0]
    assert '| new |' not in scored, md
