"""config/*.yaml against the parameter table, and bad values named in the error."""

import dataclasses
import re
from pathlib import Path

import pytest
from node_helpers import REPO

from step_ros.stream.config import (
    DEFAULTS,
    PARAMETERS,
    ConfigError,
    PerceptionConfig,
    load_params_file,
)


def test_perception_yaml_equals_the_node_defaults():
    """Every parameter at its default; decision.* only as comments (set, they would override
    the values a head's checkpoint carries), and those comments show the defaults."""
    path = REPO / 'config' / 'perception.yaml'
    values = load_params_file(path)
    expected = {k: v for k, v in DEFAULTS.items() if not k.startswith('decision.')}
    assert values == expected, {k: (values.get(k), expected.get(k))
                                for k in set(values) | set(expected)
                                if values.get(k) != expected.get(k)}
    commented = dict(re.findall(r'^\s*#\s+(\w+): ([\d.]+)', path.read_text(), re.M))
    for name in [k for k in DEFAULTS if k.startswith('decision.')]:
        assert float(commented[name.split('.', 1)[1]]) == DEFAULTS[name], name


def test_every_parameter_is_described():
    for p in PARAMETERS:
        assert len(p.description) > 15, f'{p.name}: description {p.description!r}'


@pytest.mark.skipif(Path('/opt/step_ros/models/heads/action.safetensors').exists(),
                    reason='the deployment models are installed on this machine')
def test_real_deployment_config_names_the_missing_model():
    values = load_params_file(REPO / 'config' / 'perception.yaml')
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params(values)
    assert '/opt/step_ros/models/' in str(info.value), str(info.value)


def test_demo_yaml_is_the_tiny_cpu_setup():
    values = load_params_file(REPO / 'config' / 'demo.yaml')
    assert set(values) <= set(DEFAULTS), sorted(set(values) - set(DEFAULTS))
    assert values['backbone.weights'] == 'tiny' and values['device'] == 'cpu'
    assert values['precision'] == 'fp32' and values['num_frames'] == 8
    assert values['window_seconds'] == 2.0
    assert values['heads.checkpoints'] == ['package://step_ros/models/demo_action.safetensors']


def test_demo_efficientnet_yaml_names_the_head_it_was_trained_for():
    """`make demo-real`: the parameters and the bundled head agree (backbone, size, window)."""
    from step_ros.data.synth import LABELS, SYMMETRIC_PAIRS
    from step_ros.model.checkpoint import load_head
    values = load_params_file(REPO / 'config' / 'demo_efficientnet.yaml')
    assert set(values) <= set(DEFAULTS), sorted(set(values) - set(DEFAULTS))
    assert values['heads.checkpoints'] == [
        'package://step_ros/models/demo_action_efficientnet.safetensors']
    _, meta = load_head(REPO / 'models' / 'demo_action_efficientnet.safetensors')
    assert meta.backbone['id'] == values['backbone.weights'] == 'efficientnet_lite0'
    assert meta.backbone['image_size'] == values['backbone.image_size'] == 128
    assert (meta.num_frames, meta.window_seconds) == (values['num_frames'],
                                                      values['window_seconds']) == (8, 2.0)
    assert (meta.task, meta.labels, meta.symmetric_pairs) == ('action', LABELS, SYMMETRIC_PAIRS)
    # Trained through the flow: the decision parameters were fitted by train.
    assert meta.decision and meta.decision['enter_threshold'] > 0, meta.decision


@pytest.fixture
def valid(tmp_path):
    head = tmp_path / 'head.safetensors'
    head.write_bytes(b'x' * 16)  # from_params only checks that the file is there
    return {'backbone.weights': 'tiny', 'heads.checkpoints': [str(head)], 'device': 'cpu'}


def test_valid_values_give_the_config(valid):
    config = PerceptionConfig.from_params({**valid, 'window_seconds': 3, 'num_frames': 6,
                                           'symmetric_pairs': ['a:b']})
    assert config.engine.window_seconds == 3.0 and config.engine.num_frames == 6
    assert config.symmetric_pairs == (('a', 'b'),)
    assert config.head_topics == ('human_action',)


