"""Train several heads on one pass over a feature cache (AdamW, warmup + cosine, seeded).

Every batch of cached tokens is read once and fed to all heads in turn, the way DINOv2's linear
evaluation trains many classifiers on one pass of features: the data loading is shared and each
head gets exactly the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from step_ros.data.features import FeatureCache
from step_ros.data.names import safe_name
from step_ros.distributed import Dist, rank_batches
from step_ros.model.checkpoint import HeadMeta, save_head
from step_ros.model.heads import HeadConfig, StepHead, build_head, count_trainable
from step_ros.progress import progress_bar


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
    # Play each window whose label has a known reversal backwards with probability 1/2 (see
    # reversal_targets): a symmetric pair's windows then differ only in frame order.
    reverse_pairs: bool = False
    # With a validation cache: the head leaves training with the weights of its epoch of best
    # balanced validation accuracy (the latest of equals), not the last epoch's.
    keep_best: bool = True
    # Leave this fraction of each frame's patch tokens (a fresh random subset per window and
    # frame) out of every training window, for heads that take any number of patches (see
    # takes_any_patches); evaluation sees all of them.
    token_drop: float = 0.0

    def validate(self) -> None:
        for name in ('epochs', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name}={getattr(self, name)}: must be >= 1')
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(f'lr={self.lr}, weight_decay={self.weight_decay}, warmup_epochs='
                             f'{self.warmup_epochs}: need lr > 0 and the others >= 0')
        if not 0.0 <= self.token_drop < 1.0:
            raise ValueError(f'token_drop={self.token_drop}: must be in [0, 1)')


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
    device = next(module.parameters()).device
    out = []
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size].float().to(device)  # (B, T, 1+N, D)
        if reverse:
            x = x.flip(1)  # frames last-to-first
        out.append(module(x).float())
    return torch.cat(out)


def reversal_targets(labels: tuple[str, ...], pairs, background: str | None = None
                     ) -> torch.Tensor:
    """Per label id, the label of the same window played backwards; -1 where none is known.

    A symmetric pair's label becomes its counterpart (`put_down` is `pick_up` played
    backwards); the background, nothing happening, stays the background. Other actions (`wave`
    backwards is not a declared label) are never reversed.
    """
    out = torch.full((len(labels),), -1, dtype=torch.long)
    for a, b in pairs:
        out[labels.index(a)], out[labels.index(b)] = labels.index(b), labels.index(a)
    if background in labels:
        out[labels.index(background)] = labels.index(background)
    return out


def reverse_some(x: torch.Tensor, y: torch.Tensor, flip: torch.Tensor, reversal: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch (B, T, ...) with the windows `flip` marks and `reversal` knows played
    backwards (frames last-to-first) and relabelled; the others as they were."""
    mask = flip & (reversal[y] >= 0)
    if not bool(mask.any()):
        return x, y
    x = x.clone()
    x[mask] = x[mask].flip(1)
    return x, torch.where(mask, reversal[y], y)


def takes_any_patches(module: nn.Module) -> bool:
    """Whether a head's output is defined for any number of patches per frame (all but STEP
    variants with a temporal embedding per token)."""
    config = getattr(module, 'config', None)
    return not (isinstance(module, StepHead) and config.granularity != 'frame'
                and config.temporal != 'none')


