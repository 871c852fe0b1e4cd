"""Datasets from rosbags: tokens of the frames the node would sample, once per frame, plus a
window index, split by recording.

Frames take the node's own path: `bags.iter_frames` (the node's decode, header-stamp order) ->
the engine's `StampSampler` on the node's grid (window_seconds / T) -> `FrozenBackbone.preprocess`
and `forward_pixels`, the calls `StreamingEngine.push` makes. Every run of T consecutive sampled
frames (a sampler restart starts a new run, as it clears the node's ring) is a window the node
would classify. A window lying inside one timeline segment takes its label; one that straddles
two segments (or leaves the timeline) is dropped (`straddle='drop'`), labelled by the label of
more than half of its frames (`straddle='majority'`; dropped when no label has that many), or by
its newest frame's label once that label holds NEWEST_FRACTION of the frames (`straddle='newest'`:
an online detector's target, which names a new segment while it is still under way; else the
majority label).

Layout of an output directory OUT:
- `OUT/index.json` (format `step_ros.bag_frames/1`): node settings, backbone, labels, pairs and
  per recording its bag, topic, timeline, split, sampled stamps, runs, shards and windows;
- `OUT/frames_*.safetensors`: tensor `tokens` (frames, 1 + N, D) fp16, one row per sampled frame;
- `OUT/<split>/index.json` (format `step_ros.bag_windows/1`): a view of one split's recordings.
`caches.load_cache` reads OUT (every recording) or OUT/<split> like a clip cache
(`step_ros.data.bag_cache`). Shards are written whole and the index replaced atomically after each,
so an interrupted run resumes. Under torchrun every rank encodes every N-th shard and writes
`OUT/frames_*.done.json` beside each instead of the index; rank 0 folds them into the index
after a barrier.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from step_ros.data.bag_cache import FRAMES_FORMAT, INDEX, NEWEST_FRACTION, WINDOWS_FORMAT
from step_ros.data.bags import BagFrame, ReadStats, bag_path, iter_frames, topic_count
from step_ros.data.features import DataError, available_bytes, read_pairs
from step_ros.data.names import safe_name
from step_ros.data.timeline import load_timeline, seconds
from step_ros.distributed import Dist
from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import MAX_FRAMES, validate_pairs
from step_ros.progress import progress_bar
from step_ros.stream.config import DEFAULTS, PARAMETERS, ConfigError, _typed
from step_ros.stream.decode import DEFAULT_MAX_PIXELS
from step_ros.stream.engine import EngineConfig, StampSampler
from step_ros.stream.runtime import effective_precision

TIMELINE_NAME = 'timeline.csv'
# How a window whose oldest and newest frames are not inside one segment is labelled.
STRADDLE_RULES = {
    'drop': 'a window whose oldest and newest frames lie in different segments (or outside the '
            'timeline) is dropped',
    'majority': 'a window that straddles segments takes the label that more than half of its T '
                'frames carry (frames outside the timeline carry none) and is dropped when no '
                'label has that many',
    'newest': "a window that straddles segments takes its newest frame's label once at least "
              '3/8 of its T frames carry it (a new segment is named while under way), else the '
              'majority label, and is dropped when neither applies',
}


@dataclass(frozen=True)
class NodeSettings:
    """The node parameters that decide the tokens: backbone, input size, precision, grid."""

    backbone_weights: str
    image_size: int
    device: str
    precision: str
    num_frames: int
    window_seconds: float
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped, as the node does

    NAMES = ('backbone.weights', 'backbone.image_size', 'device', 'precision', 'num_frames',
             'window_seconds', 'max_image_pixels')

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> NodeSettings:
        """Validate the node's parameters (as the node does); heads are not needed here."""
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f'unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}')
        table = {p.name: p for p in PARAMETERS}
        v = {name: _typed(table[name], values.get(name, DEFAULTS[name])) for name in cls.NAMES}
        for name in ('device', 'precision'):
            choices = table[name].choices
            if v[name] not in choices and not (name == 'device' and v[name].startswith('cuda:')):
                raise ConfigError(f'{name}={v[name]!r}: expected one of {list(choices)}')
        if not 1 <= v['num_frames'] <= MAX_FRAMES:
            raise ConfigError(f"num_frames={v['num_frames']}: must be in [1, {MAX_FRAMES}]")
        if not v['window_seconds'] > 0:
            raise ConfigError(f"window_seconds={v['window_seconds']}: must be > 0")
        if v['max_image_pixels'] < 1:
            raise ConfigError(f"max_image_pixels={v['max_image_pixels']}: must be >= 1")
        if v['backbone.image_size'] < 0:
            raise ConfigError(f"backbone.image_size={v['backbone.image_size']}: must be >= 0")
        return cls(backbone_weights=v['backbone.weights'], image_size=v['backbone.image_size'],
                   device=v['device'], precision=v['precision'], num_frames=v['num_frames'],
                   window_seconds=v['window_seconds'],
                   max_image_pixels=v['max_image_pixels'])

    def engine_config(self) -> EngineConfig:
        return EngineConfig(num_frames=self.num_frames, window_seconds=self.window_seconds)

    def sampler(self) -> StampSampler:
        """The node engine's sampler, on the node's grid (see StreamingEngine.__init__)."""
        config = self.engine_config()
        return StampSampler(period_ns=config.period_ns,
                            max_gap_ns=int(config.window_seconds * 1e9))

    def load_backbone(self) -> FrozenBackbone:
        """The backbone exactly as `runtime.build_engine` loads it."""
        precision = effective_precision(self.device, self.precision)
        return FrozenBackbone.load(self.backbone_weights, image_size=self.image_size,
                                   device=self.device, precision=precision)


