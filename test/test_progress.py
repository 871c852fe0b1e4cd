"""Progress bars: tqdm on a terminal; whole lines, a tenth of the work each, in a log."""

import io

from tqdm import tqdm

from step_ros.progress import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_tenth_of_the_work_and_no_carriage_returns():
    log = io.StringIO()
    bar = progress_bar(total=1000, desc='train', unit='step', file=log)
    assert isinstance(bar, LineProgress)
    for i in range(1000):
        bar.update(1)
        if i % 100 == 0:
            bar.set_postfix(loss=f'{1 / (i + 1):.2f}')  # a redraw, not a new line
    bar.close()
    text = log.getvalue()
    assert '\r' not in text and text.endswith('\n'), repr(text[-80:])
    lines = text.splitlines()
    assert len(lines) == 11, lines  # 0 %, 10 % ... 100 %
    assert all(line.startswith('train: ') for line in lines), lines
    assert ' 0/1000 ' in lines[0] and '1000/1000' in lines[-1], (lines[0], lines[-1])


def test_an_iterable_without_total_says_its_count_at_the_end_and_a_disabled_bar_nothing():
    log = io.StringIO()
    for _ in progress_bar((i for i in range(500)), desc='frames', file=log):
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) <= 3 and '500' in lines[-1], lines  # start (and a line per 10 s), end
    quiet = io.StringIO()
    for _ in progress_bar(range(10), desc='x', file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ''


def test_a_terminal_gets_the_tqdm_bar():
    screen = Terminal()
    bar = progress_bar(total=3, desc='extract', file=screen)
    assert type(bar) is tqdm
    bar.update(3)
    bar.close()
    assert '\r' in screen.getvalue()
