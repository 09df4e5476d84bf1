"""The one background thread per process, and its sorted schedule of deadlines.

Every autosync cache (and every ``async_save`` cache) asks this module to run a
task "no later than" some time.  The process's :class:`Scheduler` keeps those
deadlines in a ``SortedList`` and its daemon thread sleeps in ``poll()`` until
the earliest one, or until a watched file descriptor (the pipe of a child save)
becomes readable, or until another thread wakes it through a self-pipe.  It
never polls on a timer: with nothing scheduled and no child running it sleeps
without a timeout.

A scheduler built with another clock (tests in virtual time) has no thread: the
test calls :meth:`Scheduler.run_due` after moving its clock.

The thread is started lazily, by the first task scheduled; in a child made by
``fork`` the state inherited from the parent is dropped (the thread does not
exist there) and the next task scheduled starts a fresh thread, so
multiprocessing workers autosave too.  At interpreter exit :func:`shutdown`
stops it before the exit flush.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from . import lifecycle as _lifecycle

__all__ = ["Clock", "Scheduler", "Task", "for_clock", "process_scheduler", "shutdown"]

logger = logging.getLogger("cacheman")

#: A clock returns seconds as a float; only differences between readings matter.
Clock = Callable[[], float]
#: A task runs at (or after) its deadline and returns its next deadline, or None.
Task = Callable[[float], "float | None"]


class Scheduler:
    """Deadlines (one per owner) and watched pipes, served by one thread or by hand."""

    def __init__(self, clock: Clock = time.monotonic, threaded: bool = True) -> None:
        self.clock = clock
        self.threaded = threaded
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # (deadline, sequence, owner id): the sequence breaks ties in arrival order.
        self._queue: Any = SortedList()
        # The owner is kept alive while scheduled, so that its id is not reused.
        self._entries: dict[int, tuple[float, int, Task, object]] = {}
        self._watched: dict[int, Callable[[], None]] = {}
        # The descriptors the thread is blocked in poll() on, and a condition to
        # learn that it has left poll(); see unwatch() for why that matters.
        self._polling: frozenset[int] = frozenset()
        self._poll_done = threading.Condition(self._lock)
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_pipe: tuple[int, int] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        kind = "threaded" if self.threaded else "manual"
        return f"<Scheduler {kind}: {len(self._entries)} deadlines, {len(self._watched)} pipes>"

    # -- what callers use -------------------------------------------------------

    def call_at(self, owner: object, when: float, task: Task) -> None:
        """Run ``task(now)`` for ``owner`` no later than ``when``.

        An owner has one deadline: an earlier one already set wins (the task
        returns its next deadline, so nothing is lost), a later one replaces it.
        """
        key = id(owner)
        with self._lock:
            self._insert(key, when, task, owner)
            is_first = self._queue[0][2] == key
        if is_first:
            self._wake()

    def cancel(self, owner: object) -> None:
        """Forget ``owner``'s deadline, if it has one."""
        key = id(owner)
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._queue.remove((entry[0], entry[1], key))

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the scheduler whenever ``fd`` is readable (or closed)."""
        with self._lock:
            self._watched[fd] = callback
        self._wake()

    def unwatch(self, fd: int, callback: Callable[[], None] | None = None) -> None:
        """Stop watching ``fd`` (only if it is watched for ``callback``, when given).

        On return it is safe to close the descriptor.

        A thread blocked in poll() holds a reference to every file it polls, so
        a descriptor closed under it stays open until the poll ends; worse, its
        number may be reused at once (say for a ``subprocess.run`` output pipe,
        whose reader would then wait for end-of-file until our poll times out).
        So unless the caller is the scheduler thread itself, this wakes the
        thread and waits until it has left the poll that covered ``fd``.
        """
        with self._lock:
            if callback is not None and self._watched.get(fd) is not callback:
                return
            self._watched.pop(fd, None)
            if fd not in self._polling or threading.current_thread() is self._thread:
                return
            pipe = self._wake_pipe
            if pipe is not None:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(pipe[1], b"!")
            self._poll_done.wait_for(lambda: fd not in self._polling, timeout=5.0)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when nothing is scheduled."""
        with self._lock:
            return self._queue[0][0] if self._queue else None

    def run_due(self) -> None:
        """Serve readable pipes, then run every task whose deadline has come."""
        self._serve_pipes(timeout_ms=0)
        while True:
            now = self.clock()
            with self._lock:
                if not self._queue or self._queue[0][0] > now:
                    return
                _, _, key = self._queue.pop(0)
                _, _, task, owner = self._entries.pop(key)
            try:
                again = task(now)
            except Exception:  # a failing task must not take the thread down
                logger.exception("cacheman background task %r failed", task)
                again = None
            if again is not None:
                with self._lock:
                    self._insert(key, again, task, owner)

    # -- the thread ----------------------------------------------------------------

    def _insert(self, key: int, when: float, task: Task, owner: object) -> None:
        # Called with self._lock held.
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] <= when:
                return
            self._queue.remove((entry[0], entry[1], key))
        sequence = next(self._sequence)
        self._entries[key] = (when, sequence, task, owner)
        self._queue.add((when, sequence, key))

    def _wake(self) -> None:
        if not self.threaded or _exiting:
            return
        with self._lock:
            if self._thread is None:
                self._start_thread()
            pipe = self._wake_pipe
        if pipe is not None:
            # A full pipe already holds a wake-up; nothing more is needed.
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(pipe[1], b"!")

    def _start_thread(self) -> None:
        # Called with self._lock held.
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wake_pipe = (read_end, write_end)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="cacheman-autosync", daemon=True)
        _lifecycle.start_thread(self._thread)

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping or self._wake_pipe is None:
                    return
                deadline = self._queue[0][0] if self._queue else None
            if deadline is None:
                timeout_ms = None
            else:
                timeout_ms = max(0, math.ceil((deadline - self.clock()) * 1000))
            self._serve_pipes(timeout_ms)
            self.run_due()

    def _serve_pipes(self, timeout_ms: int | None) -> None:
        blocking = timeout_ms != 0
        with self._lock:
            watched = dict(self._watched)
            wake_fd = self._wake_pipe[0] if self._wake_pipe and self.threaded else None
            if blocking:
                # Published with the snapshot, under the same lock: an unwatch() that
                # comes after the snapshot must know to wait for this poll to end.
                self._polling = frozenset(watched)
        if not watched and wake_fd is None:
            self._left_poll(blocking)
            return
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        try:
            ready = poller.poll(timeout_ms)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
            return
        finally:
            self._left_poll(blocking)
        for fd, _ in ready:
            if fd == wake_fd:
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(fd, 512):
                        pass
                continue
            callback = watched.get(fd)
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                logger.exception("cacheman: serving a child save's pipe failed")

    def _left_poll(self, blocking: bool) -> None:
        if blocking:
            with self._lock:
                self._polling = frozenset()
                self._poll_done.notify_all()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (it finishes the task it runs); the schedule is kept."""
        with self._lock:
            thread = self._thread
            self._stopping = True
            pipe = self._wake_pipe
        if thread is None or pipe is None:
            return
        with contextlib.suppress(OSError):
            os.write(pipe[1], b"!")
        if thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._thread = None
            self._wake_pipe = None
        for fd in pipe:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's thread, deadlines and pipes are not ours."""
        if self._wake_pipe is not None:
            for fd in self._wake_pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reset()


