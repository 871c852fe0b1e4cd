"""One recording through the node's streaming engine, scored: the work of `bag-eval` (its command
line is step_ros/tools/bag_eval.py; several recordings: step_ros/tools/bag_eval_many.py).

The engine is built from the node's own parameters file by the node's own code path
(`load_params_file` -> `PerceptionConfig.from_params` -> `runtime.build_engine`), and fed every
image of one topic in header-stamp order, as fast as it goes. Each prediction is scored against
a timeline CSV (`start,end,label`, seconds of header-stamp time) at the stamp of its newest
frame, and again over 'full windows' (oldest and newest frame inside one segment). The
decision stage (step_ros.stream.decision, the node's `decision.*` parameters) runs over the same
predictions, and the raw and decided streams are scored as streams (step_ros.evaluate.stream_eval):
accuracy, label changes per minute, edit score, F1@IoU, START events, calibration (ECE), mAP.

Writes to --out: report.json, report.md, predictions.csv, events.csv (the decided START / END
events), timeline.png (truth, raw, decided, events), reliability.png, params.yaml (the resolved
parameters), with --sweep sweep.csv / sweep.md / sweep.png (see evaluate.decision_sweep), and, with
--write-bag, bag/ (mcap rosbag2: the images and the HumanAction stream beside them).
Several --bag (each with its timeline) run in parallel worker processes, each writing those
files to OUT/<recording>/, and one merged report.json / report.md in OUT scores every recording
and all of them together (see step_ros/tools/bag_eval_many.py).
Without a timeline (no --labels and no timeline.csv in the bag directory) nothing is scored: the
same predictions.csv, events.csv, params.yaml and timeline.png (no truth band) are written, with
a report of counts (step_ros.evaluate.stream_eval.stream_counts) saying no labels were given.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from step_ros.data.bags import BagError, BagWriter, ReadStats, iter_frames, topic_count
from step_ros.data.timeline import Timeline, TimelineError, load_timeline, seconds
from step_ros.evaluate import decision_sweep as bag_sweep
from step_ros.evaluate.stream_eval import (
    StreamRecord,
    decide,
    decided_label,
    stream_counts,
    stream_report,
)
from step_ros.evaluate.stream_plots import plot_timeline
from step_ros.model.backbone import BackboneError
from step_ros.model.checkpoint import CheckpointError
from step_ros.progress import progress_bar
from step_ros.stream.calibration import plot_reliability
from step_ros.stream.config import (
    ConfigError,
    PerceptionConfig,
    load_params_file,
    write_params_file,
)
from step_ros.stream.decision import ActionEvent, Decider, Decision
from step_ros.stream.engine import Head, NonFiniteScores
from step_ros.stream.runtime import build_engine, decision_for

ERRORS = (BagError, TimelineError, ConfigError, CheckpointError, BackboneError,
          NonFiniteScores)


def _accuracy(hits: int, n: int) -> float | None:
    return round(hits / n, 6) if n else None


def score(records: list[tuple[str, str, bool]], *, labels: tuple[str, ...],
          symmetric: set[str]) -> dict:
    """Metrics of (truth, predicted, ambiguous) records; accuracies are None without samples."""
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)  # (truth, predicted)
    groups = {k: [0, 0] for k in ('symmetric', 'non_symmetric', 'flagged', 'not_flagged')}
    for truth, predicted, ambiguous in records:
        confusion[index[truth], index[predicted]] += 1
        hit = int(truth == predicted)
        for key in ('symmetric' if truth in symmetric else 'non_symmetric',
                    'flagged' if ambiguous else 'not_flagged'):
            groups[key][0] += hit
            groups[key][1] += 1
    n = len(records)
    hits = int(np.trace(confusion))
    per_class = {}
    for i, label in enumerate(labels):
        row = confusion[i].copy()
        total = int(row.sum())
        row[i] = -1
        other = int(np.argmax(row))
        per_class[label] = dict(n=total, accuracy=_accuracy(int(confusion[i, i]), total),
                                most_confused=labels[other] if row[other] > 0 else '')
    return dict(
        n=n, accuracy=_accuracy(hits, n),
        **{k: dict(n=v[1], accuracy=_accuracy(v[0], v[1])) for k, v in groups.items()},
        ambiguity_rate=_accuracy(groups['flagged'][1], n), per_class=per_class,
        confusion=dict(labels=list(labels), matrix=confusion.tolist()))


def _resolve_params(args: argparse.Namespace) -> tuple[dict, PerceptionConfig]:
    params = load_params_file(args.config)
    if args.device is not None:
        params['device'] = args.device
    return params, PerceptionConfig.from_params(params)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the engine over the bag, write the outputs, return the report."""
    return run_bag(args)[0]


