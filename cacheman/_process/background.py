"""Per-cache background saves: the policy around the forked child that writes a cache.

A background save forks the process (:mod:`cacheman._process.fork`): the child sees a
point-in-time, copy-on-write snapshot of every cache, writes the one it was
made for through the cache's saver, and exits.  The parent goes on at once and
learns the outcome through the scheduler thread.

Per cache, a :class:`BackgroundSaver` keeps at most one child in flight,
coalesces the requests made meanwhile into one more save, retries a failed save
after a back-off, and falls back to saving in-process (with a warning) when the
platform cannot fork, when memory is too short for a copy-on-write child, or
after two failed child saves in a row.

It sees the cache only through :class:`SaveTarget`, the small interface
declared below; :class:`~cacheman.cachewrap.CacheWrap` implements it.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import psutil

from .. import _log
from . import lifecycle as _lifecycle
from . import scheduler as _scheduler
from .fork import ChildJob, fork_child

__all__ = [
    "BackgroundSaver",
    "SaveTarget",
    "await_idle",
    "last_error",
    "note_save_outcome",
    "request_save",
    "saver_for",
    "stop_background_work",
]

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
#: Why a save runs: an autosync rule (the changes tracked), an explicit ``save()`` or the
#: end of a ``with`` block, ``refresh()``, or the process ending (all three of which also
#: write the values that can change in place).
SaveReason = Literal["rule", "save", "exit", "refresh"]


def _nothing(*_args: object) -> None:
    return None


@dataclass
class SavePlan:
    """One save, planned under the cache's lock: what to write, and what follows.

    ``write(copy)`` does the write and returns its outcome; ``copy`` is True when it
    runs in this process while other threads may edit the cache (a child works on
    a frozen copy-on-write image and passes False).  ``light`` plans (a journal
    append of a few keys) run in this process rather than in a forked child.
    ``landed(outcome)`` runs in this process once the write succeeded, wherever it
    ran; ``failed()`` when it did not (the changes it took are pending again).
    ``kind``, ``entries`` and ``store`` describe the write for the log (see
    :func:`cacheman._log.saved`).
    """

    write: Callable[[bool], object]
    mark: int
    light: bool = False
    landed: Callable[[object], None] = _nothing
    failed: Callable[[], None] = _nothing
    kind: str = "hook"
    entries: int = 0
    store: object = None
    started: float = 0.0


class Lock(Protocol):
    """What the saver needs of a cache's lock."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class SaveTarget(Protocol):
    """What a :class:`BackgroundSaver` uses of its cache, and nothing more.

    The single-underscore members are the cache's side of this interface: not
    for users, but a contract between the cache classes and this module.
    """

    @property
    def name(self) -> str:
        """The cache's name, for messages."""

    @property
    def async_timeout(self) -> float:
        """Seconds a child save may run before it is killed."""

    @property
    def _lock(self) -> Lock:
        """The cache's re-entrant lock: held while a save is planned and forked."""

    def __len__(self) -> int: ...

    def _check_lineage(self) -> None:
        """Before planning (lock held, no save in flight): rebuild if its parents moved on."""

    def _save_plan(self, why: SaveReason = "rule") -> SavePlan | None:
        """The save to run now (under the cache's lock), or None when nothing is to be written."""

    def _saved_through(self, mark: int) -> None:
        """A save that captured the edits up to ``mark`` has landed."""

    def _has_unsaved_edits(self) -> bool:
        """Whether a deferred save still has something to write."""


_savers: dict[int, BackgroundSaver] = {}
_savers_lock = threading.Lock()
_warned_no_fork = False


def _child_result(plan: SavePlan) -> bytes | None:
    """Run ``plan`` in the save child; its outcome travels to the parent pickled (our own bytes)."""
    result = plan.write(False)
    try:
        return pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an outcome only informs; a user saver may return anything
        return None


