"""bag-eval over several recordings: one worker process per bag, one merged report.

Every recording runs the single-bag evaluation (bag_score.run_bag) unchanged in a worker process
of its own (its own engine; torch threads split between the workers) and writes its usual
outputs to OUT/<recording>/. The parent then scores the union of all recordings' predictions
with the same `score` and writes OUT/report.json (per recording and overall) and OUT/report.md,
with each recording's decided-stream scores and their mean over the recordings. With --sweep it
also writes OUT/sweep.csv / sweep.md / sweep.png: every grid point's scores averaged over the
recordings, for choosing the `decision.*` parameters on all of them at once. A recording without
labels (no --labels, no timeline.csv) writes its outputs but is left out of every score; the
merged report lists it with its counts and says it is unlabelled.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from step_ros.data.names import safe_name
from step_ros.evaluate import decision_sweep as bag_sweep
from step_ros.progress import progress_bar
from step_ros.stream.decision import DecisionConfig
from step_ros.tools import bag_score


def recording_names(bags: list[Path]) -> list[str]:
    """A distinct output folder name per bag: its file name, numbered where two collide.

    The name is that of the bag's absolute path (`..` names the parent folder), and `bag`
    where that is no usable folder name; every name is one folder inside OUT.
    """
    names = [_folder(Path(os.path.abspath(bag)).name.removesuffix('.bag')) for bag in bags]
    return [f'{i:02d}_{name}' if names.count(name) > 1 else name for i, name in enumerate(names)]


def _folder(name: str) -> str:
    try:
        return safe_name(name, what='recording')
    except ValueError:
        return 'bag'


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _one(args: argparse.Namespace) -> tuple[dict | None, list, list, str]:
    """Worker: (report, at-stamp records, full-window records, error message or '')."""
    try:
        report, at_stamp, full = bag_score.run_bag(args)
    except bag_score.ERRORS as exc:
        return None, [], [], f'{args.bag}: {exc}'
    return report, at_stamp, full, ''


def run_many(args: argparse.Namespace) -> int:
    """Evaluate every --bag of `args` in parallel; 0 when all succeeded and the merged report
    is written, 2 (each failed bag named on stderr) otherwise."""
    bags, labels = list(args.bag), list(args.labels)
    labels = labels * len(bags) if len(labels) == 1 else labels
    names = recording_names(bags)
    jobs = [argparse.Namespace(**{**vars(args), 'bag': bag, 'labels': timeline,
                                  'out': args.out / name, 'no_progress': True})
            for bag, timeline, name in zip(bags, labels, names)]
    cpus = os.cpu_count() or 1
    workers = args.workers or min(len(jobs), cpus)
    start = time.perf_counter()
    # spawn: a fresh interpreter per worker (forking a process that holds torch threads can
    # deadlock); each worker gets its share of the cores.
    with ProcessPoolExecutor(max_workers=workers, initializer=_limit_threads,
                             initargs=(max(1, cpus // workers),),
                             mp_context=multiprocessing.get_context('spawn')) as pool:
        results = list(progress_bar(pool.map(_one, jobs), total=len(jobs), desc='bag-eval',
                                    unit='bag', disable=args.no_progress))
    wall = time.perf_counter() - start
    errors = [error for *_, error in results if error]
    for error in errors:
        print(f'bag-eval: error: {error}', file=sys.stderr)
    if errors:
        return 2
    report = merge([r for r, *_ in results], [a for _, a, _, _ in results],
                   [f for _, _, f, _ in results], names=names, wall_s=wall, workers=workers)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        report['overall']['sweep'] = merge_sweeps(args.out, [r for r, *_ in results], names)
    (args.out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    (args.out / 'report.md').write_text(markdown(report))
    unscored = report['overall']['unlabelled_recordings']
    if len(unscored) == len(bags):
        print(f"bag-eval: {len(bags)} recordings, no labels given for any (no --labels, no "
              f"timeline.csv): nothing scored; {report['overall']['predictions']} predictions; "
              f'{workers} workers; wrote {args.out}')
        return 0
    if unscored:
        print(f'bag-eval: {len(unscored)} recordings without labels, not scored: {unscored}')
    s = report['overall']['at_stamp']
    print(f"bag-eval: {len(bags)} recordings, {report['overall']['predictions']} predictions, "
          f"overall accuracy {bag_score._pct(s['accuracy'])} (symmetric "
          f"{bag_score._pct(s['symmetric']['accuracy'])}, non-symmetric "
          f"{bag_score._pct(s['non_symmetric']['accuracy'])}); {workers} workers; wrote "
          f'{args.out}')
    return 0


def merge(reports: list[dict], at_stamp: list[list], full: list[list], *, names: list[str],
          wall_s: float, workers: int) -> dict:
    """One report: every recording's summary and the scores of all their predictions (one
    config, so one head and one class list for all). Recordings without labels are listed with
    their counts and left out of every score; with none labelled, nothing is scored."""
    first = reports[0]
    labels = tuple(first['classes'])
    symmetric = {label for pair in first['symmetric_pairs'] for label in pair}
    bag_s = sum(r['timing']['bag_s'] for r in reports)
    recordings = [_recording(name, r) for name, r in zip(names, reports)]
    scored = [r for r in recordings if r['labels'] is not None]
    overall = dict(
        predictions=sum(r['predictions'] for r in reports),
        unlabelled=sum(r['unlabelled'] for r in reports),
        unlabelled_recordings=[r['name'] for r in recordings if r['labels'] is None])
    if scored:
        overall.update(
            at_stamp=bag_score.score([x for part in at_stamp for x in part], labels=labels,
                                     symmetric=symmetric),
            full_window=bag_score.score([x for part in full for x in part], labels=labels,
                                        symmetric=symmetric),
            stream_mean=bag_sweep.mean_row([r['stream'] for r in scored]))
    overall['timing'] = dict(wall_s=round(wall_s, 3), bag_s=round(bag_s, 3), workers=workers,
                             realtime_factor=round(bag_s / wall_s, 2) if wall_s > 0 else None)
    return dict(topic=first['topic'], config=first['config'], task=first['task'],
                classes=list(labels), symmetric_pairs=first['symmetric_pairs'],
                recordings=recordings, overall=overall)


def _recording(name: str, r: dict) -> dict:
    """A recording's entry in the merged report: its scores, or its counts when unlabelled."""
    common = dict(name=name, bag=r['bag'], labels=r['labels'], out=name,
                  predictions=r['predictions'], unlabelled=r['unlabelled'])
    if r['labels'] is None:
        return dict(common, counts=r['counts'], timing=r['timing'])
    return dict(common, at_stamp=r['at_stamp'], full_window=r['full_window'],
                stream=stream_summary(r), timing=r['timing'])


