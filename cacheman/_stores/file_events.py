"""Invalidation events on the pickle store: a small log beside the caches, and one watcher thread.

What the Redis store does with pub/sub, the pickle store does with a file, so
that a long-running process learns within a fraction of a second, without
calling anything, that another process invalidated a cache.

The log, ``<manager directory>/_events.log``, holds one line per generation
change: the JSON array ``["<cache name>", "<new generation>"]``.  Whoever gives
a cache a new generation (see :mod:`cacheman._stores.generations`) appends its line
with one ``write`` on an ``O_APPEND`` descriptor, so lines of several processes
never interleave.  Past :data:`LOG_BYTES` the writer replaces the log with an
empty file; a reader that finds a new file (or a shorter one) cannot know what
it missed and reports ``(None, None)``: "anything may have changed", on which
the manager runs its full check.  The log is JSON: reading it never runs code.

Each process has at most one watcher thread, for every log subscribed to: it
``stat``\\ s each log every :data:`WATCH_INTERVAL` seconds (a system call; no
read while nothing changed) and hands each new line to the log's callbacks,
except the lines this process wrote itself (see :meth:`EventLog.wrote_generation`).
Callbacks run on that thread.  In a child forked by the program (not in a save
child) the thread is started again if anything is watched.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import stat
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from .._process import lifecycle as _lifecycle

__all__ = ["LOG_BYTES", "LOG_NAME", "WATCH_INTERVAL", "EventLog"]

logger = logging.getLogger("cacheman")

#: The log's file name in the manager's directory.
LOG_NAME = "_events.log"
#: Seconds between two looks at a log: the bound on how late a process hears of an event.
WATCH_INTERVAL = 0.1
#: A log past this many bytes (some 10,000 events) is replaced by an empty one.
LOG_BYTES = 512 * 1024
#: How many of this process's latest events are remembered, to tell them from others'.
OWN_EVENTS = 1024

EventCallback = Callable[["str | None", "str | None"], object]

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class EventLog:
    """The event log of one directory: publish to it, subscribe to it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOG_NAME
        # Reentrant: unsubscribe() takes it, and is a manager's finalizer, which a
        # garbage collection can run on a thread that holds it (see _Watcher).
        self._lock = threading.RLock()
        self._callbacks: list[EventCallback] = []
        self._own: collections.deque[tuple[str, str]] = collections.deque(maxlen=OWN_EVENTS)
        # Where this process has read the log to: its inode and offset (None: no log yet).
        self._inode: int | None = None
        self._offset = 0
        self._size = 0

    def __repr__(self) -> str:
        return f"<EventLog {str(self.path)!r}: {len(self._callbacks)} callbacks>"

    # -- writing ------------------------------------------------------------------------

    def publish(self, name: str, generation: str) -> None:
        """Tell every watching process that ``name`` has the new ``generation``.

        The directory must exist.  A log that is not a regular file (a FIFO
        planted there) is left alone with a warning: events are a courtesy,
        the generations in the metadata stay the truth.
        """
        with self._lock:
            self._own.append((name, generation))
        line = json.dumps([name, generation]).encode() + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _OPEN_FLAGS, 0o600)
        except OSError as error:
            logger.warning(
                "cannot write the event log %s (%s); events are not sent", self.path, error
            )
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                logger.warning("%s is not a regular file; events are not sent", self.path)
                return
            os.write(fd, line)
            size = info.st_size + len(line)
        finally:
            os.close(fd)
        if size > LOG_BYTES:
            self._start_again()

    def _start_again(self) -> None:
        # A new (empty) file, renamed over the old one: readers see a new inode and
        # run the full check; a line another process appends to the old file
        # meanwhile is covered by that check too.
        temporary = self.path.with_name(f".{LOG_NAME}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o600))
            os.replace(temporary, self.path)

    def wrote_generation(self, name: str, generation: str | None) -> bool:
        """Whether this process itself lately gave ``name`` the generation ``generation``."""
        if generation is None:
            return False
        with self._lock:
            return (name, generation) in self._own

    # -- watching ------------------------------------------------------------------------

    def subscribe(self, callback: EventCallback) -> None:
        """Call ``callback(name, generation)`` for each event another process writes from now on.

        ``(None, None)`` means events may have been missed (the log was replaced).
        """
        with self._lock:
            if not self._callbacks:
                self._inode, self._size = self._identity()
                if self._inode is None and _private_directory(self.path.parent):
                    # Created now (empty), so that a log replaced before this process
                    # first looks is told from one that appeared.
                    with contextlib.suppress(OSError):
                        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | _OPEN_FLAGS, 0o600))
                    self._inode, self._size = self._identity()
                self._offset = self._size
            self._callbacks.append(callback)
        _watcher.add(self)

    def unsubscribe(self, callback: EventCallback) -> None:
        """Stop calling ``callback``; the log is no longer watched after its last one."""
        with self._lock:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)
            if self._callbacks:
                return
        _watcher.discard(self)

    def _identity(self) -> tuple[int | None, int]:
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return None, 0
        return (info.st_ino, info.st_size) if stat.S_ISREG(info.st_mode) else (None, 0)

    def poll(self) -> None:
        """Look at the log once; hand what is new to the callbacks (the watcher calls this)."""
        inode, size = self._identity()
        if inode == self._inode and size == self._size:
            return
        events: list[tuple[str | None, str | None]] = []
        if inode != self._inode and self._inode is not None:
            events.append((None, None))  # replaced: what was appended to the old file is lost
            self._inode, self._offset, self._size = inode, size, size
        elif inode is not None and size < self._offset:
            events.append((None, None))  # cut short: the same
            self._inode, self._offset, self._size = inode, size, size
        else:
            self._inode = inode
            events.extend(self._read_new(size))
        with self._lock:
            callbacks = list(self._callbacks)
        for name, generation in events:
            if self.wrote_generation(name or "", generation):
                continue
            for callback in callbacks:
                try:
                    callback(name, generation)
                except Exception:
                    logger.exception("an event callback (%r) raised", callback)

    def _read_new(self, size: int) -> list[tuple[str | None, str | None]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | _OPEN_FLAGS)
        except OSError:
            return []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            data = os.pread(fd, max(0, size - self._offset), self._offset)
        finally:
            os.close(fd)
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        self._size = self._offset
        events: list[tuple[str | None, str | None]] = []
        for line in complete.splitlines():
            try:
                name, generation = json.loads(line)
            except ValueError:
                logger.debug("ignoring a malformed line in %s: %r", self.path, line[:200])
                continue
            if isinstance(name, str) and isinstance(generation, str):
                events.append((name, generation))
        return events