@pytest.mark.parametrize('name, value', [
    ('num_frames', 0),
    ('num_frames', 'sixteen'),
    ('num_frames', 2.5),
    ('window_seconds', -1.0),
    ('top_k', 0),
    ('infer_every', 0),
    ('ambiguity_margin', 1.5),
    ('device', 'gpu'),
    ('precision', 'fp8'),
    ('image_qos', 'fast'),
    ('debug_image', 'yes'),
    ('diagnostics_period', 0.0),
    ('backbone.image_size', -14),
    ('backbone.weights', '/nonexistent/dinov2'),
    ('heads.topics', ['a', 'b']),
    ('heads.checkpoints', ['/nonexistent/head.safetensors']),
    ('symmetric_pairs', ['pick_up-put_down']),
    ('window_seconds', float('inf')),  # audit D09: an OverflowError traceback
    ('window_seconds', 1e300),
    ('window_seconds', float('nan')),
    ('diagnostics_period', 1e-9),  # audit D12: 5,500 messages/s
    ('diagnostics_period', 0.01),
    ('max_image_pixels', 0),
    ('worker_timeout', 0.0),
    ('worker_timeout', float('inf')),
    ('cameras', ['front', 'front']),
    ('cameras', ['front/']),
    ('cameras', ['2nd']),
    ('cameras', ['wrist cam']),
    ('batch_timeout_ms', -1.0),
    ('batch_timeout_ms', 5000.0),
    ('batch_timeout_ms', float('nan')),
])
def test_bad_value_names_parameter_and_value(valid, name, value):
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params({**valid, name: value})
    message = str(info.value)
    assert name in message, message
    shown = value[0] if isinstance(value, list) and len(value) == 1 else value
    assert str(shown).strip('/') in message or repr(shown) in message, message


def test_cameras_and_batch_timeout(valid):
    single = PerceptionConfig.from_params(valid)
    assert single.cameras == () and single.camera_names == ('',)
    config = PerceptionConfig.from_params({**valid, 'cameras': ['front', 'arm/wrist'],
                                           'batch_timeout_ms': 0})
    assert config.cameras == ('front', 'arm/wrist') == config.camera_names
    assert config.batch_timeout_ms == 0.0
    with pytest.raises(ConfigError, match='cameras: 65 names, at most 64'):
        PerceptionConfig.from_params({**valid, 'cameras': [f'c{i}' for i in range(65)]})
    with pytest.raises(ConfigError, match="heads.topics=.*must be relative.*'/human_action'"):
        PerceptionConfig.from_params({**valid, 'cameras': ['front'],
                                      'heads.topics': ['/human_action']})


def test_unknown_parameter_is_named(valid):
    """A typo must not fall back silently to the default."""
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['num_frame'\]"):
        PerceptionConfig.from_params({**valid, 'num_frame': 8})


@pytest.mark.parametrize('window, warned', [(2.0, False), (2.1, False), (1.0, True)])
def test_a_window_unlike_the_heads_training_window_is_warned_about(tmp_path, caplog, window,
                                                                   warned):
    import logging

    from node_helpers import make_head

    from step_ros.stream.runtime import build_engine

    head = make_head(tmp_path / 'h.safetensors', num_frames=4)  # trained on 2.0 s windows
    config = PerceptionConfig.from_params({
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': 4,
        'window_seconds': window})
    with caplog.at_level(logging.WARNING, logger='step_ros.stream.runtime'):
        build_engine(config)
    messages = [r.getMessage() for r in caplog.records if r.name == 'step_ros.stream.runtime']
    assert bool(messages) == warned, messages
    if warned:
        assert 'window_seconds=1.0' in messages[0] and '2 s windows' in messages[0], messages


def test_the_bounds_themselves_are_accepted(valid):
    config = PerceptionConfig.from_params({**valid, 'diagnostics_period': 0.05,
                                           'window_seconds': 3600.0, 'max_image_pixels': 1})
    assert config.diagnostics_period == 0.05 and config.engine.window_seconds == 3600.0
    assert config.max_image_pixels == 1


def test_a_symmetric_pair_naming_no_label_is_refused(tmp_path):
    """Audit D11: such an override used to empty the head's pairs and flag nothing."""
    from node_helpers import make_head

    from step_ros.stream.runtime import build_engine

    head = make_head(tmp_path / 'h.safetensors', num_frames=4)
    config = PerceptionConfig.from_params({
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': 4,
        'window_seconds': 2.0, 'symmetric_pairs': ['pick_up:put_down', 'pickup:putdown']})
    with pytest.raises(ConfigError) as info:
        build_engine(config)
    message = str(info.value)
    assert message.startswith('symmetric_pairs:') and "['pickup:putdown']" in message, message
    assert 'pick_up' in message and '\n' not in message, message


