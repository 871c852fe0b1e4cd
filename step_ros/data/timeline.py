"""Ground-truth timelines for bags: a CSV of `start,end,label` in seconds of bag time.

A header row names the columns (start, end, label in any order; other columns are ignored);
without one, the first three columns are start, end, label.

Bag time is the time of the image header stamps (`replay` publishes the recording time on /clock,
which for camera bags is close to it). Segments
are half-open [start, end); time between segments is unlabelled and not scored. Times are kept
as integer nanoseconds, so a frame stamped exactly on a boundary belongs to the later segment.
"""

from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

HEADER = ('start', 'end', 'label')


class TimelineError(ValueError):
    """The timeline file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Segment:
    start_ns: int
    end_ns: int
    label: str
    line: int = 0  # line in the CSV file, for error messages


class Timeline:
    """Sorted, non-overlapping labelled segments."""

    def __init__(self, segments: list[Segment], *, source: str = '<timeline>') -> None:
        self.segments = sorted(segments, key=lambda s: s.start_ns)
        self.source = source
        for prev, seg in zip(self.segments, self.segments[1:]):
            if seg.start_ns < prev.end_ns:
                raise TimelineError(
                    f'{source}:{seg.line}: segment {seconds(seg.start_ns)}-{seconds(seg.end_ns)} '
                    f'{seg.label!r} overlaps line {prev.line} ({seconds(prev.start_ns)}-'
                    f'{seconds(prev.end_ns)} {prev.label!r})')
        self.starts = [s.start_ns for s in self.segments]

    @property
    def labels(self) -> set[str]:
        return {s.label for s in self.segments}

    def segment_at(self, t_ns: int) -> Segment | None:
        i = bisect.bisect_right(self.starts, t_ns) - 1
        if i >= 0 and t_ns < self.segments[i].end_ns:
            return self.segments[i]
        return None

    def label_at(self, t_ns: int) -> str | None:
        seg = self.segment_at(t_ns)
        return None if seg is None else seg.label

    def label_over(self, t0_ns: int, t1_ns: int) -> str | None:
        """The label when [t0, t1] lies inside one segment, else None."""
        seg = self.segment_at(t0_ns)
        return seg.label if seg is not None and t1_ns < seg.end_ns else None

    def shifted(self, offset_ns: int) -> Timeline:
        return Timeline([Segment(s.start_ns + offset_ns, s.end_ns + offset_ns, s.label, s.line)
                         for s in self.segments], source=self.source)

    def check_labels(self, labels) -> None:
        """TimelineError naming the first line whose label is not in `labels`."""
        known = set(labels)
        for seg in sorted(self.segments, key=lambda s: s.line):
            if seg.label not in known:
                raise TimelineError(f'{self.source}:{seg.line}: unknown label {seg.label!r}; the '
                                    f'head knows {sorted(known)}')


def load_timeline(path: str | Path, *, labels=None) -> Timeline:
    """Read and validate a timeline CSV; `labels` (if given) are the ones allowed."""
    path = Path(path)
    if not path.is_file():
        raise TimelineError(f'timeline {str(path)!r} does not exist')
    segments = []
    columns = None  # of start, end, label, from a header; without one the first three
    # utf-8-sig: a byte-order mark (spreadsheets write one) is not part of the first cell
    with path.open(newline='', encoding='utf-8-sig') as f:
        rows = csv.reader(f)
        for line, row in enumerate(rows, start=1):
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or cells[0].startswith('#'):
                continue
            if columns is None and not segments and not _is_number(cells[0]):
                columns = _header(cells, line, path)
                continue
            if columns is not None:
                if len(cells) <= max(columns):
                    raise TimelineError(f'{path}:{line}: {len(cells)} columns, the header names '
                                        f'{max(columns) + 1}: {",".join(cells)!r}')
                cells = [cells[i] for i in columns]
            segments.append(_segment(cells, line, path))
    if not segments:
        raise TimelineError(f'{path}: no segments (expected lines of start,end,label)')
    timeline = Timeline(segments, source=str(path))
    if labels is not None:
        timeline.check_labels(labels)
    return timeline


def _is_number(cell: str) -> bool:
    try:
        Decimal(cell)
    except InvalidOperation:
        return False
    return True


def _header(cells: list[str], line: int, path: Path) -> list[int]:
    """The columns of start, end and label in a header row; other columns are ignored."""
    names = [c.lower() for c in cells]
    missing = [name for name in HEADER if name not in names]
    if missing:
        raise TimelineError(f'{path}:{line}: the header {",".join(cells)!r} has no column '
                            f'{", ".join(missing)} (expected start,end,label; other columns '
                            'are ignored)')
    return [names.index(name) for name in HEADER]


def _segment(cells: list[str], line: int, path: Path) -> Segment:
    if len(cells) != 3:
        raise TimelineError(f'{path}:{line}: expected 3 columns start,end,label, got '
                            f'{len(cells)}: {",".join(cells)!r}')
    try:
        start, end = (int(Decimal(c) * 1_000_000_000) for c in cells[:2])
    except (InvalidOperation, ValueError, OverflowError):
        raise TimelineError(f'{path}:{line}: start and end must be seconds, got '
                            f'{cells[0]!r}, {cells[1]!r}') from None
    if not cells[2]:
        raise TimelineError(f'{path}:{line}: empty label')
    if not end > start:
        raise TimelineError(f'{path}:{line}: end {cells[1]} is not after start {cells[0]}')
    return Segment(start, end, cells[2], line)


def seconds(t_ns: int) -> str:
    """Exact decimal seconds of a nanosecond time."""
    sign = '-' if t_ns < 0 else ''
    whole, frac = divmod(abs(t_ns), 1_000_000_000)
    return f'{sign}{whole}.{frac:09d}'



def write_timeline(path: str | Path, segments) -> Path:
    """Write (start_ns, end_ns, label) rows as seconds, with a header."""
    path = Path(path)
    with path.open('w', newline='') as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for start_ns, end_ns, label in segments:
            out.writerow([seconds(start_ns), seconds(end_ns), label])
    return path