def run_bag(args: argparse.Namespace) -> tuple[dict, list, list]:
    """evaluate(), also returning the scored (truth, predicted, ambiguous) records: at the
    newest frame's stamp and over full windows (none for an unlabelled recording)."""
    params, config = _resolve_params(args)
    total = topic_count(args.bag, args.topic)  # a missing / wrong topic fails before the model
    # No timeline (an unlabelled recording): the streams are written and counted, not scored.
    timeline = None if args.labels is None else load_timeline(args.labels)
    engine = build_engine(config)
    heads = {h.task: h for h in engine.heads}
    task = args.task or engine.heads[0].task
    if task not in heads:
        raise ConfigError(f"--task {task!r}: the config's heads are {sorted(heads)}")
    head = heads[task]
    decision, decision_source = decision_for(
        config, head.meta, config.head_checkpoints[engine.heads.index(head)])
    if timeline is not None:
        timeline.check_labels(head.labels)
    topics = {h.task: '/' + t.lstrip('/') for h, t in zip(engine.heads, config.head_topics)}

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    writer = BagWriter(out / 'bag') if args.write_bag else None
    stats = ReadStats()
    rows, at_stamp, full, process_ms = [], [], [], []
    records: list[StreamRecord] = []
    reset_pending = False
    first = last = None
    frames = iter_frames(args.bag, args.topic, stats=stats, max_pixels=config.max_image_pixels)
    start = time.perf_counter()
    if writer is not None:
        writer.__enter__()
    try:
        for frame in progress_bar(frames, total=total, desc='bag-eval', unit='frame',
                                  disable=args.no_progress):
            if first is None:
                first = frame.stamp_ns
                if args.relative and timeline is not None:
                    timeline = timeline.shifted(first)
            last = frame.stamp_ns
            received = time.monotonic_ns()
            result = engine.push(frame.image, frame.stamp_ns, received)
            done = time.monotonic_ns()
            reset_pending = reset_pending or (result.reset and bool(records))
            if writer is not None:
                writer.write(args.topic, frame.msgtype, frame.msg, frame.log_ns)
            for p in result.predictions:
                if writer is not None:
                    writer.write_action(topics[p.task], p, frame_id=frame.frame_id,
                                        latency_ns=done - received)
                if p.task != task:
                    continue
                process_ms.append((done - received) / 1e6)
                records.append(StreamRecord(
                    stamp_ns=p.stamp_ns, window_start_ns=p.window_start_ns, label=p.label,
                    probs=np.asarray(p.probs), ambiguous=p.ambiguous,
                    reset_before=reset_pending))
                reset_pending = False
                truth = truth_full = None
                if timeline is not None:
                    truth = timeline.label_at(p.stamp_ns)
                    truth_full = timeline.label_over(p.window_start_ns, p.stamp_ns)
                if truth is not None:
                    at_stamp.append((truth, p.label, p.ambiguous))
                if truth_full is not None:
                    full.append((truth_full, p.label, p.ambiguous))
                rows.append([seconds(p.stamp_ns), seconds(p.window_start_ns), p.label,
                             f'{p.confidence:.6f}', f'{p.margin:.6f}', int(p.ambiguous),
                             p.ambiguous_with, p.ambiguity_reason, truth or '',
                             truth_full or '', '' if truth is None else int(truth == p.label)])
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
    wall = time.perf_counter() - start
    if first is None:
        raise BagError(f'topic {args.topic!r} in bag {str(args.bag)!r}: no decodable image '
                       f'({stats.messages} messages, skipped {dict(stats.skipped)}: '
                       f'{stats.reasons})')

    if not records:
        raise BagError(f'bag {str(args.bag)!r}: {stats.decoded} images gave no prediction of '
                       f'head {task!r} (fewer than num_frames={config.engine.num_frames} '
                       'sampled frames)')
    window_ns = int(round(config.engine.window_seconds * 1e9))
    decider = Decider(task=task, labels=head.labels, background=head.background,
                      config=decision, window_ns=window_ns,
                      switch_fraction=head.switch_fraction)
    # The recording ends as a camera stops: an open action ENDs at its last frame (the node's
    # input timeout), so that bag-eval and the live node give the same events.
    decisions, events = decide(records, decider=decider, last_frame_ns=last)
    for r, d in zip(rows, decisions):
        r += [d.state.value, d.stable_label, f'{d.stable_confidence:.6f}',
              seconds(d.stable_since_ns) if d.stable_since_ns else '']
    bag_seconds = (last - first) / 1e9
    timing = dict(wall_s=round(wall, 3), bag_s=round(bag_seconds, 3),
                  realtime_factor=round(bag_seconds / wall, 2) if wall > 0 else None,
                  frames_per_s=round(stats.messages / wall, 1) if wall > 0 else None,
                  process_ms_p50=_percentile(process_ms, 50),
                  process_ms_p99=_percentile(process_ms, 99))
    if timeline is None:
        report = dict(
            bag=str(args.bag), topic=args.topic, labels=None, config=str(args.config),
            task=task, classes=list(head.labels), symmetric_pairs=[list(p) for p in head.pairs],
            images=stats.to_dict(), engine=dict(engine.stats), predictions=len(rows),
            unlabelled=len(rows), timing=timing, background=head.background,
            decision=dict(vars(decision)), decision_source=decision_source,
            counts=stream_counts(records, decisions, events, labels=head.labels,
                                 background=head.background))
        _write_outputs(out, report, rows, params)
        _write_events(out / 'events.csv', events)
        _plot_timeline(out, args.bag, None, records, decisions, events, head=head, task=task,
                       origin_ns=first)
        return report, [], []
    streams = stream_report(records, decisions, events, timeline=timeline, labels=head.labels,
                            background=head.background, window_ns=window_ns,
                            temperature=head.temperature)
    curves = {k: streams['calibration'].pop(f'curve_{k}', None)
              for k in ('ece_uncalibrated', 'ece')}

    symmetric = {label for pair in head.pairs for label in pair}
    report = dict(
        bag=str(args.bag), topic=args.topic, labels=str(args.labels), config=str(args.config),
        task=task, classes=list(head.labels), symmetric_pairs=[list(p) for p in head.pairs],
        images=stats.to_dict(), engine=dict(engine.stats),
        predictions=len(rows), unlabelled=len(rows) - len(at_stamp),
        at_stamp=score(at_stamp, labels=head.labels, symmetric=symmetric),
        full_window=score(full, labels=head.labels, symmetric=symmetric), timing=timing,
        background=head.background, decision=dict(vars(decision)),
        decision_source=decision_source, **streams)
    _write_outputs(out, report, rows, params)
    if not at_stamp:
        span = f'{seconds(timeline.segments[0].start_ns)}-{seconds(timeline.segments[-1].end_ns)}'
        hint = '' if args.relative else ' (seconds from the first image? pass --relative)'
        raise TimelineError(f'{args.labels}: nothing was scored: none of the {len(rows)} '
                            f'predictions (images {seconds(first)}-{seconds(last)} s) falls '
                            f'inside the timeline ({span} s){hint}')
    _write_events(out / 'events.csv', events)
    _plot_timeline(out, args.bag, timeline, records, decisions, events, head=head, task=task,
                   origin_ns=first)
    if all(curves.values()):
        plot_reliability(out / 'reliability.png',
                         {'softmax(z)': curves['ece_uncalibrated'],
                          f'softmax(z / {head.temperature:.2f})': curves['ece']},
                         title=f'{args.bag.name}: pure windows')
    if args.sweep:
        points, chosen = bag_sweep.run_sweep(
            out, records, configured=decision, task=task, labels=head.labels,
            background=head.background, window_ns=window_ns, timeline=timeline,
            temperature=head.temperature, switch_fraction=head.switch_fraction,
            last_frame_ns=last, progress=not args.no_progress)
        report['sweep'] = dict(points=len(points), best=points[0], configured=chosen)
        (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    return report, at_stamp, full


def _plot_timeline(out: Path, bag: Path, timeline: Timeline | None,
                   records: list[StreamRecord], decisions: list[Decision],
                   events: list[ActionEvent], *, head: Head, task: str,
                   origin_ns: int) -> None:
    """OUT/timeline.png: truth (when labelled), raw and decided bands, the events."""
    bands = 'raw and decided, no labels' if timeline is None else 'truth, raw and decided'
    plot_timeline(out / 'timeline.png', timeline=timeline, stamps=[r.stamp_ns for r in records],
                  raw=[r.label for r in records],
                  decided=[decided_label(d, head.background) for d in decisions],
                  events=events, labels=head.labels, background=head.background,
                  origin_ns=origin_ns, title=f'{bag.name}: {bands} ({task})')


EVENT_COLUMNS = ('kind', 'label', 'stamp', 'decided', 'window_start', 'confidence',
                 'duration_s')


def _write_events(path: Path, events) -> None:
    with path.open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(EVENT_COLUMNS)
        for e in events:
            writer.writerow([e.kind, e.label, seconds(e.stamp_ns), seconds(e.decided_ns),
                             seconds(e.window_start_ns), f'{e.confidence:.6f}',
                             f'{e.duration_s:.6f}'])


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


PREDICTION_COLUMNS = ('stamp', 'window_start', 'label', 'confidence', 'margin', 'ambiguous',
                      'ambiguous_with', 'ambiguity_reason', 'truth', 'truth_full_window',
                      'correct', 'state', 'stable_label', 'stable_confidence', 'stable_since')


def _write_outputs(out: Path, report: dict, rows: list[list], params: dict) -> None:
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    (out / 'report.md').write_text(markdown(report))
    write_params_file(out / 'params.yaml', params)
    with (out / 'predictions.csv').open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        writer.writerows(rows)


def _pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.1f} %'


