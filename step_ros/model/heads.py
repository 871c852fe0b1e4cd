"""STEP heads and the probing baselines, all over cached frozen-backbone tokens.

Every head takes the tokens of a window of T frames, shape (B, T, 1 + N, D) where index 0 of the
token axis is the frame's CLS token and 1..N are its patch tokens, and returns logits (B, C).

One `HeadConfig` expresses STEP, its ablations and the baselines of the paper (Ponbagavathi &
Roitberg, "Self-attentive Temporal Embedding Probing"); `PRESETS` names the rows of its tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ('step', 'linear', 'attentive')
TEMPORAL = ('learnable', 'sinusoidal', 'hybrid', 'none')
GRANULARITY = ('frame', 'token')
BLOCKS = ('bare', 'ln_skip', 'full')
POOLS = ('all', 'cls', 'patches')


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of one head; stored in checkpoints and rebuilt from them."""

    kind: str = 'step'  # step (self-attention over tokens) | linear | attentive
    num_heads: int = 12  # attention heads (step, attentive)
    temporal: str = 'learnable'  # temporal embedding added to patch tokens
    granularity: str = 'frame'  # frame: one embedding per frame; token: one per (frame, patch)
    global_cls: bool = True  # prepend one learnable global CLS token
    frame_cls: bool = False  # keep the backbone's per-frame CLS tokens in the sequence
    block: str = 'bare'  # bare: attention only | ln_skip: x + attn(LN x) | full: + MLP block
    pool: str = 'all'  # average-pool all output tokens, the CLS token only, or patches only
    mlp_ratio: float = 4.0  # hidden width of the MLP of a full block

    def validate(self, *, dim: int) -> None:
        """Raise ValueError naming the field and value that cannot work."""
        choices = {'kind': KINDS, 'temporal': TEMPORAL, 'granularity': GRANULARITY,
                   'block': BLOCKS, 'pool': POOLS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f'head.{name}={value!r}: expected one of {allowed}')
        if self.num_heads < 1 or dim % self.num_heads:
            raise ValueError(f'head.num_heads={self.num_heads}: must divide the feature '
                             f'dimension {dim}')
        if not self.mlp_ratio > 0:
            raise ValueError(f'head.mlp_ratio={self.mlp_ratio}: must be > 0')
        if self.kind == 'step' and self.pool == 'cls' and not self.global_cls:
            raise ValueError("head.pool='cls' needs head.global_cls=true")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown head config keys {unknown}; known: {sorted(known)}')
        for f in fields(cls):
            if f.name in values and not _of_type(values[f.name], type(f.default)):
                raise ValueError(f'head.{f.name}={values[f.name]!r}: expected '
                                 f'{type(f.default).__name__}')
        return cls(**values)


