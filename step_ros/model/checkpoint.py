"""Head checkpoints: safetensors tensors plus JSON metadata. Nothing is ever unpickled."""

from __future__ import annotations

import json
import math
import reprlib
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from step_ros.model.backbone import BackboneInfo
from step_ros.model.heads import HeadConfig, build_head

FORMAT = 'step_ros.head/1'
METADATA_KEY = 'step_ros'
# Bounds of the sizes metadata may declare (a ViT-B head has T=16, D=768, 224 px, patch 14).
MAX_FRAMES = 1024
MAX_DIM = 16384
MAX_IMAGE = 4096
MAX_BUFFER = 1 << 26  # values of non-stored buffers (256 MiB of fp32)


class CheckpointError(RuntimeError):
    """A head checkpoint cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class HeadMeta:
    """Everything needed to rebuild a head and check it fits the running backbone."""

    task: str
    labels: tuple[str, ...]
    symmetric_pairs: tuple[tuple[str, str], ...]
    head: HeadConfig
    num_frames: int
    backbone: dict  # BackboneInfo.to_dict() of the backbone the head was trained on
    window_seconds: float = 2.0  # clip duration the T training frames were spread over
    training: dict = field(default_factory=dict)  # free-form: data, epochs, accuracy, seed
    temperature: float = 1.0  # calibration: probabilities are softmax(logits / temperature)
    background: str | None = None  # the 'nothing is happening' label, if the head has one
    # Where the head names a new segment: this fraction of its window back from the newest
    # frame (0.5: the window's middle, as majority labels teach; `extract --straddle newest`
    # labels teach 3/8). The decision stage backdates event stamps by it.
    switch_fraction: float = 0.5
    # Decision-stage parameters fitted by `train --val-cache` on validation recordings
    # ({name: value} of stream.decision.DecisionConfig), or None; checked where they are used.
    decision: dict | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.backbone['embed_dim'])

    @property
    def num_patches(self) -> int:
        return (int(self.backbone['image_size']) // int(self.backbone['patch_size'])) ** 2

    def to_json(self) -> str:
        return json.dumps(dict(
            format=FORMAT, task=self.task, labels=list(self.labels),
            symmetric_pairs=[list(p) for p in self.symmetric_pairs], head=self.head.to_dict(),
            num_frames=self.num_frames, feature_dim=self.feature_dim,
            backbone=self.backbone, window_seconds=self.window_seconds, training=self.training,
            temperature=self.temperature, background=self.background,
            switch_fraction=self.switch_fraction, decision=self.decision))

    @classmethod
    def from_json(cls, text: str) -> HeadMeta:
        """Parse and check metadata; ValueError names the first field that is wrong."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f'not JSON ({exc})') from exc
        if not isinstance(values, dict):
            raise ValueError(f'a JSON {type(values).__name__}, expected an object')
        if values.get('format') != FORMAT:
            raise ValueError(f"format {_r(values.get('format'))}, expected {FORMAT!r}")
        missing = [k for k in ('task', 'labels', 'symmetric_pairs', 'head', 'num_frames',
                               'backbone', 'window_seconds') if k not in values]
        if missing:
            raise ValueError(f'missing fields {missing}')
        task = values['task']
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f'task {_r(task)}: expected a non-empty string')
        labels = validate_labels(values['labels'])
        head = values['head']
        if not isinstance(head, dict):
            raise ValueError(f'head {_r(head)}: expected an object')
        training = values.get('training', {})
        if not isinstance(training, dict):
            raise ValueError(f'training {_r(training)}: expected an object')
        backbone = _backbone(values['backbone'])
        config = HeadConfig.from_dict(head)
        config.validate(dim=backbone['embed_dim'])
        return cls(task=task, labels=labels,
                   symmetric_pairs=validate_pairs(labels, values['symmetric_pairs']),
                   head=config,
                   num_frames=_integer('num_frames', values['num_frames'], low=1,
                                       high=MAX_FRAMES),
                   backbone=backbone,
                   window_seconds=_seconds('window_seconds', values['window_seconds']),
                   training=training, **_calibration(values, labels))

    def check_backbone(self, info: BackboneInfo, *, source: str) -> None:
        """Raise CheckpointError unless the head was trained on features of this backbone."""
        trained = self.backbone
        for key in ('embed_dim', 'patch_size', 'image_size', 'family'):
            if trained[key] != getattr(info, key):
                raise CheckpointError(
                    f'{source}: head was trained on {key}={trained[key]!r} features '
                    f"({trained['id']}) but the backbone gives {key}={getattr(info, key)!r} "
                    f'({info.id}); use a head trained for this backbone or change backbone.*')
        if trained['fingerprint'] != info.fingerprint:
            raise CheckpointError(
                f"{source}: head was trained on the weights of {trained['id']} (fingerprint "
                f"{trained['fingerprint']}) but the backbone {info.id} has fingerprint "
                f'{info.fingerprint}: features differ; retrain the head on this backbone')


