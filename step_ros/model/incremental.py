"""The STEP head computed incrementally over a stream, with the same result as the whole head.

The Q/K/V projections are linear in (token + temporal embedding): W (x + t_i) + b =
(W x + b) + W t_i. So each frame's projections W x + b are computed once, when the frame arrives,
and kept in the stream's ring; the projected embedding W t_i of the frame's position in the window
is added per prediction (the ring rotates: a frame's position changes, its projections do not).
The mean pool commutes with the output projection, so the attention outputs are averaged over the
pooled queries first and projected once. What a prediction still computes is the attention of all
queries against all keys: through the fused scaled_dot_product_attention kernel, or on a CPU with
wide heads as the queries' mean of the attention weights times V (pooled_attention), which
skips the per-query product with V.

Attention and the mean pool are blind to the order of the tokens, so the ring is used in its
storage order; only the embedding rows follow the positions (oldest frame = position 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from step_ros.model.heads import StepHead


def exact(module: torch.nn.Module) -> bool:
    """Whether `module` is a head that IncrementalStep computes exactly (else: run it whole).

    STEP with bare attention (no LayerNorm, skip or MLP) and no per-frame CLS tokens, whatever
    its temporal embedding (frame- or token-wise, any kind), global CLS and pooling.
    """
    if type(module) is not StepHead:
        return False
    config = module.config
    return config.kind == 'step' and config.block == 'bare' and not config.frame_cls


# On a CPU, from this head width on, the mean over queries is taken of the attention weights
# before they meet V (pooled_attention); below it the fused kernel is faster (bench
# --incremental-head: d = 160 of EfficientNet-Lite0 gains, d = 64 of ViT-B/14 loses). GPUs keep
# the fused kernel, which never writes the weights to memory.
POOLED_SCORES_HEAD_DIM = 128
QUERY_CHUNK = 64  # queries per block of scores (64 x L x H floats in flight)


def pooled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """mean over queries of softmax(q k^T / sqrt(d)) v, as (mean of the weights) v: (R, H, Lq,
    d), (R, H, L, d) x 2 -> (R, H, d). The weights times V is one row per head instead of Lq."""
    scale = q.shape[-1] ** -0.5
    keys = k.transpose(-1, -2)
    # Summed over hundreds of queries: in float32 whatever the model's precision.
    weights = q.new_zeros(q.shape[:2] + (k.shape[2],), dtype=torch.float32)  # (R, H, L)
    for i in range(0, q.shape[2], QUERY_CHUNK):
        scores = torch.matmul(q[:, :, i:i + QUERY_CHUNK], keys).mul_(scale)
        weights += scores.softmax(-1, dtype=torch.float32).sum(dim=2)
    weights /= q.shape[2]
    return torch.matmul(weights.to(v.dtype).unsqueeze(2), v).squeeze(2)


def _add_rolled(projected: torch.Tensor, table: torch.Tensor, oldest: int,
                out: torch.Tensor) -> None:
    """out = projected + the table's rows by position: slot s holds the frame at position
    (s - oldest) mod T. Two slices, no rolled copy of the table."""
    t = table.shape[0]
    torch.add(projected[oldest:], table[:t - oldest], out=out[oldest:])
    if oldest:
        torch.add(projected[:oldest], table[t - oldest:], out=out[:oldest])


class IncrementalStep:
    """Per-frame projections and per-window attention of one StepHead (see `exact`).

    The projected temporal embeddings and global CLS token are computed from the module's weights
    on first use and again whenever those weights change in place.
    """

    def __init__(self, module: StepHead) -> None:
        if not exact(module):
            raise ValueError(f'head config {module.config}: not computable incrementally '
                             '(needs kind=step, block=bare, frame_cls=false)')
        self.module = module
        self.num_heads = module.attn.num_heads
        self.num_frames = module.num_frames
        self.num_patches = module.num_patches
        self._key: tuple | None = None
        self._cls: torch.Tensor | None = None  # (1, 3D): W cls + b
        self._table: torch.Tensor | None = None  # (T, 1 or N, 3D): W t per position
        self._reversed: torch.Tensor | None = None  # the same, last position first

    @property
    def dtype(self) -> torch.dtype:
        return self.module.attn.qkv.weight.dtype

    def _weights(self) -> list[torch.Tensor]:
        m = self.module
        return [t for t in (m.attn.qkv.weight, m.attn.qkv.bias,
                            getattr(m, 'temporal_embed', None), getattr(m, 'cls_token', None))
                if t is not None]

    def _refresh(self) -> None:
        weights = self._weights()
        key = tuple((id(t), t._version, t.device, t.dtype) for t in weights)
        if key == self._key:
            return
        m = self.module
        weight, bias = m.attn.qkv.weight, m.attn.qkv.bias
        with torch.inference_mode():
            table = m._temporal()  # (T or T*N, D) or None
            self._table = None if table is None else \
                F.linear(table, weight).view(self.num_frames, -1, weight.shape[0])
            self._reversed = None if table is None else self._table.flip(0)
            self._cls = F.linear(m.cls_token[0], weight, bias) \
                if m.config.global_cls else None  # (1, 3D)
        self._key = key

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frame tokens (B, 1 + N, D) -> patch projections W x + b (B, N, 3D), once per frame."""
        qkv = self.module.attn.qkv
        with torch.inference_mode():
            return F.linear(tokens[:, 1:].to(qkv.weight.dtype), qkv.weight, qkv.bias)

    def predict(self, rings: list[tuple[torch.Tensor, int]], *, reverse: bool = False
                ) -> torch.Tensor:
        """Logits (B, C) of full rings; with `reverse`, (2B, C): then the reversed windows.

        `rings` holds per stream its projections (T, N, 3D) in storage order and the slot of the
        oldest frame (the ring's next write position), as in FeatureRing.
        """
        self._refresh()
        m = self.module
        config = m.config
        t, n, width = rings[0][0].shape  # width = 3D
        dim = width // 3
        h = self.num_heads
        batch = len(rings)
        rows = 2 * batch if reverse else batch
        offset = 1 if config.global_cls else 0
        with torch.inference_mode():
            x = torch.empty(rows, offset + t * n, width, device=rings[0][0].device,
                            dtype=rings[0][0].dtype)  # (rows, L, 3D)
            if offset:
                x[:, 0] = self._cls
            body = x[:, offset:].view(rows, t, n, width)  # (rows, T, N, 3D)
            table = self._table
            for b, (projected, oldest) in enumerate(rings):
                if table is None:
                    body[b].copy_(projected)
                    if reverse:
                        body[batch + b].copy_(projected)
                    continue
                _add_rolled(projected, table, oldest, body[b])
                if reverse:  # position p becomes T - 1 - p
                    _add_rolled(projected, self._reversed, oldest, body[batch + b])
            q, k, v = x.view(rows, -1, 3, h, dim // h).permute(2, 0, 3, 1, 4)  # (rows, H, L, d)
            if config.pool == 'cls':
                q = q[:, :, :1]  # the global CLS query alone
            elif config.pool == 'patches' and config.global_cls:
                q = q[:, :, 1:]
            if q.device.type == 'cpu' and q.shape[2] > 1 and dim // h >= POOLED_SCORES_HEAD_DIM:
                pooled = pooled_attention(q, k, v)  # (rows, H, d)
            else:
                pooled = F.scaled_dot_product_attention(q, k, v).mean(dim=2)
            # mean over queries, heads concatenated
            return m.fc(m.attn.proj(pooled.reshape(rows, dim)))  # (rows, C)
