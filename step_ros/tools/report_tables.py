"""The paper-shaped tables of `report` and the checks of the paper's qualitative pattern.

Rows are dictionaries: `accuracy` and `reversed` ({overall, symmetric, non_symmetric}), `cost`
(costs.Cost at the tiny shape) and `vitb` (costs.Cost at the ViT-B/14 shape). Frozen-backbone
heads are named by their preset, PEFT rows by their PEFT preset (e.g. `vpt_step`).
"""

from __future__ import annotations

from typing import NamedTuple

from step_ros.model.peft import PEFT_PRESETS

PROBES = ('linear', 'attentive')
# (adaptation, head) -> row name, for Table IV
IMAGE_PEFT = {('frozen', 'linear'): 'linear', ('frozen', 'step'): 'step',
              ('vpt', 'linear'): 'vpt_linear', ('vpt', 'step'): 'vpt_step',
              ('adaptformer', 'linear'): 'adaptformer_linear',
              ('adaptformer', 'step'): 'adaptformer_step'}
STEP_MARGIN = 0.25  # +STEP beats its linear row on symmetric classes by at least this much
BLIND_GAP = 0.02  # order-blind: reversed overall accuracy within this of forward
SEVERAL = 2.5  # ST-Adapter's trainable params and streamed GFLOPs at least this many x STEP's


def pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def _kind(name: str) -> str:
    return 'PEFT, ' + PEFT_PRESETS[name].method if name in PEFT_PRESETS else 'frozen'


