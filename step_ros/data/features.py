"""Clip lists, video reading and the feature cache of frozen-backbone tokens.

A cache directory holds fp16 shards (`shard_00000.safetensors`, tensor `tokens` of shape
(clips, T, 1 + N, D)) and `index.json` (backbone, T, labels, symmetric pairs, one entry per clip,
and the labels of every further task: a CSV column besides path, label, start and end is a task
of that name, e.g. synth's `object`).
Shards are written whole and the index is replaced atomically after each, so an interrupted
extraction resumes at the first clip without a shard.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from step_ros.data.names import safe_name
from step_ros.distributed import Dist
from step_ros.model.backbone import FrozenBackbone
from step_ros.model.checkpoint import MAX_FRAMES, validate_labels, validate_pairs
from step_ros.progress import progress_bar

FORMAT = 'step_ros.features/1'
INDEX = 'index.json'


class DataError(ValueError):
    """A clip list, pair list, video or cache cannot be used; the message names it."""


@dataclass(frozen=True)
class Clip:
    path: str  # absolute path of the video
    label: str
    start: float | None = None  # seconds; None: from the first frame
    end: float | None = None  # seconds; None: to the last frame


COLUMNS = ('path', 'label', 'start', 'end')  # any other column is a further task


@dataclass(frozen=True)
class ClipList:
    clips: tuple[Clip, ...]
    labels: tuple[str, ...]
    symmetric_pairs: tuple[tuple[str, str], ...]
    source: str
    # further tasks: name -> the label of every clip, in clip order (the `label` column is the
    # main task, the one the symmetric pairs and `labels` are about)
    tasks: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _float(value: str, *, where: str) -> float | None:
    if value is None or value.strip() == '':
        return None
    try:
        seconds = float(value)
    except ValueError as exc:
        raise DataError(f'{where}: {value!r} is not a number of seconds') from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise DataError(f'{where}: {value!r} is not a finite number of seconds >= 0')
    return seconds


def read_pairs(path: Path) -> tuple[tuple[str, ...] | None, list]:
    """pairs.yaml -> (labels or None, raw symmetric pairs)."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f'{path}: cannot read the pair list: {exc}') from exc
    if not isinstance(values, dict) or not isinstance(values.get('symmetric_pairs', []), list):
        raise DataError(f'{path}: expected a mapping with symmetric_pairs: [[a, b], ...]')
    unknown = sorted(set(values) - {'labels', 'symmetric_pairs'})
    if unknown:
        raise DataError(f'{path}: unknown keys {unknown}; known: labels, symmetric_pairs')
    labels = values.get('labels')
    if labels is not None:
        try:
            labels = validate_labels(labels)
        except ValueError as exc:
            raise DataError(f'{path}: {exc}') from exc
    return labels, values.get('symmetric_pairs', [])


