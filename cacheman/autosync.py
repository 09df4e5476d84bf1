"""AutoSyncCache: a persistent cache that saves itself when one of its rules fires.

The rules (:class:`TimeCount`), sorted by length, cut time into windows: the
first rule counts the edits of its last ``time_length`` seconds, each later
rule the edits older than the previous rule's length but younger than its own.
A rule fires when its window holds ``count`` unsaved edits.  With the default
rules: 10,000 edits within 60 s, or 10 edits older than 60 s (within 300 s), or
1 edit older than 300 s (within 900 s).

How it stays cheap: an edit only adds 1 to a counter and compares it with a
threshold (``_trip``).  The threshold is set so that the comparison fails only
(a) on the first edit after the cache has been quiet for a bucket (the edit
then reads the clock and opens a time bucket) or (b) when the burst rule fires.
The scheduler thread closes each bucket ``time_bucket_size`` seconds after it
opened, recording the counter's value, and wakes again when a bucket's edits
enter a later rule's window.  Edits are thus timed to their bucket's opening,
which is exact for the first edit after a quiet spell and at most one bucket
early for the others.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ._persist.editguard import edit_functions, under_apply_lock
from ._process import background as _background
from ._process import scheduler as _scheduler
from .cachewrap import PersistentCache

__all__ = ["DEFAULT_BUCKET_SIZE", "DEFAULT_TIME_CHECKS", "AutoSyncCache", "EditLog", "TimeCount"]

logger = logging.getLogger("cacheman")


@dataclass(frozen=True)
class TimeCount:
    """A rule: save once ``count`` unsaved edits fall in this rule's window of time.

    The window of the shortest rule is its last ``time_length`` seconds; the
    window of each longer rule starts where the previous rule's ends.
    """

    time_length: float
    count: int


DEFAULT_TIME_CHECKS = (TimeCount(60, 10000), TimeCount(300, 10), TimeCount(900, 1))
#: Seconds per time bucket when ``time_bucket_size`` is not given (capped by the first rule).
DEFAULT_BUCKET_SIZE = 1.0
_NEVER = sys.maxsize


class EditLog:
    """Edits in time buckets, as marks of a monotonic edit counter.

    Bucket ``i`` opened at ``times[i]`` and holds the edits numbered
    ``(start(i), ends[i]]``; edits up to ``floor`` are saved.  Pure data: the
    cache holds the locks and reads the clock.
    """

    def __init__(self, rules: tuple[TimeCount, ...], bucket_size: float, mark: int = 0) -> None:
        self.rules = rules
        self.bucket_size = bucket_size
        # Window k is [lows[k], rules[k].time_length) seconds of age.
        self.lows = (0.0, *(rule.time_length for rule in rules[:-1]))
        self.times: list[float] = []
        self.ends: list[int] = []
        self.base = mark  # the mark before the first bucket
        self.floor = mark
        self.open_time: float | None = None
        # Per rule: how many buckets' edits have already entered its window.
        self.entered = [0] * len(rules)

    def __repr__(self) -> str:
        return f"<EditLog {len(self.times)} buckets, floor={self.floor}, open={self.open_time}>"

    def _start(self, index: int) -> int:
        return self.ends[index - 1] if index > 0 else self.base

    def closed_mark(self) -> int:
        """The mark through which every edit is in a closed bucket."""
        return self.ends[-1] if self.ends else self.base

    def open(self, now: float) -> None:
        """Start a bucket for the edits after :meth:`closed_mark`."""
        self.open_time = now

    def close(self, mark: int) -> None:
        """End the open bucket at edit ``mark`` (dropped if it holds no edit)."""
        if self.open_time is not None and mark > self.closed_mark():
            self.times.append(self.open_time)
            self.ends.append(mark)
        self.open_time = None

    def _recent_start(self, now: float) -> int:
        first = bisect_right(self.times, now - self.rules[0].time_length)
        return max(self._start(first), self.floor)

    def recent(self, now: float, edits: int) -> int:
        """Unsaved edits inside the first rule's window (the burst count)."""
        return max(0, edits - self._recent_start(now)) if self.rules else 0

    def burst_trip(self, now: float) -> int:
        """The edit mark at which the first rule fires if no time passes."""
        return self._recent_start(now) + self.rules[0].count if self.rules else _NEVER

    def later_rules_fire(self, now: float) -> bool:
        """Check the rules after the first; True if one holds enough edits."""
        fire = False
        for k in range(1, len(self.rules)):
            entered = bisect_right(self.times, now - self.lows[k])
            if entered <= self.entered[k]:
                continue  # no edit entered this window since the last look
            self.entered[k] = entered
            first = bisect_right(self.times, now - self.rules[k].time_length)
            if entered > first:
                count = self.ends[entered - 1] - max(self._start(first), self.floor)
                fire = fire or count >= self.rules[k].count
        self._drop_old(now)
        return fire

    def _drop_old(self, now: float) -> None:
        # Buckets older than the longest window, or wholly saved, count for no rule.
        if not self.rules:
            return
        old = bisect_right(self.times, now - self.rules[-1].time_length)
        drop = max(old, bisect_right(self.ends, self.floor))
        if drop:
            self.base = self.ends[drop - 1]
            del self.times[:drop], self.ends[:drop]
            self.entered = [max(0, entered - drop) for entered in self.entered]

    def next_deadline(self) -> float | None:
        """When the cache must next be looked at: a bucket to close or a window to enter."""
        deadlines = []
        if self.open_time is not None:
            deadlines.append(self.open_time + self.bucket_size)
        first_unsaved = bisect_right(self.ends, self.floor)
        for k in range(1, len(self.rules)):
            index = max(self.entered[k], first_unsaved)
            if index < len(self.times):
                deadlines.append(self.times[index] + self.lows[k])
        return min(deadlines) if deadlines else None

    def bucket_counts(self, now: float, edits: int) -> list[int]:
        """Unsaved edits per ``bucket_size`` of age across the longest rule, newest last.

        ``edits`` is the counter now (the open bucket runs up to it).  Each
        bucket's edits count at the age of its opening.
        """
        slots = math.ceil(self.rules[-1].time_length / self.bucket_size) if self.rules else 0
        counts = [0] * slots
        buckets = list(zip(self.times, self.ends, strict=True))
        if self.open_time is not None:
            buckets.append((self.open_time, edits))
        start = self.base
        for opened, end in buckets:
            unsaved = end - max(start, self.floor)
            start = end
            age = int((now - opened) // self.bucket_size)
            if unsaved > 0 and 0 <= age < slots:
                counts[slots - 1 - age] += unsaved
        return counts

    def saved_through(self, mark: int) -> None:
        """Edits up to ``mark`` are saved: no rule counts them any more."""
        self.floor = max(self.floor, mark)

    def _check(self) -> None:
        """Assert every invariant (the tests call this after each step)."""
        assert self.times == sorted(self.times)
        assert len(self.times) == len(self.ends)
        marks = [self.base, *self.ends]
        assert all(a < b for a, b in pairwise(marks)), marks
        assert all(0 <= entered <= len(self.times) for entered in self.entered)


def _checked_rules(time_checks: Iterable[TimeCount]) -> tuple[TimeCount, ...]:
    rules = tuple(sorted(time_checks, key=lambda rule: rule.time_length))
    for rule in rules:
        if not isinstance(rule, TimeCount):
            raise TypeError(f"time_checks must hold TimeCount rules, not {type(rule).__name__}")
        if not rule.time_length > 0 or rule.count < 1:
            raise ValueError(f"{rule!r}: time_length must be > 0 and count >= 1")
    return rules


class AutoSyncCache(PersistentCache):
    """A persistent cache that saves itself, in a child process, when a rule fires.

    ``time_checks`` (default :data:`DEFAULT_TIME_CHECKS`) are the rules;
    ``time_bucket_size`` (default 1 s, at most the shortest rule's length) is
    the resolution to which edits are timed; ``clock`` (default
    ``time.monotonic``) lets tests run in virtual time.  Pending edits are also
    saved at interpreter exit.  Each edit costs one counter increment and one
    comparison.

    >>> import tempfile
    >>> from cacheman import CacheManager, TimeCount
    >>> manager = CacheManager("doc_autosync", tempfile.mkdtemp())
    >>> cache = manager.register_custom_cache("squares", time_checks=[TimeCount(60, 100)])
    >>> cache[3] = 9
    >>> cache.pending_edits
    1
    >>> manager.deregister_all_caches()
    """

    # Slots rather than a __dict__: the edit path reads _edits and _trip on every
    # write, and a slot is measurably faster there (bench_processes.py's write row:
    # about 1.6 x the floor with a __dict__, 1.2 x with slots).  AutoSyncCSVCache
    # still combines this class with CSVCache, because only this branch adds slots
    # (CSVCache adds just a __dict__).
    __slots__ = ("_background", "_edits", "_log", "_log_lock", "_scheduler", "_trip", "clock")

    def __init__(
        self,
        *args: Any,
        time_checks: Iterable[TimeCount] | None = None,
        time_bucket_size: float | None = None,
        clock: _scheduler.Clock | None = None,
        **kwargs: Any,
    ) -> None:
        rules = _checked_rules(DEFAULT_TIME_CHECKS if time_checks is None else time_checks)
        shortest = rules[0].time_length if rules else DEFAULT_BUCKET_SIZE
        bucket = time_bucket_size
        if bucket is None:
            bucket = min(DEFAULT_BUCKET_SIZE, shortest)
        if not 0 < bucket <= shortest:
            raise ValueError(
                f"time_bucket_size must be > 0 and at most the shortest rule ({shortest} s), "
                f"not {bucket}"
            )
        self.clock: _scheduler.Clock = clock or time.monotonic
        self._scheduler = _scheduler.for_clock(self.clock)
        # The edit counter only grows; the rules compare marks of it.  _trip is the
        # value at which an edit leaves the fast path (see the module docstring).
        self._edits = 0
        self._trip = 1
        self._log = EditLog(rules, bucket)
        self._log_lock = threading.Lock()  # held for microseconds, never across I/O
        self._background = _background.saver_for(self, self._scheduler)
        super().__init__(*args, **kwargs)

    @property
    def time_checks(self) -> tuple[TimeCount, ...]:
        """The rules, shortest first."""
        return self._log.rules

    @property
    def time_bucket_size(self) -> float:
        """Seconds per time bucket: the resolution to which edits are timed."""
        return self._log.bucket_size

    @property
    def time_counts(self) -> list[int]:
        """Unsaved edits per time bucket across the longest rule's window, the current one last.

        The 2.x name for a look at what the rules count: one slot per
        ``time_bucket_size`` seconds of age.  Read-only; a save empties it.
        """
        with self._log_lock:
            return self._log.bucket_counts(self.clock(), self._edits)

    @property
    def pending_edits(self) -> int:
        """How many edits no save has captured yet."""
        return max(0, self._edits - self._log.floor)

    @property
    def save_in_progress(self) -> bool:
        """Whether a child process is saving this cache right now."""
        return self._background.busy

    # -- the edit path: keep it to one increment and one comparison ---------------

    # (One read of _edits, not two: ``edits`` is the local copy the comparison uses.)

    # (And one test of _guarded first: see PersistentCache.__setitem__.)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._guarded:
            under_apply_lock(self, PersistentCache._locked_edit, dict.__setitem__, key, value)
            return
        dict.__setitem__(self, key, value)
        self._track(key)
        self._edits = edits = self._edits + 1
        if edits >= self._trip:
            self._tripped()

    def __delitem__(self, key: Any) -> None:
        if self._guarded:
            under_apply_lock(self, PersistentCache._locked_edit, dict.__delitem__, key)
            return
        dict.__delitem__(self, key)
        self._track(key)
        self._edits = edits = self._edits + 1
        if edits >= self._trip:
            self._tripped()

    def _note(self, keys: Iterable[Any], count: int) -> None:
        self._changes.keys.update(keys)
        if count > 0:
            self._edits += count
            if self._edits >= self._trip:
                self._tripped()

    # -- the slow path and the scheduler's task -------------------------------------

    def _tripped(self) -> None:
        """The first edit of a bucket, or the burst rule firing."""
        now = self.clock()
        opened = fire = False
        with self._log_lock:
            log = self._log
            if log.open_time is None:
                log.open(now)
                opened = True
            if log.rules and log.recent(now, self._edits) >= log.rules[0].count:
                fire = True
                # Until the save lands, leave the fast path only after another burst.
                self._trip = self._edits + log.rules[0].count
            else:
                self._trip = log.burst_trip(now)
        if opened:
            self._scheduler.call_at(log, now + log.bucket_size, self._on_due)
        if fire:
            self._background.request("edit")

    def _on_due(self, now: float) -> float | None:
        """Scheduler task: close the bucket that is due, check the later rules."""
        with self._log_lock:
            log = self._log
            if log.open_time is not None and now >= log.open_time + log.bucket_size:
                edits = self._edits
                log.close(edits)
                self._trip = edits + 1
                if self._edits != edits:
                    # An edit slipped in before the new threshold: it opens the next bucket.
                    log.open(now)
                    self._trip = log.burst_trip(now)
            fire = log.later_rules_fire(now)
            deadline = log.next_deadline()
        if fire:
            self._background.request("thread")
        return deadline

    # -- what the lifecycle and the background saver call ------------------------------

    def _edit_mark(self) -> int:
        return self._edits

    def _saved_through(self, mark: int) -> None:
        with self._log_lock:
            log = self._log
            log.saved_through(mark)
            if self._trip == _NEVER:
                return  # released (or no rules): nothing to time
            if self._edits > log.floor:
                if log.open_time is not None:
                    self._trip = log.burst_trip(self.clock())
                return
            # Every edit is saved: no rule has anything to count, so the buckets
            # and their deadline go (the scheduler would otherwise hold the cache,
            # and its manager, alive until the deadline).  The next edit opens a
            # bucket again.
            self._log = EditLog(log.rules, log.bucket_size, mark=self._edits)
            self._trip = self._edits + 1
        self._scheduler.cancel(log)

    def _released(self) -> None:
        # Deregistered, or its manager closed: its rules never fire again (a save
        # would go round the manager), and the scheduler lets go of it.
        with self._log_lock:
            log = self._log
            self._log = EditLog(log.rules, log.bucket_size, mark=log.floor)
            self._trip = _NEVER
        self._scheduler.cancel(log)

    def _saved(self) -> None:
        self._saved_through(self._edits)

    def _has_unsaved_edits(self) -> bool:
        return self._edits > self._log.floor

    def _forget_inherited(self) -> None:
        """In a process forked by the user: the parent's edits are the parent's to save."""
        super()._forget_inherited()
        self._log_lock = threading.Lock()
        self._log = EditLog(self._log.rules, self._log.bucket_size, mark=self._edits)
        self._trip = self._edits + 1


edit_functions(AutoSyncCache.__setitem__, AutoSyncCache.__delitem__)
