"""Progress of long work: a tqdm bar on a terminal, plain lines in a log.

On a terminal the bar redraws in place. Where stderr is a file or a pipe (a CI log, `2> log`,
`ros2 launch` output), carriage-return redraws would pile up into one unreadable line and run
into the next message; there the same progress is one line per tenth of the work and one at the
end (without a total: one every 10 s).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

STEPS = 10  # lines per bar in a log
SECONDS = 10.0  # without a total: a line this often


class _Discard:
    """Where tqdm's own redraws go in a log: nowhere (LineProgress writes the lines)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LineProgress(tqdm):
    """tqdm that writes whole lines to `file` (stderr): at the start, at each tenth of `total`
    (without a total: every SECONDS) and at the end."""

    def __init__(self, *args, file=None, **kwargs) -> None:
        self._out = file if file is not None else sys.stderr
        self._shown: tuple | None = None
        kwargs.update(mininterval=0, miniters=1)
        super().__init__(*args, file=_Discard(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == '':  # tqdm clearing its line
            return True
        closing = self.disable  # close() sets it before its last display
        done = closing or (bool(self.total) and self.n >= self.total)
        if self.total:
            mark = (int(STEPS * self.n / self.total), done)
        else:  # no total to divide: a line every SECONDS
            now = self._time()
            mark = (int((now - getattr(self, 'start_t', now)) // SECONDS), done)
        if mark == self._shown:
            return True
        self._shown = mark
        self._out.write(self.__str__() + '\n')
        self._out.flush()
        return True


def progress_bar(*args, **kwargs) -> tqdm:
    """A progress bar over the arguments of tqdm: tqdm on a terminal, LineProgress otherwise."""
    stream = kwargs.get('file') or sys.stderr
    is_tty = getattr(stream, 'isatty', lambda: False)()
    return (tqdm if is_tty else LineProgress)(*args, **kwargs)