NOT_SCORED = ('No labels were given (no --labels and no timeline.csv in the bag directory), '
              'so nothing is scored: no accuracies, no F1.')


def markdown(report: dict) -> str:
    """A human-readable report.md."""
    if report['labels'] is None:
        return unlabelled_markdown(report)
    t = report['timing']
    images = report['images']
    lines = [
        f"# bag-eval: {report['bag']} {report['topic']}", '',
        f"Config `{report['config']}`, head `{report['task']}`, timeline `{report['labels']}`.",
        '',
        f"Images: {images['messages']} read, {images['decoded']} decoded, skipped "
        f"{images['skipped'] or 'none'}; {report['predictions']} predictions "
        f"({report['unlabelled']} outside the timeline).",
        f"Speed: {t['bag_s']} s of bag in {t['wall_s']} s ({t['realtime_factor']}x real time); "
        f"engine per prediction p50 {t['process_ms_p50']} ms, p99 {t['process_ms_p99']} ms.",
        '', '| scored at | n | overall | symmetric | non-symmetric | ambiguity rate | '
        'flagged | not flagged |', '|---|---|---|---|---|---|---|---|']
    for key, name in (('at_stamp', 'newest frame'), ('full_window', 'full windows')):
        s = report[key]
        lines.append(
            f"| {name} | {s['n']} | {_pct(s['accuracy'])} | {_pct(s['symmetric']['accuracy'])} "
            f"| {_pct(s['non_symmetric']['accuracy'])} | {_pct(s['ambiguity_rate'])} | "
            f"{_pct(s['flagged']['accuracy'])} (n={s['flagged']['n']}) | "
            f"{_pct(s['not_flagged']['accuracy'])} (n={s['not_flagged']['n']}) |")
    s = report['at_stamp']
    labels = s['confusion']['labels']
    lines += ['', '## Per class (scored at the newest frame)', '',
              '| class | n | accuracy | most confused with |', '|---|---|---|---|']
    for label in labels:
        c = s['per_class'][label]
        lines.append(f"| {label} | {c['n']} | {_pct(c['accuracy'])} | {c['most_confused']} |")
    lines += ['', '## Confusion (rows: truth, columns: predicted)', '',
              '| truth \\ predicted | ' + ' | '.join(labels) + ' |',
              '|---' * (len(labels) + 1) + '|']
    for label, row in zip(labels, s['confusion']['matrix']):
        lines.append(f'| {label} | ' + ' | '.join(str(v) for v in row) + ' |')
    return '\n'.join(lines + stream_markdown(report)) + '\n'