def drop_tokens(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Windows (B, T, 1+N, D) with round(fraction * N) patch tokens of each frame left out (a
    random subset per window and frame, order kept); the CLS slot stays."""
    b, t, length, dim = x.shape
    keep = length - 1 - round(fraction * (length - 1))
    if keep >= length - 1:
        return x
    chosen = torch.rand(b, t, length - 1, generator=generator).argsort(-1)[..., :keep]
    index = chosen.sort(-1).values.add_(1).to(x.device)  # (B, T, K): patch slots
    patches = x.gather(2, index[..., None].expand(-1, -1, -1, dim))
    return torch.cat([x[:, :, :1], patches], dim=2)


def _val_targets(val: FeatureCache, task: str, labels: tuple[str, ...]) -> torch.Tensor:
    """The validation cache's label ids of a task in the training labels (-1: unknown there)."""
    val_labels, val_targets, _ = val.task(task)
    mapping = torch.tensor([labels.index(n) if n in labels else -1 for n in val_labels])
    return mapping[val_targets]


def flushes_denormals() -> bool:
    """Whether float arithmetic on the CPU now treats subnormal numbers as zero."""
    return bool((torch.tensor([1e-40]) * 1.0)[0] == 0)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """CPU arithmetic with subnormal floats flushed to zero, restored to what it was on exit.

    As a head trains, some optimiser state and attention weights fall into the subnormal range,
    where x86 CPUs compute many times slower: without this, a STEP head's training slowed from
    about 7 to about 1.5 steps per second after its second epoch. Subnormals are below 1.2e-38,
    far under anything the loss can resolve.
    """
    before = flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@flush_denormals()
def train_heads(cache: FeatureCache, heads: dict[str, HeadConfig], config: TrainConfig, *,
                val: FeatureCache | None = None, progress: bool = True,
                tasks: dict[str, str] | None = None, dist: Dist | None = None,
                device: str = 'cpu', background: str | None = None) -> list[TrainedHead]:
    """Train every head on the same batches of `cache`; returns them in eval mode.

    With `config.reverse_pairs`, every epoch plays a seeded half of the windows backwards where
    their label has a known reversal (`reversal_targets`, with `background` as its own); the
    batch order is the same as without.

    `tasks` maps a head name to the cache task it learns (see FeatureCache.task); heads it does
    not name learn the main `label` task. Every task's heads see exactly the same batches.

    With `dist` (a torchrun process group), every head is wrapped in DistributedDataParallel and
    `config.batch_size` is the per-rank batch: each global batch of batch_size * world_size
    clips holds the same samples as a single process's batch of that size (see
    distributed.rank_batches), and the logged metrics are sums over all ranks; the heads train
    on `dist.device`.
    """
    config.validate()
    if val is not None and val.labels != cache.labels:
        raise ValueError(f'{val.path}: labels {list(val.labels)} differ from the training '
                         f'cache {cache.path}: {list(cache.labels)}')
    tasks = tasks or {}
    modules, optimisers, targets, val_targets, reversals = {}, {}, {}, {}, {}
    device = device if dist is None else dist.device
    for name, head_config in heads.items():
        labels, targets[name], pairs = cache.task(tasks.get(name, 'label'))
        reversals[name] = reversal_targets(labels, pairs, background).to(device)
        if val is not None:
            val_targets[name] = _val_targets(val, tasks.get(name, 'label'), labels)
        torch.manual_seed(config.seed)  # every head starts from the same seed
        module = build_head(head_config, dim=cache.dim, num_frames=cache.num_frames,
                            num_patches=cache.num_patches, num_classes=len(labels))
        modules[name] = module.to(device)
        optimisers[name] = torch.optim.AdamW(param_groups(module, config), lr=config.lr)
    models = modules if dist is None else {name: ddp(m, dist) for name, m in modules.items()}
    n = len(cache.tokens)
    global_batch = config.batch_size * (1 if dist is None else dist.world_size)
    steps_per_epoch = math.ceil(n / global_batch)
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * config.warmup_epochs
    logs: dict[str, list[dict]] = {name: [] for name in heads}
    generator = torch.Generator().manual_seed(config.seed)
    flip_generator = torch.Generator().manual_seed(config.seed + 1)  # batch order unchanged
    drop_generator = torch.Generator().manual_seed(config.seed + 2)
    drops = {name: config.token_drop > 0 and takes_any_patches(m) for name, m in modules.items()}
    step = 0
    best: dict[str, tuple[float, int, dict]] = {}  # name -> (val acc, epoch, state on the CPU)
    show = progress and (dist is None or dist.is_main)
    bar = progress_bar(total=total, desc=f'train {len(heads)} head(s)', unit='step',
                       disable=not show)
    for epoch in range(config.epochs):
        for module in modules.values():
            module.train()
        sums = {name: [0.0, 0] for name in heads}  # loss sum, correct
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=flip_generator) < 0.5 if config.reverse_pairs else None
        if dist is None:
            batches = ((order[i:i + global_batch], None, 0) for i in range(0, n, global_batch))
        else:
            batches = rank_batches(order, batch_size=config.batch_size, dist_=dist)
        for idx, weights, size in batches:
            x = cache.tokens[idx].float().to(device)  # (B, T, 1+N, D), read once for all heads
            factor = lr_at(step, total=total, warmup=warmup)
            for name, model in models.items():
                optimiser = optimisers[name]
                for group in optimiser.param_groups:
                    group['lr'] = config.lr * factor * group['lr_scale']
                xb, y = x, targets[name][idx].to(device)
                if flips is not None:
                    xb, y = reverse_some(x, y, flips[idx].to(device), reversals[name])
                if drops[name]:
                    xb = drop_tokens(xb, config.token_drop, drop_generator)
                logits = model(xb)  # (B, C)
                if weights is None:
                    loss = F.cross_entropy(logits, y)
                    loss_sum = float(loss.detach()) * len(idx)
                    correct = int((logits.argmax(1) == y).sum())
                else:
                    # DDP averages gradients over the W ranks: scaling this rank's loss sum by
                    # W / size makes that average the gradient of the global batch's mean loss.
                    w = weights.to(device)
                    losses = F.cross_entropy(logits, y, reduction='none') * w  # (B,)
                    loss = losses.sum() * (dist.world_size / size)
                    loss_sum = float(losses.detach().sum())
                    correct = int(((logits.argmax(1) == y).float() * w).sum())
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                sums[name][0] += loss_sum
                sums[name][1] += correct
            step += 1
            bar.update(1)
        if dist is not None:  # every rank saw its share: sum them
            totals = dist.all_sum([v for name in heads for v in sums[name]])
            sums = {name: totals[2 * i:2 * i + 2] for i, name in enumerate(heads)}
        for name, module in modules.items():
            if not math.isfinite(sums[name][0]):  # summed over ranks: every rank stops here
                raise ValueError(f'head {name!r}: the training loss became {sums[name][0]} in '
                                 f'epoch {epoch + 1} of {cache.path}; no head is written '
                                 '(non-finite tokens in the cache, or try a lower --lr)')
            entry = dict(epoch=epoch + 1, loss=sums[name][0] / n, train_acc=sums[name][1] / n,
                         lr=config.lr * lr_at(step - 1, total=total, warmup=warmup))
            if val is not None:
                entry['val_acc'], entry['val_balanced_acc'] = val_accuracy(
                    module, val.tokens, val_targets[name], dist=dist)
                # Balanced: a head that names only the frequent classes (early in training,
                # on a stream that is mostly idle) is not the best one.
                score = entry['val_balanced_acc']
                if config.keep_best and score >= best.get(name, (-1.0,))[0]:
                    best[name] = (score, epoch + 1,
                                  {k: v.detach().cpu().clone()
                                   for k, v in module.state_dict().items()})
            logs[name].append(entry)
        bar.set_postfix({k: f"{v[-1].get('val_acc', v[-1]['train_acc']):.2f}"
                         for k, v in list(logs.items())[:4]})
    bar.close()
    for name, (accuracy, epoch, state) in best.items():
        modules[name].load_state_dict(state)
        logs[name][-1]['kept_epoch'] = epoch  # the weights written are those of this epoch
        logs[name][-1]['kept_val_balanced_acc'] = accuracy
    return [TrainedHead(name, modules[name].cpu().eval(), heads[name], logs[name],
                        tasks.get(name)) for name in heads]


