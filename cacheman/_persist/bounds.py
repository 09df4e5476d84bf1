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
  ``sortedcontainers.SortedList``, so a write looks only at the head) and by
  :meth:`BoundedCache.expire`.
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
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from .._journal import DEL, SET
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


def sidecar_name(name: str) -> str:
    """The companion cache that keeps the deadlines and sizes of ``name``'s keys."""
    return f"{name}~bounds"


class Bounds(PersistentCache):
    """The expiry and size bounds of :mod:`cacheman._persist.bounds`, over a persistent cache.

    Mixed in before :class:`~cacheman.autosync.AutoSyncCache` or
    :class:`~cacheman.cachewrap.PersistentCache`; not registered on its own.
    """

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
        self._sequence = 0
        self._order: OrderedDict[Any, None] | None = (
            OrderedDict() if max_entries is not None or max_bytes is not None else None
        )
        self._sizes: dict[Any, int] = {}
        self._bytes = 0
        self._bound_changes: dict[Any, tuple[float, int] | None] = {}
        self._indexing = False
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
        super().__setitem__(key, value)
        self._index(key, value, self.ttl if ttl is _MISSING else ttl)
        self._enforce()

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._index(key, value, self.ttl)
        self._enforce()

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        pairs = list(other.items()) if hasattr(other, "items") else [tuple(p) for p in other]
        pairs += kwargs.items()
        super().update(pairs)
        for key, value in pairs:
            self._index(key, value, self.ttl)
        self._enforce()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return dict.__getitem__(self, key)
        self[key] = default
        return default

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._unindex(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            if not default:
                raise KeyError(key)
            return default[0]
        value = super().pop(key)
        self._unindex(key)
        return value

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self._unindex(item[0])
        return item

    def clear(self) -> None:
        super().clear()
        for key in list(self._deadlines):
            self._bound_changes[key] = None
        self._clear_index()

    def expire(self) -> int:
        """Delete every key past its deadline now; return how many (each a journaled delete)."""
        now = self.wall_clock()
        dropped = 0
        while self._soonest and self._soonest[0][0] <= now:
            key = self._by_sequence[self._soonest[0][1]]
            self._drop(key)
            dropped += 1
        return dropped

    # -- the index: deadlines, sizes, use order ------------------------------------------

    def _index(
        self, key: Any, value: Any, ttl: float | None, deadline: float | None = None
    ) -> None:
        self._forget_deadline(key)
        if deadline is None and ttl is not None and not math.isinf(ttl):
            deadline = self.wall_clock() + ttl
        if deadline is not None:
            self._sequence += 1
            self._deadlines[key] = (deadline, self._sequence)
            self._by_sequence[self._sequence] = key
            self._soonest.add((deadline, self._sequence))
        size = 0
        if self.max_bytes is not None:
            size = _pickled_size(value)
            self._bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size
        if self._order is not None:
            self._order[key] = None
            self._order.move_to_end(key)
        if not self._indexing:
            self._bound_changes[key] = (math.inf if deadline is None else deadline, size)

    def _forget_deadline(self, key: Any) -> None:
        entry = self._deadlines.pop(key, None)
        if entry is not None:
            self._soonest.remove(entry)
            del self._by_sequence[entry[1]]

    def _unindex(self, key: Any) -> None:
        self._forget_deadline(key)
        self._bytes -= self._sizes.pop(key, 0)
        if self._order is not None:
            self._order.pop(key, None)
        self._bound_changes[key] = None

    def _clear_index(self) -> None:
        self._deadlines.clear()
        self._soonest.clear()
        self._by_sequence.clear()
        self._sizes.clear()
        self._bytes = 0
        if self._order is not None:
            self._order.clear()

    def _drop(self, key: Any) -> None:
        """Delete an expired or evicted key: a change like any delete, saved as one."""
        if dict.__contains__(self, key):
            del self[key]
        else:
            self._unindex(key)

    def _enforce(self) -> None:
        """Drop what expired, then evict least recently used keys past the size bounds."""
        if self._soonest and self._soonest[0][0] <= self.wall_clock():
            self.expire()
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
                if record is not None and not math.isinf(record[0]):
                    self._index(key, dict.__getitem__(self, key), None, deadline=record[0])
                else:
                    self._index(key, dict.__getitem__(self, key), self.ttl)
                    if record is None:  # not recorded yet: record it at the next save
                        entry = self._deadlines.get(key)
                        self._bound_changes[key] = (
                            math.inf if entry is None else entry[0],
                            self._sizes.get(key, 0),
                        )
        finally:
            self._indexing = False
        self._enforce()

    def _saved_bounds(self) -> dict[Any, tuple[float, int]]:
        store = self._journal_store()
        if store is None:
            return {}
        try:
            return store.load(sidecar_name(self.name)) or {}
        except Exception:  # damaged or unreadable: every key gets ttl from now
            return {}

    # -- hooks into the persistent cache's life ------------------------------------------

    def _load_self(self) -> None:
        super()._load_self()
        self._reindex()

    def _reset_self(self) -> None:
        super()._reset_self()
        self._reindex()  # the contents were replaced behind the mutators

    def refresh(self) -> None:
        super().refresh()
        new = [key for key in dict.keys(self) if key not in self._deadlines]
        gone = [key for key in self._deadlines if not dict.__contains__(self, key)]
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
        self._bound_changes = {
            key: (entry[0], self._sizes.get(key, 0)) for key, entry in self._deadlines.items()
        }


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
