"""``stale_after``: a memoized result past its freshness is served while a new one is computed.

The cache side of ``memoize(stale_after=...)``.  A :class:`StaleAfter` cache
is a bounded cache (:mod:`cacheman._persist.bounds`) that keeps the
wall-clock time each result was written, persisted with its deadline in
``<name>~bounds``, so a process loading the cache tomorrow knows how old each
result is.  Its reads (``c[k]``, ``get``, ``in``) see only fresh results: a
stale one misses, which sends the memoized call off its hot path, where
:class:`~cacheman._memo.memoize.Memoized` either serves :meth:`StaleAfter.stale`
and refreshes in a thread (``refresh="background"``) or computes at once
(``refresh="wait"``).  Iteration and ``len()`` see every result kept, stale
or not; ``ttl`` still deletes what is past its deadline.

A result another process wrote that this process has not seen written (a
key it first sees at a load without a record) counts as written when first
seen, as ``ttl`` does for such keys.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from .._persist.bounds import Bounds
from ..cachewrap import PersistentCache

__all__ = ["REFRESH_MODES", "StaleAfter", "seconds", "stale_class"]

#: How a memoized call treats a stale result: serve it and recompute in a thread, or wait.
REFRESH_MODES: tuple[Literal["background", "wait"], ...] = ("background", "wait")


def seconds(value: float | datetime.timedelta | None, what: str, name: str) -> float | None:
    """``value`` in seconds (a ``timedelta``, as cachier takes, or a number), checked > 0."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"memoize {name!r}: {what} must be > 0 seconds (a number or a timedelta), not {value!r}"
        )
    return float(value)


class StaleAfter(Bounds):
    """Bounds that also tell a fresh result from a stale one (older than ``stale_after`` s)."""

    _keeps_ages = True

    def __init__(self, *args: Any, stale_after: float, **kwargs: Any) -> None:
        self.stale_after = stale_after
        super().__init__(*args, **kwargs)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        written = self._written.get(key) if self._written is not None else None
        if written is not None and written + self.stale_after <= self.wall_clock():
            raise KeyError(key)  # kept: stale() still serves it
        return value

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def stale(self, key: Any, default: Any = None) -> Any:
        """The result kept for ``key``, fresh or stale (not past its ``ttl``), else ``default``."""
        try:
            return Bounds.__getitem__(self, key)
        except KeyError:
            return default

    def age(self, key: Any) -> float | None:
        """Seconds since ``key``'s result was written (None when there is none)."""
        written = self._written.get(key) if self._written is not None else None
        return None if written is None else self.wall_clock() - written


def stale_class(cls: type[PersistentCache]) -> type[PersistentCache]:
    """The variant of a persistent cache class that keeps ages (a subclass mixing StaleAfter in)."""
    made = _made.get(cls)
    if made is None:
        made = _made[cls] = type(f"Stale{cls.__name__}", (StaleAfter, cls), {})
    return made


_made: dict[type[PersistentCache], type[PersistentCache]] = {}