def val_accuracy(module: nn.Module, tokens, targets: torch.Tensor, *,
                 dist: Dist | None = None) -> tuple[float, float]:
    """(accuracy, balanced accuracy: the mean over classes present of their recall) on
    validation tokens; under torchrun each rank scores every W-th clip."""
    classes = int(targets.max()) + 1 if len(targets) else 1
    if dist is None:
        share = torch.arange(len(targets))
    else:
        share = torch.arange(dist.rank, len(targets), dist.world_size)
    hits = torch.zeros(classes, dtype=torch.int64)
    counts = torch.zeros(classes, dtype=torch.int64)
    for i in range(0, len(share), 64):  # gathered a batch at a time (caches may be views)
        idx = share[i:i + 64]
        y = targets[idx]
        correct = predict(module, tokens[idx]).argmax(1).cpu() == y
        hits += torch.bincount(y[correct], minlength=classes)
        counts += torch.bincount(y, minlength=classes)
    if dist is not None:
        totals = dist.all_sum([int(v) for v in (*hits, *counts)])
        hits = torch.tensor(totals[:classes])
        counts = torch.tensor(totals[classes:])
    accuracy = float(torch.tensor(int(hits.sum()), dtype=torch.float32) / len(targets))
    present = counts > 0
    balanced = float((hits[present].double() / counts[present].double()).mean())
    return accuracy, balanced


