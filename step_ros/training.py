"""Train several heads on one pass over a feature cache (AdamW, warmup + cosine, seeded).

Every batch of cached tokens is read once and fed to all heads in turn, the way DINOv2's linear
evaluation trains many classifiers on one pass of features: the data loading is shared and each
head gets exactly the same batches.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from step_ros.checkpoint import HeadMeta, save_head
from step_ros.features import FeatureCache
from step_ros.heads import HeadConfig, build_head, count_trainable


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 16
    lr: float = 3e-3  # peak learning rate after warmup
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    # Temporal embeddings start near zero and must grow before attention can depend on frame
    # order; a larger step for them (and the CLS / query tokens) makes STEP learn order early.
    embed_lr_scale: float = 30.0
    seed: int = 0

    def validate(self) -> None:
        for name in ('epochs', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name}={getattr(self, name)}: must be >= 1')
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(f'lr={self.lr}, weight_decay={self.weight_decay}, warmup_epochs='
                             f'{self.warmup_epochs}: need lr > 0 and the others >= 0')


@dataclass
class TrainedHead:
    name: str
    module: nn.Module
    config: HeadConfig
    log: list[dict]  # one entry per epoch
    task: str | None = None  # the cache task it was trained on (None: the main `label` task)


def lr_at(step: int, *, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 0, as a factor of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


EMBEDDINGS = ('temporal_embed', 'cls_token', 'query')


def param_groups(module: nn.Module, config: TrainConfig) -> list[dict]:
    """Weights decay; biases, norms and embeddings do not (they would be pulled to zero)."""
    decay, plain, embed = [], [], []
    for name, param in module.named_parameters():
        if name.split('.')[-1] in EMBEDDINGS:
            embed.append(param)
        elif param.ndim < 2:
            plain.append(param)
        else:
            decay.append(param)
    groups = [dict(params=decay, weight_decay=config.weight_decay, lr_scale=1.0),
              dict(params=plain, weight_decay=0.0, lr_scale=1.0),
              dict(params=embed, weight_decay=0.0, lr_scale=config.embed_lr_scale)]
    return [g for g in groups if g['params']]


@torch.no_grad()
def predict(module: nn.Module, tokens: torch.Tensor, *, batch_size: int = 64,
            reverse: bool = False) -> torch.Tensor:
    """Logits (clips, C) of a head over cached tokens (clips, T, 1+N, D); optionally reversed."""
    module.eval()
    out = []
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size].float()  # (B, T, 1+N, D)
        if reverse:
            x = x.flip(1)  # frames last-to-first
        out.append(module(x).float())
    return torch.cat(out)


def _val_targets(val: FeatureCache, task: str, labels: tuple[str, ...]) -> torch.Tensor:
    """The validation cache's label ids of a task in the training labels (-1: unknown there)."""
    val_labels, val_targets, _ = val.task(task)
    mapping = torch.tensor([labels.index(n) if n in labels else -1 for n in val_labels])
    return mapping[val_targets]


