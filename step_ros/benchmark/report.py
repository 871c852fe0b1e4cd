"""bench.json -> bench.md: the same numbers as tables, ratios first."""

from __future__ import annotations

from step_ros.benchmark import incremental


def _ms(stats: dict | None, key: str) -> str:
    value = None if stats is None else stats.get(key)
    return '-' if value is None else f'{value:.2f}'


def _num(value: float | None, fmt: str = '.3g') -> str:
    return '-' if value is None else format(value, fmt)


def _machine(m: dict) -> list[str]:
    device = m['device_name'] if m['device'] != 'cpu' else 'cpu'
    peak = (f", fp16/bf16 dense peak {m['peak_tflops']} TFLOP/s ({m['peak_part']})"
            if m['device'] != 'cpu' else '')
    return [f"Machine: {m['cpu']} ({m['nproc']} cores, torch {m['torch']}, "
            f"{m['torch_threads']} threads, load average {m['loadavg_1m']:.1f} at the start); "
            f'device: {device}{peak}.']


def _pairs(r: dict) -> list[str]:
    p = r['streaming_vs_naive']
    s, n = p['streaming'], p['naive']
    return [
        '| per prediction | p50 ms | p99 ms | mean ms | n | backbone passes / prediction |',
        '|---|---|---|---|---|---|',
        f"| streaming engine | {_ms(s['per_prediction'], 'p50_ms')} | "
        f"{_ms(s['per_prediction'], 'p99_ms')} | {_ms(s['per_prediction'], 'mean_ms')} | "
        f"{s['per_prediction']['n']} | {s['backbone_passes_per_prediction']:g} |",
        f"| naive re-encode | {_ms(n['per_prediction'], 'p50_ms')} | "
        f"{_ms(n['per_prediction'], 'p99_ms')} | {_ms(n['per_prediction'], 'mean_ms')} | "
        f"{n['per_prediction']['n']} | {n['backbone_passes_per_prediction']:g} |",
        *([f"CUDA peak allocated: naive {n['memory']['cuda_max_allocated_mib']:.0f} MiB "
            '(streaming: see the precision table).']
          if 'cuda_max_allocated_mib' in n.get('memory', {}) else []),
        '',
        f"**Streaming is {p['speedup_mean']:.2f}x faster per prediction (mean; p50 "
        f"{p['speedup_p50']:.2f}x) with {p['passes_ratio']:g}x fewer backbone passes.**",
    ]


def _stages(r: dict) -> list[str]:
    lines = ['| stage | p50 ms | p99 ms | n |', '|---|---|---|---|']
    for name, stats in r['stages'].items():
        if isinstance(stats, dict):
            lines.append(f"| {name} | {_ms(stats, 'p50_ms')} | {_ms(stats, 'p99_ms')} | "
                         f"{stats['n']} |")
    return lines


def _flops(r: dict) -> list[str]:
    f, a = r['flops'], r['achieved']
    frac = a['fraction_of_peak'] or {}
    lines = [f"Counted: backbone {f['backbone_gflops_per_frame']:.3g} GFLOPs per sampled frame, "
             f"head {f['head_gflops_per_prediction']:.3g} GFLOPs per prediction.", '',
             '| part | achieved TFLOP/s (p50) | fraction of peak |', '|---|---|---|']
    for name, value in a['tflops'].items():
        share = frac.get(name)
        lines.append(f"| {name} | {_num(value)} | "
                     f"{'-' if share is None else f'{share:.1%}'} |")
    return lines


def _cameras(r: dict) -> list[str]:
    lines = ['| cameras K | step p50 ms | step p99 ms | frames/s | 30 fps cameras | '
             f"cameras at {r['sample_hz']:g} Hz sampling | TFLOP/s |",
             '|---|---|---|---|---|---|---|']
    for row in r['cameras']:
        lines.append(f"| {row['streams']} | {_ms(row['step'], 'p50_ms')} | "
                     f"{_ms(row['step'], 'p99_ms')} | {row['frames_per_s']:.1f} | "
                     f"{row['cameras_at_30fps']:.2f} | {row['cameras_at_sample_rate']:.2f} | "
                     f"{row['tflops']:.3g} |")
    return lines


def _precisions(r: dict) -> list[str]:
    lines = ['| precision | push p50 ms | push p99 ms | n | RSS MiB | CUDA peak MiB | note |',
             '|---|---|---|---|---|---|---|']
    for row in r['precisions']:
        stats = row.get('per_prediction')
        cuda = row.get('cuda_max_allocated_mib')
        lines.append(f"| {row['precision']} | {_ms(stats, 'p50_ms')} | {_ms(stats, 'p99_ms')} | "
                     f"{stats['n'] if stats else '-'} | {_num(row.get('rss_mib'), '.0f')} | "
                     f"{_num(cuda, '.0f')} | "
                     f"{row.get('reason', '')} |")
    compiled = r.get('compile')
    if compiled:
        if compiled['status'] == 'ok':
            lines.append(f"| {r['precision']} + torch.compile | "
                         f"{_ms(compiled['per_prediction'], 'p50_ms')} | "
                         f"{_ms(compiled['per_prediction'], 'p99_ms')} | "
                         f"{compiled['per_prediction']['n']} | - | - | "
                         f"compile + first call {compiled['compile_s']:.1f} s |")
        else:
            lines.append(f"| {r['precision']} + torch.compile | - | - | - | - | - | "
                         f"{compiled['reason']} |")
    return lines


def render(result: dict) -> str:
    lines = ['# step_ros bench', '', f"Command: `{result['command']}`", '',
             f"Run: {result['created']}.", *_machine(result['machine']), '']
    for r in result['backbones']:
        b = r['backbone']
        lines += [f"## {b['id']}: D={b['embed_dim']}, {b['image_size']} px, patch "
                  f"{b['patch_size']}, {b['tokens_per_frame']} tokens/frame, T={r['num_frames']}, "
                  f"{r['precision']}", '', '### Streaming vs naive', '', *_pairs(r), '',
                  '### Per-stage latency (profiled engine)', '', *_stages(r), '',
                  '### FLOPs', '', *_flops(r), '', '### Several cameras, one batched pass', '',
                  *_cameras(r), '', '### Precision and memory', '', *_precisions(r), '',
                  f"Process RSS after this backbone: {_num(r['memory']['rss_mib'], '.0f')} MiB.",
                  '']
        target = r['target']
        if target['applies']:
            lines += [f"Target p99 < {target['p99_ms']} ms per new frame: "
                      f"{'met' if target['met'] else 'NOT met'} "
                      f"(p99 {target['measured_p99_ms']:.2f} ms).", '']
    if 'incremental_head' in result:
        lines += [*incremental.render(result['incremental_head']), '']
    mem = result['memory']
    lines.append(f"Peak process RSS (VmHWM): {_num(mem['peak_rss_mib'], '.0f')} MiB; "
                 f"ru_maxrss {_num(mem['ru_maxrss_mib'], '.0f')} MiB.")
    return '\n'.join(lines) + '\n'