def _calibration(values: dict, labels: tuple[str, ...]) -> dict:
    """temperature, background, switch_fraction and decision; heads written before they
    existed get 1.0, 'none' (when that is one of their labels), 0.5 and None."""
    temperature = values.get('temperature', 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
            not math.isfinite(temperature) or not temperature > 0:
        raise ValueError(f'temperature={_r(temperature)}: must be a finite number > 0')
    background = values.get('background', 'none' if 'none' in labels else None)
    if background is not None and background not in labels:
        raise ValueError(f'background={_r(background)} is not one of the labels {list(labels)}')
    switch = values.get('switch_fraction', 0.5)
    if isinstance(switch, bool) or not isinstance(switch, (int, float)) or \
            not 0.0 < switch <= 1.0:
        raise ValueError(f'switch_fraction={_r(switch)}: must be a number in (0, 1]')
    decision = values.get('decision')
    if decision is not None and not (
            isinstance(decision, dict) and decision and len(decision) <= 16
            and all(isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float))
                    and math.isfinite(v) for k, v in decision.items())):
        raise ValueError(f'decision={_r(decision)}: expected an object of finite numbers')
    return dict(temperature=float(temperature), background=background,
                switch_fraction=float(switch), decision=decision)


def validate_pairs(labels: tuple[str, ...], pairs) -> tuple[tuple[str, str], ...]:
    """Check symmetric pairs: a list of [a, b] of two different labels, each in one pair only.

    Raises ValueError naming the offending entry.
    """
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f'symmetric pairs {_r(pairs)}: expected a list of [a, b] pairs')
    out, seen = [], {}
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or \
                not all(isinstance(name, str) for name in pair):
            raise ValueError(f'symmetric pair {_r(pair)}: expected a list of two label names, '
                             f'e.g. [pick_up, put_down]')
        if pair[0] == pair[1]:
            raise ValueError(f'symmetric pair {list(pair)!r}: expected two different labels')
        for name in pair:
            if name not in labels:
                raise ValueError(f'symmetric pair {list(pair)!r}: {name!r} is not a label; '
                                 f'labels are {list(labels)}')
            if name in seen:
                raise ValueError(f'symmetric pair {list(pair)!r}: {name!r} is already paired '
                                 f'in {list(seen[name])!r}; a label has one counterpart')
            seen[name] = pair
        out.append((pair[0], pair[1]))
    return tuple(out)


def _r(value) -> str:
    """A bounded repr: metadata may hold anything, the error line stays short."""
    return reprlib.repr(value)


def validate_labels(value) -> tuple[str, ...]:
    """Check a label list: at least two distinct non-empty strings; ValueError otherwise."""
    if not isinstance(value, list):
        raise ValueError(f'labels {_r(value)}: expected a list of names')
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f'labels {_r(value)}: {bad[0]!r} is not a non-empty string')
    duplicates = sorted(name for name, n in Counter(value).items() if n > 1)
    if duplicates:
        raise ValueError(f'labels {_r(value)}: {duplicates} appear more than once')
    if len(value) < 2:
        raise ValueError(f'labels {_r(value)}: a head needs at least 2 labels')
    return tuple(value)


def _integer(name: str, value, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f'{name} {_r(value)}: expected an integer in [{low}, {high}]')
    return value


def _seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f'{name} {_r(value)}: expected a finite number of seconds > 0')
    return float(value)


def _backbone(value) -> dict:
    """The backbone block: every BackboneInfo field, of its type, with sane sizes."""
    if not isinstance(value, dict):
        raise ValueError(f'backbone {_r(value)}: expected an object')
    missing = [f.name for f in fields(BackboneInfo) if f.name not in value]
    if missing:
        raise ValueError(f'backbone lacks {missing}')
    for key in ('id', 'family', 'fingerprint'):
        if not isinstance(value[key], str) or not value[key]:
            raise ValueError(f'backbone.{key} {_r(value[key])}: expected a non-empty string')
    for key, high in (('embed_dim', MAX_DIM), ('patch_size', MAX_IMAGE),
                      ('image_size', MAX_IMAGE)):
        _integer(f'backbone.{key}', value[key], low=1, high=high)
    if value['patch_size'] > value['image_size']:
        raise ValueError(f"backbone.patch_size {value['patch_size']} is larger than "
                         f"backbone.image_size {value['image_size']}")
    return dict(value)


