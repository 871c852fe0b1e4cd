"""The checks of the paper's pattern that only trained heads reach: `report --quick` lists them
as the ones it cannot meet; the structural checks (order-blind heads, costs) are not listed."""

from types import SimpleNamespace

from step_ros.tools import report_tables


def _row(symmetric: float, reversed_symmetric: float, overall: float = 0.5) -> dict:
    return dict(accuracy=dict(overall=overall, symmetric=symmetric, non_symmetric=0.5),
                reversed=dict(overall=overall, symmetric=reversed_symmetric, non_symmetric=0.5),
                vitb=SimpleNamespace(params=10.0, gflops_stream=10.0))


def test_quick_unmet_lists_exactly_the_training_targets():
    rows = {'step': _row(0.5, 0.5), 'linear': _row(0.5, 0.5),
            'vpt_linear': _row(0.5, 0.5), 'vpt_step': _row(0.5, 0.5),
            'st_adapter_linear': _row(0.5, 0.5)}
    rows['st_adapter_linear']['vitb'] = SimpleNamespace(params=100.0, gflops_stream=100.0)
    results = report_tables.checks(rows)
    listed = report_tables.quick_unmet(results).splitlines()
    trained = ['- STEP symmetric accuracy', '- STEP reversed symmetric accuracy',
               '- vpt_step symmetric accuracy', '- st_adapter_linear reads order']
    assert len(listed) == len(trained), listed
    for prefix in trained:
        assert sum(line.startswith(prefix) for line in listed) == 1, (prefix, listed)
    # Structural checks hold by construction, trained or not: not listed.
    structural = [c.claim for c in results if not c.trained]
    assert any('order-blind' in c for c in structural), structural
    assert any(c.startswith('st_adapter_linear at ViT-B/14') for c in structural), structural
    assert any(c.startswith('linear symmetric accuracy') for c in structural), structural
    assert all(f'- {c}' not in listed for c in structural), listed
