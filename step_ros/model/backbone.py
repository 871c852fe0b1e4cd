"""The frozen image foundation model: local Hugging Face weights or a seeded tiny model.

One wrapper holds the frozen contract: eval mode, no gradients, inference mode, the precision
chosen at load time, and preprocessing (centre crop, resize, normalise) on the inference device.
Nothing is ever downloaded: weights come from a local directory, are built from a seed, or
(EfficientNet-Lite0) come from an installed, sha256-checked weights package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from step_ros.model import efficientnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALISATION = {'dinov2': (IMAGENET_MEAN, IMAGENET_STD), 'clip': (CLIP_MEAN, CLIP_STD),
                 'efficientnet_lite': (efficientnet.MEAN, efficientnet.STD)}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
PREPROCESS_CHUNK = 16  # frames converted to float at a time
ROW_STRIP = 64  # rows of a large frame converted to float at a time

# Built-in tiny backbones with seeded random weights: real transformers architectures at a size
# that runs in milliseconds on a CPU, for tests, the demo and the synthetic benchmark.
TINY_SEED = 20240917
TINY = {
    'tiny': ('dinov2', dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=192, image_size=112, patch_size=14)),
    'tiny-clip': ('clip', dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=192, image_size=112, patch_size=16)),
}


# Backbones selected by name rather than by a directory.
BUILTIN = (*TINY, efficientnet.NAME)


class BackboneError(RuntimeError):
    """A backbone cannot be loaded as configured; the message says what to do."""


@dataclass(frozen=True)
class BackboneInfo:
    """What a head checkpoint records about the features it was trained on."""

    id: str  # 'tiny', 'tiny-clip', 'efficientnet_lite0' or '<model_type>:<directory name>'
    family: str  # dinov2 | clip | efficientnet_lite: decides the normalisation
    embed_dim: int
    patch_size: int
    image_size: int
    fingerprint: str  # digest of the weights: a head only fits features of the same weights

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return dict(id=self.id, family=self.family, embed_dim=self.embed_dim,
                    patch_size=self.patch_size, image_size=self.image_size,
                    fingerprint=self.fingerprint)


def resolve_device(device: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; errors say what is missing."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise BackboneError(f"device={device!r}: not a device ('auto', 'cpu', 'cuda', "
                            f"'cuda:N')") from exc
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise BackboneError(f'device={device!r}: CUDA is not available here (torch '
                            f"{torch.__version__}); use device 'auto' or 'cpu'")
    if resolved.type not in ('cpu', 'cuda'):
        raise BackboneError(f"device={device!r}: only 'cpu' and 'cuda' are supported")
    return resolved


def _fingerprint(model: nn.Module) -> str:
    """Cheap, stable digest of the weights: shapes plus the first values of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        head = tensor.detach().reshape(-1)[:256].to('cpu', torch.float32).numpy()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(np.round(head, 5).tobytes())
    return digest.hexdigest()[:16]