def ddp(module: nn.Module, dist: Dist) -> nn.Module:
    """`module` in DistributedDataParallel on this rank's device (it broadcasts rank 0's
    weights, so every rank starts from the same ones)."""
    device_ids = [dist.local_rank] if dist.backend == 'nccl' else None
    return DistributedDataParallel(module, device_ids=device_ids)


def save_run(out: str | Path, trained: list[TrainedHead], cache: FeatureCache,
             config: TrainConfig, *, task: str = 'action',
             window_seconds: float | None = None, extra: dict | None = None,
             temperatures: dict[str, float] | None = None,
             background: str | None = None,
             decisions: dict[str, dict] | None = None) -> list[Path]:
    """Write <out>/<name>.safetensors per head, config.json, log.jsonl and curves.png.

    `temperatures` (per head name, from `fit_temperatures`), `background` (a label or None)
    and `decisions` (per head name, from `decision_fit.fit_heads`) go into each checkpoint's
    metadata.
    """
    for head in trained:  # checked before anything is written
        bad = [k for k, v in head.module.state_dict().items()
               if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f'head {head.name!r}: parameters {bad[:3]} are not finite; no '
                             'head is written')
    out = Path(out)
    for head in trained:  # every file stays inside `out`
        safe_name(head.name, what='head name')
    out.mkdir(parents=True, exist_ok=True)
    window = cache.window_seconds if window_seconds is None else window_seconds
    paths = []
    for head in trained:
        final = head.log[-1]
        training = dict(preset=head.name, cache=cache.path, clips=len(cache.tokens),
                        config=asdict(config), params=count_trainable(head.module),
                        final={k: round(v, 4) for k, v in final.items()}, **(extra or {}))
        fit = (decisions or {}).get(head.name)
        if fit:
            training['decision_fit'] = {k: v for k, v in fit.items() if k != 'values'}
        labels, _, pairs = cache.task(head.task or 'label')
        meta = HeadMeta(task=head.task or task, labels=labels, symmetric_pairs=pairs,
                        head=head.config, num_frames=cache.num_frames, backbone=cache.backbone,
                        window_seconds=float(window), training=training,
                        temperature=float((temperatures or {}).get(head.name, 1.0)),
                        background=background if background in labels else None,
                        switch_fraction=cache.switch_fraction or 0.5,
                        decision=fit['values'] if fit else None)
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


def fit_temperatures(trained: list[TrainedHead], val: FeatureCache) -> dict[str, dict]:
    """Per head: the NLL-fitted temperature on `val`, and ECE / NLL before and after."""
    from step_ros.stream.calibration import ece, fit_temperature, nll, softmax

    out = {}
    for head in trained:
        targets = val.task(head.task or 'label')[1].numpy()
        logits = predict(head.module, val.tokens).numpy()
        t = fit_temperature(logits, targets)
        entry = dict(temperature=round(t, 4), windows=len(targets))
        for key, temp in (('uncalibrated', 1.0), ('calibrated', t)):
            probs = softmax(logits, temp)
            correct = probs.argmax(1) == targets
            entry[f'ece_{key}'] = round(ece(probs.max(1), correct), 4)
            entry[f'nll_{key}'] = round(nll(logits, targets, temp), 4)
        out[head.name] = entry
    return out


def plot_curves(path: Path, trained: list[TrainedHead]) -> None:
    import matplotlib

    matplotlib.use('Agg')
    matplotlib.rcParams['text.parse_math'] = False  # labels are plain text ('$' too)
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
