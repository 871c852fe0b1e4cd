"""PNG figures of a decided stream: the timeline (truth / raw / decided / events), the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from step_ros.data.timeline import Timeline
from step_ros.stream.decision import START, ActionEvent


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    matplotlib.rcParams['text.parse_math'] = False  # labels are plain text ('$' too)
    import matplotlib.pyplot as plt
    return plt


def _runs(stamps: Sequence[int], labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, label) runs of a label per stamp; each lasts until the next stamp."""
    out = []
    for i, (t, label) in enumerate(zip(stamps, labels)):
        end = stamps[i + 1] if i + 1 < len(stamps) else t
        if out and out[-1][2] == label and out[-1][1] == t:
            out[-1] = (out[-1][0], end, label)
        else:
            out.append((t, end, label))
    return out


def plot_timeline(path: str | Path, *, timeline: Timeline | None, stamps: Sequence[int],
                  raw: Sequence[str], decided: Sequence[str], events: Sequence[ActionEvent],
                  labels: Sequence[str], background: str | None, origin_ns: int,
                  title: str) -> Path:
    """Bands of truth, raw and decided labels over bag seconds, with START / END markers;
    without a timeline (an unlabelled recording) no truth band."""
    plt = _pyplot()
    colours = plt.get_cmap('tab10').colors
    colour = {name: colours[i % 10] for i, name in
              enumerate(n for n in labels if n != background)}
    colour[background or ''] = (0.92, 0.92, 0.92)

    def sec(t: int) -> float:
        return (t - origin_ns) / 1e9

    span = sec(stamps[-1]) - sec(stamps[0]) if stamps else 1.0
    fig, ax = plt.subplots(figsize=(max(8.0, min(40.0, span / 4)), 3.2))
    rows = [('raw', _runs(stamps, raw)), ('decided', _runs(stamps, decided))]
    if timeline is not None:
        rows.insert(0, ('truth', [(s.start_ns, s.end_ns, s.label) for s in timeline.segments]))
    for y, (_, runs) in enumerate(reversed(rows)):
        for start, end, label in runs:
            ax.broken_barh([(sec(start), sec(end) - sec(start))], (y + 0.1, 0.8),
                           color=colour.get(label, (0.5, 0.5, 0.5)))
    events_y = len(rows) + 0.15
    for e in events:
        marker, c = ('v', 'black') if e.kind == START else ('^', 'dimgrey')
        ax.plot(sec(e.stamp_ns), events_y, marker=marker, color=c, markersize=6)
        ax.plot([sec(e.stamp_ns), sec(e.decided_ns)], [events_y, events_y], color=c,
                linewidth=0.8)
    ax.set_yticks([y + 0.5 for y in range(len(rows))] + [events_y],
                  [name for name, _ in reversed(rows)] + ['events'])
    if stamps:
        ax.set_xlim(sec(stamps[0]) - 2.0, sec(stamps[-1]))
    ax.set_ylim(0, len(rows) + 0.5)
    ax.set_xlabel('bag time (s); events: v START, ^ END at the estimated stamp, line to the '
                  'decision')
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colour.values()]
    ax.legend(handles, [n or '(none)' for n in colour], fontsize=7, ncol=min(10, len(colour)),
              loc='upper center', bbox_to_anchor=(0.5, -0.3), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_sweep(path: str | Path, rows: Sequence[dict], *, chosen: dict | None,
               true_changes: float | None, title: str) -> Path:
    """Onset latency against decided label changes per minute, coloured by START F1."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    usable = [r for r in rows if r['onset_latency_p50'] is not None]
    points = ax.scatter([r['onset_latency_p50'] for r in usable],
                        [r['label_changes_per_min'] for r in usable],
                        c=[r['start_f1'] or 0.0 for r in usable], cmap='viridis', vmin=0,
                        vmax=1, s=[12 + 40 * (r['edit_score'] or 0) / 100 for r in usable])
    fig.colorbar(points, ax=ax, label='START F1')
    if chosen is not None and chosen.get('onset_latency_p50') is not None:
        ax.scatter([chosen['onset_latency_p50']], [chosen['label_changes_per_min']],
                   facecolors='none', edgecolors='red', s=160, label='configured')
        ax.legend(fontsize=8)
    if true_changes:
        ax.axhline(true_changes, color='grey', linestyle=':', linewidth=1)
        ax.text(ax.get_xlim()[0], true_changes, ' true changes / min', fontsize=7,
                va='bottom', color='grey')
    ax.set_xlabel('onset latency p50 (s): true onset -> START decided')
    ax.set_ylabel('decided label changes per minute')
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