def save_head(path: str | Path, module: nn.Module, meta: HeadMeta) -> Path:
    """Write the head's weights and metadata to one .safetensors file."""
    path = Path(path)
    text = meta.to_json()
    try:
        HeadMeta.from_json(text)  # never write a checkpoint that load_head would refuse
    except ValueError as exc:
        raise CheckpointError(f'{path}: refusing to write invalid metadata: {exc}') from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: text})
    return path


def read_meta(path: str | Path) -> HeadMeta:
    """Read only the metadata of a head checkpoint (no tensors)."""
    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework='pt') as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f'{path}: not a readable safetensors file ({exc}); it may be '
                              'truncated or of another format') from exc
    if raw is None:
        raise CheckpointError(f'{path}: a safetensors file without step_ros metadata; write '
                              'heads with `python -m step_ros train`')
    try:
        return HeadMeta.from_json(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f'{path}: invalid step_ros metadata: {exc}') from exc


def load_head(path: str | Path, *, device: torch.device | str = 'cpu',
              dtype: torch.dtype = torch.float32) -> tuple[nn.Module, HeadMeta]:
    """Rebuild a head from its checkpoint, in eval mode, on `device`.

    The module is first built without memory (meta device) and its tensor shapes compared
    with the file's, so metadata declaring a huge head fails before anything is allocated;
    weights must be finite floating-point tensors.
    """
    path = Path(path)
    meta = read_meta(path)

    def build() -> nn.Module:
        return build_head(meta.head, dim=meta.feature_dim, num_frames=meta.num_frames,
                          num_patches=meta.num_patches, num_classes=len(meta.labels))

    try:
        with torch.device('meta'):
            skeleton = build()
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        fixed = sum(b.numel() for b in skeleton.buffers())  # e.g. sinusoidal tables, not stored
        if fixed > MAX_BUFFER:
            raise CheckpointError(f'{path}: the recorded head config needs {fixed} fixed '
                                  f'buffer values (more than {MAX_BUFFER}): refused')
        with safe_open(str(path), framework='pt') as f:
            stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            if stored != expected:
                raise CheckpointError(f'{path}: weights do not match the recorded head config: '
                                      f'{_shape_difference(stored, expected)}')
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f'{path}: weights do not match the recorded head config: '
                              f'{exc}') from exc
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f'{path}: tensor {key!r} is {tensor.dtype}, expected '
                                  'floating point weights')
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f'{path}: tensor {key!r} holds {bad} non-finite values '
                                  '(NaN or Inf): the head is broken; retrain or re-export it')
    module = build()
    module.load_state_dict(state, strict=True)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False), meta


def _shape_difference(stored: dict, expected: dict) -> str:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        return f'missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}'
    key = next(k for k in sorted(expected) if stored[k] != expected[k])
    return f'tensor {key!r} has shape {list(stored[key])}, the config needs {list(expected[key])}'


def _check_file(path: Path) -> None:
    """Refuse missing, truncated and pickled files before safetensors reads them."""
    if not path.is_file():
        raise CheckpointError(f'{path}: no such head checkpoint')
    size = path.stat().st_size
    with path.open('rb') as f:
        start = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    header = int.from_bytes(start[:8], 'little') if len(start) >= 8 else 0
    if len(start) == 9 and start[8:9] == b'{' and 0 < header <= size - 8:
        return
    # torch.save writes a zip archive (PK\x03\x04) or, before torch 1.6, a bare pickle (PROTO 2-5).
    if start[:4] == b'PK\x03\x04' or (len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5):
        raise CheckpointError(f'{path}: looks like a pickled PyTorch checkpoint; step_ros never '
                              'unpickles (it can run code): export the head as safetensors')
    if len(start) < 9 or start[8:9] == b'{':
        raise CheckpointError(f'{path}: file is truncated ({size} bytes)')
    raise CheckpointError(f'{path}: not a safetensors file; write heads with '
                          '`python -m step_ros train`')
