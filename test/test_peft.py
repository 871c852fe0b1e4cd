"""PEFT baselines over the hooked tiny ViT: what is trainable, what sees frame order, the costs."""

from __future__ import annotations

import pytest
import torch

from step_ros.model.backbone import FrozenBackbone
from step_ros.model.costs import vitb14_costs
from step_ros.model.heads import PRESETS
from step_ros.model.peft import PEFT_PRESETS, PeftConfig, PeftModel, encoder_layers

T = 4


@pytest.fixture(scope='module', params=['tiny', 'tiny-clip'])
def backbone(request):
    return FrozenBackbone.load(request.param)


def _pixels(backbone: FrozenBackbone, clips: int = 2) -> torch.Tensor:
    size = backbone.info.image_size
    return torch.randn(clips, T, 3, size, size, generator=torch.Generator().manual_seed(0))


def _model(backbone: FrozenBackbone, name: str) -> PeftModel:
    torch.manual_seed(0)
    return PeftModel(model=backbone.model, config=PEFT_PRESETS[name], num_frames=T,
                     num_classes=3, num_heads=4)


def _perturb(model: PeftModel) -> None:
    """Random added parameters, as after training (zero-initialised ones would hide bugs)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith('head.'):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize('name', ['adaptformer_linear', 'st_adapter_linear'])
def test_adapters_start_as_the_frozen_backbone(backbone, name):
    pixels = _pixels(backbone)
    frozen = backbone.forward_pixels(pixels.flatten(0, 1)).view(2, T, -1, 96)
    tokens = _model(backbone, name).forward_features(pixels)
    assert tokens.shape == frozen.shape, tokens.shape
    assert torch.allclose(tokens, frozen, atol=1e-5), (tokens - frozen).abs().max()


def test_vpt_prompts_replace_each_other_in_every_layer(backbone):
    model = _model(backbone, 'vpt_linear')
    lengths = []
    hooks = [layer.register_forward_pre_hook(
        lambda m, args, kwargs: lengths.append((args[0] if args else
                                                kwargs['hidden_states']).shape[1]),
        with_kwargs=True) for layer in encoder_layers(model.model)]
    # registered after the prompt hooks: they see the layer's input with its prompts
    tokens = model.forward_features(_pixels(backbone))
    for hook in hooks:
        hook.remove()
    n = backbone.info.num_patches
    prompts = PEFT_PRESETS['vpt_linear'].prompts
    assert lengths == [1 + prompts + n] * len(encoder_layers(model.model)), lengths
    assert tokens.shape == (2, T, 1 + n, 96), tokens.shape  # prompts dropped at the end


@pytest.mark.parametrize('name', list(PEFT_PRESETS))
def test_only_added_parameters_and_head_train_and_the_backbone_is_untouched(backbone, name):
    pixels = _pixels(backbone)
    before = backbone.forward_pixels(pixels.flatten(0, 1))
    model = _model(backbone, name)
    _perturb(model)
    model.train()
    model(pixels).logsumexp(1).sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(not n.startswith('model.') for n in trained), sorted(trained)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert not model.model.training, 'the frozen ViT must stay in eval mode'
    expected = {'vpt': {'prompts'}, 'adaptformer': {'adapters'}, 'st_adapter': {'adapters'}}
    assert {n.split('.')[0] for n in trained} == expected[model.config.method] | {'head'}
    # The node's frozen backbone has no hooks and gives the same tokens as before.
    for layer in encoder_layers(backbone.model):
        assert not layer._forward_pre_hooks and not layer.mlp._forward_hooks
    assert torch.equal(backbone.forward_pixels(pixels.flatten(0, 1)), before)


@pytest.mark.parametrize('name', ['vpt_linear', 'adaptformer_linear'])
def test_image_peft_with_a_linear_head_is_blind_to_frame_order(backbone, name):
    model = _model(backbone, name).eval()
    _perturb(model)
    pixels = _pixels(backbone)
    with torch.no_grad():
        forward, reverse = model(pixels), model(pixels.flip(1))
    assert torch.allclose(forward, reverse, atol=1e-4), (forward - reverse).abs().max()


@pytest.mark.parametrize('name', ['st_adapter_linear', 'vpt_step', 'adaptformer_step'])
def test_temporal_methods_see_frame_order(backbone, name):
    model = _model(backbone, name).eval()
    _perturb(model)
    with torch.no_grad():
        model.head.fc.weight.normal_(generator=torch.Generator().manual_seed(2))
        if hasattr(model.head, 'temporal_embed'):  # STEP: as after training, not near zero
            model.head.temporal_embed.normal_(generator=torch.Generator().manual_seed(3))
        pixels = _pixels(backbone)
        forward, reverse = model(pixels), model(pixels.flip(1))
    assert (forward - reverse).abs().max() > 1e-3, (forward - reverse).abs().max()


def test_st_adapter_starts_as_the_identity_with_a_kernel_that_is_not_symmetric_in_time(backbone):
    """Untrained, the block is a no-op (zero up projection), but its temporal kernel is random.

    A zero kernel, as in ST-Adapter's code, stayed symmetric in time over the report's training:
    reversed clips scored exactly as forward ones and the adapter never read order."""
    model = _model(backbone, 'st_adapter_linear')
    pixels = _pixels(backbone)
    frozen = backbone.forward_pixels(pixels.flatten(0, 1)).view(2, T, -1, 96)
    assert torch.allclose(model.forward_features(pixels), frozen, atol=1e-5)
    for adapter in model.adapters:
        kernel = adapter.conv.weight.detach().squeeze(1)  # (hidden, kernel)
        asymmetry = float((kernel - kernel.flip(-1)).abs().mean())
        assert asymmetry > 0.25 * float(kernel.abs().mean()) > 0, asymmetry
        assert not adapter.up.weight.any(), 'the up projection starts at zero'


def test_st_adapter_mixes_frames_inside_the_backbone(backbone):
    """Changing one frame changes the other frames' tokens (and only for ST-Adapter)."""
    pixels = _pixels(backbone)
    changed = pixels.clone()
    changed[:, 0] = 0.0
    for name, mixes in (('st_adapter_linear', True), ('adaptformer_linear', False)):
        model = _model(backbone, name).eval()
        _perturb(model)
        with torch.no_grad():
            a, b = model.forward_features(pixels), model.forward_features(changed)
        moved = float((a[:, 1] - b[:, 1]).abs().max())
        assert (moved > 1e-4) == mixes, (name, moved)


