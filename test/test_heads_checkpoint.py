"""STEP's parameter count, and head checkpoints: round trip and every start-up error."""

import pickle
from dataclasses import replace

import pytest
import torch
from node_helpers import LABELS, PAIRS, make_head, tiny_info

from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import CheckpointError, HeadMeta, load_head, read_meta, save_head
from step_ros.model.heads import PRESETS, build_head, count_trainable
from step_ros.stream.engine import EngineConfig, Head, StreamingEngine


def test_step_parameter_count_vit_b():
    d, t, classes = 768, 16, 30
    head = build_head(PRESETS['step'], dim=d, num_frames=t, num_patches=256,
                      num_classes=classes)
    expected = (t * d  # frame-wise temporal embeddings t_1..t_T
                + d  # the global CLS token
                + (3 * d * d + 3 * d)  # qkv projection of the 12-head self-attention
                + (d * d + d)  # its output projection
                + (classes * d + classes))  # the classifier
    assert expected == 2_398_494
    assert count_trainable(head) == expected, (
        f'STEP for D={d}, T={t}, {classes} classes has {count_trainable(head)} trainable '
        f'parameters, expected {expected}')
    assert head.attn.num_heads == 12


def test_round_trip_gives_identical_outputs(tmp_path):
    path = make_head(tmp_path / 'head.safetensors', num_frames=4, seed=3)
    module, meta = load_head(path)
    assert meta.labels == LABELS and meta.symmetric_pairs == PAIRS and meta.num_frames == 4
    assert meta.backbone == tiny_info().to_dict()
    torch.manual_seed(3)
    info = tiny_info()
    original = build_head(PRESETS['step'], dim=info.embed_dim, num_frames=4,
                          num_patches=info.num_patches, num_classes=len(LABELS))
    tokens = torch.randn(2, 4, 1 + info.num_patches, info.embed_dim)  # (B, T, 1 + N, D)
    with torch.inference_mode():
        assert torch.allclose(module(tokens), original.eval()(tokens), atol=1e-6)
    assert not any(p.requires_grad for p in module.parameters())
    assert read_meta(path) == meta


def test_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / 'head.safetensors'
    marker = tmp_path / 'executed'
    # Unpickling this would create `marker`: the loader must refuse before that.
    path.write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=2))
    with pytest.raises(CheckpointError, match='pickled') as info:
        load_head(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    torch.save({'weight': torch.zeros(2)}, tmp_path / 'zip.pt')  # zip-based torch format
    with pytest.raises(CheckpointError, match='pickled'):
        load_head(tmp_path / 'zip.pt')


def test_a_header_length_that_looks_like_a_pickle_opcode_still_loads(tmp_path):
    # safetensors files start with their header length (u64, little endian): when its low byte
    # is 0x80, the first byte equals pickle's PROTO opcode. Such a head must still load.
    module = build_head(PRESETS['step'], dim=96, num_frames=4, num_patches=64, num_classes=5)
    for pad in range(300):
        meta = HeadMeta(task='action', labels=LABELS, symmetric_pairs=PAIRS, head=PRESETS['step'],
                        num_frames=4, backbone=tiny_info().to_dict(), training={'note': 'x' * pad})
        path = save_head(tmp_path / f'h{pad}.safetensors', module, meta)
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail('no padding gave a header length whose low byte is 0x80')
    loaded, read = load_head(path)
    assert read == meta and read.training['note'] == 'x' * pad


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.mark.parametrize('keep', [4, 100, -100])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    good = make_head(tmp_path / 'good.safetensors', num_frames=4).read_bytes()
    path = tmp_path / 'cut.safetensors'
    path.write_bytes(good[:keep])
    with pytest.raises(CheckpointError) as info:
        load_head(path)
    message = str(info.value)
    assert str(path) in message and ('truncated' in message or 'not a readable' in message), \
        message


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match='no such head checkpoint'):
        load_head(tmp_path / 'absent.safetensors')


@pytest.fixture(scope='module')
def backbone():
    return FrozenBackbone.load('tiny')