def read_clip_list(csv_path: str | Path, *, pairs_path: str | Path | None = None) -> ClipList:
    """CSV `path,label[,start,end]` (paths relative to the CSV) + pairs.yaml -> ClipList.

    Without `pairs_path`, a pairs.yaml beside the CSV is used when present.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f'{csv_path}: no such clip list')
    with csv_path.open(newline='') as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if not header:
            raise DataError(f'{csv_path}: empty clip list; expected a header path,label[,start,'
                            'end] and one row per clip')
        missing = [c for c in ('path', 'label') if c not in header]
        if missing:
            raise DataError(f'{csv_path}: header {header} lacks {missing}')
        clips = []
        task_names = [safe_name(c, what=f'{csv_path}: task column', error=DataError)
                      for c in header if c not in COLUMNS]
        task_rows: dict[str, list[str]] = {name: [] for name in task_names}
        for line, row in enumerate(reader, start=2):
            where = f'{csv_path}:{line}'
            if not row['path'] or not row['label']:
                raise DataError(f'{where}: empty path or label')
            for name in task_names:
                value = (row.get(name) or '').strip()
                if not value:
                    raise DataError(f'{where}: empty {name!r} (a task column: every clip needs '
                                    'a label)')
                task_rows[name].append(value)
            video = (csv_path.parent / row['path']).resolve()
            if not video.is_file():
                raise DataError(f'{where}: video {row["path"]!r} not found ({video})')
            start = _float(row.get('start'), where=f'{where} start')
            end = _float(row.get('end'), where=f'{where} end')
            if start is not None and end is not None and end <= start:
                raise DataError(f'{where}: end {end} is not after start {start}')
            clips.append(Clip(str(video), row['label'].strip(), start, end))
    if not clips:
        raise DataError(f'{csv_path}: empty clip list (a header but no clips)')
    if pairs_path is None and (csv_path.parent / 'pairs.yaml').is_file():
        pairs_path = csv_path.parent / 'pairs.yaml'
    labels, raw_pairs = (None, []) if pairs_path is None else read_pairs(Path(pairs_path))
    present = sorted({c.label for c in clips})
    if labels is None:
        labels = tuple(present)
    else:
        extra = [name for name in present if name not in labels]
        if extra:
            raise DataError(f'{csv_path}: labels {extra} are not in the labels of {pairs_path}')
    if len(labels) < 2:
        raise DataError(f'{csv_path}: needs at least 2 labels, found {list(labels)}')
    try:
        pairs = validate_pairs(labels, raw_pairs)
    except ValueError as exc:
        raise DataError(f'{pairs_path}: {exc}') from exc
    tasks = tuple((name, tuple(values)) for name, values in task_rows.items())
    return ClipList(tuple(clips), tuple(labels), pairs, str(csv_path), tasks)


def sample_indices(count: int, num_frames: int, *, fps: float, start: float | None,
                   end: float | None) -> np.ndarray:
    """T frame indices spread uniformly over [start, end) of a clip of `count` frames."""
    first = 0 if start is None else int(round(start * fps))
    last = count - 1 if end is None else int(round(end * fps)) - 1
    first, last = max(0, min(first, count - 1)), max(0, min(last, count - 1))
    return np.round(np.linspace(first, max(first, last), num_frames)).astype(int)


def read_frames(clip: Clip, num_frames: int) -> tuple[np.ndarray, float]:
    """Decode a clip -> (T sampled RGB frames (T, H, W, 3) uint8, their node window in seconds).

    The window is the `window_seconds` under which the node keeps frames spaced as these are:
    it keeps one frame every window/T seconds, so T frames spaced d apart need window = T * d.

    Only the sampled frames are converted and kept: the others are grabbed and skipped, so a
    long video with start/end seconds costs no memory. Containers that report no usable frame
    count are counted by a first pass (nothing kept), then read like the others.
    """
    capture = _open(clip)
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    try:
        if count > 0:
            check_span(clip, count=count, fps=fps)
            index = sample_indices(count, num_frames, fps=fps, start=clip.start, end=clip.end)
            kept = _grab(capture, index)
            if kept is not None:
                return kept, node_window(index, fps)
    finally:
        capture.release()
    capture = _open(clip)  # the reported frame count was wrong: count the frames first
    try:
        count = 0
        while capture.grab():
            count += 1
    finally:
        capture.release()
    if not count:
        raise DataError(f'{clip.path}: no frame could be decoded (unreadable or empty video)')
    check_span(clip, count=count, fps=fps)
    index = sample_indices(count, num_frames, fps=fps, start=clip.start, end=clip.end)
    capture = _open(clip)
    try:
        kept = _grab(capture, index)
    finally:
        capture.release()
    if kept is None:
        raise DataError(f'{clip.path}: the video ended before frame {index[-1]} while reading '
                        f'the {count} frames it has (unreadable or changing file)')
    return kept, node_window(index, fps)


def check_span(clip: Clip, *, count: int, fps: float) -> None:
    """Refuse start / end seconds outside a video of `count` frames (they would repeat its
    last frame)."""
    duration = count / fps
    slack = 1.0 / fps  # end may name the end of the last frame, rounded
    if clip.start is not None and clip.start >= duration:
        raise DataError(f'{clip.path}: start {clip.start} s is not inside the video '
                        f'({count} frames at {fps:g} fps: {duration:.3f} s)')
    if clip.end is not None and clip.end > duration + slack:
        raise DataError(f'{clip.path}: end {clip.end} s is beyond the end of the video '
                        f'({count} frames at {fps:g} fps: {duration:.3f} s)')


def node_window(index: np.ndarray, fps: float) -> float:
    """window_seconds of the node that samples frames as far apart as `index` (see read_frames)."""
    count = len(index)
    if count < 2 or index[-1] == index[0]:
        return float(count / fps)
    spacing = (index[-1] - index[0]) / fps / (count - 1)
    return float(count * spacing)


def _open(clip: Clip) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(clip.path)
    if not capture.isOpened():
        raise DataError(f'{clip.path}: OpenCV cannot open this video (unreadable or not a '
                        'video)')
    return capture


def _grab(capture: cv2.VideoCapture, index: list[int]) -> np.ndarray | None:
    """The frames at sorted `index` as RGB (T, H, W, 3), or None if the video ends early."""
    wanted = set(index)
    kept: dict[int, np.ndarray] = {}
    for position in range(index[-1] + 1):
        if not capture.grab():
            return None
        if position in wanted:
            ok, frame = capture.retrieve()
            if not ok:
                return None
            kept[position] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    return np.stack([kept[i] for i in index])


ENCODE_CHUNK = 64  # frames per backbone pass in extract: bounds the activations of a long T


def _encode(backbone: FrozenBackbone, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> fp16 tokens (F, 1+N, D) on the host, ENCODE_CHUNK at a time."""
    return torch.cat([backbone(frames[i:i + ENCODE_CHUNK]).to('cpu', torch.float16)
                      for i in range(0, len(frames), ENCODE_CHUNK)])


