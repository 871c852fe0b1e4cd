"""Parameter-efficient fine-tuning baselines over the same frozen transformers ViT.

The comparisons STEP is measured against (paper Tables I, II, IV): the backbone's weights stay
frozen, a few parameters are added inside it and trained together with a head, end to end
through the backbone (so its features cannot be cached):

- VPT-deep (Jia et al. 2022): P learnable prompt tokens after CLS in every layer; the outputs of
  one layer's prompts are replaced by the next layer's prompts and dropped at the end.
- AdaptFormer (Chen et al. 2022): a bottleneck adapter (down, ReLU, up) beside each block's MLP,
  on the MLP's (normalised) input, its output scaled and added to the MLP's.
- ST-Adapter (Pan et al. 2022): before each block's attention, x + up(dwconv_T(down(x))) on the
  patch tokens, a depthwise convolution over the T frames at every patch position: the only one
  here whose backbone features depend on the other frames, so it must re-encode all T frames for
  every window.

They are implemented with forward hooks on a private copy of the transformers model (Dinov2 /
CLIP encoder layers); `FrozenBackbone` and the node's path never see them. Every head is one of
`heads.PRESETS` ('linear': mean of the frame CLS tokens; 'step': STEP over the patch tokens).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from step_ros.model.heads import PRESETS, build_head, count_trainable

METHODS = ('vpt', 'adaptformer', 'st_adapter')


@dataclass(frozen=True)
class PeftConfig:
    """One PEFT row: the method, its sizes and the head on top."""

    method: str  # vpt | adaptformer | st_adapter
    head: str = 'linear'  # a heads.PRESETS name: linear | step
    prompts: int = 10  # VPT: prompt tokens per layer
    bottleneck_ratio: float = 1 / 12  # adapters: bottleneck width as a fraction of D
    scale: float = 0.1  # AdaptFormer: factor of the adapter's output
    kernel: int = 3  # ST-Adapter: temporal kernel (frames)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f'peft.method={self.method!r}: expected one of {METHODS}')
        if self.head not in PRESETS:
            raise ValueError(f'peft.head={self.head!r}: expected one of {sorted(PRESETS)}')
        if self.prompts < 1 or not 0 < self.bottleneck_ratio <= 4 or self.kernel % 2 == 0:
            raise ValueError(f'peft prompts={self.prompts}, bottleneck_ratio='
                             f'{self.bottleneck_ratio}, kernel={self.kernel}: need prompts >= 1, '
                             '0 < ratio <= 4 and an odd kernel')

    def to_dict(self) -> dict:
        return asdict(self)


_ST = PeftConfig(method='st_adapter', bottleneck_ratio=0.5)  # 384 for ViT-B, as in ST-Adapter
PEFT_PRESETS: dict[str, PeftConfig] = {
    'vpt_linear': PeftConfig(method='vpt'),
    'adaptformer_linear': PeftConfig(method='adaptformer'),  # bottleneck 64 for ViT-B
    'st_adapter_linear': _ST,
    'vpt_step': PeftConfig(method='vpt', head='step'),
    'adaptformer_step': PeftConfig(method='adaptformer', head='step'),
}


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a transformers Dinov2 / CLIP vision model."""
    encoder = getattr(model, 'encoder', None) or getattr(
        getattr(model, 'vision_model', None), 'encoder', None)
    if hasattr(encoder, 'layer'):
        return encoder.layer  # Dinov2Model, Dinov2WithRegistersModel
    if hasattr(encoder, 'layers'):
        return encoder.layers  # CLIPVisionModel
    raise ValueError(f'{type(model).__name__}: not a Dinov2 or CLIP vision model')


class Bottleneck(nn.Module):
    """down -> ReLU -> up, the up projection zero-initialised: it starts as a no-op."""

    def __init__(self, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x)))