def _memory_short(cache: SaveTarget) -> bool:
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

    def __init__(self, cache: SaveTarget, scheduler: _scheduler.Scheduler) -> None:
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
        # Held while a finished job's outcome is applied (its ``landed``, on whichever
        # thread saw it end): a thread awaiting the job waits for that too, else it
        # would plan its own save from the state before (a stale journal position).
        self._landing = threading.Lock()
        self.job: ChildJob | None = None
        self.job_plan: SavePlan | None = None  # what the job's save writes
        self.requested = False  # asked for while a child ran: one more save after it
        # A save asked for (or fired by a rule) that has not started yet, and who
        # asked: await_idle runs it, so a load or delete that follows reads it.
        self.owed: Mode | None = None
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
            self.owed = self.owed or mode
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
                self._save_in_process(cache, mode)
            else:
                self._start_child(cache, mode)
        finally:
            cache._lock.release()

    def _in_process_reason(self, cache: SaveTarget) -> str | None:
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

    def _start_child(self, cache: SaveTarget, mode: Mode) -> None:
        if self._in_flight(mode) or not self._lineage_checked(cache, mode):
            return
        plan = cache._save_plan("save" if mode == "caller" else "rule")
        if plan is None:
            return
        if plan.light:
            self._run_in_process(plan)
            return
        plan.started = _log.clock()
        try:
            pid, fd = fork_child(lambda: _child_result(plan))
        except OSError as error:  # EAGAIN, ENOMEM: count it as a failed child save
            plan.failed()
            self._failed(f"cannot fork: {error}", in_child=True)
            return
        timeout = float(cache.async_timeout)
        job = ChildJob(pid, fd, self.scheduler.clock() + timeout, timeout)
        with self._lock:
            self.job, self.job_plan = job, plan
        job.watch(self.scheduler, lambda: self._on_pipe(job))
        self.scheduler.call_at(self, job.deadline, self._on_due)

    def _save_in_process(self, cache: SaveTarget, mode: Mode) -> None:
        if self._in_flight(mode) or not self._lineage_checked(cache, mode):
            return
        plan = cache._save_plan("save" if mode == "caller" else "rule")
        if plan is not None:
            self._run_in_process(plan)

    def _in_flight(self, mode: Mode) -> bool:
        """Whether a child save is in flight: then this save runs after it (cache lock held).

        ``request`` tests for a child before it takes the cache's lock, so another
        thread may have started one meanwhile.  Two saves of one cache must never
        overlap: the later one's records would land first, and the child's older
        values over them (a thread's delete undone by a save forked before it).
        """
        with self._lock:
            if self.job is None:
                return False
            self.requested = True
            self.owed = self.owed or mode
            return True

    def _lineage_checked(self, cache: SaveTarget, mode: Mode) -> bool:
        """Before planning: the cache's lineage check (a rebuild, if its parents moved on).

        Owed no more before it runs: a rebuild deletes the saved copy, which awaits
        this saver, which must not start this save again.  A check that raises (a
        builder's error) fails this save like a write that raises, except for an
        explicit ``save()``, whose caller gets the exception.
        """
        self.owed = None
        try:
            cache._check_lineage()
        except Exception as error:
            if mode == "caller":
                raise
            self._failed(f"{type(error).__name__}: {error}", in_child=False)
            return False
        return True

    def _run_in_process(self, plan: SavePlan) -> None:
        started = _log.clock()
        try:
            outcome = plan.write(True)
        except Exception as error:
            plan.failed()
            self._failed(f"{type(error).__name__}: {error}", in_child=False)
        else:
            plan.landed(outcome)
            self._succeeded(plan.mark)
            _log.saved(self.name, plan.kind, plan.entries, started, store=plan.store)

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
        delay = _backoff(self.failures)
        logger.warning(
            "cache %r: background save failed (%s); the edits stay pending, retry in %g s",
            self.name,
            error,
            delay,
        )
        # Published after the warning: a program that sees ``last_save_error`` (set
        # here, on the autosync thread) finds the warning in its log already.
        self.last_error = error
        self._defer(self.scheduler.clock() + delay)

    def _completed(self, job: ChildJob) -> None:
        with self._landing:
            self._apply_outcome(job)

    def _apply_outcome(self, job: ChildJob) -> None:
        with self._lock:
            if self.job is not job:
                return
            plan = self.job_plan
        assert plan is not None
        # The job stays in flight until its outcome is applied: a save planned before
        # ``landed`` ran would start from the journal position before this write.
        # (The job stopped being watched when it finished, before its pipe closed.)
        try:
            if job.ok:
                plan.landed(None if job.result is None else pickle.loads(job.result))
            else:
                plan.failed()
        finally:
            with self._lock:
                self.job, self.job_plan = None, None
                requested, self.requested = self.requested, False
        if job.ok:
            self._succeeded(plan.mark)
            _log.saved(
                self.name, plan.kind, plan.entries, plan.started, store=plan.store, where="child"
            )
            if requested:
                self._defer(self.scheduler.clock())
        else:
            self._failed(job.error or "unknown error", in_child=True)

    def _on_pipe(self, job: ChildJob) -> None:
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
        """Wait for the child save in flight (killing it at its timeout); apply its outcome.

        Then start, and wait for, a save that was asked for but has not started
        (one coalesced while that child ran, or a fired rule put off): the caller
        is about to load or delete, and must read what was to be saved, not the
        copy from before.  A retry after a failure is left to its back-off.
        """
        self._await_job()
        cache = self._cache()
        if cache is None:
            return
        cache._lock.acquire()
        try:
            # Under the cache's lock no other thread starts a save: wait for one that
            # another thread started after the wait above, then run what is owed.
            self._await_job()
            with self._lock:
                owed = self.owed
            if owed is None or not cache._has_unsaved_edits():
                return
            if self._in_process_reason(cache) is not None:
                self._save_in_process(cache, owed)
            else:
                self._start_child(cache, owed)
        finally:
            cache._lock.release()
        self._await_job()

    def _await_job(self) -> None:
        with self._lock:
            job = self.job
        if job is None:
            with self._landing:  # the scheduler thread may be applying the last outcome
                return
        job.unwatch()
        if not job.wait(max(0.0, job.real_deadline - time.monotonic())):
            job.kill(f"the save process ran past async_timeout ({job.timeout:g} s) and was killed")
        self._completed(job)

    def _forget_after_fork(self) -> None:
        # In a forked child the parent's save child is not ours to wait for.
        self._reset_state()


