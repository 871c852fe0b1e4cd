"""Several feature caches as one training set: `train --cache A --cache B`.

A clip cache (`extract --clips`) and a bag cache (`extract --bag`) hold windows of the same
shape when they were cut with the same backbone and T; concatenated, one head learns from both
(clean action clips and the node's own stream windows). The caches must agree on the label
list, the symmetric pairs, T, the backbone and the token shape (further tasks are kept where
every cache has them); otherwise `concat_caches`
raises one ValueError naming the first cache that differs and what differs.
"""

from __future__ import annotations

import numpy as np
import torch

from step_ros.data.features import FeatureCache


class ConcatTokens:
    """(windows, T, 1 + N, D) tokens of several caches, in order; indexing gathers them."""

    def __init__(self, parts: list) -> None:
        self.parts = parts  # tensors or views (bag_cache.WindowTokens): len, shape, [idx]
        sizes = torch.tensor([len(p) for p in parts])
        self.ends = torch.cumsum(sizes, 0)  # (P,) exclusive end of each part
        self.starts = self.ends - sizes
        dtype = parts[0].dtype
        for part in parts[1:]:
            dtype = torch.promote_types(dtype, part.dtype)
        self._dtype = dtype

    def __len__(self) -> int:
        return int(self.ends[-1])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.parts[0].shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def __getitem__(self, key) -> torch.Tensor:
        idx = torch.arange(len(self))[key]
        scalar = idx.ndim == 0
        idx = idx.reshape(-1)
        owner = torch.searchsorted(self.ends, idx, right=True)  # (B,) part of each index
        out = torch.empty((len(idx), *self.shape[1:]), dtype=self._dtype)
        for p in owner.unique().tolist():
            rows = (owner == p).nonzero().squeeze(1)
            out[rows] = self.parts[p][idx[rows] - self.starts[p]].to(self._dtype)
        return out[0] if scalar else out

    def float(self) -> torch.Tensor:
        return self[:].float()


def _differs(first: FeatureCache, other: FeatureCache) -> str | None:
    """What `other` does not share with `first` (None when they can be concatenated)."""
    if other.labels != first.labels:
        return f'labels {list(other.labels)}, expected {list(first.labels)}'
    if set(map(frozenset, other.symmetric_pairs)) != set(map(frozenset, first.symmetric_pairs)):
        return (f'symmetric pairs {[list(p) for p in other.symmetric_pairs]}, expected '
                f'{[list(p) for p in first.symmetric_pairs]}')
    if other.num_frames != first.num_frames:
        return f'T = {other.num_frames} frames, expected {first.num_frames}'
    if other.backbone != first.backbone:
        return f'backbone {other.backbone}, expected {first.backbone}'
    if tuple(other.tokens.shape[2:]) != tuple(first.tokens.shape[2:]):
        return (f'tokens of (1 + N, D) = {list(other.tokens.shape[2:])}, expected '
                f'{list(first.tokens.shape[2:])}')
    return None


def concat_caches(caches: list[FeatureCache]) -> FeatureCache:
    """One FeatureCache holding every window of `caches`, in order; ValueError if they differ.

    Its window_seconds is the median over all windows (each cache's own value for its windows);
    its path names every cache, joined by ' + '; it keeps the further tasks (clip list
    columns such as `object`) that every cache has.
    """
    if not caches:
        raise ValueError('no cache to concatenate')
    if len(caches) == 1:
        return caches[0]
    first = caches[0]
    for other in caches[1:]:
        problem = _differs(first, other)
        if problem:
            raise ValueError(f'--cache {other.path}: {problem} (as in {first.path}); caches '
                             'trained together need the same labels, T and backbone')
    switches = {c.switch_fraction for c in caches} - {None}
    if len(switches) > 1:
        rules = ', '.join(f'{c.path}: {c.switch_fraction}' for c in caches
                          if c.switch_fraction is not None)
        raise ValueError(f'the caches label straddling windows by different rules (switch '
                         f'fractions {rules}); extract them with one --straddle rule')
    common = [name for name in first.tasks or {} if all(name in (c.tasks or {}) for c in caches)]
    tasks = {name: [v for c in caches for v in c.tasks[name]] for name in common}
    windows = np.repeat([c.window_seconds for c in caches], [len(c.tokens) for c in caches])
    return FeatureCache(tokens=ConcatTokens([c.tokens for c in caches]),
                        targets=torch.cat([c.targets for c in caches]), labels=first.labels,
                        symmetric_pairs=first.symmetric_pairs, backbone=first.backbone,
                        num_frames=first.num_frames, window_seconds=float(np.median(windows)),
                        path=' + '.join(c.path for c in caches), tasks=tasks,
                        switch_fraction=switches.pop() if switches else None)
