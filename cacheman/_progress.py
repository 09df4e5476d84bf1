"""A one-line progress report on standard error, for commands that take a while.

Shown only when standard error is a terminal, and only once an operation has
run for :data:`PROGRESS_AFTER` seconds (``$CACHEMAN_PROGRESS_AFTER`` overrides
it): a quick command prints nothing, and a pipe or a log file never gets the
carriage returns.  Plain text, no dependency: the line is redrawn in place ten
times a second and erased at the end.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from ._process import lifecycle as _lifecycle

__all__ = ["PROGRESS_AFTER", "PROGRESS_AFTER_ENV", "Progress"]

#: Seconds an operation runs before its progress line appears.
PROGRESS_AFTER = 1.0
PROGRESS_AFTER_ENV = "CACHEMAN_PROGRESS_AFTER"
#: Seconds between two redraws.
REDRAW = 0.1


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_AFTER_ENV, PROGRESS_AFTER)))
    except ValueError:
        return PROGRESS_AFTER


class Progress:
    """``with Progress("verify", total=10) as progress: ... progress.step("squares")``.

    ``total`` None shows the elapsed time only (one long step, such as loading
    a large cache).  Drawn by a daemon thread, so a step that blocks for a long
    time (unpickling) still shows the clock moving.
    """

    def __init__(self, what: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.label = ""
        self.stream = sys.stderr if stream is None else stream
        self.after = _delay()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._width = 0
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        try:
            shown = self.stream.isatty()
        except (AttributeError, ValueError):
            shown = False
        if shown:
            self._thread = threading.Thread(target=self._run, name="cacheman-progress", daemon=True)
            _lifecycle.start_thread(self._thread)
        return self

    def step(self, label: str = "") -> None:
        """One more unit done; ``label`` names what comes next (or what was done)."""
        self.done += 1
        self.label = label

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if time.monotonic() - self._started >= self.after:
            self._draw()  # the final count, so the last state seen is the true one
        self._erase()

    def line(self) -> str:
        """The text of the progress line now."""
        elapsed = time.monotonic() - self._started
        count = "" if self.total is None else f" {self.done}/{self.total}"
        label = f" {self.label}" if self.label else ""
        return f"{self.what}:{count}{label} ({elapsed:.1f} s)"

    def _run(self) -> None:
        if self._stop.wait(self.after):
            return
        while True:
            self._draw()
            if self._stop.wait(REDRAW):
                return

    def _draw(self) -> None:
        with self._lock:
            text = self.line()
            padding = " " * max(0, self._width - len(text))
            self._width = len(text)
            self._write(f"\r{text}{padding}")

    def _erase(self) -> None:
        with self._lock:
            if self._width:
                self._write("\r" + " " * self._width + "\r")
                self._width = 0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal: progress is not worth an error
            pass