# -- what the cache classes call ----------------------------------------------------------


def saver_for(cache: SaveTarget, scheduler: _scheduler.Scheduler | None = None) -> BackgroundSaver:
    """The :class:`BackgroundSaver` of ``cache``, made on first use."""
    key = id(cache)
    with _savers_lock:
        saver = _savers.get(key)
        if saver is None or saver._cache() is not cache:
            saver = BackgroundSaver(cache, scheduler or _scheduler.process_scheduler())
            _savers[key] = saver
            weakref.finalize(cache, _savers.pop, key, None).atexit = False
        return saver


def _existing(cache: SaveTarget) -> BackgroundSaver | None:
    saver = _savers.get(id(cache))
    return saver if saver is not None and saver._cache() is cache else None


def request_save(cache: SaveTarget) -> None:
    """Save ``cache`` in a child process (an explicit ``save()`` of an async cache)."""
    saver_for(cache).request("caller")


def await_idle(cache: SaveTarget) -> None:
    """Wait for the background save of ``cache`` in flight, if any."""
    saver = _existing(cache)
    if saver is not None:
        saver.await_idle()


def last_error(cache: SaveTarget) -> str | None:
    """The error of the last save of ``cache`` if it failed, else None."""
    saver = _existing(cache)
    return None if saver is None else saver.last_error


def note_save_outcome(cache: SaveTarget, error: BaseException | None) -> None:
    """A save in the caller's thread ended: ``error`` is what it raised, or None.

    So that ``last_save_error`` reports every failed save, explicit ones included.
    """
    if error is not None:
        saver_for(cache).last_error = f"{type(error).__name__}: {error}"
        return
    saver = _existing(cache)
    if saver is not None:
        saver.last_error = None


def stop_background_work() -> None:
    """At exit: stop the scheduler thread so no new save starts during the final flush."""
    _scheduler.shutdown()


def _forget_after_fork() -> None:
    global _savers_lock
    _savers_lock = threading.Lock()  # another thread of the parent may have held it
    for saver in list(_savers.values()):
        saver._forget_after_fork()


_lifecycle.on_fork_child(_forget_after_fork)