def stream_summary(report: dict) -> dict:
    """A recording's decided-stream scores (the sweep's columns) and its ECE."""
    summary = bag_sweep.row(DecisionConfig(**report['decision']), report)
    summary['ece'] = report['calibration']['ece']
    return summary


def merge_sweeps(out: Path, reports: list[dict], names: list[str]) -> dict:
    """OUT/sweep.*: the recordings' sweeps averaged point by point; -> the overall block."""
    rows = bag_sweep.mean_rows([bag_sweep.read_sweep(out / name / 'sweep.csv')
                                for name in names])
    chosen = bag_sweep.mean_row([r['sweep']['configured'] for r in reports])
    bag_sweep.write_sweep(out, rows, chosen=chosen,
                          title=f'decision sweep, {len(rows)} points, mean of {len(names)} '
                                'recordings',
                          note=f'Every score is the mean over {len(names)} recordings. ')
    return dict(points=len(rows), best=rows[0], configured=chosen)


STREAM_COLUMNS = (('score', 'score'), ('edit_score', 'edit'), ('f1_at_0.25', 'F1@0.25'),
                  ('start_f1', 'START F1'), ('onset_latency_p50', 'latency p50 (s)'),
                  ('false_starts_per_min_background', 'false starts / min'),
                  ('label_changes_per_min', 'label changes / min'), ('ece', 'ECE'))


