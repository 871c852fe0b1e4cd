"""Reading either kind of feature cache: clips (`extract --clips`, step_ros.data.features) and
recordings (`extract --bag`, step_ros.data.bag_cache), told apart by the format in index.json."""

from __future__ import annotations

from pathlib import Path

from step_ros.data import bag_cache
from step_ros.data.features import INDEX, DataError, FeatureCache, read_index


def load_cache(path: str | Path) -> FeatureCache:
    """A clip cache, or OUT / OUT/<split> of `extract --bag`; DataError names what is damaged."""
    path = Path(path)
    index_path = path / INDEX
    if not index_path.is_file():
        raise DataError(f'{path}: not a feature cache (no {INDEX}); run '
                        '`python -m step_ros extract` first')
    if bag_cache.is_bag_cache(read_index(index_path)):  # per-frame tokens + window index
        return bag_cache.load_cache(path)
    return FeatureCache.load(path)
