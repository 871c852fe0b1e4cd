"""Hostile head checkpoints: every malformed metadata field or weight gives one clear error.

Each case is a checkpoint an outside audit could write by hand: the loader must refuse it with
one CheckpointError line naming the file and what is wrong, `eval` must print one error line
and exit 2, and the node must log one FATAL line and exit (never abort in the C conversion of
a label, never publish a NaN confidence).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from node_helpers import LABELS, PAIRS, make_head, tiny_info
from safetensors.torch import save_file

from step_ros.model.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    HeadMeta,
    load_head,
    read_meta,
    save_head,
    validate_pairs,
)
from step_ros.model.heads import PRESETS, build_head

T = 4


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    """(metadata dict, tensors) of a valid checkpoint to damage one field at a time."""
    path = make_head(tmp_path_factory.mktemp('good') / 'head.safetensors', num_frames=T)
    module, meta = load_head(path)
    return json.loads(meta.to_json()), {k: v.clone() for k, v in module.state_dict().items()}


def write(path, metadata, tensors) -> str:
    """A safetensors file with this raw metadata text (or dict) under the step_ros key."""
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    save_file(tensors, str(path), metadata={METADATA_KEY: text})
    return str(path)


def _with(values: dict, **changes) -> dict:
    out = json.loads(json.dumps(values))
    for key, value in changes.items():
        if '.' in key:
            block, leaf = key.split('.')
            if value is _DROP:
                del out[block][leaf]
            else:
                out[block][leaf] = value
        elif value is _DROP:
            del out[key]
        else:
            out[key] = value
    return out


_DROP = object()
# (name, changes to the metadata, words the error must contain)
METADATA_CASES = [
    ('labels_ints', dict(labels=[1, 2, 3, 4, 5]), ['labels', 'not a non-empty string']),
    ('labels_one_string', dict(labels='pick_up'), ['labels', 'expected a list of names']),
    ('labels_duplicate', dict(labels=['pick_up', 'put_down', 'open_drawer', 'close_drawer',
                                      'pick_up']), ["['pick_up'] appear more than once"]),
    ('labels_empty_name', dict(labels=['pick_up', 'put_down', 'open_drawer', 'close_drawer',
                                       '']), ["'' is not a non-empty string"]),
    ('labels_one', dict(labels=['pick_up'], symmetric_pairs=[]), ['at least 2 labels']),
    ('labels_null', dict(labels=None), ['labels None']),
    ('task_int', dict(task=7), ['task 7', 'non-empty string']),
    ('task_empty', dict(task=''), ["task ''"]),
    ('pair_three', dict(symmetric_pairs=[['pick_up', 'put_down', 'wave']]),
     ['symmetric pair', 'two label names']),
    ('pair_flat', dict(symmetric_pairs=['pick_up']), ["symmetric pair 'pick_up'"]),
    ('pairs_string', dict(symmetric_pairs='pick_up'), ['symmetric pairs', 'list']),
    ('pair_missing_label', dict(symmetric_pairs=[['pick_up', 'fly']]), ["'fly' is not a label"]),
    ('pair_same', dict(symmetric_pairs=[['wave', 'wave']]), ['two different labels']),
    ('pair_label_twice', dict(symmetric_pairs=[['pick_up', 'put_down'], ['pick_up', 'wave']]),
     ["'pick_up' is already paired"]),
    ('pair_ints', dict(symmetric_pairs=[[1, 2]]), ['two label names']),
    ('num_frames_float', dict(num_frames=4.5), ['num_frames 4.5']),
    ('num_frames_string', dict(num_frames='4'), ["num_frames '4'"]),
    ('num_frames_zero', dict(num_frames=0), ['num_frames 0']),
    ('num_frames_huge', dict(num_frames=10**9), ['num_frames 1000000000']),
    ('num_frames_bool', dict(num_frames=True), ['num_frames True']),
    ('window_zero', dict(window_seconds=0), ['window_seconds 0', 'finite']),
    ('window_negative', dict(window_seconds=-1.0), ['window_seconds -1.0']),
    ('window_nan', dict(window_seconds=math.nan), ['window_seconds nan']),
    ('window_inf', dict(window_seconds=math.inf), ['window_seconds inf']),
    ('window_string', dict(window_seconds='2'), ["window_seconds '2'"]),
    ('backbone_no_fingerprint', {'backbone.fingerprint': _DROP}, ["lacks ['fingerprint']"]),
    ('backbone_list', dict(backbone=[1, 2]), ['backbone [1, 2]', 'object']),
    ('backbone_dim_string', {'backbone.embed_dim': '96'}, ["backbone.embed_dim '96'"]),
    ('backbone_dim_huge', {'backbone.embed_dim': 10**9}, ['backbone.embed_dim 1000000000']),
    ('backbone_patch_zero', {'backbone.patch_size': 0}, ['backbone.patch_size 0']),
    ('head_list', dict(head=['step']), ["head ['step']", 'object']),
    ('head_unknown_key', {'head.depth': 3}, ["unknown head config keys ['depth']"]),
    ('head_num_heads_string', {'head.num_heads': '4'}, ["head.num_heads='4'", 'int']),
    ('head_num_heads_not_dividing', {'head.num_heads': 7}, ['head.num_heads=7']),
    ('head_kind', {'head.kind': 'mlp'}, ["head.kind='mlp'"]),
    ('head_mlp_ratio_nan', {'head.mlp_ratio': math.nan}, ['head.mlp_ratio=nan']),
    ('training_list', dict(training=[1]), ['training [1]']),
    ('temperature_string', dict(temperature='2'), ["temperature='2'"]),
    ('temperature_nan', dict(temperature=math.nan), ['temperature=nan']),
    ('background_missing', dict(background='idle'), ["background='idle'"]),
    ('switch_fraction_string', dict(switch_fraction='0.5'), ["switch_fraction='0.5'"]),
    ('switch_fraction_nan', dict(switch_fraction=math.nan), ['switch_fraction=nan']),
    ('switch_fraction_above_one', dict(switch_fraction=2.0), ['switch_fraction=2.0']),
    ('switch_fraction_zero', dict(switch_fraction=0), ['switch_fraction=0']),
    ('format', dict(format='other/1'), ["format 'other/1'"]),
    ('no_task', dict(task=_DROP), ["missing fields ['task']"]),
]


@pytest.mark.parametrize('name, changes, words', METADATA_CASES, ids=[c[0] for c in
                                                                       METADATA_CASES])
def test_malformed_metadata_is_one_clear_error(tmp_path, good, name, changes, words):
    values, tensors = good
    path = write(tmp_path / f'{name}.safetensors', _with(values, **changes), tensors)
    for reader in (read_meta, load_head):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(f'{path}: invalid step_ros metadata'), message
        assert all(w in message for w in words), (words, message)
        assert '\n' not in message and len(message) < 400, message


@pytest.mark.parametrize('text, words', [
    ('[1, 2, 3]', ['a JSON list']),
    ('"hello"', ['a JSON str']),
    ('42', ['a JSON int']),
    ('null', ['a JSON NoneType']),
    ('{"format": ', ['not JSON']),
])
def test_metadata_that_is_not_an_object(tmp_path, good, text, words):
    path = write(tmp_path / 'h.safetensors', text, good[1])
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    assert str(info.value).startswith(f'{path}: invalid step_ros metadata'), info.value
    assert all(w in str(info.value) for w in words), info.value


def _tensors(good, **changes):
    tensors = dict(good[1])
    for key, value in changes.items():
        tensors[key.replace('__', '.')] = value
    return tensors


@pytest.mark.parametrize('name, change, words', [
    ('int_weights', lambda t: {'fc__weight': t['fc.weight'].round().to(torch.int32)},
     ["'fc.weight' is torch.int32", 'floating point']),
    ('nan_weight', lambda t: {'fc__bias': torch.full_like(t['fc.bias'], math.nan)},
     ["'fc.bias' holds 5 non-finite values"]),
    ('inf_weight', lambda t: {'attn__qkv__weight': t['attn.qkv.weight'].index_fill(
        0, torch.tensor([0]), math.inf)}, ["'attn.qkv.weight' holds 96 non-finite"]),
    ('wrong_shape', lambda t: {'fc__weight': torch.zeros(6, 96)},
     ["'fc.weight' has shape [6, 96]", '[5, 96]']),
])
def test_bad_weights_are_refused(tmp_path, good, name, change, words):
    path = write(tmp_path / f'{name}.safetensors', good[0], _tensors(good, **change(good[1])))
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    message = str(info.value)
    assert message.startswith(str(path)) and all(w in message for w in words), message


def test_a_missing_tensor_is_named(tmp_path, good):
    tensors = {k: v for k, v in good[1].items() if k != 'cls_token'}
    path = write(tmp_path / 'h.safetensors', good[0], tensors)
    with pytest.raises(CheckpointError, match=r"missing tensors \['cls_token'\]"):
        load_head(path)


def test_a_head_declaring_huge_fixed_tables_is_refused_before_allocating(tmp_path, good):
    # Token-wise sinusoidal embeddings are not stored: their table (T*N rows x D) is built
    # from the metadata alone, here 64 frames x 12544 patches x 96 = 77M floats.
    values = _with(good[0], num_frames=64, **{'head.temporal': 'sinusoidal',
                                              'head.granularity': 'token',
                                              'backbone.image_size': 1568,
                                              'backbone.patch_size': 14})
    tensors = {k: v for k, v in good[1].items() if k != 'temporal_embed'}
    path = write(tmp_path / 'h.safetensors', values, tensors)
    with pytest.raises(CheckpointError, match='fixed buffer values'):
        load_head(path)


def test_valid_metadata_round_trips_and_save_refuses_invalid(tmp_path):
    info = tiny_info()
    module = build_head(PRESETS['step'], dim=96, num_frames=T, num_patches=info.num_patches,
                        num_classes=len(LABELS))
    meta = HeadMeta(task='action', labels=LABELS, symmetric_pairs=PAIRS, head=PRESETS['step'],
                    num_frames=T, backbone=info.to_dict(), window_seconds=1.5)
    assert HeadMeta.from_json(meta.to_json()) == meta
    bad = HeadMeta(task='action', labels=LABELS, symmetric_pairs=PAIRS, head=PRESETS['step'],
                   num_frames=T, backbone=info.to_dict(), window_seconds=math.nan)
    with pytest.raises(CheckpointError, match='refusing to write invalid metadata'):
        save_head(tmp_path / 'bad.safetensors', module, bad)
    assert not (tmp_path / 'bad.safetensors').exists()


def test_validate_pairs_accepts_lists_and_tuples():
    assert validate_pairs(LABELS, [['pick_up', 'put_down']]) == (('pick_up', 'put_down'),)
    assert validate_pairs(LABELS, (('wave', 'open_drawer'),)) == (('wave', 'open_drawer'),)
    assert validate_pairs(LABELS, []) == ()


def test_eval_prints_one_error_line(tmp_path, good, capsys):
    from step_ros.tools import evaluate
    values, tensors = good
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'index.json').write_text('{}')  # never read: the checkpoint is checked first
    cases = {'labels': _with(values, labels=[1, 2, 3, 4, 5]),
             'window': _with(values, window_seconds=0)}
    for name, metadata in cases.items():
        path = write(tmp_path / f'{name}.safetensors', metadata, tensors)
        code = evaluate.main(['--checkpoint', path, '--cache', str(cache), '--out',
                              str(tmp_path / 'out')])
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'eval: error: {path}:'), err
    nan = write(tmp_path / 'nan.safetensors', values, _tensors(
        good, fc__bias=torch.full((5,), math.nan)))
    assert evaluate.main(['--checkpoint', nan, '--cache', str(cache), '--out',
                          str(tmp_path / 'out')]) == 2
    assert 'non-finite' in capsys.readouterr().err


NODE_CASES = [
    ('labels_ints', dict(labels=[1, 2, 3, 4, 5]), None, 'not a non-empty string'),
    ('json_list', '[1, 2]', None, 'a JSON list'),
    ('nan_weights', {}, 'nan', 'non-finite'),
]


@pytest.mark.timeout(480)
def test_node_logs_one_fatal_line_for_a_bad_checkpoint(tmp_path, good):
    pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
    pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built')
    from node_helpers import NodeProcess, ros_env, write_params

    env = ros_env()
    values, tensors = good
    for name, changes, weights, words in NODE_CASES:
        metadata = changes if isinstance(changes, str) else _with(values, **changes)
        bad = _tensors(good, fc__bias=torch.full((5,), math.nan)) if weights else tensors
        path = write(tmp_path / f'{name}.safetensors', metadata, bad)
        params = write_params(tmp_path / f'{name}.yaml', {
            'backbone.weights': 'tiny', 'backbone.image_size': 0, 'device': 'cpu',
            'precision': 'fp32', 'heads.checkpoints': [path], 'num_frames': T,
            'window_seconds': 1.0})
        process = NodeProcess(['--params-file', str(params)], env=env,
                              log=tmp_path / f'{name}.log')
        code = process.wait_exit(timeout=90)
        output = process.output()
        assert code not in (0, -6), f'{name}: exit {code}:\n{output}'
        fatal = [line for line in output.splitlines() if 'FATAL' in line]
        assert len(fatal) == 1 and path in fatal[0] and words in fatal[0], (name, output)
        assert 'Traceback' not in output and 'unexpected error' not in output, output