def estimate_bytes(*, height: int, width: int, tokens: int, dim: int, num_frames: int,
                   shard_size: int, batch_clips: int) -> int:
    """Host memory extract holds at its peak: a shard of fp16 tokens, plus the decoded uint8
    frames, their float copies and fp32 tokens of one batch of clips."""
    frame = height * width * 3
    per_frame = frame + 4 * frame + 4 * tokens * dim  # uint8, float preprocessing, fp32 output
    return num_frames * (shard_size * tokens * dim * 2 + batch_clips * per_frame)


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(clip: Clip, backbone: FrozenBackbone, *, num_frames: int, shard_size: int,
                 batch_clips: int) -> int:
    """Estimate extract's peak host memory from the first clip's frame size; refuse (DataError)
    when it exceeds 80 % of the available memory. Returns the estimate in bytes."""
    capture = _open(clip)
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    need = estimate_bytes(height=max(height, 1), width=max(width, 1),
                          tokens=backbone.tokens_per_frame, dim=backbone.info.embed_dim,
                          num_frames=num_frames, shard_size=shard_size,
                          batch_clips=batch_clips)
    free = available_bytes()
    if free is not None and need > 0.8 * free:
        raise DataError(f'extract of {num_frames} frames per clip ({width}x{height} video, '
                        f'shards of {shard_size} clips) needs about {need / 2**30:.1f} GiB, '
                        f'more than 80 % of the {free / 2**30:.1f} GiB available: lower '
                        '--frames or --shard-size')
    return need


def read_index(index_path: Path) -> dict:
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f'{index_path}: damaged cache index ({exc}); delete the cache '
                        'directory and extract again') from exc
    if not isinstance(index, dict):
        raise DataError(f'{index_path}: damaged cache index (a JSON {type(index).__name__}, '
                        'expected an object); delete the cache directory and extract again')
    return index


def _write_json(path: Path, values: dict) -> None:
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(values, indent=1) + '\n')
    os.replace(tmp, path)


def open_index(clip_list: ClipList, backbone: FrozenBackbone, *, num_frames: int,
               out: Path) -> dict:
    """The index of `out`: a new one, or the matching partial one to resume (else DataError)."""
    out.mkdir(parents=True, exist_ok=True)
    clips = [asdict(c) for c in clip_list.clips]
    index = dict(format=FORMAT, backbone=backbone.info.to_dict(), num_frames=num_frames,
                 labels=list(clip_list.labels),
                 symmetric_pairs=[list(p) for p in clip_list.symmetric_pairs],
                 source=clip_list.source, clips=clips, spans=[], shards=[],
                 tasks={name: list(values) for name, values in clip_list.tasks})
    index_path = out / INDEX
    if index_path.is_file():
        old = read_index(index_path)
        try:
            _check_index(old)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f'{index_path}: damaged cache index, cannot resume ({exc}); delete '
                            'the cache directory and extract again') from exc
        same = all(old.get(k) == index[k] for k in ('format', 'backbone', 'num_frames', 'clips'))
        if not same:
            raise DataError(f'{out}: holds a cache of other clips, backbone or T; use an empty '
                            'directory (or delete it) to extract afresh')
        # Tokens stay valid; the label list and pairs (pairs.yaml may have been edited) are the
        # clip list's own.
        index = {**old, 'labels': index['labels'], 'symmetric_pairs': index['symmetric_pairs'],
                 'source': index['source'], 'tasks': index['tasks']}
        _write_json(index_path, index)
    return index


