"""`bench --quick` runs and writes a valid report; the ROS bench client runs against a node.

Benchmarks are not tests: nothing here asserts a time. Only counted quantities (backbone passes,
FLOPs, rows present) are checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from step_ros.tools import bench

ROOT = Path(__file__).resolve().parents[1]
TOP_KEYS = {'schema', 'created', 'command', 'machine', 'config', 'backbones', 'memory'}
SECTION_KEYS = {'backbone', 'precision', 'num_frames', 'streaming_vs_naive', 'stages', 'flops',
                'achieved', 'cameras', 'precisions', 'memory', 'target'}


@pytest.fixture(scope='module')
def quick(tmp_path_factory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp('bench')
    # --quick as documented, with shorter loops: the test checks the report, not the speed.
    rc = bench.main(['--quick', '--out', str(out), '--seconds', '0.2', '--iters', '5',
                     '--cameras', '1,2', '--frames', '4'])
    return rc, out


def _strict(constant: str):
    raise ValueError(f'bench.json holds {constant}, which is not valid JSON')


def test_quick_writes_json_with_expected_keys(quick):
    rc, out = quick
    assert rc == 0, f'bench --quick exited {rc}'
    report = json.loads((out / 'bench.json').read_text(), parse_constant=_strict)
    assert report['schema'] == bench.SCHEMA
    assert TOP_KEYS <= set(report), f'missing top-level keys {TOP_KEYS - set(report)}'
    assert len(report['backbones']) == 1, report['config']
    section = report['backbones'][0]
    assert SECTION_KEYS <= set(section), f'missing keys {SECTION_KEYS - set(section)}'
    assert section['backbone']['id'] == 'tiny'
    assert (out / 'bench.md').read_text().startswith('# step_ros bench')


def test_quick_counts_backbone_passes_and_flops(quick):
    _, out = quick
    section = json.loads((out / 'bench.json').read_text())['backbones'][0]
    pairs = section['streaming_vs_naive']
    # Counted, not timed: the engine encodes each new frame once, the naive loop all T of them.
    assert pairs['streaming']['backbone_passes_per_prediction'] == 1, pairs['streaming']
    assert pairs['naive']['backbone_passes_per_prediction'] == 4, pairs['naive']
    for name in ('streaming', 'naive'):
        stats = pairs[name]['per_prediction']
        assert stats['n'] >= 3 and stats['p50_ms'] > 0, (name, stats)
    flops = section['flops']
    assert flops['backbone_gflops_per_frame'] > 0.01, flops
    # STEP head on tiny (D=96, N=64, T=4): qkv + output projections over L = 1 + T*N tokens,
    # plus attention 4*L^2*D, which torch only counts on the CPU through our custom mapping.
    length, dim = 1 + 4 * 64, 96
    expected = (2 * length * dim * 4 * dim + 4 * length * length * dim) / 1e9
    assert abs(flops['head_gflops_per_prediction'] - expected) < 0.02 * expected, (flops,
                                                                                  expected)
    stages = section['stages']
    for stage in ('decode_rgb8_640x480', 'decode_jpeg_640x480', 'preprocess', 'backbone', 'head',
                  'post'):
        assert stages[stage]['n'] >= 1, (stage, stages[stage])
    assert [row['streams'] for row in section['cameras']] == [1, 2], section['cameras']
    rows = {row['precision']: row for row in section['precisions']}
    assert rows['fp16']['status'] == 'skipped' and 'CPU' in rows['fp16']['reason'], rows
    assert rows['fp32']['status'] == 'ok' and rows['bf16']['status'] == 'ok', rows
    assert section['target']['applies'] is False, section['target']


def test_bad_precision_is_rejected(capsys):
    assert bench.main(['--quick', '--precision', 'fp8']) == 2
    assert "'fp8'" in capsys.readouterr().err


ROS_READY = all(importlib.util.find_spec(m) is not None for m in ('rclpy', 'step_ros_msgs'))


def run_bounded(command: list[str], *, env: dict, timeout: float
                ) -> tuple[subprocess.Popen, str]:
    """Run a bench command in its own session: on a timeout the whole group (client and the
    nodes it started) is killed. -> (the finished process, its output)."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f'{" ".join(command[2:4])} still running after {timeout} s, killed; its '
                    f'output:\n{output}')
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process, output


@pytest.mark.skipif(not ROS_READY, reason='rclpy / step_ros_msgs not importable (source '
                                          'install/setup.bash)')
def test_bench_client_e2e_against_node(tmp_path):
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(random.randint(1, 100)))
    command = [sys.executable, '-m', 'step_ros.ros.bench_client', 'e2e', '--start-node',
               '--seconds', '8', '--frames', '4', '--window-seconds', '1.0',
               '--ready-timeout', '60', '--out', str(tmp_path)]
    process, output = run_bounded(command, env=env, timeout=120)
    node_log = tmp_path / 'e2e_node.log'
    log = node_log.read_text() if node_log.exists() else '(no node log)'
    assert process.returncode == 0, f'{output}\n--- node log ---\n{log}'
    report = json.loads((tmp_path / 'e2e.json').read_text())
    assert report['published'] > 50, report['published']
    assert report['actions'] >= 1, f'no HumanAction received: {output}\n{log}'
    assert report['latency_publish_to_action']['n'] == report['actions'], report
    # The first T - 1 = 3 sampled frames are answered warming_up, and not timed as predictions.
    assert report['warming_up_messages'] >= 3, report
    node = report['node']
    assert int(node['received']) >= 1 and int(node['published']) >= 1, node
    # One RSS sample a second over 8 s; the trend uses those after the first 8/3 s.
    settled = [s for s in report['samples'] if s['rss_mib'] is not None and s['t'] >= 8 / 3]
    assert report['memory']['samples'] == len(settled) >= 3, (report['memory'], settled)
    assert all(s['rss_mib'] > 0 for s in report['samples']), report['samples']


@pytest.mark.skipif(not ROS_READY, reason='rclpy / step_ros_msgs not importable (source '
                                          'install/setup.bash)')
@pytest.mark.timeout(540)  # run_bounded's 480 s first: it kills the nodes and shows their output
def test_bench_ros_multicam_compares_one_node_with_separate_nodes(tmp_path):
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(random.randint(1, 100)))
    command = [sys.executable, '-m', 'step_ros', 'bench-ros', 'multicam', '--cameras', '2',
               '--rate', '10', '--seconds', '4', '--warmup', '2', '--frames', '4',
               '--window-seconds', '1.0', '--ready-timeout', '150', '--out', str(tmp_path)]
    process, output = run_bounded(command, env=env, timeout=480)
    assert process.returncode == 0, output
    report = json.loads((tmp_path / 'multicam.json').read_text())
    one, separate, single = report['runs']
    assert [r['nodes'] for r in report['runs']] == [1, 2, 1], report['runs']
    assert [len(r['cameras']) for r in report['runs']] == [2, 2, 1], report['runs']
    for run in report['runs']:
        assert all(c['processed'] > 0 and c['n'] > 0 for c in run['cameras']), run
        assert run['cpu_s'] > 0 and run['rss_mib'] > 0 and run['exit_codes'] == \
            [0] * run['nodes'], run
    # One process against two: the ratios printed are these runs' figures.
    assert report['rss_ratio'] == pytest.approx(one['rss_mib'] / separate['rss_mib'])
    assert report['cpu_per_frame_ratio'] == pytest.approx(
        one['cpu_ms_per_frame'] / separate['cpu_ms_per_frame'])
    assert f"RSS {report['rss_ratio']:.2f}x" in output, output
    assert (tmp_path / 'multicam.png').stat().st_size > 0
