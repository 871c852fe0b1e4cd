"""`python -m step_ros flow`: the README's flow (extract, train, bag-eval) on rendered
recordings, its figures those of bag-eval's report, checked against the targets."""

import json

from step_ros.model.checkpoint import read_meta
from step_ros.tools import flow
from step_ros.tools.train import advice


def test_flow_runs_the_documented_commands_and_reports_bag_evals_figures(tmp_path, capsys):
    out = tmp_path / 'flow'
    assert flow.main(['--world', 'actions', '--out', str(out), '--seconds', '10', '--fps', '8',
                      '--train-recordings', '1', '--num-frames', '4', '--window-seconds', '1',
                      '--train-arg=--epochs 2']) == 0
    summary = json.loads((out / 'run' / 'flow.json').read_text())
    row, = summary['held_out']
    report = json.loads((out / 'run' / 'eval' / row['bag'] / 'report.json').read_text())
    assert {k: v for k, v in row.items() if k not in ('bag', 'decision_source')} == \
        flow.scores(report)
    assert row['full_window'] == report['full_window']['accuracy']
    assert row['start_f1'] == report['events']['start_f1']
    # The head was written by train with the flow's defaults and carries fitted decisions.
    assert row['decision_source'].startswith('fitted by train on 1 validation recording')
    config = json.loads((out / 'run' / 'config.json').read_text())
    assert config['train']['reverse_pairs'] and config['train']['epochs'] == 2
    assert json.loads((out / 'cache' / 'index.json').read_text())['straddle'] == 'majority'
    # The head's own figures, from its checkpoint, and train's advice on them.
    final = read_meta(out / 'run' / 'step.safetensors').training['final']
    head = summary['head']
    assert head['train_acc'] == final['train_acc'] and head['advice'] == advice(final), head
    assert head['val_balanced_acc'] == final['kept_val_balanced_acc'], head
    assert f"The head fits {final['train_acc']:.2f} of its training windows" in \
        (out / 'run' / 'flow.md').read_text()
    printed = capsys.readouterr().out
    assert printed.endswith((out / 'run' / 'flow.md').read_text())
    assert f"| {row['bag']} |" in printed

    # Another backbone: its own cache beside the first, on the same recordings, named in the
    # node's parameters and the summary.
    tiny_index = (out / 'cache' / 'index.json').read_text()
    assert flow.main(['--world', 'actions', '--out', str(out), '--seconds', '10', '--fps', '8',
                      '--train-recordings', '1', '--num-frames', '4', '--window-seconds', '1',
                      '--train-arg=--epochs 1', '--backbone', 'tiny-clip', '--name', 'clip']) == 0
    index = json.loads((out / 'cache_tiny-clip_0' / 'index.json').read_text())
    assert index['backbone']['id'] == 'tiny-clip', index['backbone']
    assert (out / 'cache' / 'index.json').read_text() == tiny_index
    assert 'weights: tiny-clip' in (out / 'clip' / 'params.yaml').read_text()
    assert json.loads((out / 'clip' / 'flow.json').read_text())['backbone'] == 'tiny-clip'
    assert read_meta(out / 'clip' / 'step.safetensors').backbone['id'] == 'tiny-clip'


def test_meets_checks_each_target():
    good = dict(full_window=0.9, raw_edit=40.0, decided_edit=80.0, f1_at_025=0.85,
                start_f1=0.9, changes_ratio=1.1)
    assert all(flow.meets(good).values())
    assert not flow.meets({**good, 'decided_edit': 60.0})['decided_edit']  # under 75
    assert not flow.meets({**good, 'raw_edit': 60.0})['decided_edit']  # not raw + 25
    assert not flow.meets({**good, 'changes_ratio': 1.4})['changes_ratio']
    assert not flow.meets({**good, 'start_f1': None})['start_f1']


def test_workcell_recordings_are_one_cell_unless_asked(tmp_path, monkeypatch):
    rendered = []

    def render(bag, **kwargs):
        rendered.append((bag.name, kwargs.get('cell')))
        bag.mkdir(parents=True)
        (bag / 'timeline.csv').write_text('start,end,label\n')

    monkeypatch.setattr(flow, 'write_synth_bag', render)
    base = ['--world', 'workcell', '--seed', '3', '--train-recordings', '1']
    flow._recordings(flow.build_parser().parse_args([*base, '--out', str(tmp_path / 'a')]))
    assert rendered == [('workcell_cell3_3', 3), ('workcell_cell3_4', 3), ('workcell_cell3_5', 3)]
    rendered.clear()
    flow._recordings(flow.build_parser().parse_args(
        [*base, '--out', str(tmp_path / 'b'), '--cell-per-recording']))
    assert rendered == [('workcell_3', None), ('workcell_4', None), ('workcell_5', None)]