def extract(clip_list: ClipList, backbone: FrozenBackbone, *, num_frames: int, out: str | Path,
            shard_size: int = 64, batch_clips: int = 8, progress: bool = True,
            dist: Dist | None = None) -> Path:
    """Encode every clip's T frames once; resumes a matching partial cache in `out`.

    With `dist` (a torchrun process group; `out` on a file system all ranks share), shard k of
    the single-process run goes to rank k mod W, so the cache is the same shards of the same
    clips; see extract_ranked.
    """
    if not 1 <= num_frames <= MAX_FRAMES:
        raise DataError(f'num_frames={num_frames}: must be in [1, {MAX_FRAMES}] (a head takes '
                        f'at most {MAX_FRAMES} frames)')
    check_memory(clip_list.clips[0], backbone, num_frames=num_frames,
                 shard_size=min(shard_size, len(clip_list.clips)), batch_clips=batch_clips)
    if dist is not None:
        return extract_ranked(clip_list, backbone, num_frames=num_frames, out=out,
                              shard_size=shard_size, batch_clips=batch_clips,
                              progress=progress, dist=dist)
    out = Path(out)
    index = open_index(clip_list, backbone, num_frames=num_frames, out=out)
    index_path = out / INDEX
    clips = index['clips']
    done = sum(s['count'] for s in index['shards'])
    bar = progress_bar(total=len(clips), initial=done, desc='extract', unit='clip',
                       disable=not progress)
    while done < len(clips):
        chunk = clip_list.clips[done:done + shard_size]
        tokens, spans = encode_chunk(chunk, backbone, num_frames=num_frames,
                                     batch_clips=batch_clips, bar=bar)
        name = f'shard_{len(index["shards"]):05d}.safetensors'
        save_file({'tokens': tokens}, str(out / name))
        index['shards'].append(dict(file=name, count=len(chunk)))
        index['spans'] += spans
        _write_json(index_path, index)
        done += len(chunk)
    bar.close()
    return out


def encode_chunk(chunk: tuple[Clip, ...], backbone: FrozenBackbone, *, num_frames: int,
                 batch_clips: int, bar) -> tuple[torch.Tensor, list[float]]:
    """The tokens (clips, T, 1+N, D) fp16 and node windows of the clips of one shard."""
    tokens, spans = [], []
    for i in range(0, len(chunk), batch_clips):
        batch = [read_frames(c, num_frames) for c in chunk[i:i + batch_clips]]
        if len({f.shape for f, _ in batch}) > 1:  # clips of different sizes: one at a time
            encoded = torch.cat([_encode(backbone, f) for f, _ in batch])
        else:
            encoded = _encode(backbone, np.concatenate([f for f, _ in batch]))
        tokens.append(encoded.reshape(len(batch), num_frames,
                                      *encoded.shape[1:]))  # (b, T, 1+N, D)
        spans += [s for _, s in batch]
        bar.update(len(batch))
    return torch.cat(tokens).contiguous(), spans