def test_an_override_leaving_a_head_without_pairs_is_warned_about(tmp_path, caplog):
    import logging

    from node_helpers import make_head

    from step_ros.stream.runtime import build_engine

    action = make_head(tmp_path / 'a.safetensors', num_frames=4)
    objects = make_head(tmp_path / 'o.safetensors', num_frames=4, task='object',
                        labels=('cup', 'box'), pairs=(('cup', 'box'),))
    config = PerceptionConfig.from_params({
        'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(action), str(objects)],
        'heads.topics': ['action', 'object'], 'num_frames': 4, 'window_seconds': 2.0,
        'symmetric_pairs': ['pick_up:put_down']})
    with caplog.at_level(logging.WARNING, logger='step_ros.stream.runtime'):
        engine = build_engine(config)
    assert [h.pairs for h in engine.heads] == [(('pick_up', 'put_down'),), ()]
    messages = [r.getMessage() for r in caplog.records if 'symmetric_pairs' in r.getMessage()]
    assert len(messages) == 1 and "head 'object'" in messages[0], messages
    assert 'flags no ambiguity' in messages[0], messages


def test_decision_parameters_build_the_decision_config(valid):
    from step_ros.stream.decision import DecisionConfig

    assert PerceptionConfig.from_params(valid).decision == DecisionConfig()
    config = PerceptionConfig.from_params({**valid, 'decision.smoothing_seconds': 0,
                                           'decision.min_dwell_seconds': 1.5})
    assert config.decision.smoothing_seconds == 0.0 and config.decision.min_dwell_seconds == 1.5


@pytest.mark.parametrize('name, value', [
    ('decision.smoothing_seconds', -0.5), ('decision.enter_threshold', 1.2),
    ('decision.exit_threshold', 0.9), ('decision.min_dwell_seconds', -1.0),
    ('decision.min_confidence', 'high')])
def test_bad_decision_value_is_one_line_naming_it(valid, name, value):
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params({**valid, name: value})
    message = str(info.value)
    assert f'{name}={value!r}' in message or f'{name}={value}' in message, message
    assert '\n' not in message


@pytest.mark.parametrize('name, value', [
    ('num_frames', True), ('top_k', False), ('max_image_pixels', 1.0),  # bool / float for int
    ('window_seconds', True), ('window_seconds', '2.0'),  # bool / string for float
    ('decision.enter_threshold', True), ('decision.smoothing_seconds', '0.5'),
    ('device', 1), ('backbone.weights', 5), ('precision', None),  # not a string
    ('debug_image', 1), ('order_check', 'true'),  # int / string for bool
    ('cameras', 'front'), ('heads.topics', ['human_action', 3]), ('symmetric_pairs', [None]),
    ('heads.checkpoints', {'a': 1}),  # not a list of strings
])
def test_a_value_of_the_wrong_type_is_refused_with_the_types(valid, name, value):
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params({**valid, name: value})
    message = str(info.value)
    assert message.startswith(f'{name}={value!r}: expected '), message


@pytest.mark.parametrize('name, value, rule', [
    ('decision.smoothing_seconds', 1e300, '[0, 60] seconds'),
    ('decision.min_dwell_seconds', 61.0, '[0, 60] seconds'),
    ('decision.enter_threshold', 1.0, '[0, 1)'),
    ('decision.exit_threshold', 1.0, '[0, 1)'),
    ('decision.min_confidence', 1.0, '[0, 1)'),
])
def test_decision_values_that_cannot_work_are_refused(valid, name, value, rule):
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params({**valid, name: value})
    message = str(info.value)
    assert message.startswith(f'{name}={value}: must be in {rule}'), message
    assert '\n' not in message


def test_the_decision_bounds_themselves_are_accepted(valid):
    config = PerceptionConfig.from_params({
        **valid, 'decision.smoothing_seconds': 60.0, 'decision.min_dwell_seconds': 60,
        'decision.enter_threshold': 0.999, 'decision.exit_threshold': 0.0,
        'decision.min_confidence': 0.999})
    assert config.decision.smoothing_seconds == 60.0 and config.decision.enter_threshold == 0.999


