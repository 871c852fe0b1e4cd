"""What the benchmarks run: a backbone, a head with random weights, the engine, camera frames.

Weights do not change the cost of a forward pass, so heads are random and 'vitb14-random' is a
DINOv2 ViT-B/14 of the real shape with random weights: the deployment's cost, no download.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from step_ros.model.backbone import DTYPES, BackboneInfo, FrozenBackbone, resolve_device
from step_ros.model.checkpoint import HeadMeta
from step_ros.model.heads import HeadConfig, build_head
from step_ros.stream.engine import EngineConfig, Head, StreamingEngine

VITB14_RANDOM = 'vitb14-random'
LABELS = tuple(f'action_{i}' for i in range(10))
PAIRS = (('action_0', 'action_1'), ('action_2', 'action_3'))
CAMERA_HW = (480, 640)
SEED = 0

_VITB_CACHE: dict[str, torch.nn.Module] = {}


def _vitb14_random() -> torch.nn.Module:
    """transformers' Dinov2Config defaults are ViT-B/14: hidden 768, 12 layers, 12 heads."""
    if 'model' not in _VITB_CACHE:
        from transformers import Dinov2Config, Dinov2Model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            _VITB_CACHE['model'] = Dinov2Model(Dinov2Config(image_size=224, patch_size=14))
    # FrozenBackbone moves its model in place: each precision gets its own copy.
    return copy.deepcopy(_VITB_CACHE['model'])


def load_backbone(name: str, *, device: str, precision: str, image_size: int = 0
                  ) -> FrozenBackbone:
    """'tiny' / 'tiny-clip' / 'efficientnet_lite0' / 'vitb14-random' / a local Hugging Face
    directory."""
    if name != VITB14_RANDOM:
        return FrozenBackbone.load(name, image_size=image_size, device=device,
                                   precision=precision)
    model = _vitb14_random()
    info = BackboneInfo(id=f'dinov2:{VITB14_RANDOM}', family='dinov2', embed_dim=768,
                        patch_size=14, image_size=image_size or 224,
                        fingerprint=f'random-seed{SEED}')
    return FrozenBackbone(model=model, info=info, device=resolve_device(device),
                          dtype=DTYPES[precision])


def attention_heads(dim: int) -> int:
    """The paper's 12 heads for D=768; the largest of 12, 8, 6, 4, 2, 1 dividing other widths."""
    return next(h for h in (12, 8, 6, 4, 2, 1) if dim % h == 0)


def make_head(backbone: FrozenBackbone, *, num_frames: int, kind: str = 'step') -> Head:
    """A STEP head with random weights that fits `backbone`, on its device and dtype."""
    info = backbone.info
    config = HeadConfig(kind=kind, num_heads=attention_heads(info.embed_dim))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = build_head(config, dim=info.embed_dim, num_frames=num_frames,
                            num_patches=info.num_patches, num_classes=len(LABELS))
    module = module.to(device=backbone.device, dtype=backbone.dtype).eval().requires_grad_(False)
    meta = HeadMeta(task='action', labels=LABELS, symmetric_pairs=PAIRS, head=config,
                    num_frames=num_frames, backbone=info.to_dict())
    return Head(module, meta)


def make_engine(backbone: FrozenBackbone, head: Head, *, num_frames: int,
                profile: bool = False) -> StreamingEngine:
    return StreamingEngine(backbone, [head], EngineConfig(num_frames=num_frames),
                           profile=profile)


@dataclass
class Frames:
    """A pool of camera frames (RGB 640x480) and stamps one sampling period apart."""

    pool: np.ndarray  # (P, H, W, 3) uint8
    period_ns: int

    @classmethod
    def make(cls, *, period_ns: int, count: int = 8) -> Frames:
        rng = np.random.default_rng(SEED)
        h, w = CAMERA_HW
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]  # (1, W, 1)
        frames = []
        for i in range(count):
            # A moving gradient with noise: compresses like a camera image, not like pure noise.
            base = (ramp + 8 * i + np.zeros((h, 1, 3), np.float32)) % 256  # (H, W, 3)
            noise = rng.normal(0, 12, size=(h, w, 3))
            frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        return cls(pool=np.stack(frames), period_ns=period_ns)

    def frame(self, i: int) -> np.ndarray:
        return self.pool[i % len(self.pool)]  # (H, W, 3)

    def batch(self, i: int, k: int) -> np.ndarray:
        index = [(i + j) % len(self.pool) for j in range(k)]
        return np.ascontiguousarray(self.pool[index])  # (K, H, W, 3)

    def stamp(self, i: int) -> int:
        """Every frame lands on the next sampling slot: each push is a sampled frame."""
        return (i + 1) * self.period_ns

    def jpeg(self) -> bytes:
        ok, data = cv2.imencode('.jpg', cv2.cvtColor(self.pool[0], cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError('cv2.imencode could not write a JPEG')
        return data.tobytes()
