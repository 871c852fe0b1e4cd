"""`python -m step_ros demo` end to end: node subprocess, synthetic camera, printed actions."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from node_helpers import REPO, ros_env, write_params  # noqa: E402

from step_ros.data.synth import ACTIONS  # noqa: E402
from step_ros.model import efficientnet  # noqa: E402
from step_ros.stream.config import load_params_file  # noqa: E402

DEMO_TIMEOUT_S = 240


def _run_demo(args: list[str]) -> tuple[int, str, str]:
    """The demo in a session of its own: on a timeout it is stopped together with the node it
    started (SIGTERM lets it stop the node itself; SIGKILL of the group if that hangs)."""
    process = subprocess.Popen([sys.executable, '-m', 'step_ros', 'demo', *args], cwd=REPO,
                               env=ros_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        pytest.fail(f'demo did not finish in {DEMO_TIMEOUT_S} s:\n{out}\n{err}')
    return process.returncode, out, err


def test_demo_prints_decisions_events_and_stream_metrics():
    """With the shipped demo head (config/demo.yaml): the demo prints the decided stream (one line
    per change, not per window) and the START / END events, and ends with the stream metrics of
    its run. The raw windows agree with the actions shown, the nearly symmetric pairs included: a
    window seen in the wrong order, or any other break between camera and result, brings the
    agreement down to chance."""
    code, out, err = _run_demo(['--seconds', '20'])
    assert code == 0, out + err
    assert 'warming up' in out, out
    events = re.findall(r'^\s+(\d+\.\d+) s  (START|END)\s+(\w+)\s+(?:onset|offset)\s+'
                        r'(\d+\.\d+) s', out, re.M)
    assert sum(kind == 'START' for _, kind, _, _ in events) >= 2, out
    # A START, then the END of that label, and so on; onsets and offsets precede the decision.
    for i, (decided, kind, label, stamp) in enumerate(events):
        assert kind == ('START' if i % 2 == 0 else 'END'), events
        assert label in ACTIONS and float(stamp) <= float(decided), (label, stamp, decided)
        if kind == 'END':
            assert label == events[i - 1][2] and float(stamp) >= float(events[i - 1][3]), events
    states = re.findall(r'^\s+(\d+\.\d+) s  (idle|uncertain|active \w+)\s', out, re.M)
    results = re.search(r'demo: (\d+) results, (\d+) on full windows', out)
    assert states and results, out
    assert len(states) < int(results.group(1)), 'a line per raw window, not per change'
    # 8 frames over 2 s: the first decision needs 7 sampling periods (1.75 s) of stream time.
    assert float(states[0][0]) >= 1.7, states[0]
    for name in ('raw', 'decided'):
        assert re.search(rf'demo: +{name}: accuracy \d+\.\d%, label changes \d+\.\d+ per '
                         r'minute, edit score \d+\.\d, F1@0\.1/0\.25/0\.5 ', out), out
    assert re.search(r'demo:  events: \d+ STARTs for \d+ actions: precision ', out), out
    # The summary says what raw and decided are and what its accuracy counts.
    assert re.search(r'demo:   raw = the label of each window as published .*; decided = the '
                     r'state a planner acts on', out), out
    assert re.search(rf'demo:   accuracy = share of the {results.group(1)} results whose label '
                     r"is the action shown at the result's stamp", out), out
    # A START line shows the action it starts: the true segment that began nearest its onset.
    starts = re.findall(r' START (\w+) .* true: (\w+) shown (\d+\.\d+)-(\d+\.\d+) s$', out, re.M)
    assert len(starts) == sum(kind == 'START' for _, kind, _, _ in events), out
    same = sum(label == true for label, true, _, _ in starts)
    assert same >= 0.8 * len(starts), f'{same}/{len(starts)} STARTs show their own action:\n{out}'
    # Its node log is gone once the demo ended well.
    log = re.search(r'node log: (\S+) \(removed at the end unless the demo fails\)', out)
    assert log and not Path(log.group(1)).exists(), out
    assert re.search(r'demo:  stamps: onset estimates (n/a|[+-]\d\.\d\d) s from the true '
                     r'onset \(p50; p10 ', out), out
    overall = re.search(r'raw agreement overall \(full windows\): (\d+)/(\d+) = ', out)
    assert overall, out
    hits, total = map(int, overall.groups())
    assert total >= 4 and hits >= 0.7 * total, f'agreement {hits}/{total}:\n{out}'
    pairs = re.search(r'raw agreement symmetric pairs \(full windows\): (\d+)/(\d+) = ', out)
    if pairs:
        hits, total = map(int, pairs.groups())
        assert hits >= 0.5 * total, f'symmetric pairs agreement {hits}/{total}:\n{out}'


def test_demo_whose_node_fails_keeps_and_names_its_log(tmp_path):
    """A node that cannot start (a head file that is no checkpoint): the demo fails, and the
    node log it names, with the node's reason in it, is still there."""
    head = tmp_path / 'not_a_head.safetensors'
    head.write_bytes(b'not a checkpoint')
    values = load_params_file(REPO / 'config' / 'demo.yaml')
    params = write_params(tmp_path / 'params.yaml', {**values, 'heads.checkpoints': [str(head)]})
    code, out, err = _run_demo(['--params-file', str(params), '--seconds', '5'])
    assert code == 1, out + err
    kept = re.search(r'^demo: failed \(exit code 1\); the node log is kept: (\S+)$', err, re.M)
    assert kept, out + err
    log = Path(kept.group(1))
    assert log.is_file() and 'not_a_head.safetensors' in log.read_text(), out + err
    log.unlink()


def test_demo_stops_its_node_when_terminated(tmp_path):
    """A demo ended by SIGTERM (a test timeout, a supervisor) must not leave its node running."""
    process = subprocess.Popen([sys.executable, '-m', 'step_ros', 'demo', '--seconds', '600'],
                               cwd=REPO, env=ros_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    node: list[int] = []
    try:
        for line in process.stdout:
            if 'starting perception_node' in line:
                break
        node = _children(process.pid)
        assert node, 'the demo started no node process'
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        for pid in node:
            assert not _alive(pid), f'node {pid} still running after the demo ended'
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in node:  # left over by a broken demo: not by the test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    path = f'/proc/{pid}/task/{pid}/children'
    with open(path) as stream:
        return [int(p) for p in stream.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stream:
            return stream.read().split()[2] != 'Z'
    except FileNotFoundError:
        return False


@pytest.mark.skipif(importlib.util.find_spec(efficientnet.PACKAGE) is None,
                    reason=f'weights package not installed ({efficientnet.INSTALL})')
def test_demo_on_real_features_starts_and_ends_the_actions_shown():
    """`make demo-real`: the same demo with EfficientNet-Lite0 and its own head."""
    code, out, err = _run_demo(['--params-file', 'config/demo_efficientnet.yaml',
                                '--seconds', '20'])
    assert code == 0, out + err
    assert "demo: labels ['pick_up'" in out, out
    events = re.findall(r'^\s+\d+\.\d+ s  (START|END)\s+(\w+)\s', out, re.M)
    assert sum(kind == 'START' for kind, _ in events) >= 2, out
    for i, (kind, label) in enumerate(events):  # START, then the END of that label, ...
        assert kind == ('START' if i % 2 == 0 else 'END'), events
        assert kind == 'START' or label == events[i - 1][1], events
    starts = re.findall(r' START (\w+) .* true: (\w+) shown ', out)
    same = sum(label == true for label, true in starts)
    assert same >= 0.8 * len(starts), f'{same}/{len(starts)} STARTs show their own action:\n{out}'