def table_costs(rows: dict[str, dict], *, frames: int, vitb_frames: int) -> str:
    """Table I: accuracy with trainable parameters and counted GFLOPs, tiny and ViT-B/14."""
    lines = ['| method | backbone | params | GFLOPs / clip | GFLOPs / streamed window | '
             'params ViT-B/14 | GFLOPs / clip ViT-B/14 | GFLOPs / streamed window ViT-B/14 | '
             'sym | non-sym | overall |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name, r in rows.items():
        a, c, v = r['accuracy'], r['cost'], r['vitb']
        lines.append(f"| {name} | {_kind(name)} | {c.params:,} | {c.gflops_clip:.3f} | "
                     f"{c.gflops_stream:.3f} | {v.params:,} | {v.gflops_clip:.1f} | "
                     f"{v.gflops_stream:.1f} | {pct(a['symmetric'])} | "
                     f"{pct(a['non_symmetric'])} | {pct(a['overall'])} |")
    lines += ['', f'Tiny shape: T = {frames}, the tiny backbone; ViT-B/14 shape: DINOv2-B, '
              f'224 px, T = {vitb_frames}, 10 classes (counted, not trained). A streamed window '
              'is one new prediction of a node: one new frame through the backbone (the other '
              'T - 1 are cached) plus the head; ST-Adapter mixes frames inside the backbone, so '
              'it re-encodes all T frames for every window.']
    return '\n'.join(lines)


def table_order(rows: dict[str, dict]) -> str:
    """Table II: forward against reversed frames for every method."""
    lines = ['| method | sym | reversed sym | non-sym | reversed non-sym | overall | '
             'reversed overall | change overall |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for name, r in rows.items():
        a, v = r['accuracy'], r['reversed']
        lines.append(f"| {name} | {pct(a['symmetric'])} | {pct(v['symmetric'])} | "
                     f"{pct(a['non_symmetric'])} | {pct(v['non_symmetric'])} | "
                     f"{pct(a['overall'])} | {pct(v['overall'])} | "
                     f"{100 * (v['overall'] - a['overall']):+.1f} |")
    return '\n'.join(lines)


def table_image_peft(rows: dict[str, dict]) -> str:
    """Table IV: STEP as a plug-in head on image PEFT, against a linear head."""
    lines = ['| backbone | head | params | sym | non-sym | overall | reversed sym |',
             '|---|---|---:|---:|---:|---:|---:|']
    for (adaptation, head), name in IMAGE_PEFT.items():
        if name in rows:
            r = rows[name]
            a = r['accuracy']
            lines.append(f"| {adaptation} | {head} | {r['cost'].params:,} | "
                         f"{pct(a['symmetric'])} | {pct(a['non_symmetric'])} | "
                         f"{pct(a['overall'])} | {pct(r['reversed']['symmetric'])} |")
    return '\n'.join(lines)


def table_multitask(tasks: dict[str, dict], costs: dict[str, dict]) -> str:
    """Table V: every task's accuracy from one backbone pass, and the cost of that pass."""
    lines = ['| task | head | classes | sym | overall | reversed overall |',
             '|---|---|---:|---:|---:|---:|']
    for (task, head), r in tasks.items():
        a = r['accuracy']
        lines.append(f"| {task} | {head} | {len(r['labels'])} | {pct(a['symmetric'])} | "
                     f"{pct(a['overall'])} | {pct(r['reversed']['overall'])} |")
    lines += ['', '| all tasks | params | GFLOPs / clip | GFLOPs / streamed window | '
              'params ViT-B/14 | GFLOPs / clip ViT-B/14 | GFLOPs / streamed window ViT-B/14 |',
              '|---|---:|---:|---:|---:|---:|---:|']
    for name, c in costs.items():
        tiny, vitb = c['tiny'], c['vitb']
        lines.append(f'| {name} | {tiny.params:,} | {tiny.gflops_clip:.3f} | '
                     f'{tiny.gflops_stream:.3f} | {vitb.params:,} | {vitb.gflops_clip:.1f} | '
                     f'{vitb.gflops_stream:.1f} |')
    return '\n'.join(lines)


class Check(NamedTuple):
    claim: str
    ok: bool
    trained: bool = False  # a target only training to convergence reaches (not `--quick`)


def checks(rows: dict[str, dict]) -> list[Check]:
    """The paper's qualitative pattern, evaluated on this table (symmetric classes needed)."""
    out: list = []
    if any(r['accuracy']['symmetric'] is None for r in rows.values()):
        return out
    if 'step' in rows:
        step = rows['step']
        out.append(Check(f"STEP symmetric accuracy {step['accuracy']['symmetric']:.3f} >= 0.95",
                         step['accuracy']['symmetric'] >= 0.95, trained=True))
        out.append(Check(f"STEP reversed symmetric accuracy {step['reversed']['symmetric']:.3f} "
                         '<= 0.20', step['reversed']['symmetric'] <= 0.20, trained=True))
    for name in PROBES:
        if name in rows:
            acc, rev = rows[name]['accuracy'], rows[name]['reversed']
            out.append(Check(f"{name} symmetric accuracy {acc['symmetric']:.3f} <= 0.70",
                             acc['symmetric'] <= 0.70))
            out.append(_blind(name, rows[name]))
    for method in ('vpt', 'adaptformer'):
        linear, step = rows.get(f'{method}_linear'), rows.get(f'{method}_step')
        if linear:
            out.append(_blind(f'{method}_linear', linear))
        if linear and step:
            s, lin = step['accuracy']['symmetric'], linear['accuracy']['symmetric']
            out.append(Check(f'{method}_step symmetric accuracy {s:.3f} beats {method}_linear '
                             f'{lin:.3f} by >= {STEP_MARGIN}', s - lin >= STEP_MARGIN,
                             trained=True))
    st = rows.get('st_adapter_linear')
    if st:
        fwd, rev = st['accuracy']['symmetric'], st['reversed']['symmetric']
        out.append(Check(f'st_adapter_linear reads order: symmetric accuracy {fwd:.3f} drops to '
                         f'{rev:.3f} reversed (by >= {STEP_MARGIN})', fwd - rev >= STEP_MARGIN,
                         trained=True))
        if 'step' in rows:
            sv, tv = st['vitb'], rows['step']['vitb']
            out.append(Check(f"st_adapter_linear at ViT-B/14: {sv.params / tv.params:.1f}x STEP's "
                             f'trainable params and {sv.gflops_stream / tv.gflops_stream:.1f}x '
                             f'its GFLOPs per streamed window (>= {SEVERAL}x)',
                             sv.params >= SEVERAL * tv.params
                             and sv.gflops_stream >= SEVERAL * tv.gflops_stream))
    return out


def _blind(name: str, row: dict) -> Check:
    acc, rev = row['accuracy']['overall'], row['reversed']['overall']
    return Check(f'{name} order-blind: reversed overall accuracy {rev:.3f} within {BLIND_GAP} '
                 f'of forward {acc:.3f}', abs(rev - acc) <= BLIND_GAP)


def checklist(results: list[Check]) -> str:
    return ('\n'.join(f"- [{'x' if c.ok else ' '}] {c.claim}" for c in results)
            or '(no symmetric classes in this data: the order checks do not apply)')


def quick_unmet(results: list[Check]) -> str:
    """The checks whose targets the `--quick` sizes cannot reach, as a markdown list."""
    return '\n'.join(f'- {c.claim}' for c in results if c.trained) or '(none)'
