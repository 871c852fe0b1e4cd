"""A head and the parameters it runs with: misfits named with their fix, shared by the node and
bag-eval (the node's side: test_node_params)."""

import logging

import pytest
from node_helpers import make_head, write_params

from step_ros.model.checkpoint import read_meta
from step_ros.stream.config import ConfigError, PerceptionConfig, load_params_file
from step_ros.stream.runtime import build_engine, window_mismatch
from step_ros.tools import bag_eval
from step_ros.tools.synth_bag import write_synth_bag

T = 4


def params(tmp_path, **values):
    head = tmp_path / 'head.safetensors'
    if not head.exists():
        make_head(head, num_frames=T, window_seconds=2.0)
    return write_params(tmp_path / 'params.yaml', {
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': T,
        'window_seconds': 2.0, **values})


@pytest.mark.parametrize('values, expected', [
    ({'num_frames': 8}, "num_frames=8 but head 'action' was trained on 4 frames ({head}): set "
                        'num_frames to 4'),
    ({'backbone.image_size': 56}, "backbone.image_size=56 gives 56 px images but head 'action' "
                                  'was trained on 112 px ({head}): set backbone.image_size to '
                                  '112'),
])
def test_a_head_that_cannot_run_names_both_values_and_the_fix(tmp_path, values, expected):
    config = PerceptionConfig.from_params(load_params_file(params(tmp_path, **values)))
    with pytest.raises(ConfigError) as info:
        build_engine(config)
    assert str(info.value) == expected.format(head=config.head_checkpoints[0])


def test_the_window_warning_goes_to_the_callers_logger(tmp_path):
    config = PerceptionConfig.from_params(load_params_file(params(tmp_path,
                                                                  window_seconds=1.0)))
    warnings = []
    build_engine(config, warn=warnings.append)
    head = config.head_checkpoints[0]
    assert warnings == [window_mismatch(config, read_meta(head), head)]
    assert warnings[0] == (f"window_seconds=1.0 but head 'action' was trained on 2 s windows "
                           f'({head}): frames are spaced 50% differently from training; set '
                           'window_seconds to 2.0')


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('head_fit_bag')
    return write_synth_bag(tmp / 'bag', seconds=2.0, fps=8.0, size=(48, 64), seed=2,
                           progress=False)


def run_bag_eval(tmp_path, bag, config) -> int:
    bag_dir, timeline = bag
    return bag_eval.main(['--bag', str(bag_dir), '--topic', '/camera/image_raw', '--labels',
                          str(timeline), '--config', str(config), '--out',
                          str(tmp_path / 'out'), '--no-progress'])


def test_bag_eval_warns_with_the_nodes_line(tmp_path, bag, caplog):
    config_file = params(tmp_path, window_seconds=1.0)
    config = PerceptionConfig.from_params(load_params_file(config_file))
    head = config.head_checkpoints[0]
    with caplog.at_level(logging.WARNING):
        run_bag_eval(tmp_path, bag, config_file)
    warned = [r.getMessage() for r in caplog.records if 'window_seconds' in r.getMessage()]
    assert warned == [window_mismatch(config, read_meta(head), head)], warned


def test_bag_eval_refuses_a_decision_value_as_the_node_does(tmp_path, bag, capsys):
    config_file = params(tmp_path, **{'decision.enter_threshold': 1.0})
    assert run_bag_eval(tmp_path, bag, config_file) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['bag-eval: error: decision.enter_threshold=1.0: must be in [0, 1) (a '
                   'probability never reaches 1)'], err