def extract_ranked(clip_list: ClipList, backbone: FrozenBackbone, *, num_frames: int,
                   out: str | Path, shard_size: int, batch_clips: int, progress: bool,
                   dist: Dist) -> Path:
    """`extract` under torchrun: every rank encodes its shards, rank 0 then writes the index.

    The shards are the single-process run's (shard k holds clips [k*S, (k+1)*S) after those an
    existing partial index already lists), each rank taking every W-th. A rank writes a shard
    atomically and then a small `shard_k.json` beside it (its clips and node windows); on a
    re-run, shards with such a record are skipped, so every rank resumes where it stopped
    whatever the world size. After a barrier rank 0 folds the records into index.json exactly as
    a single process would have written it and removes them.
    """
    out = Path(out)
    index_path = out / INDEX
    if dist.is_main:  # creates or checks (and refreshes) the index before anyone encodes
        _write_json(index_path, open_index(clip_list, backbone, num_frames=num_frames, out=out))
    dist.barrier()
    if not index_path.is_file():
        raise DataError(f'{out}: rank 0 wrote no {INDEX}; is --out on a file system that every '
                        'rank shares?')
    index = read_index(index_path)
    first = sum(s['count'] for s in index['shards'])
    starts = list(range(first, len(clip_list.clips), shard_size))
    plan = [(len(index['shards']) + k, start) for k, start in enumerate(starts)]
    size = {start: len(clip_list.clips[start:start + shard_size]) for start in starts}
    mine = [(k, start) for k, start in plan[dist.rank::dist.world_size]
            if _record(out, k, start=start, count=size[start]) is None]
    bar = progress_bar(total=sum(size[start] for _, start in mine),
                       desc=f'extract rank {dist.rank}/{dist.world_size}', unit='clip',
                       disable=not (progress and dist.is_main))
    for k, start in mine:
        chunk = clip_list.clips[start:start + shard_size]
        tokens, spans = encode_chunk(chunk, backbone, num_frames=num_frames,
                                     batch_clips=batch_clips, bar=bar)
        name = f'shard_{k:05d}.safetensors'
        tmp = out / f'{name}.rank{dist.rank}.tmp'
        save_file({'tokens': tokens}, str(tmp))
        os.replace(tmp, out / name)
        _write_json(out / f'shard_{k:05d}.json', dict(start=start, count=len(chunk),
                                                       spans=spans))
    bar.close()
    dist.barrier()
    if dist.is_main:
        for k, start in plan:
            record = _record(out, k, start=start, count=size[start])
            if record is None:
                raise DataError(f'{out}: shard {k} was not written by its rank')
            index['shards'].append(dict(file=f'shard_{k:05d}.safetensors',
                                        count=record['count']))
            index['spans'] += record['spans']
        _write_json(index_path, index)
        for k, _ in plan:
            (out / f'shard_{k:05d}.json').unlink()
    dist.barrier()  # every rank returns once the index is complete
    return out


def _record(out: Path, k: int, *, start: int, count: int) -> dict | None:
    """The record of a finished shard k of clips [start, start + count), or None."""
    path = out / f'shard_{k:05d}.json'
    if not path.is_file() or not (out / f'shard_{k:05d}.safetensors').is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # damaged (written by hand, disk full): the shard is encoded again
    if not isinstance(record, dict) or not isinstance(record.get('spans'), list):
        return None
    return record if (record.get('start'), record.get('count')) == (start, count) else None


@dataclass
class FeatureCache:
    tokens: torch.Tensor  # (clips, T, 1 + N, D) fp16
    targets: torch.Tensor  # (clips,) int64 label ids
    labels: tuple[str, ...]
    symmetric_pairs: tuple[tuple[str, str], ...]
    backbone: dict
    num_frames: int
    window_seconds: float  # median node window of the clips (see read_frames)
    path: str
    tasks: dict[str, list[str]] | None = None  # further tasks: name -> label of every clip
    # Windows that straddle segments: where their labels switch to the new segment, as a
    # fraction of the window back from the newest frame (bag_cache.SWITCH_FRACTION); None
    # when every window lies inside one segment (clips, `--straddle drop`).
    switch_fraction: float | None = None

    @classmethod
    def load(cls, path: str | Path) -> FeatureCache:
        """Read a clip cache (`caches.load_cache` reads either kind); DataError names index.json
        or the shard that is damaged."""
        path = Path(path)
        index_path = path / INDEX
        if not index_path.is_file():
            raise DataError(f'{path}: not a feature cache (no {INDEX}); run '
                            '`python -m step_ros extract` first')
        index = read_index(index_path)
        if index.get('format') != FORMAT:
            raise DataError(f'{index_path}: format {index.get("format")!r}, expected {FORMAT!r}')
        try:
            labels, pairs, clips, shards, spans, num_frames = _check_index(index)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f'{index_path}: damaged cache index: {exc}; delete the cache '
                            'directory and extract again') from exc
        done = sum(s['count'] for s in shards)
        if done != len(clips) or not done:
            raise DataError(f'{path}: incomplete cache ({done}/{len(clips)} clips); '
                            'run extract again to finish it')
        parts = [_load_shard(path, s, num_frames=num_frames) for s in shards]
        for shard, part in zip(shards, parts):
            if part.shape[1:] != parts[0].shape[1:]:
                raise DataError(f"{path / shard['file']}: tokens of shape {list(part.shape)} "
                                f"do not match {list(parts[0].shape)} of {shards[0]['file']}")
        tokens = torch.cat(parts)
        targets = torch.tensor([labels.index(c['label']) for c in clips])
        tasks = index.get('tasks') or {}
        if not isinstance(tasks, dict) or any(
                not isinstance(v, list) or len(v) != len(clips)
                or not all(isinstance(x, str) for x in v) for v in tasks.values()):
            raise DataError(f'{index_path}: damaged cache index: tasks must map a name to one '
                            'label per clip; delete the cache directory and extract again')
        for name in tasks:  # head and report folder names derive from task names
            safe_name(name, what=f'{index_path}: task', error=DataError)
        return cls(tokens=tokens, targets=targets, labels=labels, symmetric_pairs=pairs,
                   backbone=index['backbone'], num_frames=num_frames,
                   window_seconds=float(np.median(spans)), path=str(path), tasks=tasks)

    def task(self, name: str) -> tuple[tuple[str, ...], torch.Tensor, tuple]:
        """(labels, targets (clips,), symmetric pairs) of a task.

        A further task's own column when the clip list had one, else the main `label` column
        (whatever the task is called: `--task gesture` on a path,label list trains on labels).
        """
        if name not in (self.tasks or {}):
            return self.labels, self.targets, self.symmetric_pairs
        values = self.tasks[name]
        labels = tuple(sorted(set(values)))
        return labels, torch.tensor([labels.index(v) for v in values]), ()

    @property
    def num_patches(self) -> int:
        return self.tokens.shape[2] - 1

    @property
    def dim(self) -> int:
        return self.tokens.shape[3]


