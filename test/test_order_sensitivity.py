"""STEP learns frame order where the probes cannot: a tiny token-level case of paper Table X."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from step_ros.data.features import FeatureCache
from step_ros.evaluate.metrics import accuracy_report
from step_ros.learn.training import TrainConfig, predict, train_heads
from step_ros.model.heads import PRESETS

T, N, D = 4, 4, 16


def _tokens(count: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: an object visits patch 0, 1, 2, 3 over the frames; class 1 the same backwards.

    Each patch token carries what is there plus a code of where it is (as a real backbone's
    patch tokens do); the CLS token is the mean of the patches.
    """
    where = torch.randn(N, D, generator=torch.Generator().manual_seed(99))  # same in all splits
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(count) % 2
    tokens = torch.zeros(count, T, 1 + N, D)
    for i in range(count):
        obj = torch.randn(D, generator=g)
        order = range(T) if targets[i] == 0 else reversed(range(T))
        for t, p in enumerate(order):
            patches = 0.3 * torch.randn(N, D, generator=g)
            patches[p] += obj + where[p]
            tokens[i, t, 1:] = patches
            tokens[i, t, 0] = patches.mean(0)
    return tokens.half(), targets


def _cache(count: int, seed: int) -> FeatureCache:
    tokens, targets = _tokens(count, seed=seed)
    return FeatureCache(tokens=tokens, targets=targets, labels=('pick_up', 'put_down'),
                        symmetric_pairs=(('pick_up', 'put_down'),), backbone={}, num_frames=T,
                        window_seconds=1.0, path=f'memory:{seed}')


@pytest.fixture(scope='module')
def trained():
    train, test = _cache(128, 0), _cache(64, 1)
    heads = {n: replace(PRESETS[n], num_heads=2) for n in ('step', 'linear', 'attentive')}
    config = TrainConfig(epochs=15, batch_size=16, lr=3e-3, warmup_epochs=1, seed=0)
    return {h.name: h.module for h in train_heads(train, heads, config, progress=False)}, test


def _report(module, test: FeatureCache) -> dict:
    forward = predict(module, test.tokens).argmax(1)
    reverse = predict(module, test.tokens, reverse=True).argmax(1)
    return accuracy_report(targets=test.targets.numpy(), forward=forward.numpy(),
                           reverse=reverse.numpy(), labels=test.labels,
                           pairs=test.symmetric_pairs)


def test_step_tells_the_pair_apart_and_reversal_flips_it(trained):
    modules, test = trained
    report = _report(modules['step'], test)
    assert report['accuracy']['symmetric'] >= 0.95, report['accuracy']
    assert report['reversed']['symmetric'] <= 0.05, report['reversed']
    assert report['per_class']['pick_up']['reversed_as'] == 'put_down', report['per_class']


@pytest.mark.parametrize('name', ['linear', 'attentive'])
def test_probes_are_blind_to_order(trained, name):
    modules, test = trained
    report = _report(modules[name], test)
    assert report['accuracy']['symmetric'] <= 0.75, report['accuracy']
    forward = predict(modules[name], test.tokens)
    reverse = predict(modules[name], test.tokens, reverse=True)
    # A probe's logits do not depend on frame order at all (up to float summation order).
    assert torch.allclose(forward, reverse, atol=1e-4), (forward - reverse).abs().max()
    assert report['reversed']['overall'] == report['accuracy']['overall'], report


def test_eval_reports_the_reversal_drop_of_a_step_head(trained):
    """`eval` runs every clip forward and time-reversed: STEP, which reads order, must read the
    reversed symmetric clips as their counterparts (a reversal that is not done reads 0 drop)."""
    from step_ros.model.checkpoint import HeadMeta
    from step_ros.tools.evaluate import evaluate_head

    modules, test = trained
    backbone = dict(id='synthetic', family='dinov2', embed_dim=D, patch_size=14,
                    image_size=28, fingerprint='synthetic')  # 2x2 = N patches of D
    test = replace(test, backbone=backbone)
    meta = HeadMeta(task='action', labels=test.labels, symmetric_pairs=test.symmetric_pairs,
                    head=replace(PRESETS['step'], num_heads=2), num_frames=T, backbone=backbone)
    report = evaluate_head(modules['step'], meta, test, source='memory')
    assert report['accuracy']['symmetric'] >= 0.95, report['accuracy']
    assert report['reversed']['symmetric'] <= 0.05, report['reversed']
    assert report['per_class']['put_down']['reversed_as'] == 'pick_up', report['per_class']
