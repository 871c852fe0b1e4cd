"""Metrics of a label stream against a ground-truth timeline (ROS-free; numpy only).

- Temporal action segmentation (as in MS-TCN, Farha & Gall 2019): the segmental edit score
  (0-100: 100 * (1 - Levenshtein distance of the segment label sequences / the longer length))
  and F1@IoU (a predicted segment is a true positive when its IoU with a not yet matched true
  segment of the same label reaches the threshold). Background segments are left out of both,
  as in MS-TCN's `bg_class`.
- Stream stability: label changes per minute.
- Action events: START precision / recall / F1 against the true segments, onset latency and
  false starts during background.
- Per-frame mAP (online action detection): average precision of each non-background class's
  probability over the frames, averaged over the classes that occur.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = (0.1, 0.25, 0.5)


def segments(labels: Sequence[str], *, background: str | None = None
             ) -> list[tuple[str, int, int]]:
    """Runs of equal labels as (label, start index, end index exclusive), background dropped."""
    out = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start] != background:
                out.append((labels[start], start, i))
            start = i
    return out


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def edit_score(predicted: Sequence[str], truth: Sequence[str], *,
               background: str | None = None) -> float:
    """Segmental edit score, 0-100 (100 when both have no segments)."""
    p = [s[0] for s in segments(predicted, background=background)]
    t = [s[0] for s in segments(truth, background=background)]
    longest = max(len(p), len(t))
    return 100.0 if longest == 0 else 100.0 * (1.0 - levenshtein(p, t) / longest)


def f1_at_iou(predicted: Sequence[str], truth: Sequence[str], threshold: float, *,
              background: str | None = None) -> float:
    """Segmental F1 at an IoU threshold (0-1), as MS-TCN's f_score."""
    p = segments(predicted, background=background)
    t = segments(truth, background=background)
    if not p and not t:
        return 1.0
    hit = [False] * len(t)
    tp = 0
    for label, start, end in p:
        best, best_iou = -1, 0.0
        for j, (t_label, t_start, t_end) in enumerate(t):
            if t_label != label:
                continue
            inter = max(0, min(end, t_end) - max(start, t_start))
            iou = inter / (max(end, t_end) - min(start, t_start))
            if iou > best_iou:
                best, best_iou = j, iou
        if best >= 0 and best_iou >= threshold and not hit[best]:
            hit[best] = True
            tp += 1
    fp, fn = len(p) - tp, len(t) - tp
    precision = tp / (tp + fp) if p else 0.0
    recall = tp / (tp + fn) if t else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def changes(labels: Sequence[str]) -> int:
    return sum(1 for a, b in zip(labels, labels[1:]) if a != b)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Non-interpolated AP (mean precision at each positive, by descending score)."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind='stable')
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def frame_map(probs: np.ndarray, truth: Sequence[str], labels: Sequence[str], *,
              background: str | None = None) -> float | None:
    """Per-frame mAP over the non-background classes present in `truth`."""
    truth = np.asarray(truth)
    aps = [average_precision(probs[:, c], truth == name) for c, name in enumerate(labels)
           if name != background]
    aps = [a for a in aps if a is not None]
    return float(np.mean(aps)) if aps else None


def event_scores(starts: Sequence[tuple[str, int, int]],
                 true_segments: Sequence[tuple[str, int, int]], *, tolerance_ns: int,
                 background_ns: int, background_hits: Sequence[bool],
                 offsets: Sequence[int | None]) -> dict:
    """START events against true segments.

    `starts`: (label, onset estimate, decided stamp) of every START; `true_segments`:
    (label, start, end) of the non-background segments a START could find. A START is a true
    positive when it names an unmatched segment's label and its onset is within `tolerance_ns`
    of that segment's start (the closest such segment); others, duplicates included, are false.
    `background_hits[i]`: START i was decided inside a background segment; false ones of those
    count as false starts on background, per minute of `background_ns`. `offsets[i]`: the
    offset estimate of the END that closed START i (None while open). Onset / offset errors
    (estimate - truth) are reported over the true positives.
    """
    if not len(starts) == len(background_hits) == len(offsets):
        raise ValueError(f'{len(starts)} starts, {len(background_hits)} background_hits and '
                         f'{len(offsets)} offsets: expected one of each per START')
    matched = [False] * len(true_segments)
    latencies, onset_errors, offset_errors, false_on_background = [], [], [], 0
    tp = 0
    for i, (label, onset, decided) in enumerate(starts):
        best, best_d = -1, None
        for j, (t_label, t_start, _) in enumerate(true_segments):
            d = abs(onset - t_start)
            if not matched[j] and t_label == label and d <= tolerance_ns and \
                    (best_d is None or d < best_d):
                best, best_d = j, d
        if best >= 0:
            matched[best] = True
            tp += 1
            _, t_start, t_end = true_segments[best]
            latencies.append((decided - t_start) / 1e9)
            onset_errors.append((onset - t_start) / 1e9)
            if offsets[i] is not None:
                offset_errors.append((offsets[i] - t_end) / 1e9)
        elif background_hits[i]:
            false_on_background += 1
    precision = tp / len(starts) if starts else None
    recall = tp / len(true_segments) if true_segments else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)

    def pct(values: list[float], *qs: int) -> dict:
        return {f'p{q}': round(float(np.percentile(values, q)), 4) if values else None
                for q in qs}

    return dict(starts=len(starts), true_segments=len(true_segments), start_true_positives=tp,
                start_precision=_round(precision), start_recall=_round(recall),
                start_f1=_round(f1), onset_latency_s=pct(latencies, 50, 90),
                onset_error_s=pct(onset_errors, 10, 50, 90),
                offset_error_s=pct(offset_errors, 10, 50, 90),
                false_starts_per_min_background=_round(
                    false_on_background / (background_ns / 60e9) if background_ns else None),
                background_s=round(background_ns / 1e9, 3))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