@dataclass(frozen=True)
class Recording:
    bag: str
    topic: str
    labels: str  # timeline CSV
    split: str  # 'train', 'val', 'test' or any name
    relative: bool = False  # timeline seconds count from the first frame's stamp


def default_timeline(bag: str | Path) -> Path:
    """timeline.csv inside the bag directory (where `synth --bag` writes it)."""
    bag = Path(bag)
    folder = bag if bag.is_dir() else bag.parent
    return folder / TIMELINE_NAME


def sampled(frames: Iterator[BagFrame], sampler: StampSampler
            ) -> Iterator[tuple[int, BagFrame]]:
    """(run, frame) for every frame the node's sampler keeps; a restart starts a new run."""
    run = 0
    for frame in frames:
        keep, restart = sampler.offer(frame.stamp_ns)
        if restart:
            run += 1
        if keep:
            yield run, frame


def window_starts(runs: list[int], *, num_frames: int, stride: int) -> list[int]:
    """First frame of every window: T consecutive sampled frames of one run, every `stride`."""
    starts, begin = [], 0
    for i in range(1, len(runs) + 1):
        if i == len(runs) or runs[i] != runs[begin]:
            starts += list(range(begin, i - num_frames + 1, stride))
            begin = i
    return starts


def majority_label(stamps: list[int], timeline) -> str | None:
    """The label more than half of the frames carry (at their stamps), else None."""
    counts = Counter(timeline.label_at(s) for s in stamps)
    counts.pop(None, None)  # frames outside the timeline
    if not counts:
        return None
    label, n = counts.most_common(1)[0]
    return label if 2 * n > len(stamps) else None


def newest_label(stamps: list[int], timeline) -> str | None:
    """The newest frame's label when at least NEWEST_FRACTION of the frames carry it, else None."""
    label = timeline.label_at(stamps[-1])
    if label is None:
        return None
    count = sum(timeline.label_at(s) == label for s in stamps)
    return label if count >= math.ceil(NEWEST_FRACTION * len(stamps)) else None


def label_windows(stamps: list[int], runs: list[int], timeline, *, num_frames: int,
                  stride: int, straddle: str = 'drop') -> list[tuple[int, str]]:
    """(first frame, label) of every labelled window, straddling ones by STRADDLE_RULES."""
    if straddle not in STRADDLE_RULES:
        raise DataError(f'straddle rule {straddle!r}: expected one of {list(STRADDLE_RULES)}')
    out = []
    for start in window_starts(runs, num_frames=num_frames, stride=stride):
        label = timeline.label_over(stamps[start], stamps[start + num_frames - 1])
        window = stamps[start:start + num_frames]
        if label is None and straddle == 'newest':
            label = newest_label(window, timeline)
        if label is None and straddle in ('majority', 'newest'):
            label = majority_label(window, timeline)
        if label is not None:
            out.append((start, label))
    return out


