"""input_timeout_seconds: its default, its bounds, and a bad value named in one line."""

import pytest
from node_helpers import REPO

from step_ros.stream.config import ConfigError, PerceptionConfig, load_params_file


@pytest.fixture
def valid(tmp_path):
    head = tmp_path / 'head.safetensors'
    head.write_bytes(b'x' * 16)  # from_params only checks that the file is there
    return {'backbone.weights': 'tiny', 'heads.checkpoints': [str(head)], 'device': 'cpu'}


def test_default_is_about_one_window_in_both_shipped_files(valid):
    config = PerceptionConfig.from_params(valid)
    assert config.input_timeout_seconds == config.engine.window_seconds == 2.0
    for name in ('perception.yaml', 'demo.yaml'):
        values = load_params_file(REPO / 'config' / name)
        assert values['input_timeout_seconds'] == values['window_seconds'], name
    assert PerceptionConfig.from_params(
        {**valid, 'input_timeout_seconds': 3}).input_timeout_seconds == 3.0


@pytest.mark.parametrize('value', [0.0, 0.01, -1.0, float('nan'), float('inf'), 1e9])
def test_out_of_range_is_one_line_naming_the_value(valid, value):
    with pytest.raises(ConfigError, match=rf'^input_timeout_seconds={value}: must be a number '
                                          r'in \[0.05, 3600\]$'):
        PerceptionConfig.from_params({**valid, 'input_timeout_seconds': value})


def test_wrong_type_is_named(valid):
    with pytest.raises(ConfigError, match="input_timeout_seconds='soon': expected float"):
        PerceptionConfig.from_params({**valid, 'input_timeout_seconds': 'soon'})