def _check_index(index: dict) -> tuple:
    """The parts of a cache index FeatureCache needs, checked; ValueError / KeyError says which."""
    labels = validate_labels(index['labels'])
    pairs = validate_pairs(labels, index['symmetric_pairs'])
    num_frames = index['num_frames']
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or \
            not 1 <= num_frames <= MAX_FRAMES:
        raise ValueError(f'num_frames {num_frames!r}: expected an integer in [1, {MAX_FRAMES}]')
    if not isinstance(index['backbone'], dict):
        raise ValueError('backbone: expected an object')
    clips, shards, spans = index['clips'], index['shards'], index['spans']
    if not all(isinstance(v, list) for v in (clips, shards, spans)):
        raise ValueError('clips, shards and spans must be lists')
    for i, clip in enumerate(clips):
        if not isinstance(clip, dict) or clip.get('label') not in labels:
            raise ValueError(f'clip {i} {str(clip)[:120]}: no label of {list(labels)}')
    for shard in shards:
        if not isinstance(shard, dict) or not isinstance(shard.get('file'), str) or \
                isinstance(shard.get('count'), bool) or not isinstance(shard.get('count'), int) \
                or shard['count'] < 1:
            raise ValueError(f'shard entry {str(shard)[:120]}: expected {{file: name, count: n}}')
        safe_name(shard['file'], what='shard entry: file')  # a file inside the cache
    extracted = sum(shard['count'] for shard in shards)
    if len(spans) != extracted or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in spans):
        raise ValueError(f'spans: expected one finite window > 0 per extracted clip '
                         f'({extracted}), got {len(spans)}')
    return labels, pairs, clips, shards, spans, num_frames


def _load_shard(path: Path, shard: dict, *, num_frames: int) -> torch.Tensor:
    """One shard's tokens (count, T, 1+N, D), checked against its index entry."""
    file = path / shard['file']
    try:
        tokens = load_file(str(file))['tokens']
    except FileNotFoundError as exc:
        raise DataError(f'{file}: shard listed in {path / INDEX} is missing; extract '
                        'again') from exc
    except Exception as exc:  # safetensors raises several types for damaged files
        raise DataError(f'{file}: damaged shard ({type(exc).__name__}: {exc}); delete it and '
                        f'its entry in {INDEX}, or extract again') from exc
    if tokens.ndim != 4 or tokens.shape[0] != shard['count'] or tokens.shape[1] != num_frames \
            or tokens.shape[2] < 2:
        raise DataError(f'{file}: tokens of shape {list(tokens.shape)}, but {path / INDEX} '
                        f'says {shard["count"]} clips x {num_frames} frames')
    if not tokens.is_floating_point() or not bool(torch.isfinite(tokens).all()):
        raise DataError(f'{file}: tokens are not finite floats ({tokens.dtype}); extract again')
    return tokens