def test_bad_peft_config_is_refused(backbone):
    with pytest.raises(ValueError, match='peft.method'):
        PeftModel(model=backbone.model, config=PeftConfig(method='lora'), num_frames=T,
                  num_classes=3, num_heads=4)
    with pytest.raises(ValueError, match='clip of 3 frames'):
        _model(backbone, 'vpt_linear')(torch.zeros(1, 3, 3, 112, 112))


def test_vitb14_costs_are_counted_at_the_paper_shape():
    frame, costs = vitb14_costs(heads={'step': PRESETS['step'], 'linear': PRESETS['linear']},
                                peft=PEFT_PRESETS, num_frames=16)
    assert 40 < frame < 60, frame  # DINOv2 ViT-B/14 at 224 px: about 46 GFLOPs a frame
    step, st = costs['step'], costs['st_adapter_linear']
    assert 2.2e6 < step.params < 2.8e6, step  # the paper's ~2.6M for STEP on ViT-B
    assert 6.5e6 < st.params < 7.8e6, st  # ST-Adapter's 7.2M
    assert st.gflops_stream == st.gflops_clip  # re-encodes all T frames for every window
    for name in ('step', 'linear', 'vpt_linear', 'adaptformer_linear', 'vpt_step'):
        c = costs[name]
        assert c.gflops_stream < c.gflops_clip / 5, (name, c)  # one new frame per window
    assert costs['vpt_linear'].params < costs['adaptformer_linear'].params < st.params


def test_peft_training_with_reverse_pairs_plays_pair_clips_backwards_as_the_counterpart(
        backbone, monkeypatch):
    from torch.nn import functional

    from step_ros.learn import peft_training
    from step_ros.learn.training import TrainConfig

    pixels = _pixels(backbone, clips=8)
    data = peft_training.PixelClips(pixels, torch.tensor([0, 2] * 4), ('a', 'b', 'c'),
                                    (('a', 'b'),))
    seen, forward = [], PeftModel.forward
    cross_entropy = functional.cross_entropy

    def recording_forward(self, x):
        seen.append([x.detach().clone()])
        return forward(self, x)

    def recording_loss(logits, y, *args, **kwargs):
        seen[-1].append(y.clone())
        return cross_entropy(logits, y, *args, **kwargs)

    monkeypatch.setattr(PeftModel, 'forward', recording_forward)
    monkeypatch.setattr(functional, 'cross_entropy', recording_loss)
    config = TrainConfig(epochs=2, batch_size=4, warmup_epochs=0, reverse_pairs=True)
    peft_training.train_peft('vpt_linear', PEFT_PRESETS['vpt_linear'], backbone, data, config,
                             num_heads=4, progress=False)
    reversed_a = forward_a = 0
    for x, y in (s for s in seen if len(s) == 2):  # training steps (not validation)
        for clip, target in zip(x, y.tolist()):
            i = next(i for i in range(8) if torch.equal(clip, pixels[i]) or
                     torch.equal(clip, pixels[i].flip(0)))
            is_reversed = not torch.equal(clip, pixels[i])
            if i % 2:  # c has no reversal: always forwards, always c
                assert not is_reversed and target == 2, (i, target, is_reversed)
            else:  # a forwards is a; a backwards is its counterpart b
                assert target == (1 if is_reversed else 0), (i, target, is_reversed)
                reversed_a += is_reversed
                forward_a += not is_reversed
    assert reversed_a and forward_a, (reversed_a, forward_a)