def markdown(report: dict) -> str:
    """report.md of several recordings: one row per recording, then all together; recordings
    without labels in a section of their own, with counts and no scores."""
    pct = bag_score._pct
    o = report['overall']
    lines = [f"# bag-eval: {len(report['recordings'])} recordings, {report['topic']}", '',
             f"Config `{report['config']}`, head `{report['task']}`; {o['timing']['workers']} "
             f"worker processes, {o['timing']['bag_s']} s of bags in {o['timing']['wall_s']} s "
             f"({o['timing']['realtime_factor']}x real time). Per recording: "
             '`<name>/report.md`.']
    scored = [r for r in report['recordings'] if r['labels'] is not None]
    if scored:
        lines += ['', '| recording | predictions | n | overall | symmetric | non-symmetric | '
                  'ambiguity rate | full windows |', '|---|---|---|---|---|---|---|---|']
        for name, r in [(r['name'], r) for r in scored] + [('**all**', o)]:
            s, f = r['at_stamp'], r['full_window']
            lines.append(f"| {name} | {r['predictions']} | {s['n']} | {pct(s['accuracy'])} | "
                         f"{pct(s['symmetric']['accuracy'])} | "
                         f"{pct(s['non_symmetric']['accuracy'])} | "
                         f"{pct(s['ambiguity_rate'])} | {pct(f['accuracy'])} (n={f['n']}) |")
        lines += ['', "## The decided stream (the config's `decision.*`; mean of the "
                  'recordings)', '',
                  '| recording | ' + ' | '.join(name for _, name in STREAM_COLUMNS) + ' |',
                  '|---' * (len(STREAM_COLUMNS) + 1) + '|']
        for name, st in [(r['name'], r['stream']) for r in scored] + \
                [('**mean**', o['stream_mean'])]:
            lines.append(f'| {name} | ' + ' | '.join(bag_score._num(st[key])
                                                       for key, _ in STREAM_COLUMNS) + ' |')
    if 'sweep' in o:
        best = o['sweep']['best']
        lines += ['', f"Sweep ({o['sweep']['points']} points, `sweep.md`): the best mean score "
                  f"{best['score']} at " + ', '.join(f'{k} {best[k]:g}'
                                                    for k in bag_sweep.PARAMETERS) + '.']
    unscored = [r for r in report['recordings'] if r['labels'] is None]
    if unscored:
        lines += _unlabelled_markdown(unscored, every=not scored)
    return '\n'.join(lines) + '\n'


def _unlabelled_markdown(recordings: list[dict], *, every: bool) -> list[str]:
    """The recordings without labels: what their streams did, nothing scored."""
    which = 'No recording has labels' if every else \
        'These recordings have no labels (they are left out of every score above)'

    def per_label(block: dict) -> str:
        return ', '.join(f'{k} {v}' for k, v in block.items() if v) or '-'

    lines = ['', '## Unlabelled recordings', '',
             f'{which}: no --labels and no timeline.csv in their bag directories, so they are '
             'not scored (no accuracies, no F1). Their predictions, decided stream, events and '
             'timeline.png are in `<name>/`.', '',
             '| recording | predictions | minutes | raw changes / min | decided changes / min | '
             'STARTs | STARTs per label | active s per label |', '|---' * 8 + '|']
    for r in recordings:
        c = r['counts']
        lines.append(f"| {r['name']} | {r['predictions']} | {c['minutes']} | "
                     f"{bag_score._num(c['raw']['label_changes_per_min'])} | "
                     f"{bag_score._num(c['decided']['label_changes_per_min'])} | {c['starts']} | "
                     f"{per_label(c['starts_per_label'])} | {per_label(c['active_s'])} |")
    return lines