class TemporalAdapter(nn.Module):
    """ST-Adapter: x + up(depthwise conv over T (down(x))) for the patch tokens of T frames."""

    def __init__(self, *, dim: int, hidden: int, kernel: int, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.up = nn.Linear(hidden, dim)
        # The block starts as the identity through the zero up projection. The temporal kernel
        # keeps torch's default (random) init: zero-initialised, as in ST-Adapter's code, it
        # stayed symmetric in time on the synthetic set (reversed accuracy == forward after 324
        # steps; docs/RESULTS.md), so the adapter never read order.
        for tensor in (self.up.weight, self.up.bias, self.conv.bias, self.down.bias):
            nn.init.zeros_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, n, dim = x.shape  # (B*T, n, D): patch tokens of every frame
        t = self.num_frames
        h = self.down(x).view(bt // t, t, n, -1)  # (B, T, n, h)
        b, _, _, hidden = h.shape
        h = h.permute(0, 2, 3, 1).reshape(b * n, hidden, t)  # (B*n, h, T)
        h = self.conv(h).view(b, n, hidden, t).permute(0, 3, 1, 2)  # (B, T, n, h)
        return x + self.up(h.reshape(bt, n, hidden))  # (B*T, n, D)


class PeftModel(nn.Module):
    """Pixels of a clip (B, T, 3, S, S) -> logits (B, C), through a hooked copy of the ViT."""

    def __init__(self, *, model: nn.Module, config: PeftConfig, num_frames: int,
                 num_classes: int, num_heads: int, copy_model: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.num_frames = num_frames
        self.model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
        mc = self.model.config
        dim, patch, size = int(mc.hidden_size), int(mc.patch_size), int(mc.image_size)
        self.num_registers = int(getattr(mc, 'num_register_tokens', 0) or 0)
        self.is_clip = mc.model_type.startswith('clip')
        layers = encoder_layers(self.model)
        hidden = max(1, round(dim * config.bottleneck_ratio))
        self._hooks = []
        if config.method == 'vpt':
            bound = math.sqrt(6.0 / float(3 * patch * patch + dim))  # VPT's uniform init
            self.prompts = nn.Parameter(torch.empty(len(layers), config.prompts, dim))
            nn.init.uniform_(self.prompts, -bound, bound)
            for i, layer in enumerate(layers):
                self._hooks.append(layer.register_forward_pre_hook(
                    self._prompt_hook(i), with_kwargs=True))
        elif config.method == 'adaptformer':
            self.adapters = nn.ModuleList(Bottleneck(dim=dim, hidden=hidden) for _ in layers)
            for layer, adapter in zip(layers, self.adapters):
                self._hooks.append(layer.mlp.register_forward_hook(self._mlp_hook(adapter)))
        else:
            self.adapters = nn.ModuleList(
                TemporalAdapter(dim=dim, hidden=hidden, kernel=config.kernel,
                                num_frames=num_frames) for _ in layers)
            for layer, adapter in zip(layers, self.adapters):
                self._hooks.append(layer.register_forward_pre_hook(
                    self._temporal_hook(adapter), with_kwargs=True))
        head_config = replace(PRESETS[config.head], num_heads=num_heads)
        self.head = build_head(head_config, dim=dim, num_frames=num_frames,
                               num_patches=(size // patch) ** 2, num_classes=num_classes)

    def train(self, mode: bool = True) -> PeftModel:
        super().train(mode)
        self.model.eval()  # the frozen backbone never leaves eval mode (no dropout, drop-path)
        return self

    # Hooks: each receives the layer's hidden states (B*T, L, D) and returns the changed ones.
    def _prompt_hook(self, index: int):
        def hook(module, args, kwargs):
            hidden, rest = (args[0], args[1:]) if args else (kwargs.pop('hidden_states'), ())
            prompts = self.prompts[index].to(hidden.dtype).expand(len(hidden), -1, -1)
            skip = 1 if index == 0 else 1 + self.config.prompts  # replace the last layer's
            hidden = torch.cat([hidden[:, :1], prompts, hidden[:, skip:]], dim=1)
            if args:
                return (hidden, *rest), kwargs
            return args, {**kwargs, 'hidden_states': hidden}
        return hook

    def _mlp_hook(self, adapter: Bottleneck):
        def hook(module, args, output):
            return output + self.config.scale * adapter(args[0])  # parallel to the MLP
        return hook

    def _temporal_hook(self, adapter: TemporalAdapter):
        first = 1 + self.num_registers  # CLS and registers pass through unchanged

        def hook(module, args, kwargs):
            hidden, rest = (args[0], args[1:]) if args else (kwargs.pop('hidden_states'), ())
            hidden = torch.cat([hidden[:, :first], adapter(hidden[:, first:])], dim=1)
            if args:
                return (hidden, *rest), kwargs
            return args, {**kwargs, 'hidden_states': hidden}
        return hook

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, T, 3, S, S) -> tokens (B, T, 1 + N, D), the frozen backbone's layout."""
        b, t = pixels.shape[:2]
        if t != self.num_frames:
            raise ValueError(f'clip of {t} frames; this model was built for T={self.num_frames}')
        x = pixels.flatten(0, 1)  # (B*T, 3, S, S)
        if self.is_clip:
            hidden = self.model(pixel_values=x, interpolate_pos_encoding=False).last_hidden_state
        else:
            hidden = self.model(pixel_values=x).last_hidden_state  # (B*T, 1 [+P] [+R] + N, D)
        drop = (self.config.prompts if self.config.method == 'vpt' else 0) + self.num_registers
        if drop:
            hidden = torch.cat([hidden[:, :1], hidden[:, 1 + drop:]], dim=1)
        return hidden.view(b, t, *hidden.shape[1:])  # (B, T, 1 + N, D)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(pixels).float())

    def trainable(self) -> int:
        return count_trainable(self)