_process_scheduler = Scheduler()
_manual_schedulers: weakref.WeakKeyDictionary[Any, Scheduler] = weakref.WeakKeyDictionary()
_exiting = False


def process_scheduler() -> Scheduler:
    """The scheduler whose one daemon thread serves this process (``time.monotonic``)."""
    return _process_scheduler


def for_clock(clock: Clock | None) -> Scheduler:
    """The scheduler for caches that read ``clock``: the process's, or a manual one.

    A manual scheduler (any clock but ``time.monotonic``) has no thread: whoever
    moves the clock calls its :meth:`~Scheduler.run_due`.
    """
    if clock is None or clock is time.monotonic:
        return _process_scheduler
    scheduler = _manual_schedulers.get(clock)
    if scheduler is None:
        scheduler = _manual_schedulers[clock] = Scheduler(clock, threaded=False)
    return scheduler


def shutdown() -> None:
    """Stop the background thread for good (interpreter or worker exit)."""
    global _exiting
    _exiting = True
    _process_scheduler.stop()


def forget_after_fork() -> None:
    """Reset every scheduler in a forked child (a fork callback of ``_lifecycle``)."""
    global _exiting
    _exiting = False
    _process_scheduler._forget_after_fork()
    for scheduler in list(_manual_schedulers.values()):
        scheduler._forget_after_fork()


# Registered first, so it stops the thread before the exit flush starts.
_lifecycle.on_exit(shutdown)
_lifecycle.on_fork_child(forget_after_fork)
