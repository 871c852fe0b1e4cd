"""Extraction from real camera video with the real CPU backbone, through `extract`.

The clips live in ../shared/testdata/real_videos (see its SOURCES.md); the tests skip where that
directory or the weights package is absent. The cache is extracted once per session.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from step_ros.data.caches import load_cache
from step_ros.model import efficientnet
from step_ros.tools import extract as extract_cli

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / 'shared' / 'testdata' / 'real_videos'
CLIPS = ('arm_wrestling.mp4', 'motorcycle_repair.mp4', 'apply_eye_makeup.avi')
T = 4

pytestmark = [
    pytest.mark.skipif(not all((VIDEOS / c).is_file() for c in CLIPS),
                       reason=f'real test videos not found in {VIDEOS}'),
    pytest.mark.skipif(importlib.util.find_spec(efficientnet.PACKAGE) is None,
                       reason=f'weights package not installed ({efficientnet.INSTALL})'),
]


@pytest.fixture(scope='session')
def real_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp('real_video')
    (root / 'pairs.yaml').write_text('labels: [forward, backward]\n'
                                     'symmetric_pairs: [[forward, backward]]\n')
    (root / 'clips.csv').write_text('path,label\n' + ''.join(f'{VIDEOS / c},forward\n'
                                                             for c in CLIPS))
    code = extract_cli.main(['--clips', str(root / 'clips.csv'), '--backbone',
                             'efficientnet_lite0', '--device', 'cpu', '--frames', str(T),
                             '--out', str(root / 'cache')])
    assert code == 0
    return load_cache(root / 'cache')


def test_extract_stores_real_tokens_of_every_clip(real_cache):
    cache = real_cache
    assert tuple(cache.tokens.shape) == (len(CLIPS), T, 50, 1280), cache.tokens.shape
    assert cache.tokens.dtype == torch.float16 and torch.isfinite(cache.tokens).all()
    assert cache.backbone['id'] == 'efficientnet_lite0', cache.backbone
    assert cache.backbone['family'] == 'efficientnet_lite', cache.backbone
    # arm_wrestling and motorcycle_repair: 300 frames at 29.97 fps -> T frames over 10 s.
    assert 5 < cache.window_seconds < 15, cache.window_seconds


def test_real_features_tell_clips_apart_and_see_motion(real_cache):
    """Frames of one clip look more alike than frames of different clips; and frames of one
    clip are not identical (the camera sees motion)."""
    cls = torch.nn.functional.normalize(real_cache.tokens[:, :, 0].float(), dim=-1)  # (3, T, D)
    flat = cls.reshape(-1, cls.shape[-1])
    similarity = flat @ flat.T  # (3T, 3T)
    clip = torch.arange(len(CLIPS)).repeat_interleave(T)
    same = clip[:, None] == clip[None, :]
    off_diagonal = ~torch.eye(len(flat), dtype=torch.bool)
    within = similarity[same & off_diagonal]
    across = similarity[~same]
    assert within.mean() > across.mean() + 0.1, \
        f'mean cosine within clips {within.mean():.3f}, across clips {across.mean():.3f}'
    assert within.max() < 0.9999, f'frames of a clip are identical ({within.max():.5f})'
