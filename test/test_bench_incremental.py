"""`bench --incremental-head`: the section is written with counted FLOPs and derived cameras.

Nothing here asserts a time; the counted quantities and the arithmetic of the report are checked.
"""

import json

import pytest

from step_ros.benchmark.incremental import PREDICTIONS_PER_S, SHAPES
from step_ros.model import incremental
from step_ros.tools import bench


@pytest.fixture(scope='module')
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp('bench_incremental')
    rc = bench.main(['--backbone', 'none', '--incremental-head', '--incremental-frames', '2',
                     '--seconds', '0.01', '--iters', '1', '--min-iters', '1', '--warmup', '0',
                     '--out', str(out)])
    assert rc == 0, f'bench exited {rc}'
    markdown = (out / 'bench.md').read_text()
    assert '## Incremental STEP head vs the whole head' in markdown, markdown
    return json.loads((out / 'bench.json').read_text())


def test_section_has_every_shape_with_counted_flops(report):
    assert report['backbones'] == [] and report['config']['incremental_head'] is True
    rows = report['incremental_head']['rows']
    assert [(r['shape'], r['num_frames']) for r in rows] == [(s[0], 2) for s in SHAPES], rows
    for r in rows:
        d, n, t, classes = r['embed_dim'], r['patches'], r['num_frames'], 10
        length = 1 + t * n
        assert r['tokens'] == length, r
        # q k^T; then A v for every query (fused kernel), or the mean of A over the queries
        # times v where the head width takes that path.
        pooled = d // r['num_heads'] >= incremental.POOLED_SCORES_HEAD_DIM
        assert r['attention_path'] == ('pooled weights' if pooled else 'fused'), r
        attention = (2 * length * length * d + (2 * length * d if pooled
                                                else 2 * length * length * d)) / 1e9
        g = r['gflops']
        assert g['attention'] == pytest.approx(attention), (r['shape'], g)
        # One frame: its N patch tokens through the qkv projection.
        assert g['project'] == pytest.approx(2 * n * d * 3 * d / 1e9, rel=1e-3), (r['shape'], g)
        # A prediction: the attention, one output projection and the classifier.
        assert g['predict'] == pytest.approx(attention + (2 * d * d + 2 * d * classes) / 1e9,
                                             rel=1e-3), (r['shape'], g)
        whole = (2 * length * d * 4 * d + 2 * d * classes + 4 * length * length * d) / 1e9
        assert g['full'] == pytest.approx(whole, rel=1e-3), (r['shape'], g)


def test_cameras_and_speedup_follow_from_the_measured_times(report):
    for r in report['incremental_head']['rows']:
        s = r['times']
        assert s['incremental']['p50_ms'] == pytest.approx(
            s['project']['p50_ms'] + s['predict']['p50_ms']), s  # one sample each
        assert r['cameras_incremental'] == pytest.approx(
            1e3 / (PREDICTIONS_PER_S * s['incremental']['p50_ms'])), r
        assert r['cameras_full'] == pytest.approx(1e3 / (PREDICTIONS_PER_S * s['full']['p50_ms']))
        assert r['speedup_p50'] == pytest.approx(s['full']['p50_ms'] / s['incremental']['p50_ms'])
        assert r['target_speedup'] is None and r['met'] is None, r  # targets are for T = 8, 16


@pytest.mark.parametrize('argv, message', [
    (['--backbone', 'none'], 'nothing to run'),
    (['--incremental-head', '--incremental-frames', '8,x'], "'8,x'"),
    (['--incremental-head', '--incremental-frames', '1'], "'1'"),
])
def test_bad_arguments_are_one_clear_error(capsys, argv, message):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
