"""A picture of a bench-ros run: memory, latency and frame counters over time."""

from __future__ import annotations

from pathlib import Path


def plot_run(path: Path, report: dict, latencies: list[tuple[float, float, float]]) -> Path:
    """Three panels sharing the time axis: node RSS, publish -> HumanAction latency, counters."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    samples = [s for s in report['samples'] if s['rss_mib'] is not None]
    fig, (ax_rss, ax_lat, ax_frames) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    ax_rss.plot([s['t'] for s in samples], [s['rss_mib'] for s in samples], color='tab:blue')
    ax_rss.set_ylabel('node RSS (MiB)')
    ax_rss.set_ylim(bottom=0)
    if latencies:
        ax_lat.scatter([t for t, _, _ in latencies], [c for _, c, _ in latencies], s=4,
                       color='tab:orange', label='publish -> HumanAction received')
        ax_lat.scatter([t for t, _, _ in latencies], [n for _, _, n in latencies], s=4,
                       color='tab:green', label="node's own latency field")
        ax_lat.legend(fontsize=8, loc='lower right')
    ax_lat.set_ylabel('latency (ms)')
    ax_lat.set_ylim(bottom=0)
    for key, colour in (('processed', 'tab:blue'), ('dropped (worker busy)', 'tab:red')):
        points = [(s['t'], int(s['node'][key])) for s in report['samples'] if key in s['node']]
        if points:
            first = points[0][1]
            ax_frames.plot([t for t, _ in points], [v - first for _, v in points], color=colour,
                           label=key)
    ax_frames.plot([s['t'] for s in report['samples']],
                   [s['published'] for s in report['samples']], color='grey', linestyle='--',
                   label='published by the client')
    ax_frames.set_ylabel('frames since start')
    ax_frames.set_xlabel('seconds since publishing started')
    ax_frames.legend(fontsize=8, loc='upper left')
    fig.suptitle(f"bench-ros {report['mode']}: {report['width']}x{report['height']} rgb8 asked at "
                 f"{report['rate_hz']:g} Hz, achieved {report['publish_hz']:.1f} Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_multicam(path: Path, report: dict) -> Path:
    """bench-ros multicam side by side: CPU per frame, total RSS, per-camera latency p50 / p99."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = report['runs']
    names = [f"{r['label']}\n({r['nodes']} node{'s' if r['nodes'] > 1 else ''})" for r in runs]
    fig, (ax_cpu, ax_rss, ax_lat) = plt.subplots(1, 3, figsize=(13, 4))
    ax_cpu.bar(names, [r['cpu_ms_per_frame'] for r in runs], color='tab:blue')
    ax_cpu.set_ylabel('CPU ms per processed frame')
    ax_rss.bar(names, [r['rss_mib'] for r in runs], color='tab:green')
    ax_rss.set_ylabel('total RSS (MiB)')
    for x, run in enumerate(runs):
        cameras = run['cameras']
        offsets = [x + (i - (len(cameras) - 1) / 2) * 0.15 for i in range(len(cameras))]
        ax_lat.bar(offsets, [c['p99_ms'] or 0 for c in cameras], width=0.14, color='tab:red',
                   label='p99' if x == 0 else None)
        ax_lat.bar(offsets, [c['p50_ms'] or 0 for c in cameras], width=0.14, color='tab:orange',
                   label='p50' if x == 0 else None)
    ax_lat.set_xticks(range(len(runs)), names)
    ax_lat.set_ylabel('publish -> HumanAction (ms), a bar per camera')
    ax_lat.legend(fontsize=8)
    for ax in (ax_cpu, ax_rss, ax_lat):
        ax.tick_params(axis='x', labelsize=8)
    fig.suptitle(f"bench-ros multicam: {report['cameras']} cameras, {report['width']}x"
                 f"{report['height']} rgb8 at {report['rate_hz']:g} Hz each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
