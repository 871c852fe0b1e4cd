"""`bag-eval --sweep`: the decision parameters' trade-off on one bag.

The bag's raw predictions are recorded once; every point of a grid over the `decision.*`
parameters replays them through a Decider and is scored (latency vs flicker vs event F1).
Writes sweep.csv (every point), sweep.md (the best points and the configured one) and
sweep.png (onset latency against label changes per minute, coloured by START F1). Over several
recordings (`bag-eval` given several --bag), `mean_rows` averages each point's scores over the
recordings' sweeps, so parameters are chosen on all of them at once.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from step_ros.data.timeline import Timeline
from step_ros.evaluate.stream_eval import StreamRecord, replay
from step_ros.evaluate.stream_plots import plot_sweep
from step_ros.progress import progress_bar
from step_ros.stream.decision import DecisionConfig

SMOOTHING = (0.0, 0.25, 0.5, 1.0)
ENTER = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
EXIT_BELOW_ENTER = (0.1, 0.3)  # exit_threshold = enter_threshold - this
DWELL = (0.0, 0.125, 0.25, 0.5)
MIN_CONFIDENCE = (0.0, 0.4)
COLUMNS = ('smoothing_seconds', 'enter_threshold', 'exit_threshold', 'min_dwell_seconds',
           'min_confidence', 'score', 'edit_score', 'f1_at_0.25', 'start_f1',
           'onset_latency_p50', 'label_changes_per_min', 'false_starts_per_min_background',
           'accuracy')


def grid(base: DecisionConfig) -> list[DecisionConfig]:
    points = []
    for tau, enter, gap, dwell, conf in itertools.product(SMOOTHING, ENTER, EXIT_BELOW_ENTER,
                                                          DWELL, MIN_CONFIDENCE):
        points.append(replace(base, smoothing_seconds=tau, enter_threshold=enter,
                              exit_threshold=round(enter - gap, 3), min_dwell_seconds=dwell,
                              min_confidence=conf))
    return points


def row(config: DecisionConfig, report: dict) -> dict:
    decided, events = report['stream']['decided'], report['events']
    values = dict(asdict(config), edit_score=decided['edit_score'],
                  **{'f1_at_0.25': decided['f1_at_iou']['0.25']}, start_f1=events['start_f1'],
                  onset_latency_p50=events['onset_latency_s']['p50'],
                  label_changes_per_min=decided['label_changes_per_min'],
                  false_starts_per_min_background=events['false_starts_per_min_background'],
                  accuracy=decided['accuracy'])
    # One number to rank by: the mean of START F1, F1@0.25 and edit / 100 (all 0..1).
    parts = [values['start_f1'] or 0.0, values['f1_at_0.25'] or 0.0,
             (values['edit_score'] or 0.0) / 100]
    values['score'] = round(sum(parts) / 3, 4)
    return values


def _rank(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-r['score'], r['onset_latency_p50'] or float('inf')))


def run_sweep(out: Path, records: Sequence[StreamRecord], *, configured: DecisionConfig,
              task: str, labels: Sequence[str], background: str | None, window_ns: int,
              timeline: Timeline, temperature: float, switch_fraction: float = 0.5,
              last_frame_ns: int | None = None, progress: bool = True
              ) -> tuple[list[dict], dict]:
    """Score every grid point; write sweep.csv / sweep.md / sweep.png; -> (rows, best first;
    the configured parameters' row). With `last_frame_ns`, an action open at the end of the
    recording ENDs there, as bag-eval's own run ends it."""
    kwargs = dict(task=task, labels=labels, background=background, window_ns=window_ns,
                  timeline=timeline, temperature=temperature, switch_fraction=switch_fraction,
                  last_frame_ns=last_frame_ns)
    rows = _rank([row(c, replay(records, c, **kwargs))
                  for c in progress_bar(grid(configured), desc='sweep', unit='point',
                                        disable=not progress)])
    chosen_report = replay(records, configured, **kwargs)
    chosen = row(configured, chosen_report)
    chosen['true_changes_per_min'] = chosen_report['stream']['true_changes_per_min']
    write_sweep(out, rows, chosen=chosen, title=f'decision sweep, {len(rows)} points')
    return rows, chosen


def write_sweep(out: Path, rows: list[dict], *, chosen: dict, title: str,
                note: str = '') -> None:
    """sweep.csv (every row), sweep.md (the configured row, then the best 20), sweep.png."""
    with (out / 'sweep.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    true_changes = chosen.get('true_changes_per_min')
    lines = [f'# Decision sweep: {len(rows)} points', '',
             f'{note}True label changes per minute: {_cell(true_changes)}. Score = mean of '
             'START F1, F1@0.25 and edit score / 100. The configured parameters are the first '
             'row.', '',
             '| ' + ' | '.join(COLUMNS) + ' |', '|---' * len(COLUMNS) + '|',
             '| ' + ' | '.join(_cell(chosen[c]) for c in COLUMNS) + ' |']
    lines += ['| ' + ' | '.join(_cell(r[c]) for c in COLUMNS) + ' |' for r in rows[:20]]
    (out / 'sweep.md').write_text('\n'.join(lines) + '\n')
    plot_sweep(out / 'sweep.png', rows, chosen=chosen, true_changes=true_changes, title=title)


PARAMETERS = COLUMNS[:5]  # the decision parameters of a row; the rest are its scores


def read_sweep(path: Path) -> list[dict]:
    """The rows of a sweep.csv, numbers as floats and empty cells as None."""
    with path.open(newline='') as f:
        return [{k: None if v == '' else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def mean_row(rows: Sequence[dict]) -> dict:
    """One point's scores averaged over recordings (a score a recording lacks is left out)."""
    out = {k: rows[0][k] for k in PARAMETERS}
    for key in rows[0]:
        if key not in PARAMETERS:
            out[key] = _mean([r.get(key) for r in rows])
    return out


def mean_rows(sweeps: Sequence[Sequence[dict]]) -> list[dict]:
    """Every grid point's mean over the recordings' sweeps, best first."""
    by_point: dict[tuple, list[dict]] = {}
    for rows in sweeps:
        for r in rows:
            by_point.setdefault(tuple(r[k] for k in PARAMETERS), []).append(r)
    missing = [p for p, rs in by_point.items() if len(rs) != len(sweeps)]
    if missing:
        raise ValueError(f'{len(missing)} grid points are not in every sweep, e.g. '
                         f'{dict(zip(PARAMETERS, missing[0]))}')
    return _rank([mean_row(rs) for rs in by_point.values()])


def _cell(value) -> str:
    return '-' if value is None else f'{value:g}' if isinstance(value, float) else str(value)
