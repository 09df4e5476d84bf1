"""Expiry and size bounds for a persistent cache: ``ttl``, ``max_entries``, ``max_bytes``.

A cache registered with any of these is a :class:`BoundedCache` (or a
:class:`BoundedPersistentCache` without autosync); every other cache is the
plain class, whose reads are the ``dict``'s own: bounds cost nothing to those
who do not ask for them.

* **Expiry.**  Each key has a deadline (wall-clock seconds): ``ttl`` after it
  was assigned (the cache's ``ttl``, or ``cache.set(key, value, ttl=...)``).
  A read of a key past its deadline misses (``KeyError``, ``get`` returns the
  default, ``in`` is False) and deletes the key.  Expired keys are also dropped
  at load, at every write (the soonest deadlines are kept in a
  ``sortedcontainers.SortedList``, so a write looks only at the head), by
  :meth:`BoundedCache.expire`, and by the process's background thread (the
  one that runs autosync, :mod:`cacheman._process.scheduler`), which wakes at the
  soonest deadline (keys due within ``EXPIRY_SLACK`` of it go together):
  iteration and ``len()`` stop seeing a key soon after it expires, even if
  nothing reads or writes the cache.  A cache built with
  another ``wall_clock`` (tests in virtual time) is served by the manual
  scheduler of that clock instead (``_scheduler.for_clock(clock).run_due()``).
* **Locking.**  The mutators of a bounded cache, and the background expiry,
  run under the cache's lock (the thread never waits for it: when the lock
  is busy it retries a moment later).  A cache with no ``ttl`` never
  schedules anything; a cache without bounds is not a bounded cache at all.
* **Size.**  ``max_entries`` bounds the number of keys, ``max_bytes`` the sum
  of the pickled sizes of the values (measured once, at assignment); a write
  past either evicts the least recently used keys (a read or a write uses a
  key).
* **Deletes are changes.**  Expired and evicted keys are deleted through the
  cache's own ``__delitem__``, so the next save journals their deletion: every
  process that reads the store sees them gone.
* **Deadlines persist** in a companion cache ``<name>~bounds`` of the same
  store (key -> ``(deadline, size)``), appended after each save of the cache
  and deleted with it.  A key another process added (seen through ``refresh``)
  or whose record a crash lost gets ``ttl`` from the moment this process first
  sees it.  The least-recently-used order is this process's own (it starts in
  load order).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from .._process import scheduler as _scheduler
from .._stores.journal import DEL, SET
from ..autosync import AutoSyncCache
from ..cachewrap import PersistentCache

__all__ = ["BOUND_OPTIONS", "BoundedCache", "BoundedPersistentCache", "Bounds", "bounded_class"]

logger = logging.getLogger("cacheman")

#: The constructor keywords that make a cache bounded.
BOUND_OPTIONS = ("ttl", "max_entries", "max_bytes")

_MISSING: Any = object()


def _pickled_size(value: object) -> int:
    try:
        return len(pickle.dumps(value, protocol=5))
    except Exception:  # the store falls back to cloudpickle; so does the measure
        import cloudpickle  # type: ignore[import-untyped]

        return len(cloudpickle.dumps(value, protocol=5))


#: Seconds the background expiry waits before trying again when the cache's lock is busy.
LOCK_RETRY = 0.05
#: The background expiry wakes at most this often for one cache: keys written a
#: microsecond apart expire together, not in one wake-up each.
EXPIRY_SLACK = 0.05


class _Expirer:
    """The background thread's handle on one cache with deadlines.

    The scheduler keeps its owner alive while a deadline is set: this small
    object is the owner and holds the cache weakly, so a cache dropped by the
    program is not kept by a deadline (its task then just ends).
    """

    __slots__ = ("_cache", "_pid", "due", "scheduler")

    def __init__(self, cache: Bounds) -> None:
        self._cache = weakref.ref(cache)
        self.scheduler = (
            _scheduler.process_scheduler()
            if cache.wall_clock is time.time
            else _scheduler.for_clock(cache.wall_clock)
        )
        self.due = math.inf  # the wall-clock deadline the scheduler holds for us
        self._pid = os.getpid()

    def wake_by(self, deadline: float, now: float) -> None:
        """Have the thread run no later than wall-clock ``deadline`` (``now`` read just before)."""
        if self._pid != os.getpid():  # forked: the parent's schedule is not ours
            self._pid, self.due = os.getpid(), math.inf
        if deadline + EXPIRY_SLACK >= self.due:
            return  # the wake-up already set comes soon enough
        self.due = deadline
        self.scheduler.call_at(self, self._when(deadline, now), self._run)

    def cancel(self) -> None:
        self.due = math.inf
        self.scheduler.cancel(self)

    def _when(self, deadline: float, now: float) -> float:
        """``deadline`` on the scheduler's clock (the process's is monotonic, ours wall)."""
        if self.scheduler.clock is self._wall():
            return deadline
        return self.scheduler.clock() + max(0.0, deadline - now)

    def _wall(self) -> object:
        cache = self._cache()
        return None if cache is None else cache.wall_clock

    def _run(self, scheduler_now: float) -> float | None:
        """Scheduler task: expire what is due; return when to come back, or None."""
        cache = self._cache()
        self.due = math.inf
        if cache is None:
            return None
        if not cache._lock.acquire(blocking=False):  # the thread never waits for a lock
            self.due = -math.inf  # writes need not schedule: the retry comes first
            return scheduler_now + LOCK_RETRY
        try:
            cache.expire()
            if not cache._soonest:
                return None
            now = cache.wall_clock()
            self.due = max(cache._soonest[0][0], now + EXPIRY_SLACK)
            return self._when(self.due, now)
        finally:
            cache._lock.release()


def sidecar_name(name: str) -> str:
    """The companion cache that keeps the deadlines and sizes of ``name``'s keys."""
    return f"{name}~bounds"