def unlabelled_markdown(report: dict) -> str:
    """report.md of a recording without labels: what the streams did, nothing scored."""
    t, images, c = report['timing'], report['images'], report['counts']
    background = report['background']
    lines = [
        f"# bag-eval: {report['bag']} {report['topic']} (unlabelled)", '',
        f"Config `{report['config']}`, head `{report['task']}`. {NOT_SCORED} Below: counts of "
        'what the raw and decided streams did (timeline.png, predictions.csv, events.csv).', '',
        f"Images: {images['messages']} read, {images['decoded']} decoded, skipped "
        f"{images['skipped'] or 'none'}; {report['predictions']} predictions over "
        f"{c['minutes']} min.",
        f"Speed: {t['bag_s']} s of bag in {t['wall_s']} s ({t['realtime_factor']}x real time); "
        f"engine per prediction p50 {t['process_ms_p50']} ms, p99 {t['process_ms_p99']} ms.",
        '', f"Decision parameters: {report['decision']} (from "
        f"{report.get('decision_source', 'the parameters')}); background label `{background}`.",
        '',
        '| stream | windows | label changes / min |', '|---|---|---|',
        f"| raw | {c['windows']} | {_num(c['raw']['label_changes_per_min'])} |",
        f"| decided | {c['windows']} | {_num(c['decided']['label_changes_per_min'])} |", '',
        'Decided states (windows): ' + ', '.join(f'{k} {v}' for k, v in
                                                 c['decided']['states'].items())
        + f"; flagged ambiguous: {c['ambiguous']} ({_pct(c['ambiguity_rate'])}); "
        f"START {c['starts']}, END {c['ends']}.", '',
        '| label | raw windows | STARTs | active (s) |', '|---|---|---|---|']
    for label, n in c['raw']['windows'].items():
        starts = c['starts_per_label'].get(label)
        active = c['active_s'].get(label)
        lines.append(f"| {label} | {n} | {'-' if starts is None else starts} | "
                     f"{'-' if active is None else active} |")
    return '\n'.join(lines) + '\n'