def train_heads(cache: FeatureCache, heads: dict[str, HeadConfig], config: TrainConfig, *,
                val: FeatureCache | None = None, progress: bool = True,
                tasks: dict[str, str] | None = None) -> list[TrainedHead]:
    """Train every head on the same batches of `cache`; returns them in eval mode.

    `tasks` maps a head name to the cache task it learns (see FeatureCache.task); heads it does
    not name learn the main `label` task. Every task's heads see exactly the same batches.
    """
    config.validate()
    if val is not None and val.labels != cache.labels:
        raise ValueError(f'{val.path}: labels {list(val.labels)} differ from the training '
                         f'cache {cache.path}: {list(cache.labels)}')
    tasks = tasks or {}
    modules, optimisers, targets, val_targets = {}, {}, {}, {}
    for name, head_config in heads.items():
        labels, targets[name], _ = cache.task(tasks.get(name, 'label'))
        if val is not None:
            val_targets[name] = _val_targets(val, tasks.get(name, 'label'), labels)
        torch.manual_seed(config.seed)  # every head starts from the same seed
        module = build_head(head_config, dim=cache.dim, num_frames=cache.num_frames,
                            num_patches=cache.num_patches, num_classes=len(labels))
        modules[name] = module
        optimisers[name] = torch.optim.AdamW(param_groups(module, config), lr=config.lr)
    n = len(cache.tokens)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * config.warmup_epochs
    logs: dict[str, list[dict]] = {name: [] for name in heads}
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    bar = tqdm(total=total, desc=f'train {len(heads)} head(s)', unit='step', disable=not progress)
    for epoch in range(config.epochs):
        for module in modules.values():
            module.train()
        sums = {name: [0.0, 0] for name in heads}  # loss sum, correct
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, config.batch_size):
            idx = order[i:i + config.batch_size]
            x = cache.tokens[idx].float()  # (B, T, 1+N, D), read once for all heads
            factor = lr_at(step, total=total, warmup=warmup)
            for name, module in modules.items():
                optimiser = optimisers[name]
                for group in optimiser.param_groups:
                    group['lr'] = config.lr * factor * group['lr_scale']
                y = targets[name][idx]
                logits = module(x)  # (B, C)
                loss = F.cross_entropy(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                sums[name][0] += float(loss.detach()) * len(idx)
                sums[name][1] += int((logits.argmax(1) == y).sum())
            step += 1
            bar.update(1)
        for name, module in modules.items():
            entry = dict(epoch=epoch + 1, loss=sums[name][0] / n, train_acc=sums[name][1] / n,
                         lr=config.lr * lr_at(step - 1, total=total, warmup=warmup))
            if val is not None:
                logits = predict(module, val.tokens)
                entry['val_acc'] = float((logits.argmax(1) == val_targets[name]).float().mean())
            logs[name].append(entry)
        bar.set_postfix({k: f"{v[-1].get('val_acc', v[-1]['train_acc']):.2f}"
                         for k, v in list(logs.items())[:4]})
    bar.close()
    return [TrainedHead(name, modules[name].eval(), heads[name], logs[name], tasks.get(name))
            for name in heads]


def save_run(out: str | Path, trained: list[TrainedHead], cache: FeatureCache,
             config: TrainConfig, *, task: str = 'action',
             window_seconds: float | None = None, extra: dict | None = None) -> list[Path]:
    """Write <out>/<name>.safetensors per head, config.json, log.jsonl and curves.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    window = cache.window_seconds if window_seconds is None else window_seconds
    paths = []
    for head in trained:
        final = head.log[-1]
        training = dict(preset=head.name, cache=cache.path, clips=len(cache.tokens),
                        config=asdict(config), params=count_trainable(head.module),
                        final={k: round(v, 4) for k, v in final.items()}, **(extra or {}))
        labels, _, pairs = cache.task(head.task or 'label')
        meta = HeadMeta(task=head.task or task, labels=labels, symmetric_pairs=pairs,
                        head=head.config, num_frames=cache.num_frames, backbone=cache.backbone,
                        window_seconds=float(window), training=training)
        paths.append(save_head(out / f'{head.name}.safetensors', head.module, meta))
    resolved = dict(train=asdict(config), task=task, window_seconds=window, cache=cache.path,
                    tasks={h.name: h.task or task for h in trained},
                    heads={h.name: h.config.to_dict() for h in trained}, **(extra or {}))
    (out / 'config.json').write_text(json.dumps(resolved, indent=2) + '\n')
    with (out / 'log.jsonl').open('w') as f:
        for head in trained:
            for entry in head.log:
                f.write(json.dumps(dict(head=head.name, **entry)) + '\n')
    plot_curves(out / 'curves.png', trained)
    return paths


def plot_curves(path: Path, trained: list[TrainedHead]) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap('tab20').colors  # distinct for up to 20 heads
    for i, head in enumerate(trained):
        epochs = [e['epoch'] for e in head.log]
        # Order-blind heads (no temporal embedding) dashed, so the two families stand apart.
        style = dict(label=head.name, color=colours[(2 * i) % 20 + (2 * i) // 20 % 2],
                     linestyle='--' if _order_blind(head) else '-')
        ax_loss.plot(epochs, [e['loss'] for e in head.log], **style)
        key = 'val_acc' if 'val_acc' in head.log[0] else 'train_acc'
        ax_acc.plot(epochs, [e[key] for e in head.log], **style)
        ax_acc.set_ylabel(key)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel('train loss')
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _order_blind(head: TrainedHead) -> bool:
    return head.config.kind != 'step' or head.config.temporal == 'none'
