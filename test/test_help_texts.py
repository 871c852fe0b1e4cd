"""Help texts that state numbers or choices of the code: they agree with what the code does."""

import re
import subprocess
import sys

from node_helpers import REPO

from step_ros.__main__ import usage
from step_ros.tools import bench_dist
from step_ros.tools import synth as synth_cli


def test_bench_dist_help_states_the_clip_count_synth_writes(tmp_path):
    text = ' '.join(bench_dist.build_parser().format_help().split())
    stated = re.search(r'\(12: (\d+) clips', text)
    assert stated, text
    assert synth_cli.main(['--out', str(tmp_path), '--train', '1', '--val', '0', '--test', '0',
                           '--size', '32x32', '--min-frames', '8', '--max-frames', '8']) == 0
    per_class_1 = len((tmp_path / 'train.csv').read_text().strip().splitlines()) - 1
    assert int(stated.group(1)) == 12 * per_class_1, (stated.group(0), per_class_1)


def test_bench_ros_multicam_in_the_command_list_and_its_help():
    assert re.search(r'^  bench-ros +.*multicam', usage(), re.M), usage()
    # bench-ros needs ROS 2: its help is read from a process with the workspace sourced or not.
    result = subprocess.run([sys.executable, '-m', 'step_ros', 'bench-ros', '--help'],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    if 'needs ROS 2' in result.stderr:
        return  # no ROS 2 here: test_main_without_ros covers this answer
    assert result.returncode == 0 and '{e2e,flood,multicam}' in result.stdout, result
    assert 'multicam  K cameras into one node' in result.stdout, result.stdout


def test_train_val_cache_help_says_it_fits_the_temperature():
    from step_ros.tools import train

    text = ' '.join(train.build_parser().format_help().split())
    stated = re.search(r'--val-cache VAL_CACHE (.*?) --head', text)
    assert stated and 'temperature' in stated.group(1), text