def _private_directory(directory: Path) -> bool:
    """Whether ``directory`` exists, is ours and only we can write it (else nothing is made)."""
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


class _Watcher:
    """The one thread of a process that polls every subscribed log."""

    def __init__(self) -> None:
        # Reentrant: discard() is called by a manager's finalizer (it unsubscribes),
        # which a garbage collection set off by any allocation can run on this
        # thread while it holds the lock; a plain lock deadlocked the process there.
        self._lock = threading.RLock()
        self._logs: weakref.WeakSet[EventLog] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, log: EventLog) -> None:
        with self._lock:
            self._logs.add(log)
            if self._thread is None or not self._thread.is_alive():
                self._start()

    def discard(self, log: EventLog) -> None:
        with self._lock:
            self._logs.discard(log)

    def _start(self) -> None:
        self._wake = wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(wake,), name="cacheman-file-events", daemon=True
        )
        _lifecycle.start_thread(self._thread)

    def _run(self, wake: threading.Event) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                if self._thread is not me:
                    return
                logs = list(self._logs)
                if not logs:
                    self._thread = None
                    return
            for log in logs:
                try:
                    log.poll()
                except Exception:
                    logger.exception("watching the event log %s failed", log.path)
            del logs
            wake.wait(WATCH_INTERVAL)

    def stop(self) -> None:
        """At exit: no catching up while the exit flush saves (it settles every cache itself)."""
        with self._lock:
            self._thread = None
        self._wake.set()

    def after_fork_in_child(self) -> None:
        # The thread does not exist here; a program's own child watches what its parent did.
        self._lock = threading.RLock()
        self._thread = None
        if self._logs:
            self._start()


_watcher = _Watcher()
_lifecycle.on_fork_child(_watcher.after_fork_in_child)
_lifecycle.on_exit(_watcher.stop)
