"""Every command block of README.md runs.

Each fenced ```bash block is run by bash (-e, -o pipefail) through scripts/run, in a temporary
working directory with TMPDIR inside it, ROS traffic kept on this machine in a random domain,
and bounded in time. A block is skipped only when the line right above it is an HTML comment
with one of the known marks (MARKS); an unknown mark is an error, and a block without a mark is
run, so a new command block in the README is tested as soon as it is written. Shell blocks fenced
as anything but `bash` (sh, shell, console) are an error too: they would escape this test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from node_helpers import REPO, ros_env

README = REPO / 'README.md'
# Marks that excuse a block from running here, and why.
MARKS = {
    'needs: a robot with ROS 2': 'a system ROS 2 install (apt, /opt/ros, ros2 launch); '
                                 'test_ros2cli runs the "Try it" lines where the ros2 tools exist',
    'needs: a GPU': 'a CUDA GPU',
    'runs as: make test itself': 'make test cannot run inside itself; make demo is '
                                 'test/test_demo.py',
}
OTHER_SHELLS = {'sh', 'shell', 'console', 'zsh', 'bash-session', 'shell-session'}
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    mark: str | None  # the HTML comment right above the fence, without <!-- -->
    body: str


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r'^```\s*([\w+-]*)\s*$', lines[i])
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not lines[i].startswith('```'):
            i += 1
        above = lines[start - 1].strip() if start > 0 else ''
        comment = re.fullmatch(r'<!--\s*(.*?)\s*-->', above)
        found.append(Block(start + 1, opening.group(1).lower(),
                           comment.group(1) if comment else None,
                           '\n'.join(lines[start + 1:i]) + '\n'))
        i += 1
    return found


def runnable(text: str) -> list[Block]:
    return [b for b in blocks(text) if b.language == 'bash' and b.mark not in MARKS]


def test_command_blocks_are_bash_and_marks_are_known():
    found = blocks(README.read_text())
    assert found, 'README.md has no code blocks'
    for block in found:
        assert block.language not in OTHER_SHELLS, \
            f'README.md:{block.line}: fence shell commands as ```bash (not {block.language}), ' \
            'so that test_readme_commands runs them'
        if block.language == 'bash' and block.mark is not None:
            assert block.mark in MARKS, \
                f'README.md:{block.line}: unknown mark <!-- {block.mark} -->; known: {list(MARKS)}'
    assert runnable(README.read_text()), 'README.md has no command block that runs here'
    assert (REPO / 'test' / 'test_demo.py').is_file(), 'make demo is marked as run by test_demo'


def test_blocks_are_found_and_marks_apply(tmp_path):
    """The parser itself: fences, languages, and the mark on the line right above only."""
    text = ('# t\n\n<!-- needs: a GPU -->\n```bash\nnvidia-smi\n```\n\n<!-- needs: a GPU -->\n\n'
            '```bash\necho run\n```\n```python\nprint(1)\n```\n<!-- wrong -->\n```bash\ntrue\n'
            '```\n')
    found = blocks(text)
    assert [(b.line, b.language, b.mark) for b in found] == [
        (4, 'bash', 'needs: a GPU'), (10, 'bash', None), (13, 'python', None),
        (17, 'bash', 'wrong')], found
    assert [b.body for b in runnable(text)] == ['echo run\n', 'true\n']


def run_block(block: Block, work: Path) -> tuple[int, str]:
    """(exit code or None after BLOCK_TIMEOUT_S, output) of a block run by bash in `work`; its
    process group is killed at the end, so nothing it started outlives it."""
    script = work.parent / f'block_{block.line}.sh'
    script.write_text(block.body)
    env = ros_env()
    env['TMPDIR'] = str(work.parent / 'tmp')
    Path(env['TMPDIR']).mkdir(exist_ok=True)
    log = work.parent / f'block_{block.line}.log'
    with log.open('w') as out:
        process = subprocess.Popen([str(REPO / 'scripts' / 'run'), 'bash', '-e', '-o', 'pipefail',
                                    str(script)], cwd=work, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        try:  # whatever the block left running (or all of it, on a timeout) is stopped
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    output = log.read_text(errors='replace')
    if code is None:
        pytest.fail(f'README.md:{block.line}: still running after {BLOCK_TIMEOUT_S} s:\n'
                    f'{output[-4000:]}')
    return code, output


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 60)
@pytest.mark.parametrize('block', runnable(README.read_text()), ids=lambda b: f'line{b.line}')
def test_readme_block_runs(block, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    code, output = run_block(block, work)
    # tqdm redraws its bar with carriage returns: show the last state of each line only.
    tail = '\n'.join(line.rsplit('\r', 1)[-1] for line in output.splitlines())[-4000:]
    assert code == 0, f'README.md:{block.line}: exit code {code}:\n{block.body}\n---\n{tail}'
    # Recordings are large: keep a failed block's files for a look, not a passed one's.
    shutil.rmtree(tmp_path / 'tmp', ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