class Bounds(PersistentCache):
    """The expiry and size bounds of :mod:`cacheman._persist.bounds`, over a persistent cache.

    Mixed in before :class:`~cacheman.autosync.AutoSyncCache` or
    :class:`~cacheman.cachewrap.PersistentCache`; not registered on its own.
    """

    #: Whether to keep the time each key was written (persisted with its deadline).
    _keeps_ages = False

    def __init__(
        self,
        *args: Any,
        ttl: float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        wall_clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        name = args[0] if args else kwargs.get("cache_name", "?")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"cache {name!r}: ttl must be > 0 seconds (or None), not {ttl!r}")
        for option, bound in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if bound is not None and (not isinstance(bound, int) or bound < 1):
                raise ValueError(f"cache {name!r}: {option} must be an int >= 1, not {bound!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.wall_clock = wall_clock
        #: key -> (deadline, sequence): the entry of the key in _soonest
        self._deadlines: dict[Any, tuple[float, int]] = {}
        self._soonest: SortedList = SortedList()  # (deadline, sequence), soonest first
        self._by_sequence: dict[int, Any] = {}  # sequence -> key (keys need not be ordered)
        self._never: set[Any] = set()  # the indexed keys without a deadline
        self._sequence = 0
        self._order: OrderedDict[Any, None] | None = (
            OrderedDict() if max_entries is not None or max_bytes is not None else None
        )
        self._sizes: dict[Any, int] = {}
        self._bytes = 0
        self._bound_changes: dict[Any, tuple[float, ...] | None] = {}
        #: key -> wall-clock time it was written, for a class that asks (``_keeps_ages``)
        self._written: dict[Any, float] | None = {} if self._keeps_ages else None
        self._indexing = False
        self._expirer: _Expirer | None = None  # made by the first deadline
        super().__init__(*args, **kwargs)

    # -- reads ---------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        entry = self._deadlines.get(key)
        if entry is not None and entry[0] <= self.wall_clock():
            self._drop(key)
            raise KeyError(key)
        if self._order is not None:
            self._order.move_to_end(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        if not dict.__contains__(self, key):
            return False
        entry = self._deadlines.get(key)
        if entry is not None and entry[0] <= self.wall_clock():
            self._drop(key)
            return False
        return True

    # -- writes --------------------------------------------------------------------------

    def set(self, key: Any, value: Any, ttl: float | None = _MISSING) -> None:
        """``cache[key] = value``, expiring ``ttl`` seconds from now (None: never).

        Without ``ttl`` the cache's own ``ttl`` applies.
        """
        if ttl is not _MISSING and ttl is not None and not ttl > 0:
            raise ValueError(f"cache {self.name!r}: ttl must be > 0 seconds (or None)")
        with self._lock:
            super().__setitem__(key, value)
            self._index(key, value, self.ttl if ttl is _MISSING else ttl)
            self._enforce()

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self._index(key, value, self.ttl)
            self._enforce()

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        pairs = list(other.items()) if hasattr(other, "items") else [tuple(p) for p in other]
        pairs += kwargs.items()
        with self._lock:
            super().update(pairs)
            for key, value in pairs:
                self._index(key, value, self.ttl)
            self._enforce()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            if key in self:
                return dict.__getitem__(self, key)
            self[key] = default
            return default

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            super().__delitem__(key)
            self._unindex(key)

    def pop(self, key: Any, *default: Any) -> Any:
        with self._lock:
            if key not in self:
                if not default:
                    raise KeyError(key)
                return default[0]
            value = super().pop(key)
            self._unindex(key)
            return value

    def popitem(self) -> tuple[Any, Any]:
        with self._lock:
            item = super().popitem()
            self._unindex(item[0])
            return item

    def clear(self) -> None:
        with self._lock:
            super().clear()
            for key in self._indexed():
                self._bound_changes[key] = None
            self._clear_index()

    def expire(self) -> int:
        """Delete every key past its deadline now; return how many (each a journaled delete)."""
        with self._lock:
            now = self.wall_clock()
            dropped = 0
            while self._soonest and self._soonest[0][0] <= now:
                key = self._by_sequence[self._soonest[0][1]]
                self._drop(key)
                dropped += 1
            return dropped

    # -- the index: deadlines, sizes, use order ------------------------------------------

    def _index(
        self,
        key: Any,
        value: Any,
        ttl: float | None,
        deadline: float | None = None,
        written: float | None = None,
    ) -> None:
        self._forget_deadline(key)
        now = None
        if deadline is None and ttl is not None and not math.isinf(ttl):
            now = self.wall_clock()
            deadline = now + ttl
        if deadline is not None:
            self._sequence += 1
            self._deadlines[key] = (deadline, self._sequence)
            self._by_sequence[self._sequence] = key
            self._soonest.add((deadline, self._sequence))
            self._never.discard(key)
        else:
            self._never.add(key)
        size = 0
        if self.max_bytes is not None:
            size = _pickled_size(value)
            self._bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size
        if self._order is not None:
            self._order[key] = None
            self._order.move_to_end(key)
        if self._written is not None:
            self._written[key] = written if written is not None else now or self.wall_clock()
        if not self._indexing:
            self._bound_changes[key] = self._record(key)

    def _record(self, key: Any) -> tuple[float, ...]:
        """What ``<name>~bounds`` keeps of ``key``: deadline, size (and when it was written)."""
        entry = self._deadlines.get(key)
        deadline = math.inf if entry is None else entry[0]
        if self._written is None:
            return (deadline, self._sizes.get(key, 0))
        return (deadline, self._sizes.get(key, 0), self._written.get(key, math.inf))

    def _check(self) -> None:
        """Assert every invariant of the index (the tests call it after their operations)."""
        with self._lock:
            keys = set(dict.keys(self))
            assert len(self._soonest) == len(self._deadlines) == len(self._by_sequence)
            for key, (deadline, sequence) in self._deadlines.items():
                assert self._by_sequence[sequence] == key
                assert (deadline, sequence) in self._soonest
            assert not self._deadlines.keys() & self._never
            assert self._indexed() == keys
            if self._order is not None:
                assert self._order.keys() == keys
            if self.max_bytes is not None:
                assert self._sizes.keys() == keys
                assert self._bytes == sum(self._sizes.values())
            if self._written is not None:
                assert self._written.keys() == keys

    def _indexed(self) -> AbstractSet[Any]:
        """Every key the index holds (with a deadline or without)."""
        return self._deadlines.keys() | self._never

    def _forget_deadline(self, key: Any) -> None:
        entry = self._deadlines.pop(key, None)
        if entry is not None:
            self._soonest.remove(entry)
            del self._by_sequence[entry[1]]

    def _unindex(self, key: Any) -> None:
        self._forget_deadline(key)
        self._never.discard(key)
        self._bytes -= self._sizes.pop(key, 0)
        if self._order is not None:
            self._order.pop(key, None)
        if self._written is not None:
            self._written.pop(key, None)
        self._bound_changes[key] = None

    def _clear_index(self) -> None:
        self._deadlines.clear()
        self._soonest.clear()
        self._by_sequence.clear()
        self._never.clear()
        self._sizes.clear()
        self._bytes = 0
        if self._order is not None:
            self._order.clear()
        if self._written is not None:
            self._written.clear()

    def _drop(self, key: Any) -> None:
        """Delete an expired or evicted key: a change like any delete, saved as one."""
        with self._lock:  # a read and the background thread may both find it due
            if dict.__contains__(self, key):
                del self[key]
            else:
                self._unindex(key)

    def _enforce(self) -> None:
        """Drop what expired, then evict least recently used keys past the size bounds."""
        soonest = self._soonest
        if soonest:
            now = self.wall_clock()
            if soonest[0][0] <= now:
                self.expire()
            if soonest:
                expirer = self._expirer
                if expirer is None:
                    expirer = self._expirer = _Expirer(self)
                expirer.wake_by(soonest[0][0], now)
        order = self._order
        if order is None:
            return
        while order and (
            (self.max_entries is not None and dict.__len__(self) > self.max_entries)
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            oldest = next(iter(order))
            self._drop(oldest)

    def _reindex(self) -> None:
        """Rebuild the index from the contents and the saved deadlines; drop what expired."""
        self._clear_index()
        saved = self._saved_bounds()
        self._indexing = True
        try:
            for key in list(dict.keys(self)):
                record = saved.get(key)
                value = dict.__getitem__(self, key)
                written = record[2] if record is not None and len(record) > 2 else None
                if written is not None and math.isinf(written):
                    written = None
                if record is not None and not math.isinf(record[0]):
                    self._index(key, value, None, deadline=record[0], written=written)
                else:
                    self._index(key, value, self.ttl, written=written)
                    if record is None:  # not recorded yet: record it at the next save
                        self._bound_changes[key] = self._record(key)
        finally:
            self._indexing = False
        self._enforce()

    def _saved_bounds(self) -> dict[Any, tuple[float, ...]]:
        store = self._journal_store()
        if store is None:
            return {}
        try:
            return store.load(sidecar_name(self.name)) or {}
        except Exception:  # damaged or unreadable: every key gets ttl from now
            return {}

    # -- hooks into the persistent cache's life ------------------------------------------

    def _released(self) -> None:
        super()._released()
        if self._expirer is not None:  # a released cache is not the thread's to expire
            self._expirer.cancel()

    # The index changes under the cache's lock, as the background expiry reads it there.

    def _load_self(self) -> None:
        with self._lock:
            super()._load_self()
            self._reindex()

    def _reset_self(self) -> None:
        with self._lock:
            super()._reset_self()
            self._reindex()  # the contents were replaced behind the mutators

    def refresh(self) -> None:
        with self._lock:
            super().refresh()
            indexed = self._indexed()
            new = [key for key in dict.keys(self) if key not in indexed]
            gone = [key for key in indexed if not dict.__contains__(self, key)]
            for key in gone:
                self._unindex(key)
                self._bound_changes.pop(key, None)  # another process deleted it and its record
            for key in new:
                self._index(key, dict.__getitem__(self, key), self.ttl)
            self._enforce()

    def _saved_through(self, mark: int) -> None:
        super()._saved_through(mark)
        self._write_bounds()

    def _write_bounds(self) -> None:
        """Append the deadlines and sizes changed since the last save to ``<name>~bounds``."""
        store = self._journal_store()
        if store is None or not self._bound_changes:
            return
        changes, self._bound_changes = self._bound_changes, {}
        records = [
            (DEL, key, None) if record is None else (SET, key, record)
            for key, record in changes.items()
        ]
        try:
            store.append(sidecar_name(self.name), records)
        except Exception as error:  # the cache itself is saved: only deadlines wait
            for key, record in changes.items():  # kept for the next save
                self._bound_changes.setdefault(key, record)
            logger.warning(
                "cache %r: saving the deadlines of its keys failed (%s: %s); they are "
                "saved with the next save",
                self.name,
                type(error).__name__,
                error,
            )

    def _delete_saved_self(self) -> None:
        super()._delete_saved_self()
        store = self._journal_store()
        if store is not None:
            store.delete(sidecar_name(self.name))
        self._bound_changes = {key: self._record(key) for key in self._indexed()}


class BoundedCache(Bounds, AutoSyncCache):
    """An :class:`~cacheman.autosync.AutoSyncCache` with ``ttl``, ``max_entries``, ``max_bytes``.

    >>> import tempfile
    >>> from cacheman import CacheManager
    >>> manager = CacheManager("doc_bounds", tempfile.mkdtemp())
    >>> recent = manager.register_cache("recent", max_entries=2)
    >>> recent["a"], recent["b"], recent["c"] = 1, 2, 3
    >>> sorted(recent)
    ['b', 'c']
    >>> manager.deregister_all_caches()
    """


class BoundedPersistentCache(Bounds, PersistentCache):
    """A :class:`~cacheman.cachewrap.PersistentCache` with bounds (saved only when asked)."""


def bounded_class(cls: type[PersistentCache]) -> type[PersistentCache]:
    """The bounded variant of a persistent cache class (a subclass mixing :class:`Bounds` in)."""
    if issubclass(cls, Bounds):
        return cls
    if cls is AutoSyncCache:
        return BoundedCache
    if cls is PersistentCache:
        return BoundedPersistentCache
    made = _made.get(cls)
    if made is None:
        made = _made[cls] = type(f"Bounded{cls.__name__}", (Bounds, cls), {})
    return made


_made: dict[type[PersistentCache], type[PersistentCache]] = {}


def bound_options(kwargs: dict[str, Any]) -> bool:
    """Whether constructor keywords ask for bounds (any of :data:`BOUND_OPTIONS` not None)."""
    return any(kwargs.get(option) is not None for option in BOUND_OPTIONS)
