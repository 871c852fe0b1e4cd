"""Several cameras on one backbone: the frames of K streams go through ONE batched pass.

The engine serves one stream; this is the minimal batched entry point the camera benchmark needs:
each row of the batch goes into its own stream's FeatureRing, then every head runs once over
the K windows stacked. Same host sync as the engine: one per step, when the scores come back.
"""

from __future__ import annotations

import numpy as np
import torch

from step_ros.backbone import FrozenBackbone
from step_ros.engine import FeatureRing, Head


def make_rings(backbone: FrozenBackbone, *, streams: int, num_frames: int) -> list[FeatureRing]:
    return [FeatureRing(capacity=num_frames, tokens=backbone.tokens_per_frame,
                        dim=backbone.info.embed_dim, device=backbone.device,
                        dtype=backbone.dtype) for _ in range(streams)]


def push_batch(backbone: FrozenBackbone, heads: list[Head], rings: list[FeatureRing],
               frames: np.ndarray, stamp_ns: int) -> list[np.ndarray] | None:
    """Frames (K, H, W, 3) uint8, one per stream -> per head, probabilities (K, C) once full."""
    if len(frames) != len(rings):
        raise ValueError(f'{len(frames)} frames for {len(rings)} streams')
    pixels = backbone.preprocess(backbone.to_device(frames))  # (K, 3, S, S)
    tokens = backbone.forward_pixels(pixels)  # (K, 1 + N, D)
    for ring, row in zip(rings, tokens):
        ring.append(row, stamp_ns)
    if not all(ring.full for ring in rings):
        return None
    windows = torch.stack([ring.window() for ring in rings])  # (K, T, 1 + N, D)
    with torch.inference_mode():
        probs = [head.module(windows).float().softmax(dim=-1) for head in heads]  # (K, C) each
    return [p.cpu().numpy() for p in probs]
