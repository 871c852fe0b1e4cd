"""Head checkpoints: safetensors tensors plus JSON metadata. Nothing is ever unpickled."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from step_ros.backbone import BackboneInfo
from step_ros.heads import HeadConfig, build_head

FORMAT = 'step_ros.head/1'
METADATA_KEY = 'step_ros'


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
            temperature=self.temperature, background=self.background))

    @classmethod
    def from_json(cls, text: str) -> HeadMeta:
        values = json.loads(text)
        if values.get('format') != FORMAT:
            raise ValueError(f"format {values.get('format')!r}, expected {FORMAT!r}")
        return cls(task=values['task'], labels=tuple(values['labels']),
                   symmetric_pairs=tuple(tuple(p) for p in values['symmetric_pairs']),
                   head=HeadConfig.from_dict(values['head']), num_frames=int(values['num_frames']),
                   backbone=dict(values['backbone']),
                   window_seconds=float(values['window_seconds']),
                   training=dict(values.get('training', {})),
                   **_calibration(values))

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


def _calibration(values: dict) -> dict:
    """temperature and background; heads written before they existed get 1.0 and 'none'
    (when that is one of their labels)."""
    labels = list(values['labels'])
    temperature = float(values.get('temperature', 1.0))
    if not temperature > 0 or temperature == float('inf'):
        raise ValueError(f'temperature={temperature!r}: must be a finite number > 0')
    background = values.get('background', 'none' if 'none' in labels else None)
    if background is not None and background not in labels:
        raise ValueError(f'background={background!r} is not one of the labels {labels}')
    return dict(temperature=temperature, background=background)


def validate_pairs(labels: tuple[str, ...], pairs) -> tuple[tuple[str, str], ...]:
    """Normalise symmetric pairs and check every name is a label."""
    out = []
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f'symmetric pair {list(pair)!r}: expected two different labels')
        for name in pair:
            if name not in labels:
                raise ValueError(f'symmetric pair {list(pair)!r}: {name!r} is not a label; '
                                 f'labels are {list(labels)}')
        out.append((str(pair[0]), str(pair[1])))
    return tuple(out)


def save_head(path: str | Path, module: nn.Module, meta: HeadMeta) -> Path:
    """Write the head's weights and metadata to one .safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: meta.to_json()})
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
    """Rebuild a head from its checkpoint, in eval mode, on `device`."""
    path = Path(path)
    meta = read_meta(path)
    try:
        module = build_head(meta.head, dim=meta.feature_dim, num_frames=meta.num_frames,
                            num_patches=meta.num_patches, num_classes=len(meta.labels))
        with safe_open(str(path), framework='pt') as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
        module.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f'{path}: weights do not match the recorded head config: '
                              f'{exc}') from exc
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False), meta


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
