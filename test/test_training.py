"""Training is seeded and follows warmup + cosine: pinned on the optimiser itself."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from step_ros.data.features import FeatureCache
from step_ros.learn.training import (
    TrainConfig,
    drop_tokens,
    flushes_denormals,
    lr_at,
    predict,
    reversal_targets,
    takes_any_patches,
    train_heads,
)
from step_ros.model.heads import PRESETS, build_head

T, N, D = 4, 4, 16


def _cache(count: int = 24) -> FeatureCache:
    g = torch.Generator().manual_seed(5)
    return FeatureCache(tokens=torch.randn(count, T, 1 + N, D, generator=g).half(),
                        targets=torch.arange(count) % 3, labels=('a', 'b', 'c'),
                        symmetric_pairs=(('a', 'b'),), backbone={}, num_frames=T,
                        window_seconds=1.0, path='memory')


HEADS = {'step': replace(PRESETS['step'], num_heads=2)}


def _weights(seed: int) -> dict[str, torch.Tensor]:
    config = TrainConfig(epochs=2, batch_size=8, warmup_epochs=1, seed=seed)
    trained = train_heads(_cache(), HEADS, config, progress=False)
    return {k: v.clone() for k, v in trained[0].module.state_dict().items()}


def test_same_seed_same_weights_other_seed_other_weights():
    torch.manual_seed(123)  # the global generator's state must not matter
    first = _weights(0)
    torch.rand(1000)  # ... nor how far it has advanced
    again = _weights(0)
    assert all(torch.equal(first[k], again[k]) for k in first), 'seed 0 twice: weights differ'
    other = _weights(1)
    differ = [k for k in first if not torch.equal(first[k], other[k])]
    assert len(differ) == len(first), f'seed 1 left {set(first) - set(differ)} unchanged'


def test_training_uses_warmup_then_cosine(monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append([g['lr'] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, 'step', recording)
    config = TrainConfig(epochs=4, batch_size=8, lr=1e-3, warmup_epochs=1, embed_lr_scale=10.0)
    train_heads(_cache(), HEADS, config, progress=False)
    steps_per_epoch, total = 3, 12  # 24 clips in batches of 8, 4 epochs
    assert len(seen) == total, len(seen)
    expected = [config.lr * lr_at(i, total=total, warmup=steps_per_epoch) for i in range(total)]
    base = [lrs[0] for lrs in seen]  # the decaying weights' group
    assert base == pytest.approx(expected, rel=1e-9), (base, expected)
    # Warmup rises linearly to the peak, then the cosine decays towards 0.
    assert base[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert base[3] == pytest.approx(1e-3) and base[-1] < 0.05 * 1e-3
    assert all(a > b for a, b in zip(base[3:], base[4:])), base
    assert math.isclose(seen[5][-1], 10.0 * seen[5][0]), seen[5]  # embeddings: 10x the step


def test_training_flushes_subnormals_and_restores_the_setting(monkeypatch):
    # Subnormal floats make CPU arithmetic many times slower; training must flush them to zero
    # while it runs and leave the process's setting as it found it.
    seen = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append(flushes_denormals())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, 'step', recording)
    assert not flushes_denormals()
    train_heads(_cache(), HEADS, TrainConfig(epochs=1, batch_size=8), progress=False)
    assert seen and all(seen), seen
    assert not flushes_denormals(), 'training left subnormals flushed'
    torch.set_flush_denormal(True)
    try:
        train_heads(_cache(), HEADS, TrainConfig(epochs=1, batch_size=8), progress=False)
        assert flushes_denormals(), 'training turned off a flush it did not turn on'
    finally:
        torch.set_flush_denormal(False)


def test_reversal_targets_map_a_pair_to_its_counterpart_and_background_to_itself():
    labels = ('pick_up', 'put_down', 'wave', 'none')
    got = reversal_targets(labels, (('pick_up', 'put_down'),), 'none')
    assert got.tolist() == [1, 0, -1, 3]
    assert reversal_targets(labels, (), None).tolist() == [-1, -1, -1, -1]


def _ordered_cache(count: int = 48) -> FeatureCache:
    """Class `a`: frames drift along one direction over time; class `c`: no drift. No `b`."""
    g = torch.Generator().manual_seed(7)
    direction = torch.randn(1, 1, 1, D, generator=g)
    ramp = torch.linspace(-2, 2, T).view(1, T, 1, 1)
    tokens = torch.randn(count, T, 1 + N, D, generator=g) * 0.3
    targets = torch.tensor([0, 2] * (count // 2))  # a, c, a, c ...
    tokens[targets == 0] += ramp * direction
    return FeatureCache(tokens=tokens.half(), targets=targets, labels=('a', 'b', 'c'),
                        symmetric_pairs=(('a', 'b'),), backbone={}, num_frames=T,
                        window_seconds=1.0, path='memory')


def test_reverse_pairs_teaches_a_counterpart_that_only_frame_order_tells_apart():
    cache = _ordered_cache()
    a = cache.tokens[cache.targets == 0]
    predicted = {}
    for reverse_pairs in (False, True):
        config = TrainConfig(epochs=8, batch_size=8, warmup_epochs=1, reverse_pairs=reverse_pairs)
        module = train_heads(cache, HEADS, config, progress=False)[0].module
        predicted[reverse_pairs] = (predict(module, a).argmax(1),
                                    predict(module, a, reverse=True).argmax(1))
    forward, backward = predicted[True]
    assert (forward == 0).float().mean() >= 0.9, forward  # a played forwards: a
    assert (backward == 1).float().mean() >= 0.9, backward  # a played backwards: its pair, b
    assert not (predicted[False][1] == 1).any(), predicted[False][1]  # b was never a target


def test_reverse_pairs_leaves_labels_without_a_reversal_and_the_batch_order_alone():
    cache = _cache()
    cache = FeatureCache(tokens=cache.tokens, targets=cache.targets, labels=cache.labels,
                         symmetric_pairs=(), backbone={}, num_frames=T, window_seconds=1.0,
                         path='memory')  # no pair, no background: nothing may be reversed
    weights = []
    for reverse_pairs in (False, True):
        config = TrainConfig(epochs=2, batch_size=8, warmup_epochs=1, reverse_pairs=reverse_pairs)
        module = train_heads(cache, HEADS, config, progress=False)[0].module
        weights.append(module.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_epoch_of_best_balanced_validation_accuracy_is_kept():
    """With a validation cache the head leaves with the weights of its epoch of best balanced
    validation accuracy (on random targets it wanders, so the last epoch is rarely the best);
    --last-epoch keeps the last."""
    train_cache, val = _cache(48), _cache(24)
    g = torch.Generator().manual_seed(9)
    val = replace(val, tokens=torch.randn(24, T, 1 + N, D, generator=g).half(),
                  targets=torch.tensor([0] * 16 + [1] * 4 + [2] * 4))  # imbalanced
    config = TrainConfig(epochs=8, batch_size=8, warmup_epochs=1, seed=3)
    kept, = train_heads(train_cache, HEADS, config, val=val, progress=False)
    last, = train_heads(train_cache, HEADS, replace(config, keep_best=False), val=val,
                        progress=False)
    balanced = [e['val_balanced_acc'] for e in kept.log]
    best = max(balanced)
    epoch = max(i + 1 for i, a in enumerate(balanced) if a == best)
    assert kept.log[-1]['kept_epoch'] == epoch
    assert kept.log[-1]['kept_val_balanced_acc'] == best
    assert epoch < len(balanced) and balanced[-1] < best, balanced  # a real choice
    # The written weights score that: recall per class, averaged.
    predicted = predict(kept.module, val.tokens).argmax(1)
    recalls = [float((predicted[val.targets == c] == c).float().mean()) for c in range(3)]
    assert sum(recalls) / 3 == pytest.approx(best, abs=1e-6), (recalls, best)
    accuracy = float((predicted == val.targets).float().mean())
    assert accuracy == pytest.approx(kept.log[epoch - 1]['val_acc'], abs=1e-6)
    assert 'kept_epoch' not in last.log[-1]
    final = predict(last.module, val.tokens).argmax(1)
    assert float((final == val.targets).float().mean()) == pytest.approx(
        last.log[-1]['val_acc'], abs=1e-6)


def test_token_drop_keeps_the_cls_slot_and_a_fresh_ordered_subset_of_patches():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(12.0)[None, None, :, None].expand(6, 3, 12, 2).clone()  # slot i holds i
    out = drop_tokens(x, 0.5, g)  # 11 patches: round(5.5) = 6 left out, 5 kept
    assert tuple(out.shape) == (6, 3, 6, 2), out.shape
    slots = out[..., 0]
    assert (slots[:, :, 0] == 0).all()  # the CLS slot stays first
    patches = slots[:, :, 1:]
    assert (patches >= 1).all() and (patches.diff(dim=-1) > 0).all()  # distinct, in order
    assert len({tuple(p.tolist()) for p in patches.reshape(-1, 5)}) > 1  # not one fixed subset
    assert drop_tokens(x, 0.0, g) is x


def test_token_drop_applies_to_heads_that_take_any_patch_count_only():
    def head(name):
        return build_head(replace(PRESETS[name], num_heads=2), dim=D, num_frames=T,
                          num_patches=N, num_classes=3)
    assert takes_any_patches(head('step')) and takes_any_patches(head('attentive'))
    assert takes_any_patches(head('linear')) and takes_any_patches(head('step_sinusoidal'))
    assert not takes_any_patches(head('step_token_wise'))  # an embedding row per patch
    heads = {name: replace(PRESETS[name], num_heads=2) for name in ('step', 'step_token_wise')}
    config = TrainConfig(epochs=2, batch_size=8, warmup_epochs=1)
    plain = train_heads(_cache(), heads, config, progress=False)
    dropped = train_heads(_cache(), heads, replace(config, token_drop=0.5), progress=False)
    weights = [{h.name: h.module.state_dict() for h in run} for run in (plain, dropped)]
    # The token-wise head saw whole windows either way; STEP trained on fewer patches.
    token_wise = weights[0]['step_token_wise'], weights[1]['step_token_wise']
    assert all(torch.equal(token_wise[0][k], token_wise[1][k]) for k in token_wise[0])
    assert not torch.equal(weights[0]['step']['fc.weight'], weights[1]['step']['fc.weight'])
    with pytest.raises(ValueError, match='token_drop=1.0'):
        TrainConfig(token_drop=1.0).validate()


def test_train_says_why_a_head_disappoints():
    from step_ros.tools.train import advice
    good = dict(train_acc=0.97, val_balanced_acc=0.93, kept_val_balanced_acc=0.94)
    assert advice(good) == []
    underfit, = advice({**good, 'train_acc': 0.82, 'kept_val_balanced_acc': 0.78})
    assert '0.82 of its own training windows' in underfit and 'pretrained' in underfit
    lines = advice({**good, 'kept_val_balanced_acc': 0.61})
    assert len(lines) == 1 and 'reads 0.61 of the validation windows' in lines[0], lines
    # Without a kept epoch, the last epoch's balanced validation accuracy is the one used.
    assert len(advice(dict(train_acc=0.97, val_balanced_acc=0.6))) == 1
    assert advice(dict(train_acc=0.97)) == []  # no validation cache: nothing to compare
    # A head written from its last epoch (--last-epoch) has no kept epoch to compare with.
    assert len(advice(dict(train_acc=0.97, kept_val_balanced_acc=None, val_balanced_acc=0.6))) == 1
    # Features of a pretrained backbone already: the advice does not suggest one.
    both = dict(train_acc=0.82, kept_val_balanced_acc=0.6)
    assert all('pretrained' in line for line in advice(both, backbone='tiny-clip'))
    real = advice(both, backbone='efficientnet_lite0')
    assert len(real) == 2 and not any('pretrained' in line for line in real), real
    assert 'image_size' in real[0], real
