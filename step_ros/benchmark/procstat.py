"""Another process's memory from /proc (no psutil), and whether it stayed flat over a run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def status_mib(pid: int, field: str = 'VmRSS') -> float | None:
    """A /proc/<pid>/status size field (VmRSS, VmHWM, ...) in MiB; None once it is gone."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def find_pid(needle: str) -> int | None:
    """The newest other process whose command line contains `needle`."""
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
        except OSError:
            continue
        if needle in cmdline and 'bench_client' not in cmdline:
            found.append(int(entry.name))
    return max(found) if found else None


def memory_trend(times_s: list[float], rss_mib: list[float], *, settle_s: float) -> dict:
    """RSS growth from the first to the last fifth of the run after `settle_s`, and its slope."""
    t = np.asarray(times_s, dtype=np.float64)
    rss = np.asarray(rss_mib, dtype=np.float64)
    keep = t >= settle_s
    t, rss = t[keep], rss[keep]
    if t.size < 5:
        return dict(samples=int(t.size), growth_mib=None, slope_mib_per_min=None)
    fifth = max(1, t.size // 5)
    growth = float(np.median(rss[-fifth:]) - np.median(rss[:fifth]))
    slope = float(np.polyfit(t / 60.0, rss, 1)[0])
    return dict(samples=int(t.size), first_mib=float(np.median(rss[:fifth])),
                last_mib=float(np.median(rss[-fifth:])), max_mib=float(rss.max()),
                growth_mib=growth, slope_mib_per_min=slope)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads, in seconds; None once it is gone."""
    try:
        # The command name (field 2) may hold spaces: the fields after it follow the last ')'.
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf('SC_CLK_TCK')