def _build_tiny(name: str) -> tuple[nn.Module, str]:
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    family, kwargs = TINY[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        if family == 'dinov2':
            model = Dinov2Model(Dinov2Config(**kwargs))
        else:
            model = CLIPVisionModel(CLIPVisionConfig(**kwargs))
    return model, family


def _load_directory(path: Path) -> tuple[nn.Module, str]:
    from transformers import CLIPVisionModel, Dinov2Model, Dinov2WithRegistersModel

    config_file = path / 'config.json'
    if not config_file.is_file():
        raise BackboneError(f'backbone.weights={str(path)!r}: no config.json there; expected a '
                            "Hugging Face model directory (config.json + model.safetensors) or "
                            "'tiny'")
    if not (path / 'model.safetensors').is_file():
        raise BackboneError(f'backbone.weights={str(path)!r}: no model.safetensors there '
                            '(pickled pytorch_model.bin is not loaded: convert it to safetensors)')
    model_type = json.loads(config_file.read_text()).get('model_type', '')
    classes = {'dinov2': (Dinov2Model, 'dinov2'),
               'dinov2_with_registers': (Dinov2WithRegistersModel, 'dinov2'),
               'clip_vision_model': (CLIPVisionModel, 'clip'),
               'clip': (CLIPVisionModel, 'clip')}
    if model_type not in classes:
        raise BackboneError(f'backbone.weights={str(path)!r}: model_type {model_type!r} is not '
                            f'supported; expected one of {sorted(classes)}')
    cls, family = classes[model_type]
    model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    return model, family


def _shrink(square: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, side, side) -> float in [0, 1] (B, 3, S, S), antialiased bilinear.

    The resize is separable: each strip of rows is converted to float and narrowed to S columns
    on its own, then the (side, S) result is resized in height. The float copies are therefore
    strips and a side x S image, never the full frame (a 4K frame in float is 100 MB).
    """
    narrow = torch.cat([
        F.interpolate(strip.float().div_(255.0), size=(strip.shape[2], size), mode='bilinear',
                      antialias=True, align_corners=False)
        for strip in square.split(ROW_STRIP, dim=2)], dim=2)  # (B, 3, side, S)
    return F.interpolate(narrow, size=(size, size), mode='bilinear', antialias=True,
                         align_corners=False)  # (B, 3, S, S)


class FrozenBackbone(nn.Module):
    """uint8 RGB frames (B, H, W, 3) -> tokens (B, 1 + N, D): CLS, then patches (no registers)."""

    def __init__(self, *, model: nn.Module, info: BackboneInfo, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.info = info
        self.device = device
        self.dtype = dtype
        config = model.config
        self.num_registers = int(getattr(config, 'num_register_tokens', 0) or 0)
        mean, std = NORMALISATION[info.family]
        self.register_buffer('mean', torch.tensor(mean, device=device).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(std, device=device).view(1, 3, 1, 1))
        self._staging: torch.Tensor | None = None  # pinned host buffer for CUDA uploads
        self._uploaded: torch.cuda.Event | None = None

    @classmethod
    def load(cls, weights: str, *, image_size: int = 0, device: str = 'cpu',
             precision: str = 'fp32') -> FrozenBackbone:
        """Load 'tiny' / 'tiny-clip' / 'efficientnet_lite0' or a local Hugging Face
        directory, frozen."""
        if precision not in DTYPES:
            raise BackboneError(f'precision={precision!r}: expected one of {sorted(DTYPES)}')
        torch_device = resolve_device(device)
        if weights in TINY:
            model, family = _build_tiny(weights)
        elif weights == efficientnet.NAME:
            try:
                model, family = efficientnet.build(), 'efficientnet_lite'
            except efficientnet.WeightsError as exc:
                raise BackboneError(f'backbone.weights={weights!r}: {exc}') from exc
        else:
            model, family = _load_directory(Path(weights).expanduser())
        config = model.config
        patch = int(config.patch_size)
        size = image_size or int(config.image_size)
        if size <= 0 or size % patch:
            raise BackboneError(f'backbone.image_size={image_size}: must be a positive multiple '
                                f'of the patch size {patch}')
        if family == 'clip' and size != int(config.image_size):
            # CLIP's position embeddings are fixed to its training resolution.
            raise BackboneError(f'backbone.image_size={image_size}: this CLIP model only takes '
                                f'{config.image_size} px')
        if weights in BUILTIN:
            backbone_id = weights
        else:
            backbone_id = f'{config.model_type}:{Path(weights).name}'
        info = BackboneInfo(id=backbone_id, family=family, embed_dim=int(config.hidden_size),
                            patch_size=patch, image_size=size, fingerprint=_fingerprint(model))
        return cls(model=model, info=info, device=torch_device, dtype=DTYPES[precision])

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.info.num_patches

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) on the device -> normalised pixels (B, 3, S, S) in model dtype."""
        if frames.shape[0] > PREPROCESS_CHUNK:
            # Bound the number of frames in flight through preprocessing.
            return torch.cat([self.preprocess(c) for c in frames.split(PREPROCESS_CHUNK)])
        _, h, w, _ = frames.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = frames[:, top:top + side, left:left + side]  # centre crop, still uint8
        x = square.permute(0, 3, 1, 2)  # (B, 3, side, side) uint8
        size = self.info.image_size
        if side <= size:
            x = x.float().div_(255.0)
            if side != size:
                x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True,
                                  align_corners=False)
        else:
            x = _shrink(x, size)
        return ((x - self.mean) / self.std).to(self.dtype)  # (B, 3, S, S)

    def forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) -> tokens (B, 1 + N, D)."""
        with torch.inference_mode():
            if self.info.family == 'efficientnet_lite':
                return self.model.forward_tokens(pixels)  # (B, 1 + N, D): mean, then cells
            if self.info.family == 'dinov2':
                hidden = self.model(pixel_values=pixels).last_hidden_state
            else:
                hidden = self.model(pixel_values=pixels,
                                    interpolate_pos_encoding=False).last_hidden_state
            if self.num_registers:
                # Dinov2WithRegisters: [CLS, registers..., patches...] -> [CLS, patches...]
                hidden = torch.cat([hidden[:, :1], hidden[:, 1 + self.num_registers:]], dim=1)
            return hidden  # (B, 1 + N, D)

    def to_device(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Host frames (B, H, W, 3) uint8 -> the inference device, without a blocking copy."""
        tensor = torch.as_tensor(frames)
        if tensor.device == self.device:
            return tensor
        if self.device.type != 'cuda':
            return tensor.to(self.device)
        # Pinning memory per frame costs more than the copy: reuse one pinned staging buffer,
        # waiting only if the previous asynchronous upload from it is still in flight.
        if self._staging is None or self._staging.shape != tensor.shape:
            self._staging = torch.empty(tensor.shape, dtype=torch.uint8, pin_memory=True)
            self._uploaded = torch.cuda.Event()
        else:
            self._uploaded.synchronize()
        self._staging.copy_(tensor)
        on_device = self._staging.to(self.device, non_blocking=True)
        self._uploaded.record()
        return on_device

    def forward(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3), host or device -> tokens (B, 1 + N, D) on the device."""
        with torch.inference_mode():
            return self.forward_pixels(self.preprocess(self.to_device(frames)))
