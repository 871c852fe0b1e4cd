"""`python -m step_ros demo` end to end: node subprocess, synthetic camera, printed actions."""

import re
import subprocess
import sys

import pytest

pytest.importorskip('rclpy', reason='rclpy is not installed (run `make test`)')
pytest.importorskip('step_ros_msgs.msg', reason='step_ros_msgs is not built (run `make test`)')

from node_helpers import REPO, make_head, ros_env, write_params  # noqa: E402

from step_ros.config import load_params_file  # noqa: E402
from step_ros.synth import ACTIONS, SYMMETRIC_PAIRS  # noqa: E402


def test_demo_prints_actions_and_agreement(tmp_path):
    head = make_head(tmp_path / 'demo.safetensors', num_frames=8, labels=ACTIONS,
                     pairs=SYMMETRIC_PAIRS)
    values = {**load_params_file(REPO / 'config' / 'demo.yaml'), 'heads.checkpoints': [str(head)]}
    params = write_params(tmp_path / 'demo.yaml', values)
    result = subprocess.run(
        [sys.executable, '-m', 'step_ros', 'demo', '--params-file', str(params), '--seconds', '5'],
        cwd=REPO, env=ros_env(), capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert 'warming up' in out, out
    rows = re.findall(r'^\s+(\d+\.\d+) s  (\w+)\s+(\d\.\d\d) .* true: (\w+)', out, re.M)
    assert len(rows) >= 5, out
    assert all(label in ACTIONS and true in ACTIONS for _, label, _, true in rows), rows
    # 8 frames over 2 s: the first result needs 7 sampling periods (1.75 s) of stream time.
    assert float(rows[0][0]) >= 1.7, rows[0]
    assert re.search(r'agreement overall: \d+/\d+ = ', out), out
