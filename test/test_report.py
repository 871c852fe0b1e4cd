"""`report --quick`: every method of the paper's tables through the whole pipeline, end to end.

The quick run trains far too little for the accuracy pattern (docs/RESULTS.md has the full run);
it checks that every table and row is there, what holds by construction (image PEFT with a
linear head gives identical forward and reversed predictions) and the counted costs.
"""

from __future__ import annotations

import json

import pytest

from step_ros.model.peft import PEFT_PRESETS
from step_ros.tools import report


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp('report')
    assert report.main(['--quick', '--out', str(out), '--peft-lr', '0.02']) == 0
    return out, json.loads((out / 'report.json').read_text())


@pytest.mark.timeout(1200)
def test_quick_report_has_every_method_and_table(quick):
    out, summary = quick
    assert summary['quick'] and summary['frames'] == 4, summary
    assert set(summary['heads']) == {'step', 'linear', *PEFT_PRESETS}, sorted(summary['heads'])
    for name, row in summary['heads'].items():
        assert set(row['accuracy']) == set(row['reversed']) == {
            'overall', 'symmetric', 'non_symmetric'}, (name, row)
        assert row['cost']['params'] > 0 and row['vitb']['params'] > 0, (name, row)
    text = (out / 'report.md').read_text()
    for title in ('Table I', 'Table II', 'Table IV', 'Table V', "Checks of the paper's"):
        assert f'## {title}' in text, title
    for name in PEFT_PRESETS:
        assert f'| {name} |' in text, name
    assert set(summary['tasks']) == {'object/step', 'object/linear'}, summary['tasks']
    assert (out / 'eval' / 'st_adapter_linear' / 'report.json').is_file()
    # --peft-lr reaches every PEFT row's training, and only those
    assert summary['peft_lr'] == 0.02, summary['peft_lr']
    assert {n: r['train']['lr'] for n, r in summary['heads'].items() if 'train' in r} == {
        n: 0.02 for n in PEFT_PRESETS}


@pytest.mark.parametrize('value', ['0', '-0.1', '1.5', 'nan'])
def test_a_bad_peft_learning_rate_is_refused_in_one_line(tmp_path, capsys, value):
    assert report.main(['--out', str(tmp_path), '--peft-lr', value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and f'--peft-lr {float(value)}' in err, err


@pytest.mark.timeout(1200)
def test_image_peft_linear_rows_are_order_blind(quick):
    _, summary = quick
    for name in ('vpt_linear', 'adaptformer_linear'):
        row = summary['heads'][name]
        assert row['reversed'] == row['accuracy'], (name, row)
    claims = [c for c in summary['checks'] if 'order-blind' in c]
    assert len(claims) == 3 and all(summary['checks'][c] for c in claims), summary['checks']


@pytest.mark.timeout(1200)
def test_costs_st_adapter_pays_for_every_frame_and_one_pass_serves_all_tasks(quick):
    _, summary = quick
    heads = summary['heads']
    st, step = heads['st_adapter_linear'], heads['step']
    assert st['cost']['gflops_stream'] == st['cost']['gflops_clip'], st['cost']
    assert step['cost']['gflops_stream'] < step['cost']['gflops_clip'], step['cost']
    ratio = [c for c in summary['checks'] if c.startswith('st_adapter_linear at ViT-B/14')]
    assert len(ratio) == 1 and summary['checks'][ratio[0]], summary['checks']
    multitask = summary['multitask']
    shared = next(v for k, v in multitask.items() if k.startswith('frozen + STEP'))
    for name in PEFT_PRESETS:
        per_task = multitask[f'{name}: one pass per task']
        # two tasks: one frozen pass beats two adapted passes per clip at the ViT-B/14 shape
        assert shared['vitb']['gflops_clip'] < per_task['vitb']['gflops_clip'], (name, shared)


def test_quick_report_lists_the_checks_it_cannot_meet(quick):
    out, summary = quick
    unmet = summary['quick_cannot_meet']
    assert unmet and set(unmet) < set(summary['checks']), (unmet, summary['checks'])
    assert any(c.startswith('STEP symmetric accuracy') for c in unmet), unmet
    text = (out / 'report.md').read_text()
    assert '## Checks --quick cannot meet' in text and f'- {unmet[0]}' in text, text
