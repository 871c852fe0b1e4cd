"""Train and evaluate the PEFT baselines end to end through the frozen backbone.

Their features change while they train, so they cannot use the feature cache: the T sampled
frames of every clip are decoded once (as `extract` samples them) and kept as preprocessed
pixels, and every step runs the hooked backbone forward and backward. The optimiser, schedule,
parameter groups and seeds are those of `training.train_heads`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from step_ros.data.features import ClipList, read_frames
from step_ros.evaluate.metrics import accuracy_report
from step_ros.learn.training import (
    TrainConfig,
    flush_denormals,
    lr_at,
    param_groups,
    reversal_targets,
    reverse_some,
)
from step_ros.model.backbone import FrozenBackbone
from step_ros.model.peft import PeftConfig, PeftModel
from step_ros.progress import progress_bar


@dataclass
class PixelClips:
    """Preprocessed frames of a clip list: pixels (clips, T, 3, S, S) fp16, label ids."""

    pixels: torch.Tensor
    targets: torch.Tensor
    labels: tuple[str, ...]
    symmetric_pairs: tuple[tuple[str, str], ...]

    def subset(self, per_class: int) -> PixelClips:
        """The first `per_class` clips of every class (all of them for per_class <= 0)."""
        if per_class <= 0:
            return self
        keep = torch.cat([torch.nonzero(self.targets == c).flatten()[:per_class]
                          for c in range(len(self.labels))]).sort().values
        return PixelClips(self.pixels[keep], self.targets[keep], self.labels,
                          self.symmetric_pairs)


def load_pixels(clip_list: ClipList, backbone: FrozenBackbone, *, num_frames: int,
                progress: bool = True) -> PixelClips:
    """Decode and preprocess every clip's T frames once, with the backbone's own preprocessing."""
    pixels = []
    for clip in progress_bar(clip_list.clips, desc='frames', unit='clip', disable=not progress):
        frames, _ = read_frames(clip, num_frames)  # (T, H, W, 3) uint8
        with torch.inference_mode():
            x = backbone.preprocess(backbone.to_device(frames))  # (T, 3, S, S)
        pixels.append(x.to('cpu', torch.float16))
    targets = torch.tensor([clip_list.labels.index(c.label) for c in clip_list.clips])
    return PixelClips(torch.stack(pixels), targets, clip_list.labels, clip_list.symmetric_pairs)


@dataclass
class TrainedPeft:
    name: str
    model: PeftModel
    log: list[dict]


@flush_denormals()
def train_peft(name: str, config: PeftConfig, backbone: FrozenBackbone, data: PixelClips,
               train: TrainConfig, *, num_heads: int, val: PixelClips | None = None,
               progress: bool = True) -> TrainedPeft:
    """Train the added parameters and the head of one PEFT model; returns it in eval mode."""
    train.validate()
    torch.manual_seed(train.seed)
    model = PeftModel(model=backbone.model, config=config, num_frames=data.pixels.shape[1],
                      num_classes=len(data.labels), num_heads=num_heads).to(backbone.device)
    model.model.float()  # trained in fp32 whatever the backbone's inference precision
    groups = [dict(g, params=[p for p in g['params'] if p.requires_grad])
              for g in param_groups(model, train)]  # the frozen backbone's weights stay out
    optimiser = torch.optim.AdamW([g for g in groups if g['params']], lr=train.lr)
    n = len(data.pixels)
    steps_per_epoch = math.ceil(n / train.batch_size)
    total, warmup = steps_per_epoch * train.epochs, steps_per_epoch * train.warmup_epochs
    generator = torch.Generator().manual_seed(train.seed)
    flip_generator = torch.Generator().manual_seed(train.seed + 1)  # as training.train_heads
    reversal = reversal_targets(data.labels, data.symmetric_pairs).to(backbone.device)
    log, step = [], 0
    bar = progress_bar(total=total, desc=f'train {name}', unit='step', disable=not progress)
    for epoch in range(train.epochs):
        model.train()
        loss_sum, correct = 0.0, 0
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=flip_generator) < 0.5 if train.reverse_pairs else None
        for i in range(0, n, train.batch_size):
            idx = order[i:i + train.batch_size]
            x = data.pixels[idx].to(backbone.device, torch.float32)  # (B, T, 3, S, S)
            y = data.targets[idx].to(backbone.device)
            if flips is not None:
                x, y = reverse_some(x, y, flips[idx].to(backbone.device), reversal)
            factor = lr_at(step, total=total, warmup=warmup)
            for group in optimiser.param_groups:
                group['lr'] = train.lr * factor * group['lr_scale']
            logits = model(x)  # (B, C)
            loss = F.cross_entropy(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            step += 1
            bar.update(1)
        entry = dict(epoch=epoch + 1, loss=loss_sum / n, train_acc=correct / n)
        if val is not None:
            entry['val_acc'] = float((predict_pixels(model, val) == val.targets).float().mean())
        log.append(entry)
        bar.set_postfix(acc=f"{entry.get('val_acc', entry['train_acc']):.2f}")
    bar.close()
    return TrainedPeft(name, model.eval(), log)


@torch.no_grad()
def predict_pixels(model: PeftModel, data: PixelClips, *, batch_size: int = 16,
                   reverse: bool = False) -> torch.Tensor:
    """Predicted class ids (clips,) of a PEFT model; `reverse` plays every clip backwards."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(data.pixels), batch_size):
        x = data.pixels[i:i + batch_size].to(device, torch.float32)  # (B, T, 3, S, S)
        if reverse:
            x = x.flip(1)  # frames last-to-first
        out.append(model(x).argmax(1).cpu())
    return torch.cat(out)


def evaluate_peft(model: PeftModel, data: PixelClips) -> dict:
    """The same report dictionary as `eval` gives a head: forward and reversed accuracies."""
    report = accuracy_report(targets=data.targets.numpy(),
                             forward=predict_pixels(model, data).numpy(),
                             reverse=predict_pixels(model, data, reverse=True).numpy(),
                             labels=data.labels, pairs=data.symmetric_pairs)
    report['params'] = model.trainable()
    report['peft'] = model.config.to_dict()
    return report