@pytest.mark.parametrize('name, value', [
    ('backbone.weights', 'tiny-clip'), ('backbone.image_size', 56), ('device', 'auto'),
    ('precision', 'bf16'), ('heads.topics', ['actions']), ('num_frames', 8),
    ('window_seconds', 3.0), ('infer_every', 2), ('top_k', 2), ('ambiguity_margin', 0.3),
    ('order_check', True), ('symmetric_pairs', ['a:b']), ('image_qos', 'reliable'),
    ('subscribe_compressed', True), ('debug_image', True), ('diagnostics_period', 2.0),
    ('max_image_pixels', 1000), ('worker_timeout', 5.0), ('input_timeout_seconds', 5.0),
    ('cameras', ['front']),
    ('batch_timeout_ms', 20.0), ('input_timeout_seconds', 1.0),
    ('decision.smoothing_seconds', 1.0),
    ('decision.enter_threshold', 0.6), ('decision.exit_threshold', 0.3),
    ('decision.min_dwell_seconds', 0.5), ('decision.min_confidence', 0.1),
])
def test_every_parameter_reaches_the_config(valid, name, value):
    """Each node parameter (autostart aside: main() reads it) changes what the node runs."""
    base = PerceptionConfig.from_params(valid)
    config = PerceptionConfig.from_params({**valid, name: value})
    changed = [f.name for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(base, f.name)]
    assert changed, f'{name}={value!r} changes nothing in the config'


def test_every_parameter_is_covered_by_the_reach_test():
    names = {args[0] for args in test_every_parameter_reaches_the_config.pytestmark[0].args[1]}
    assert names | {'heads.checkpoints', 'autostart'} == set(DEFAULTS), \
        sorted(set(DEFAULTS) - names)


def test_live_parameters_are_retuned_by_the_same_rules(valid):
    from step_ros.stream.config import LIVE_PARAMETERS, describe

    config = PerceptionConfig.from_params(valid)
    tuned = config.retuned({'top_k': 2, 'ambiguity_margin': 0, 'decision.enter_threshold': 0.7})
    assert (tuned.engine.top_k, tuned.engine.ambiguity_margin) == (2, 0.0)
    assert tuned.decision.enter_threshold == 0.7 and tuned.engine.num_frames == 16
    assert config.engine.top_k == 5, 'retuned changed the original'
    for changes in ({'decision.enter_threshold': 1.0}, {'top_k': 0}, {'top_k': True},
                    {'ambiguity_margin': 2.0}, {'decision.exit_threshold': 0.9}):
        name, value = next(iter(changes.items()))
        with pytest.raises(ConfigError) as retuned:
            config.retuned(changes)
        with pytest.raises(ConfigError) as configured:
            PerceptionConfig.from_params({**valid, **changes})
        assert str(retuned.value) == str(configured.value), changes
        assert f'{name}={value!r}' in str(retuned.value) or f'{name}={value}' in \
            str(retuned.value), retuned.value
    with pytest.raises(ConfigError, match='^num_frames needs a restart: deactivate, cleanup, '
                                          'configure'):
        config.retuned({'num_frames': 8})
    assert LIVE_PARAMETERS == {'top_k', 'ambiguity_margin', 'decision.smoothing_seconds',
                               'decision.enter_threshold', 'decision.exit_threshold',
                               'decision.min_dwell_seconds', 'decision.min_confidence'}
    described = {p.name: describe(p) for p in PARAMETERS}
    assert all(('Live:' in text) == (name in LIVE_PARAMETERS)
               for name, text in described.items()), described
    assert 'needs a restart: deactivate, cleanup, configure' in described['num_frames']


@pytest.mark.parametrize('topics, cameras, clash', [
    (['image'], [''], "'image', which is already the node's image input"),
    (['actions', 'image/compressed'], [''], "the node's compressed image input"),
    (['debug_image'], ['front'], "the node's debug image output"),
    (['a', 'a/events'], [''], "'a/events', which is already the events output of head topic"),
])
def test_a_head_topic_taken_by_the_node_is_refused(valid, tmp_path, topics, cameras, clash):
    heads = []
    for i, _ in enumerate(topics):
        heads.append(tmp_path / f'h{i}.safetensors')
        heads[-1].write_bytes(b'x')
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params({**valid, 'heads.checkpoints': [str(h) for h in heads],
                                      'heads.topics': topics, 'cameras': cameras})
    message = str(info.value)
    assert message.startswith('heads.topics: ') and clash in message, message


def test_a_camera_name_too_long_for_a_topic_is_refused(valid):
    with pytest.raises(ConfigError) as info:
        PerceptionConfig.from_params({**valid, 'cameras': ['c' * 300]})
    message = str(info.value)
    assert message.startswith("cameras: 'cccc") and '(300 characters) is too long' in message
    assert 'at most 100' in message and len(message) < 200, message
