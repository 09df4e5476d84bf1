"""Saves in a forked child process: fork, psutil tracking, reaping, timeouts, retries.

A background save forks the process: the child sees a point-in-time,
copy-on-write snapshot of every cache, pickles the one it was made for, writes
it through the cache's saver, and leaves with ``os._exit``.  The parent goes on
at once; it learns the outcome through a pipe (watched by the scheduler thread)
and the child's exit status.

What the child runs is kept to the pickler and plain file writes: no lock of
ours, no logging.  It reports, through the pipe, ``T<path>`` for each file it
creates exclusively (a temporary file, seen by an audit hook), then ``K`` on
success or ``E<error>`` on failure.  So when a child dies half-way (killed at
the timeout, or by anyone else), the parent knows which temporary files to
remove.

Per cache, a :class:`BackgroundSaver` keeps at most one child in flight,
coalesces the requests made meanwhile into one more save, retries a failed save
after a back-off, and falls back to saving in-process (with a warning) when the
platform cannot fork, when memory is too short for a copy-on-write child, or
after two failed child saves in a row.
"""

from __future__ import annotations

import contextlib
import gc
import logging
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
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import psutil

from . import _scheduler

if TYPE_CHECKING:
    from .cachewrap import CacheWrap

__all__ = ["BackgroundSaver", "await_idle", "last_error", "request_save", "saver_for"]

logger = logging.getLogger("cacheman")

#: Seconds before the first retry of a failed save; it doubles up to RETRY_MAX.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
#: How long the scheduler waits before retrying when a cache's lock is busy.
LOCK_RETRY = 0.1
#: Child saves that fail in a row before the cache saves in-process instead.
CHILD_FAILURES_BEFORE_FALLBACK = 2
#: A rough upper bound of the memory a child may copy per item (refcount writes
#: dirty the pages of every key and value it pickles).
BYTES_PER_ITEM = 200

Mode = Literal["caller", "edit", "thread"]

# Set, in the forking thread only, around our own fork: the child's fork hook
# must then do nothing at all (it runs in a save child, which touches no state).
_local = threading.local()
# Pipe ends of our child saves; a process forked by someone else closes them.
_inherited_fds: set[int] = set()
_savers: dict[int, BackgroundSaver] = {}
_savers_lock = threading.Lock()
_child_resetters: list[Callable[[], None]] = []
_warned_no_fork = False


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


def _run_child(write_fd: int, save: Callable[[], object]) -> NoReturn:
    """The whole life of a save child; never returns."""
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
        save()
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


def _fork_child(save: Callable[[], object]) -> tuple[int, int]:
    """Fork a child that runs ``save``; return its pid and our end of its pipe."""
    read_fd, write_fd = os.pipe()
    _inherited_fds.update((read_fd, write_fd))
    _warm_tempfile()
    _local.in_save_child = True
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a process with threads may leave the
            # child holding a lock forever.  This child runs only the pickler and
            # plain file writes and takes no lock of ours (no logging either); one
            # that hangs anyway is killed at async_timeout.  So the warning is
            # silenced here, at this one call, and nowhere else.
            warnings.filterwarnings(
                "ignore", category=DeprecationWarning, message=r".*multi-threaded.*fork"
            )
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage cannot follow os._exit
            _run_child(write_fd, save)
    except BaseException:
        for fd in (read_fd, write_fd):
            _inherited_fds.discard(fd)
            os.close(fd)
        raise
    finally:
        _local.in_save_child = False
    os.close(write_fd)
    _inherited_fds.discard(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


# -- one child, seen from the parent -------------------------------------------------


class _Job:
    """One child save in flight: its pid, its pipe, and how it ended."""

    def __init__(self, pid: int, fd: int, mark: int, deadline: float, timeout: float) -> None:
        self.pid = pid
        self.fd = fd
        self.mark = mark
        self.deadline = deadline  # on the scheduler's clock
        self.timeout = timeout
        self.real_deadline = time.monotonic() + timeout
        self.lock = threading.Lock()
        self._scheduler: _scheduler.Scheduler | None = None
        self._on_readable: Callable[[], None] | None = None
        self.done = False
        self.ok = False
        self.error: str | None = None
        self._data = bytearray()
        try:
            self.process: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:  # pragma: no cover - the pid is ours until reaped
            self.process = None

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<child save pid={self.pid} {state}>"

    def watch(self, scheduler: _scheduler.Scheduler, on_readable: Callable[[], None]) -> None:
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


# -- one cache's background saves ------------------------------------------------------


def _snapshot(cache: CacheWrap) -> Mapping[Any, Any]:
    """A copy to save in-process while other threads may go on editing the cache."""
    prepared = cache._prepared_for_save()
    return dict.copy(cache) if prepared is cache else prepared


def _memory_short(cache: CacheWrap) -> bool:
    try:
        available = psutil.virtual_memory().available
        resident = psutil.Process().memory_info().rss
    except (psutil.Error, OSError):
        return False
    needed = min(resident, sys.getsizeof(cache) + len(cache) * BYTES_PER_ITEM)
    return available < needed


def _backoff(failures: int) -> float:
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, failures - 1)))