def _num(value, fmt: str = '.3g') -> str:
    return '-' if value is None else format(value, fmt)


def _quantiles(block: dict) -> str:
    return ' / '.join(_num(v, '+.2f') for v in block.values())


def stream_markdown(report: dict) -> list[str]:
    """The stream section of report.md: raw against decided, events, calibration."""
    if 'stream' not in report:
        return []
    st, ev, cal = report['stream'], report['events'], report['calibration']
    lines = ['', '## The stream a planner receives (timeline.png)', '',
             f"Decision parameters: {report['decision']} (from "
             f"{report.get('decision_source', 'the parameters')}); background label "
             f"`{report['background']}`. True label changes: "
             f"{_num(st['true_changes_per_min'])} per minute over {st['minutes']} min.", '',
             '| stream | accuracy | label changes / min | edit score | F1@0.1 | F1@0.25 | '
             'F1@0.5 |', '|---|---|---|---|---|---|---|']
    for key in ('raw', 'decided'):
        b = st[key]
        f1 = b['f1_at_iou']
        lines.append(f"| {key} | {_pct(b['accuracy'])} | {_num(b['label_changes_per_min'])} | "
                     f"{_num(b['edit_score'])} | {_num(f1['0.1'])} | {_num(f1['0.25'])} | "
                     f"{_num(f1['0.5'])} |")
    lat = ev['onset_latency_s']
    lines += ['', f"START events: {ev['starts']} for {ev['true_segments']} true actions; "
              f"precision {_num(ev['start_precision'])}, recall {_num(ev['start_recall'])}, "
              f"F1 {_num(ev['start_f1'])}; onset latency p50 {_num(lat['p50'])} s, p90 "
              f"{_num(lat['p90'])} s; false starts on background "
              f"{_num(ev['false_starts_per_min_background'])} per minute "
              f"({ev['background_s']} s of background). Event stamps against the truth "
              f"(estimate - true, p10 / p50 / p90, true-positive STARTs): onset "
              f"{_quantiles(ev['onset_error_s'])} s, offset {_quantiles(ev['offset_error_s'])} s.",
              f"Calibration (pure windows, n={cal['windows']}, T={cal['temperature']:.3f}): "
              f"ECE {_num(cal['ece_uncalibrated'])} before, {_num(cal['ece'])} after. "
              f"Per-frame mAP (non-background classes): {_num(report['frame_map'])}."]
    return lines
