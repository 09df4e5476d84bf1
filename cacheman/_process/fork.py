"""Fork mechanics: run a callable in a forked child and learn how it ended.

:func:`fork_child` forks a child that runs one callable and leaves with
``os._exit``; the parent goes on at once and follows the child through a
:class:`ChildJob`: its report pipe (watched by the scheduler thread), its exit
status, and a kill at its deadline.  This module knows nothing of caches: what
the child runs, and what an outcome means, is :mod:`cacheman._process.background`'s
business.

What the child runs must be kept to the pickler and plain file writes: no lock
of ours, no logging.  It reports, through the pipe, ``T<path>`` for each file
it creates exclusively (a temporary file, seen by an audit hook), then, if the
callable returned ``bytes``, ``R<those bytes in hex>``, and ``K`` on success or
``E<error>`` on failure.  So when a child dies half-way (killed at
its timeout, or by anyone else), the parent knows which temporary files to
remove.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import psutil

from . import lifecycle as _lifecycle

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["ChildJob", "fork_child"]

# Pipe ends of our children; a process forked by someone else closes them.
_inherited_fds: set[int] = set()


# -- the child -------------------------------------------------------------------


def _write_record(fd: int, record: bytes) -> None:
    os.write(fd, record + b"\0")


class _TempFileReporter:
    """Audit hook (child only): report each file created with O_EXCL, i.e. temporary files."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or len(args) < 3:
            return
        try:
            path, _, flags = args[0], args[1], args[2]
            wanted = os.O_CREAT | os.O_EXCL
            if isinstance(flags, int) and flags != -1 and flags & wanted == wanted:
                name = os.fsencode(os.path.abspath(os.fspath(path)))
                _write_record(self.fd, b"T" + name)
        except Exception:  # an audit hook that raises would abort the open itself
            return