class BackgroundSaver:
    """One cache's background saves: one child at a time, coalescing, retries, fallback."""

    def __init__(self, cache: CacheWrap, scheduler: _scheduler.Scheduler) -> None:
        self._cache = weakref.ref(cache)
        self.scheduler = scheduler
        self._reset_state()
        self.failures = 0  # failed saves in a row, of any kind
        self.child_failures = 0  # failed child saves in a row
        self.last_error: str | None = None
        self.completed = 0  # successful background saves so far
        self._fallback: str | None = None

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self.job: _Job | None = None
        self.requested = False  # asked for while a child ran: one more save after it
        self.due_at: float | None = None  # a deferred save or a retry

    @property
    def name(self) -> str:
        """The cache's name, for messages."""
        cache = self._cache()
        return "<gone>" if cache is None else cache.name

    def __repr__(self) -> str:
        return f"<BackgroundSaver {self.name!r} job={self.job!r} failures={self.failures}>"

    @property
    def busy(self) -> bool:
        """Whether a child save is in flight."""
        return self.job is not None

    # -- asking for a save --------------------------------------------------------

    def request(self, mode: Mode) -> None:
        """Save soon, without making the caller wait for the write.

        ``mode`` says who asks: ``"caller"`` (an explicit ``save()``; may wait
        for the cache's lock), ``"edit"`` (the burst rule, on the editing
        thread: never waits, never saves in-process) or ``"thread"`` (the
        scheduler: never waits for a lock).
        """
        cache = self._cache()
        if cache is None:
            return
        with self._lock:
            if self.job is not None:
                self.requested = True
                return
        in_process = self._in_process_reason(cache)
        if in_process is not None and mode == "edit":
            self._defer(self.scheduler.clock())
            return
        if not cache._lock.acquire(blocking=mode == "caller"):
            self._defer(self.scheduler.clock() + (0 if mode == "edit" else LOCK_RETRY))
            return
        try:
            if in_process is not None:
                self._save_in_process(cache)
            else:
                self._start_child(cache)
        finally:
            cache._lock.release()

    def _in_process_reason(self, cache: CacheWrap) -> str | None:
        global _warned_no_fork
        reason = None
        if not hasattr(os, "fork"):
            reason = "this platform cannot fork"
        elif self.child_failures >= CHILD_FAILURES_BEFORE_FALLBACK:
            reason = f"the last {self.child_failures} child saves failed"
        elif _memory_short(cache):
            reason = "free memory is too short for a copy-on-write child"
        if reason is not None and reason != self._fallback:
            if reason != "this platform cannot fork" or not _warned_no_fork:
                logger.warning(
                    "cache %r: saving in-process (the program waits for the write) because %s",
                    self.name,
                    reason,
                )
            _warned_no_fork = _warned_no_fork or reason == "this platform cannot fork"
        self._fallback = reason
        return reason

    def _defer(self, when: float) -> None:
        with self._lock:
            self.due_at = when if self.due_at is None else min(self.due_at, when)
        self.scheduler.call_at(self, when, self._on_due)

    # -- the two ways to save (cache lock held) ------------------------------------

    def _start_child(self, cache: CacheWrap) -> None:
        plan = cache._save_plan()
        if plan is None:
            return
        saver, mark = plan
        name = cache.name

        def save() -> None:  # runs in the child
            saver(name, cache._prepared_for_save())

        try:
            pid, fd = _fork_child(save)
        except OSError as error:  # EAGAIN, ENOMEM: count it as a failed child save
            self._failed(f"cannot fork: {error}", in_child=True)
            return
        timeout = float(cache.async_timeout)
        job = _Job(pid, fd, mark, self.scheduler.clock() + timeout, timeout)
        with self._lock:
            self.job = job
        job.watch(self.scheduler, lambda: self._on_pipe(job))
        self.scheduler.call_at(self, job.deadline, self._on_due)

    def _save_in_process(self, cache: CacheWrap) -> None:
        plan = cache._save_plan()
        if plan is None:
            return
        saver, mark = plan
        try:
            saver(cache.name, _snapshot(cache))
        except Exception as error:
            self._failed(f"{type(error).__name__}: {error}", in_child=False)
        else:
            self._succeeded(mark)

    # -- outcomes --------------------------------------------------------------------

    def _succeeded(self, mark: int) -> None:
        if self.failures:
            logger.info("cache %r: saved after %d failed attempts", self.name, self.failures)
        self.failures = 0
        self.child_failures = 0
        self.last_error = None
        self.completed += 1
        cache = self._cache()
        if cache is not None:
            cache._saved_through(mark)

    def _failed(self, error: str, in_child: bool) -> None:
        self.failures += 1
        if in_child:
            self.child_failures += 1
        self.last_error = error
        delay = _backoff(self.failures)
        logger.warning(
            "cache %r: background save failed (%s); the edits stay pending, retry in %g s",
            self.name,
            error,
            delay,
        )
        self._defer(self.scheduler.clock() + delay)

    def _completed(self, job: _Job) -> None:
        with self._lock:
            if self.job is not job:
                return
            self.job = None
            requested, self.requested = self.requested, False
        # (The job stopped being watched when it finished, before its pipe closed.)
        if job.ok:
            self._succeeded(job.mark)
            if requested:
                self._defer(self.scheduler.clock())
        else:
            self._failed(job.error or "unknown error", in_child=True)

    def _on_pipe(self, job: _Job) -> None:
        state = job.service()
        if state == "busy":  # a waiting thread owns it now; stop polling its pipe
            job.unwatch()
        elif state == "done":
            self._completed(job)

    def _on_due(self, now: float) -> float | None:
        """Scheduler task: kill a child past its timeout; run a deferred save or retry."""
        with self._lock:
            job, due = self.job, self.due_at
        if job is not None and now >= job.deadline:
            job.kill(f"the save process ran past async_timeout ({job.timeout:g} s) and was killed")
            self._completed(job)
            job = None
        if due is not None and now >= due:
            with self._lock:
                self.due_at = None
            cache = self._cache()
            if cache is not None and cache._has_unsaved_edits():
                self.request("thread")
        with self._lock:
            job_deadline = None if self.job is None else self.job.deadline
            deadlines = [t for t in (self.due_at, job_deadline) if t is not None]
        return min(deadlines) if deadlines else None

    # -- waiting ----------------------------------------------------------------------

    def await_idle(self) -> None:
        """Wait for the child save in flight (killing it at its timeout); apply its outcome."""
        with self._lock:
            job = self.job
        if job is None:
            return
        job.unwatch()
        if not job.wait(max(0.0, job.real_deadline - time.monotonic())):
            job.kill(f"the save process ran past async_timeout ({job.timeout:g} s) and was killed")
        self._completed(job)

    def _forget_after_fork(self) -> None:
        # In a forked child the parent's save child is not ours to wait for.
        self._reset_state()


