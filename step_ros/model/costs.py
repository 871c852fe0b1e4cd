"""Counted cost of every compared method: trainable parameters and GFLOPs (paper Table I).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (a multiply-add counts 2), never
timed. Two figures per method:

- per clip: all T frames through the backbone, then the head;
- per streamed window: what a node pays for each new prediction. Frozen-backbone heads and the
  image PEFT methods (VPT, AdaptFormer) encode each frame independently, so a node encodes only
  the newest frame and reuses the other T - 1; ST-Adapter mixes the frames inside the backbone,
  so every window re-encodes all T frames.

`vitb14_costs` counts the same methods at the ViT-B/14 shape (DINOv2-B, 224 px) on the meta
device: shapes only, no weights, no training, no download.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from step_ros.model.heads import HeadConfig, build_head
from step_ros.model.peft import PeftConfig, PeftModel


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The CPU flash-attention kernel has no entry in FlopCounterMode's table: count it like the GPU
# kernels (QK^T and AV matmuls), or attention would be missing from the CPU numbers.
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                 _cpu_sdpa_flops}


def count_gflops(module, example: torch.Tensor) -> float:
    """GFLOPs of one forward pass of a module or callable (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    with counter, torch.no_grad():
        module(example)
    return counter.get_total_flops() / 1e9


@dataclass(frozen=True)
class Cost:
    params: int  # trainable parameters
    gflops_clip: float  # T frames through the backbone + head
    gflops_stream: float  # one new prediction of a streaming node


def head_cost(head: nn.Module, *, frame_gflops: float, num_frames: int,
              example: torch.Tensor) -> Cost:
    """A head over the frozen backbone's tokens `example` (1, T, 1+N, D)."""
    gflops = count_gflops(head, example)
    params = sum(p.numel() for p in head.parameters())  # all of a head's weights are trained
    return Cost(params, num_frames * frame_gflops + gflops, frame_gflops + gflops)


def peft_cost(model: PeftModel, *, example: torch.Tensor) -> Cost:
    """A PEFT model over pixels `example` (1, T, 3, S, S)."""
    t = example.shape[1]
    backbone = count_gflops(model.forward_features, example)
    tokens = model.forward_features(example).float()
    head = count_gflops(model.head, tokens)
    per_frame = model.config.method != 'st_adapter'
    stream = backbone / t + head if per_frame else backbone + head
    return Cost(model.trainable(), backbone + head, stream)


VITB14 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072, image_size=224, patch_size=14)


def vitb14_costs(*, heads: dict[str, HeadConfig], peft: dict[str, PeftConfig],
                 num_frames: int = 16, num_classes: int = 10) -> tuple[float, dict[str, Cost]]:
    """(backbone GFLOPs per frame, {method: Cost}) at the DINOv2 ViT-B/14 shape, 224 px."""
    from transformers import Dinov2Config, Dinov2Model

    side, dim, patches = VITB14['image_size'], VITB14['hidden_size'], (224 // 14) ** 2
    with torch.device('meta'):
        model = Dinov2Model(Dinov2Config(**VITB14)).eval().requires_grad_(False)
        frame = count_gflops(model, torch.zeros(1, 3, side, side))
        tokens = torch.zeros(1, num_frames, 1 + patches, dim)
        pixels = torch.zeros(1, num_frames, 3, side, side)
        costs = {}
        for name, config in heads.items():
            head = build_head(replace(config, num_heads=12), dim=dim, num_frames=num_frames,
                              num_patches=patches, num_classes=num_classes)
            costs[name] = head_cost(head, frame_gflops=frame, num_frames=num_frames,
                                    example=tokens)
        for name, config in peft.items():
            hooked = PeftModel(model=model, config=config, num_frames=num_frames,
                               num_classes=num_classes, num_heads=12)
            costs[name] = peft_cost(hooked, example=pixels)
    return frame, costs