def _of_type(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_STEP = HeadConfig()
PRESETS: dict[str, HeadConfig] = {
    # The method: frame-wise learnable temporal embeddings, one global CLS token, bare attention.
    'step': _STEP,
    # Baselines (paper Table I/II).
    'linear': HeadConfig(kind='linear'),
    'attentive': HeadConfig(kind='attentive'),
    'sa_probe': replace(_STEP, temporal='none', frame_cls=True, block='full'),
    # Ablations of STEP (paper Tables IV-VII).
    'step_no_cls': replace(_STEP, global_cls=False),
    'step_full_block': replace(_STEP, block='full'),
    'step_ln_skip': replace(_STEP, block='ln_skip'),
    'step_sinusoidal': replace(_STEP, temporal='sinusoidal'),
    'step_hybrid': replace(_STEP, temporal='hybrid'),
    'step_token_wise': replace(_STEP, granularity='token'),
    'step_pool_cls': replace(_STEP, pool='cls'),
    'step_pool_patches': replace(_STEP, pool='patches'),
}


def sinusoidal_embedding(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position embedding, shape (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention over a token sequence, through fused SDPA kernels.

    Parameters match nn.MultiheadAttention (qkv + output projection), but the attention matrix of
    4097 tokens is never materialised: scaled_dot_product_attention picks flash / memory-efficient
    kernels on GPU and a blocked kernel on CPU.
    """

    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, D/H)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, D/H)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))  # (B, L, D)


class CrossAttention(nn.Module):
    """A learned query attends to all tokens (the attentive probe's pooling)."""

    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        h = self.num_heads
        q = self.q(self.query).reshape(1, 1, h, dim // h).transpose(1, 2).expand(b, -1, -1, -1)
        kv = self.kv(x).reshape(b, length, 2, h, dim // h)
        k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x (B, H, L, D/H)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, D/H)
        return self.proj(out.transpose(1, 2).reshape(b, dim))  # (B, D)


class StepHead(nn.Module):
    """STEP and its self-attention relatives (ablations, the self-attention probe)."""

    def __init__(self, *, config: HeadConfig, dim: int, num_frames: int, num_patches: int,
                 num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.num_frames = num_frames
        self.num_patches = num_patches
        rows = num_frames if config.granularity == 'frame' else num_frames * num_patches
        if config.temporal in ('learnable', 'hybrid'):
            self.temporal_embed = nn.Parameter(torch.zeros(rows, dim))
            nn.init.trunc_normal_(self.temporal_embed, std=0.02)
        if config.temporal in ('sinusoidal', 'hybrid'):
            self.register_buffer('temporal_fixed', sinusoidal_embedding(rows, dim),
                                 persistent=False)
        if config.global_cls:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if config.block != 'bare':
            self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim=dim, num_heads=config.num_heads)
        if config.block == 'full':
            hidden = int(dim * config.mlp_ratio)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.fc = nn.Linear(dim, num_classes)

    def _temporal(self) -> torch.Tensor | None:
        table = None
        if self.config.temporal in ('learnable', 'hybrid'):
            table = self.temporal_embed
        if self.config.temporal in ('sinusoidal', 'hybrid'):
            fixed = self.temporal_fixed.to(self.fc.weight.dtype)
            table = fixed if table is None else table + fixed
        return table

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, 1+N, D) -> attended sequence (B, L, D)."""
        b, t, _, dim = tokens.shape
        patches = tokens[:, :, 1:]  # (B, T, N, D)
        table = self._temporal()
        if table is not None:
            if self.config.granularity == 'frame':
                patches = patches + table[None, :, None, :]  # every patch of frame i gets t_i
            else:
                patches = patches + table.view(1, t, -1, dim)
        if self.config.frame_cls:
            patches = torch.cat([tokens[:, :, :1], patches], dim=2)  # (B, T, 1+N, D)
        x = patches.reshape(b, -1, dim)  # (B, T*N', D)
        if self.config.global_cls:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # (B, 1+T*N', D)
        if self.config.block == 'bare':
            return self.attn(x)
        x = x + self.attn(self.norm1(x))
        if self.config.block == 'full':
            x = x + self.mlp(self.norm2(x))
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Attended sequence (B, L, D) -> logits (B, C)."""
        if self.config.pool == 'cls':
            pooled = x[:, 0]
        elif self.config.pool == 'patches' and self.config.global_cls:
            pooled = x[:, 1:].mean(dim=1)
        else:
            pooled = x.mean(dim=1)  # (B, D): CLS and patches together ("combined")
        return self.fc(pooled)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(tokens))


class LinearProbe(nn.Module):
    """Mean of the per-frame CLS tokens, then one Linear: blind to frame order by construction."""

    def __init__(self, *, config: HeadConfig, dim: int, num_frames: int, num_patches: int,
                 num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens[:, :, 0].mean(dim=1))  # (B, T, D) -> (B, D) -> (B, C)


class AttentiveProbe(nn.Module):
    """A learned query cross-attends all tokens of all frames (no temporal embedding)."""

    def __init__(self, *, config: HeadConfig, dim: int, num_frames: int, num_patches: int,
                 num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.pool = CrossAttention(dim=dim, num_heads=config.num_heads)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, _, dim = tokens.shape
        pooled = self.pool(tokens.reshape(b, -1, dim))  # (B, D)
        return self.fc(self.norm(pooled))


_CLASSES = {'step': StepHead, 'linear': LinearProbe, 'attentive': AttentiveProbe}


def build_head(config: HeadConfig, *, dim: int, num_frames: int, num_patches: int,
               num_classes: int) -> nn.Module:
    """Build the head module that `config` describes."""
    config.validate(dim=dim)
    if num_frames < 1 or num_patches < 1 or num_classes < 2:
        raise ValueError(f'need num_frames >= 1, num_patches >= 1, num_classes >= 2; got '
                         f'{num_frames}, {num_patches}, {num_classes}')
    return _CLASSES[config.kind](config=config, dim=dim, num_frames=num_frames,
                                 num_patches=num_patches, num_classes=num_classes)


def resolve_head(name_or_config: str | HeadConfig) -> HeadConfig:
    """A preset name (see PRESETS) or a HeadConfig -> HeadConfig."""
    if isinstance(name_or_config, HeadConfig):
        return name_or_config
    if name_or_config not in PRESETS:
        raise ValueError(f'unknown head {name_or_config!r}; choose from {sorted(PRESETS)}')
    return PRESETS[name_or_config]


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