def test_feature_dim_mismatch_is_refused(tmp_path, backbone):
    wrong = tiny_info().__class__(**{**tiny_info().to_dict(), 'embed_dim': 48})
    path = make_head(tmp_path / 'd48.safetensors', num_frames=4, info=wrong)
    module, meta = load_head(path)
    with pytest.raises(CheckpointError, match='embed_dim=48') as info:
        StreamingEngine(backbone, [Head(module, meta)], EngineConfig(num_frames=4))
    assert 'embed_dim=96' in str(info.value)


def test_frame_count_mismatch_is_refused(tmp_path, backbone):
    module, meta = load_head(make_head(tmp_path / 't4.safetensors', num_frames=4))
    with pytest.raises(CheckpointError, match='num_frames=8') as info:
        StreamingEngine(backbone, [Head(module, meta)], EngineConfig(num_frames=8))
    assert 'trained on 4 frames' in str(info.value)


def test_other_backbone_weights_are_refused(tmp_path, backbone):
    other = tiny_info().__class__(**{**tiny_info().to_dict(), 'fingerprint': '0123456789abcdef'})
    module, meta = load_head(make_head(tmp_path / 'fp.safetensors', num_frames=4, info=other))
    with pytest.raises(CheckpointError, match='fingerprint'):
        StreamingEngine(backbone, [Head(module, meta)], EngineConfig(num_frames=4))


def test_checkpoint_records_temperature_and_background(tmp_path):
    import dataclasses

    meta = read_meta(make_head(tmp_path / 'h.safetensors', num_frames=4))
    assert meta.temperature == 1.0  # written before calibration existed: no scaling
    calibrated = dataclasses.replace(meta, temperature=1.7, background=meta.labels[0])
    again = HeadMeta.from_json(calibrated.to_json())
    assert (again.temperature, again.background) == (1.7, meta.labels[0])
    for bad in (dict(temperature=0.0), dict(temperature=-1.0), dict(background='nothing')):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HeadMeta.from_json(dataclasses.replace(meta, **bad).to_json())


def test_step_output_is_the_bare_attention_block_computed_by_hand():
    """DESIGN 2: patches + t_i, one global CLS, one attention layer with no LayerNorm, no
    residual and no MLP, the mean of all output tokens, one Linear. Recomputed here from the
    head's own weights with plain matrix products."""
    dim, heads, t, n, classes = 8, 2, 3, 4, 3
    torch.manual_seed(0)
    head = build_head(replace(PRESETS['step'], num_heads=heads), dim=dim, num_frames=t,
                      num_patches=n, num_classes=classes).eval()
    with torch.no_grad():
        for p in head.parameters():  # non-trivial values everywhere (biases start at zero)
            p.copy_(torch.randn_like(p) * 0.5)
    tokens = torch.randn(2, t, 1 + n, dim)  # (B, T, 1 + N, D); the frame CLS is dropped
    patches = tokens[:, :, 1:] + head.temporal_embed[None, :, None, :]  # t_i on frame i
    x = torch.cat([head.cls_token.expand(2, -1, -1), patches.reshape(2, t * n, dim)], dim=1)
    qkv = x @ head.attn.qkv.weight.T + head.attn.qkv.bias  # (B, L, 3D)
    q, k, v = qkv.split(dim, dim=-1)
    width = dim // heads
    outputs = []
    for h in range(heads):
        part = slice(h * width, (h + 1) * width)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / width ** 0.5  # (B, L, L)
        outputs.append(scores.softmax(dim=-1) @ v[..., part])
    attended = torch.cat(outputs, dim=-1) @ head.attn.proj.weight.T + head.attn.proj.bias
    expected = attended.mean(dim=1) @ head.fc.weight.T + head.fc.bias  # (B, C)
    with torch.no_grad():
        got = head(tokens)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    # The per-frame CLS tokens play no part: changing them changes nothing.
    other = tokens.clone()
    other[:, :, 0] += 10.0
    with torch.no_grad():
        assert torch.allclose(head(other), got, atol=1e-5)