# -- what the cache classes call ----------------------------------------------------------


def saver_for(cache: CacheWrap, scheduler: _scheduler.Scheduler | None = None) -> BackgroundSaver:
    """The :class:`BackgroundSaver` of ``cache``, made on first use."""
    key = id(cache)
    with _savers_lock:
        saver = _savers.get(key)
        if saver is None or saver._cache() is not cache:
            saver = BackgroundSaver(cache, scheduler or _scheduler.process_scheduler())
            _savers[key] = saver
            weakref.finalize(cache, _savers.pop, key, None).atexit = False
        return saver


def _existing(cache: CacheWrap) -> BackgroundSaver | None:
    saver = _savers.get(id(cache))
    return saver if saver is not None and saver._cache() is cache else None


def request_save(cache: CacheWrap) -> None:
    """Save ``cache`` in a child process (an explicit ``save()`` of an async cache)."""
    saver_for(cache).request("caller")


def await_idle(cache: CacheWrap) -> None:
    """Wait for the background save of ``cache`` in flight, if any."""
    saver = _existing(cache)
    if saver is not None:
        saver.await_idle()


def last_error(cache: CacheWrap) -> str | None:
    """The error of the last background save of ``cache`` if it failed, else None."""
    saver = _existing(cache)
    return None if saver is None else saver.last_error


def stop_background_work() -> None:
    """At exit: stop the scheduler thread so no new save starts during the final flush."""
    _scheduler.shutdown()


def on_fork_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every child forked by someone else (not in save children)."""
    _child_resetters.append(callback)


def _after_fork_in_child() -> None:
    global _savers_lock
    if getattr(_local, "in_save_child", False):
        return  # a save child: touch nothing
    _savers_lock = threading.Lock()  # another thread of the parent may have held it
    for fd in list(_inherited_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _inherited_fds.clear()
    _scheduler.forget_after_fork()
    for saver in list(_savers.values()):
        saver._forget_after_fork()
    for callback in _child_resetters:
        callback()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
