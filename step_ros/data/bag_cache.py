"""Reading a cache of `extract --bag` (see step_ros.data.bag_dataset for the layout): windows of T
per-frame tokens, gathered on indexing, with the header stamps and recording of each window.
`caches.load_cache` hands bag caches (OUT or OUT/<split>) to `load_cache`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from step_ros.data.features import DataError, FeatureCache
from step_ros.data.names import safe_name
from step_ros.model.checkpoint import validate_labels, validate_pairs

FRAMES_FORMAT = 'step_ros.bag_frames/1'
WINDOWS_FORMAT = 'step_ros.bag_windows/1'
INDEX = 'index.json'
NEWEST_FRACTION = 3 / 8  # of the T frames: 3 of 8 frames (0.75 s) into a new segment
# Where a head trained on a straddle rule's labels names a new segment: that fraction of its
# window back from the newest frame (the decision stage backdates event stamps by it). 'drop'
# keeps only windows inside one segment, which teach no switch point.
SWITCH_FRACTION = {'drop': None, 'majority': 0.5, 'newest': NEWEST_FRACTION}


class WindowTokens:
    """(windows, T, 1 + N, D) tokens as a view over per-frame tokens: indexing gathers them."""

    def __init__(self, frames: torch.Tensor, starts: torch.Tensor, num_frames: int) -> None:
        self.frames = frames  # (F, 1 + N, D)
        self.starts = starts  # (W,) int64 first frame of each window
        self.offsets = torch.arange(num_frames)
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.starts), self.num_frames, *self.frames.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.frames.dtype

    def __getitem__(self, key) -> torch.Tensor:
        starts = self.starts[key]
        return self.frames[starts[..., None] + self.offsets]  # (..., T, 1 + N, D)

    def float(self) -> torch.Tensor:
        return self[:].float()


@dataclass
class BagFeatureCache(FeatureCache):
    """A FeatureCache whose tokens are windows over per-frame tokens of recordings."""

    window_stamps: list[tuple[int, ...]] | None = None  # header stamps of each window's frames
    window_recordings: list[int] | None = None  # recording of each window (index order)
    recordings: list[dict] | None = None
    # Per chosen recording, every sampled frame: offset (of its first frame in tokens.frames),
    # stamps, runs, and segments ([start_ns, end_ns, label] of its timeline, in stamp time).
    streams: list[dict] | None = None


def load_cache(path: str | Path) -> BagFeatureCache:
    """OUT (every recording) or OUT/<split> (its recordings) of `extract_bags`."""
    try:
        return _load_cache(Path(path))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f'{path}: damaged bag cache index ({type(exc).__name__}: {exc}); '
                        'delete the cache directory and extract again') from exc


def _shard(path: Path) -> torch.Tensor:
    try:
        return load_file(str(path))['tokens']
    except Exception as exc:  # missing, truncated or foreign file: safetensors raises several
        raise DataError(f'{path}: unreadable token shard ({type(exc).__name__}: {exc}); delete '
                        'the cache directory and extract again') from exc


def _load_cache(path: Path) -> BagFeatureCache:
    index = json.loads((path / INDEX).read_text())
    split = None
    root = path
    if index.get('format') == WINDOWS_FORMAT:
        split = index['split']
        if index['root'] != '..':  # a split's view lies inside the cache it views
            raise DataError(f'{path / INDEX}: root {str(index["root"])[:120]!r}, expected '
                            "'..'; delete the cache directory and extract again")
        root = (path / index['root']).resolve()
        if not (root / INDEX).is_file():
            raise DataError(f'{path}: its recordings ({root / INDEX}) are missing')
        index = json.loads((root / INDEX).read_text())
    if index.get('format') != FRAMES_FORMAT:
        raise DataError(f'{root / INDEX}: format {index.get("format")!r}, expected '
                        f'{FRAMES_FORMAT!r}')
    unfinished = [r['bag'] for r in index['recordings'] if not r['done']]
    if unfinished:
        raise DataError(f'{root}: incomplete cache (not finished: {unfinished}); run extract '
                        'again to finish it')
    try:
        labels = validate_labels(index['labels'])
        pairs = validate_pairs(labels, index['symmetric_pairs'])
    except ValueError as exc:
        raise DataError(f'{root / INDEX}: {exc}; delete the cache directory and extract '
                        'again') from exc
    for rec in index['recordings']:  # every shard is a file inside the cache directory
        for shard in rec['shards']:
            safe_name(shard['file'], what=f'{root / INDEX}: shard file', error=DataError)
    num_frames = int(index['num_frames'])
    frames, starts, targets, stamps, owners, chosen = [], [], [], [], [], []
    streams = []
    offset = 0
    for number, rec in enumerate(index['recordings']):
        if split is not None and rec['split'] != split:
            continue
        chosen.append({k: rec[k] for k in ('bag', 'topic', 'labels', 'split', 'relative')})
        tokens = [_shard(root / s['file']) for s in rec['shards']]
        for shard, part in zip(rec['shards'], tokens):
            if part.ndim != 3 or len(part) != shard['count'] or (
                    frames and part.shape[1:] != frames[0].shape[1:]):
                raise DataError(f"{root / shard['file']}: tokens of shape {list(part.shape)}, "
                                f"expected ({shard['count']}, 1 + N, D) like the other shards")
            if not part.is_floating_point() or not bool(torch.isfinite(part).all()):
                raise DataError(f"{root / shard['file']}: tokens are not finite floats "
                                f'({part.dtype}); delete the cache directory and extract again')
        frames += tokens
        count = sum(len(t) for t in tokens)
        streams.append(dict(offset=offset, stamps=rec['stamps'], runs=rec['runs'],
                            segments=rec.get('segments')))
        for i, (start, label) in enumerate(rec['windows']):
            # A window is T frames of one run of this recording: never wrapped, never spilling
            # into the next recording or across a restart of the sampler.
            if not (type(start) is int and 0 <= start <= count - num_frames
                    and len(rec['stamps']) == len(rec['runs']) == count
                    and rec['runs'][start] == rec['runs'][start + num_frames - 1]):
                raise DataError(f'{root / INDEX}: recording {number} ({rec["bag"]}) window {i} '
                                f'starts at frame {start!r}, not a run of T={num_frames} of its '
                                f'{count} frames; delete the cache directory and extract again')
            starts.append(offset + start)
            targets.append(labels.index(label))
            stamps.append(tuple(rec['stamps'][start:start + num_frames]))
            owners.append(number)
        offset += count
    if not starts:
        raise DataError(f'{path}: no labelled window (split {split!r}); every window straddles '
                        'two segments or lies outside the timeline?')
    return BagFeatureCache(
        tokens=WindowTokens(torch.cat(frames), torch.tensor(starts), num_frames),
        targets=torch.tensor(targets), labels=labels,
        symmetric_pairs=pairs,
        backbone=index['backbone'], num_frames=num_frames,
        window_seconds=float(index['window_seconds']), path=str(path),
        switch_fraction=SWITCH_FRACTION[index.get('straddle', 'drop')], window_stamps=stamps,
        window_recordings=owners, recordings=chosen, streams=streams)


def split_counts(out: str | Path) -> dict[str, tuple[int, int]]:
    """{split: (labelled windows, recordings)} of a finished `extract_bags` directory."""
    index = json.loads((Path(out) / INDEX).read_text())
    counts: dict[str, list[int]] = {}
    for rec in index['recordings']:
        entry = counts.setdefault(rec['split'], [0, 0])
        entry[0] += len(rec['windows'])
        entry[1] += 1
    return {split: tuple(v) for split, v in sorted(counts.items())}


def is_bag_cache(index: dict) -> bool:
    return index.get('format') in (FRAMES_FORMAT, WINDOWS_FORMAT)