def _write_json(path: Path, values: dict) -> None:
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(values, indent=1) + '\n')
    os.replace(tmp, path)


def _labels_and_pairs(recordings: list[Recording], pairs_path: Path | None
                      ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Labels: pairs.yaml's list if it has one, else every timeline's labels, sorted."""
    present = set()
    for rec in recordings:
        present |= load_timeline(rec.labels).labels
    labels, raw_pairs = (None, []) if pairs_path is None else read_pairs(pairs_path)
    if labels is None:
        labels = tuple(sorted(present))
    else:
        extra = sorted(present - set(labels))
        if extra:
            raise DataError(f'timeline labels {extra} are not in the labels of {pairs_path}')
    if len(labels) < 2:
        raise DataError(f'the timelines need at least 2 labels, found {list(labels)}')
    try:
        pairs = validate_pairs(labels, raw_pairs)
    except ValueError as exc:
        raise DataError(f'{pairs_path}: {exc}') from exc
    return tuple(labels), pairs


def extract_bags(recordings: list[Recording], settings: NodeSettings, *, out: str | Path,
                 pairs_path: str | Path | None = None, stride: int = 1, straddle: str = 'drop',
                 shard_size: int = 256, batch_frames: int = 16, progress: bool = True,
                 backbone: FrozenBackbone | None = None, dist: Dist | None = None
                 ) -> list[str]:
    """Encode the sampled frames of every recording once; resumes a matching partial cache.

    Returns the shard files this process encoded (none that an earlier run had finished).

    Stride and straddle rule only choose windows: a re-run with others relabels the cache
    without encoding anything again. Under torchrun (`dist`), every rank reads every recording
    (the sampler needs each stamp in order) and encodes the shards k with k mod world = rank,
    cut exactly as one process cuts them; after a barrier rank 0 writes the index.
    """
    if straddle not in STRADDLE_RULES:
        raise DataError(f'straddle rule {straddle!r}: expected one of {list(STRADDLE_RULES)}')
    if stride < 1 or shard_size < 1 or batch_frames < 1:
        raise DataError(f'stride {stride}, shard size {shard_size}, batch {batch_frames}: '
                        'must be >= 1')
    if not recordings:
        raise DataError('no recording given')
    for rec in recordings:  # OUT/<split> is a folder inside OUT
        safe_name(rec.split, what=f'bag {rec.bag!r}: split', error=DataError)
    seen: dict[tuple[str, str], str] = {}
    for rec in recordings:  # one recording in two splits would leak windows between them
        # One identity per recording: its rosbag2 directory (also for its .mcap / .db3 file),
        # with relative paths and symlinks resolved.
        key = (str(bag_path(rec.bag).resolve()), rec.topic)
        if key in seen:
            raise DataError(f'bag {rec.bag!r} topic {rec.topic!r} is given twice (splits '
                            f'{seen[key]!r} and {rec.split!r}); each recording belongs to one '
                            'split')
        seen[key] = rec.split
    out = Path(out)
    for rec in recordings:
        topic_count(rec.bag, rec.topic)  # a missing bag or topic fails before the model
    labels, pairs = _labels_and_pairs(recordings, None if pairs_path is None
                                      else Path(pairs_path))
    backbone = backbone or settings.load_backbone()
    for rec in recordings:
        check_memory(rec, backbone, max_pixels=settings.max_image_pixels,
                     shard_size=shard_size, batch_frames=batch_frames)
    index = dict(format=FRAMES_FORMAT, settings=asdict(settings),
                 backbone=backbone.info.to_dict(), num_frames=settings.num_frames,
                 window_seconds=settings.window_seconds, shard_size=shard_size, stride=stride,
                 straddle=straddle, rule=STRADDLE_RULES[straddle],
                 labels=list(labels), symmetric_pairs=[list(p) for p in pairs],
                 recordings=[dict(**asdict(r), done=False, stamps=[], runs=[], shards=[],
                                  windows=[]) for r in recordings])
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    if index_path.is_file():
        old = read_resume_index(index_path)
        keys = ('format', 'backbone', 'num_frames', 'window_seconds')
        same = all(old.get(k) == index[k] for k in keys) and old.get(
            'shard_size', shard_size) == shard_size and [
            {k: r[k] for k in asdict(recordings[0])} for r in old.get('recordings', [])] == [
            asdict(r) for r in recordings]
        if not same:
            raise DataError(f'{out}: holds a cache of other recordings, backbone, T, window or '
                            'shard size; use an empty directory (or delete it) to extract afresh')
        index = {**old, **{k: index[k] for k in ('labels', 'symmetric_pairs', 'shard_size',
                                                 'stride', 'straddle', 'rule')}}
    job = _Job(out=out, index=index, backbone=backbone, sampler=settings.sampler,
               max_pixels=settings.max_image_pixels,
               shard_size=shard_size, batch_frames=batch_frames, dist=dist,
               progress=progress and (dist is None or dist.is_main))
    number = 0
    for rec, entry in zip(recordings, index['recordings']):
        number = number + len(entry['shards']) if entry['done'] else job.recording(
            rec, entry, first_shard=number)
    if dist is not None:
        dist.barrier()  # every rank's shards are written
        if not dist.is_main:
            return job.encoded
        missing = [s['file'] for e in index['recordings'] for s in e['shards']
                   if not (out / s['file']).is_file()]
        if missing:
            raise DataError(f'{out}: shards {missing} are missing after every rank finished; '
                            'run the same command again')
    why = []  # of recordings without a labelled window
    for rec, entry in zip(recordings, index['recordings']):  # also those of an earlier run
        timeline = load_timeline(rec.labels, labels=labels)
        if rec.relative:
            timeline = timeline.shifted(entry['stamps'][0])
        # The truth in stamp time, kept with the frames: `train --val-cache` replays the whole
        # recording through the decision stage without the timeline file.
        entry['segments'] = [[s.start_ns, s.end_ns, s.label] for s in timeline.segments]
        entry['windows'] = [list(w) for w in label_windows(
            entry['stamps'], entry['runs'], timeline, num_frames=settings.num_frames,
            stride=stride, straddle=straddle)]
        if not entry['windows']:
            why.append(unlabelled(rec, entry['stamps'], timeline))
            if (timeline.segments[-1].end_ns <= entry['stamps'][0]
                    or timeline.segments[0].start_ns > entry['stamps'][-1]):  # no overlap
                raise DataError(f'no window is labelled: {why[-1]}')
    if len(why) == len(recordings):
        raise DataError(f'no window is labelled (T={settings.num_frames}, straddle '
                        f'{straddle!r}): ' + '; '.join(why))
    _write_json(index_path, index)
    for record in out.glob(f'frames_*{RECORD}'):  # folded into the index now
        record.unlink()
    for split in sorted({r.split for r in recordings}):
        (out / split).mkdir(exist_ok=True)
        _write_json(out / split / INDEX, dict(format=WINDOWS_FORMAT, root='..', split=split))
    return job.encoded


RECORD = '.done.json'  # beside a shard a rank wrote: its stamps, for resuming


def read_resume_index(index_path: Path) -> dict:
    """The index of an earlier run, checked enough to resume from; else DataError naming it."""
    try:
        old = json.loads(index_path.read_text())
        for entry in old['recordings']:
            missing = [k for k in Recording.__dataclass_fields__ if k not in entry]
            if missing or not (isinstance(entry['done'], bool) and all(
                    isinstance(entry[k], list) for k in ('stamps', 'runs', 'shards'))):
                raise ValueError(f'recording {str(entry)[:120]}: expected '
                                 f'{list(Recording.__dataclass_fields__)}, done, stamps, runs '
                                 'and shards')
            for shard in entry['shards']:
                safe_name(shard['file'], what='shard file')
                if type(shard['count']) is not int or shard['count'] < 1:
                    raise ValueError(f'shard {str(shard)[:120]}: expected a count >= 1')
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f'{index_path}: damaged cache index, cannot resume '
                        f'({type(exc).__name__}: {exc}); delete the directory and extract '
                        'again') from exc
    return old


def estimate_bytes(*, height: int, width: int, tokens: int, dim: int, shard_size: int,
                   batch_frames: int) -> int:
    """Host memory extract --bag holds at its peak: a shard's decoded uint8 frames and its fp16
    tokens (twice, as they are joined), plus one batch's stacked frames, their float
    preprocessing and fp32 tokens."""
    frame = height * width * 3
    return shard_size * (frame + 4 * tokens * dim) + batch_frames * (5 * frame + 4 * tokens * dim)


def check_memory(rec: Recording, backbone: FrozenBackbone, *, max_pixels: int, shard_size: int,
                 batch_frames: int) -> int:
    """Estimate the peak host memory from the recording's first image; refuse (DataError) when
    it exceeds 80 % of the available memory. Returns the estimate in bytes (0: no image)."""
    frames = iter_frames(rec.bag, rec.topic, max_pixels=max_pixels)
    try:
        first = next(frames, None)
    finally:
        frames.close()
    if first is None:
        return 0
    height, width = first.image.shape[:2]
    sizes = dict(height=height, width=width, tokens=backbone.tokens_per_frame,
                 dim=backbone.info.embed_dim, batch_frames=batch_frames)
    need = estimate_bytes(shard_size=shard_size, **sizes)
    free = available_bytes()
    if free is not None and need > 0.8 * free:
        fits = max((k for k in range(1, shard_size) if estimate_bytes(shard_size=k, **sizes)
                    <= 0.8 * free), default=None)
        hint = f'--shard-size {fits}' if fits else 'a smaller max_image_pixels in --config'
        raise DataError(f'{rec.bag}: extract of {width}x{height} images in shards of '
                        f'{shard_size} frames needs about {need / 2**30:.1f} GiB, more than 80 % '
                        f'of the {free / 2**30:.1f} GiB available: lower --shard-size ({hint})')
    return need


def check_stamps(rec: Recording, order: dict) -> None:
    """DataError when the image header stamps are unset or do not increase: the node's sampler
    keeps frames by stamp, so such a recording gives no window."""
    n = order['frames']
    if n < 2 or 2 * order['stuck'] < n:
        return
    if order['zero'] == n:
        cause = f'all {n} image header stamps are 0 (the camera driver leaves header.stamp unset)'
    else:
        cause = f"{order['stuck']} of {n} image header stamps do not increase"
    raise DataError(f'{rec.bag} {rec.topic}: {cause}; windows follow header stamps, so stamp '
                    'the images at capture and record again')


def unlabelled(rec: Recording, stamps: list[int], timeline) -> str:
    """Why a recording has no labelled window: its timeline against its image stamps."""
    begin, end = timeline.segments[0].start_ns, timeline.segments[-1].end_ns
    text = (f'{rec.bag}: its timeline {rec.labels} spans {seconds(begin)}-{seconds(end)} s, '
            f'its sampled images {seconds(stamps[0])}-{seconds(stamps[-1])} s')
    if not rec.relative and end < stamps[0] and begin < 10**9 * 86400 <= stamps[0]:
        text += ' (seconds from the first image? pass --relative, into an empty --out)'
    return text


@dataclass
class _Job:
    """One extraction run: the shards of one recording at a time, this rank's share encoded."""

    out: Path
    index: dict
    backbone: FrozenBackbone
    sampler: Any  # () -> StampSampler
    max_pixels: int
    shard_size: int
    batch_frames: int
    dist: Dist | None
    progress: bool
    encoded: list[str] = field(default_factory=list)  # shard files encoded by this process

    def recording(self, rec: Recording, entry: dict, *, first_shard: int) -> int:
        """Read one recording, encode its shards of this rank; -> the next shard number.

        One process keeps `entry` (its shards, stamps, runs so far) and the index current
        after every shard; ranks write a record beside each shard instead, folded in by rank 0.
        """
        stats = ReadStats()
        bar = progress_bar(total=topic_count(rec.bag, rec.topic),
                           desc=f'extract {Path(rec.bag).name}', unit='frame',
                           disable=not self.progress)

        order = dict(frames=0, stuck=0, zero=0, last=None)  # header stamps as read

        def counted(source):
            for frame in source:
                bar.update(1)
                order['stuck'] += order['last'] is not None and frame.stamp_ns <= order['last']
                order['zero'] += frame.stamp_ns == 0
                order['frames'] += 1
                order['last'] = frame.stamp_ns
                yield frame

        earlier = list(entry['shards'])  # shards of an interrupted single-process run
        stamps: list[int] = []
        runs: list[int] = []
        shards: list[dict] = []
        pending: list[tuple[int, BagFrame]] = []

        def flush() -> None:
            shard = dict(file=f'frames_{first_shard + len(shards):05d}.safetensors',
                         count=len(pending))
            self.shard(rec, entry, shard, earlier=earlier[len(shards):len(shards) + 1],
                       begin=len(stamps) - len(pending), frames=pending, stamps=stamps,
                       runs=runs)
            shards.append(shard)
            pending.clear()

        frames = iter_frames(rec.bag, rec.topic, stats=stats, max_pixels=self.max_pixels)
        for run, frame in sampled(counted(frames), self.sampler()):
            stamps.append(frame.stamp_ns)
            runs.append(run)
            pending.append((run, frame))
            if len(pending) == self.shard_size:
                flush()
        if pending:
            flush()
        bar.close()
        check_stamps(rec, order)
        if not stamps:
            raise DataError(f'{rec.bag} {rec.topic}: no decodable image ({stats.messages} '
                            f'messages, skipped {dict(stats.skipped)}: {stats.reasons})')
        entry.update(done=True, stamps=stamps, runs=runs, shards=shards, images=stats.to_dict())
        if self.dist is None:
            _write_json(self.out / INDEX, self.index)
        return first_shard + len(shards)

    def shard(self, rec: Recording, entry: dict, shard: dict, *, earlier: list[dict],
              begin: int, frames: list[tuple[int, BagFrame]], stamps: list[int],
              runs: list[int]) -> None:
        """Encode one shard unless an earlier run did (stamps checked) or another rank owns it."""
        mine = [f.stamp_ns for _, f in frames]
        name = shard['file']
        number = int(name[len('frames_'):-len('.safetensors')])
        record_path = self.out / (name[:-len('.safetensors')] + RECORD)
        key = dict(backbone=self.index['backbone'], num_frames=self.index['num_frames'],
                   window_seconds=self.index['window_seconds'], shard_size=self.shard_size)
        if earlier:  # listed by the index of an interrupted single-process run
            done = earlier[0]['file'] == name and earlier[0]['count'] == len(frames) and (
                entry['stamps'][begin:begin + len(frames)] == mine)
            if not done:
                raise DataError(f'{rec.bag}: sampled frames {begin}-{begin + len(frames) - 1} '
                                f'differ from those of {name} in the cache; the bag changed: '
                                'extract into an empty directory')
        elif record_path.is_file() and (self.out / name).is_file():
            try:
                record = json.loads(record_path.read_text())
                same = record['key'] == key and record['stamps'] == mine
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(f'{record_path}: damaged shard record ({type(exc).__name__}: '
                                f'{exc}); delete it and its shard {name}, then run the same '
                                'command again') from exc
            if not same:
                raise DataError(f'{record_path}: a shard of another bag, backbone, T, window or '
                                'shard size; use an empty directory (or delete it) to extract '
                                'afresh')
        elif self.dist is None or number % self.dist.world_size == self.dist.rank:
            tokens = encode(self.backbone, [f.image for _, f in frames],
                            batch_frames=self.batch_frames)
            tmp = self.out / (name + '.tmp')
            save_file({'tokens': tokens}, str(tmp))
            os.replace(tmp, self.out / name)
            self.encoded.append(name)
            if self.dist is not None:
                _write_json(record_path, dict(key=key, file=name, stamps=mine))
        else:
            return  # another rank's shard
        if self.dist is None and not earlier:  # the index lists every shard done so far
            entry['shards'].append(dict(shard))
            entry['stamps'] = stamps[:begin + len(frames)]
            entry['runs'] = runs[:begin + len(frames)]
            _write_json(self.out / INDEX, self.index)


def encode(backbone: FrozenBackbone, images: list[np.ndarray], *, batch_frames: int
           ) -> torch.Tensor:
    """Tokens (F, 1 + N, D) fp16 on the CPU, by the calls the engine makes per frame."""
    out = []
    i = 0
    while i < len(images):
        j = i + 1  # frames of one size share a batch
        while j < len(images) and j - i < batch_frames and images[j].shape == images[i].shape:
            j += 1
        pixels = backbone.preprocess(backbone.to_device(np.stack(images[i:j])))
        out.append(backbone.forward_pixels(pixels).to('cpu', torch.float16))  # (b, 1+N, D)
        i = j
    return torch.cat(out).contiguous()
