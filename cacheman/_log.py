"""What CacheMan tells the ``cacheman`` logger: one function per message family.

Code elsewhere calls these with one line, so that every message a user may
filter on is worded, and given its level, here (docs/logging.rst lists them).

Loggers: ``cacheman.io`` for the record of each save and load (DEBUG; INFO for a
save that took over :data:`SLOW_SAVE_SECONDS`), ``cacheman`` for the rest.  Both
propagate to ``cacheman``, so ``logging.getLogger("cacheman").setLevel(...)``
governs them all.

Nothing here may run in a save child (:mod:`cacheman._process.fork`): a child takes no
lock, and logging takes one.  So saves are logged in the parent, when they land.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ._stores.api import supports_usage

__all__ = [
    "SLOW_SAVE_SECONDS",
    "changed_parents",
    "clock",
    "exit_flush",
    "io_logger",
    "loaded",
    "logger",
    "reset_by_code",
    "reset_by_parents",
    "saved",
    "saved_size",
]

logger = logging.getLogger("cacheman")
io_logger = logging.getLogger("cacheman.io")

#: A save that takes longer than this is logged at INFO (the program may have waited).
SLOW_SAVE_SECONDS = 1.0

#: The clock every duration logged here is measured with.
clock = time.perf_counter


def _ms(started: float) -> float:
    return (clock() - started) * 1000.0


def saved_size(store: object, name: str) -> int | None:
    """The bytes the store keeps for ``name`` (all its files), or None if it cannot say.

    Only called when the message is going to be emitted: it costs a ``stat`` per file.
    """
    if not supports_usage(store):
        return None
    try:
        return int(store.usage(name)[0])
    except Exception:  # a size is only a detail of a log line
        return None


@dataclass
class _Flush:
    """What the exit flush wrote so far: counted by :func:`saved` while it runs."""

    caches: int = 0
    entries: int = 0


_flush: _Flush | None = None


def saved(
    name: str,
    kind: str,
    entries: int,
    started: float,
    *,
    store: object = None,
    where: str = "in-process",
) -> None:
    """A save of cache ``name`` landed: DEBUG, or INFO if it took over a second.

    ``kind`` is ``snapshot`` (the whole cache), ``compaction`` (the whole cache,
    merging what other processes appended), ``append`` (a journal record of
    ``entries`` changes) or ``hook`` (a user's saver, or a CSV file);
    ``started`` a :data:`clock` reading taken before the write; ``where`` says
    whether it ran ``in-process`` or in a ``child`` process.
    """
    if _flush is not None:
        _flush.caches += 1
        _flush.entries += entries
    ms = _ms(started)
    level = logging.INFO if ms > SLOW_SAVE_SECONDS * 1000 else logging.DEBUG
    if not io_logger.isEnabledFor(level):
        return
    size = saved_size(store, name) if store is not None else None
    io_logger.log(
        level,
        "cache %r: saved (%s, %s): %d entries, %s bytes on disk, %.1f ms",
        name,
        kind,
        where,
        entries,
        "?" if size is None else size,
        ms,
    )


def loaded(name: str, kind: str, entries: int, started: float, *, store: object = None) -> None:
    """Cache ``name`` was read: ``kind`` is ``store`` (the manager's store) or ``hook``."""
    if not io_logger.isEnabledFor(logging.DEBUG):
        return
    size = saved_size(store, name) if store is not None else None
    io_logger.debug(
        "cache %r: loaded (%s): %d entries, %s bytes on disk, %.1f ms",
        name,
        kind,
        entries,
        "?" if size is None else size,
        _ms(started),
    )


def reset_by_parents(name: str, parents: Iterable[str], *, instead_of_save: bool = False) -> None:
    """WARNING: cache ``name`` is reset because ``parents`` moved on since it was built."""
    moved = sorted(parents)
    why = (
        f"its parent {', '.join(map(repr, moved))} changed since it was built"
        if moved
        else "another process invalidated a cache it derives from"
    )
    dropped = " (its unsaved contents are dropped, not written back)" if instead_of_save else ""
    logger.warning("cache %r: reset because %s%s", name, why, dropped)


def reset_by_code(name: str, what: str) -> None:
    """WARNING: memoized cache ``name`` is reset because ``what`` changed (code, version...)."""
    logger.warning(
        "cache %r: reset, with every cache derived from it, because %s changed", name, what
    )


def changed_parents(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The parents whose generation differs from the one ``recorded`` at the build."""
    if recorded is None:
        return []
    return [parent for parent, generation in current.items() if recorded.get(parent) != generation]


@contextlib.contextmanager
def exit_flush(what: str = "exit") -> Iterator[None]:
    """Count the saves made inside; then INFO a summary, if anything was saved."""
    global _flush
    outer, _flush = _flush, _Flush()
    started = clock()
    try:
        yield
    finally:
        done, _flush = _flush, outer
        if done.caches:
            logger.info(
                "%s flush: saved %d cache(s), %d entries, in %.1f ms",
                what,
                done.caches,
                done.entries,
                _ms(started),
            )