def _close_inherited_pipes(keep: int) -> None:
    """Close the pipes the child inherited (but its own report pipe).

    A pipe another thread of the parent has just opened (the output of a
    ``subprocess.run``, say) would otherwise stay open in the child, and whoever
    reads it would wait for the child to end before seeing end-of-file.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd <= 2 or fd == keep:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)


def _run_child(write_fd: int, run: Callable[[], object]) -> NoReturn:
    """The whole life of a child; never returns."""
    code = 1
    try:
        _close_inherited_pipes(keep=write_fd)
        # A collection would walk (and so copy) every tracked object's header.
        gc.disable()
        # The program must not wait for its own background save: on a machine
        # with few cores, the child at normal priority competes with the parent
        # for the CPU and shows up as pauses of the calling thread.
        with contextlib.suppress(OSError):
            os.nice(10)
        # Ctrl-C reaches the whole process group: let the parent decide, not us.
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.addaudithook(_TempFileReporter(write_fd))
        result = run()
        if isinstance(result, bytes):  # hex: the report's records are NUL-separated
            _write_record(write_fd, b"R" + result.hex().encode())
        _write_record(write_fd, b"K")
        code = 0
    except BaseException as error:
        with contextlib.suppress(BaseException):
            text = f"{type(error).__name__}: {error}".encode("utf-8", "replace")
            _write_record(write_fd, b"E" + text[:2000].replace(b"\0", b" "))
    finally:
        os._exit(code)


def _warm_tempfile() -> None:
    # tempfile builds its name generator once, under a module lock; build it in
    # the parent so the child never takes that lock (another thread may hold it).
    warm = getattr(tempfile, "_get_candidate_names", None)
    if warm is not None:
        warm()


def fork_child(run: Callable[[], object]) -> tuple[int, int]:
    """Fork a child that runs ``run()``; return its pid and our end of its report pipe.

    Raises ``OSError`` when the fork itself fails (EAGAIN, ENOMEM).
    """
    read_fd, write_fd = os.pipe()
    _inherited_fds.update((read_fd, write_fd))
    _warm_tempfile()
    try:
        with warnings.catch_warnings(), _lifecycle.own_fork():
            # Python 3.12+ warns that forking a process with threads may leave the
            # child holding a lock forever.  This child runs only the pickler and
            # plain file writes and takes no lock of ours (no logging either); one
            # that hangs anyway is killed at its deadline.  So the warning is
            # silenced here, at this one call, and nowhere else.
            warnings.filterwarnings(
                "ignore", category=DeprecationWarning, message=r".*multi-threaded.*fork"
            )
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child; coverage cannot follow os._exit
                _run_child(write_fd, run)
    except BaseException:
        for fd in (read_fd, write_fd):
            _inherited_fds.discard(fd)
            os.close(fd)
        raise
    os.close(write_fd)
    _inherited_fds.discard(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


# -- one child, seen from the parent -------------------------------------------------


class ChildJob:
    """One child in flight: its pid, its pipe, and how it ended.

    ``deadline`` is on the scheduler's clock (the caller kills the child when
    the scheduler reaches it), ``timeout`` the same span in real seconds (for
    :meth:`wait`).
    """

    def __init__(self, pid: int, fd: int, deadline: float, timeout: float) -> None:
        self.pid = pid
        self.fd = fd
        self.deadline = deadline  # on the scheduler's clock
        self.timeout = timeout
        self.real_deadline = time.monotonic() + timeout
        self.lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._on_readable: Callable[[], None] | None = None
        self.done = False
        self.ok = False
        self.error: str | None = None
        self.result: bytes | None = None  # what the child's callable returned, if bytes
        self._data = bytearray()
        try:
            self.process: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:  # pragma: no cover - the pid is ours until reaped
            self.process = None

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<child save pid={self.pid} {state}>"

    def watch(self, scheduler: Scheduler, on_readable: Callable[[], None]) -> None:
        """Have ``scheduler`` call ``on_readable()`` when the child writes or ends."""
        self._scheduler, self._on_readable = scheduler, on_readable
        scheduler.watch(self.fd, on_readable)

    def unwatch(self) -> None:
        """Stop the scheduler watching this job's pipe (and only this job's).

        The pipe's descriptor number is reused as soon as it is closed, so the
        scheduler is told to forget it before the close, and only if it still
        watches it for this job.
        """
        if self._scheduler is not None and self._on_readable is not None:
            self._scheduler.unwatch(self.fd, self._on_readable)

    def _read_available(self) -> bool:
        """Read what the child wrote so far; True once the pipe is closed (lock held)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self._data += chunk

    def _finish(self, status: int | None = None, killed: str | None = None) -> None:
        """Reap the child, read its report, remove what it left (lock held)."""
        if status is None:
            try:
                status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:  # someone else reaped it; the pipe still tells
                status = None
        with contextlib.suppress(OSError):
            self._read_available()
        self.unwatch()
        os.close(self.fd)
        _inherited_fds.discard(self.fd)
        records = bytes(self._data).split(b"\0")
        code = None if status is None else os.waitstatus_to_exitcode(status)
        reported = next((r[1:] for r in records if r.startswith(b"E")), None)
        self.ok = killed is None and b"K" in records and code in (0, None)
        result = next((r[1:] for r in records if r.startswith(b"R")), None)
        self.result = None if result is None or not self.ok else bytes.fromhex(result.decode())
        if killed is not None:
            self.error = killed
        elif code is not None and code < 0:
            self.error = f"the save process was killed by signal {signal.Signals(-code).name}"
        elif reported is not None:
            self.error = reported.decode("utf-8", "replace")
        elif not self.ok:
            self.error = f"the save process exited with status {code}"
        if not self.ok:
            for record in records:
                if record.startswith(b"T"):
                    with contextlib.suppress(OSError):
                        os.unlink(record[1:])
        self.done = True

    def service(self) -> Literal["done", "running", "busy"]:
        """Non-blocking step for the scheduler thread when the pipe is readable."""
        if not self.lock.acquire(blocking=False):
            return "busy"
        try:
            if not self.done and self._read_available():
                self._finish()
            return "done" if self.done else "running"
        finally:
            self.lock.release()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to end; True if it did."""
        end = time.monotonic() + timeout
        with self.lock:
            while not self.done:
                if self._read_available():
                    self._finish()
                    break
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                poller = select.poll()
                poller.register(self.fd, select.POLLIN)
                poller.poll(math.ceil(remaining * 1000))
            return True

    def kill(self, reason: str) -> None:
        """Kill the child (unless it has just ended) and reap it."""
        with self.lock:
            if self.done:
                return
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:  # it ended on its own; only its pipe was slow to close
                self._finish(status)
                return
            with contextlib.suppress(psutil.Error, OSError):
                if self.process is not None:
                    self.process.kill()
                else:  # pragma: no cover
                    os.kill(self.pid, signal.SIGKILL)
            self._finish(killed=reason)


def _close_inherited_fds() -> None:
    """In a process forked by someone else: our children's pipes are not its own."""
    for fd in list(_inherited_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _inherited_fds.clear()


_lifecycle.on_fork_child(_close_inherited_fds)
