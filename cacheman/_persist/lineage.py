"""Lineage: the one place that decides if a derived cache is fresh, stale or rebuilt elsewhere.

A derived cache records the generations of the parents it was built from (see
:mod:`cacheman._stores.generations`): in memory (``held``, what this process's copy was
built from) and in the store's metadata (``parents``, what the saved copy was
built from).  Every path that may serve, write or rebuild a derived cache --
load, save, exit, signal, background save, cascade, store event, ``refresh()``
-- asks :func:`decide`, from those records and the parents' generations in the
store now, and gets one of three answers:

``FRESH``
    The copy in memory is current (or, with nothing in memory, the saved copy
    may be loaded): go on.
``REBUILT_ELSEWHERE``
    The copy in memory predates a parent's invalidation, but the saved copy was
    built (by another process) from the parents as they are now: load it
    instead of building again.
``STALE``
    Neither: build anew, from parents brought up to date first (see
    :func:`settle`).

:func:`settle` is the actor: it asks :func:`decide` about one cache and does
what the answer says through the steps the cache declares (:class:`Derived`).
It runs before a save is planned, never inside the plan, and never while a
background save of the same cache is in flight: a rebuild deletes the saved
copy, which waits for that save first.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .. import _log
from .._stores.generations import STALE as STALE_FIELD
from .._stores.generations import is_stale, parent_generations

if TYPE_CHECKING:
    from .._stores.api import Store

__all__ = ["Derived", "Verdict", "decide", "settle"]

logger = logging.getLogger("cacheman")

Generations = Mapping[str, "str | None"]


class Verdict(enum.Enum):
    """What :func:`decide` says about a derived cache."""

    FRESH = "fresh"
    STALE = "stale"
    REBUILT_ELSEWHERE = "rebuilt elsewhere"


def decide(
    current: Generations,
    saved: Mapping[str, Any] | None,
    held: Generations | None = None,
    *,
    invalidated: bool = False,
) -> Verdict:
    """Whether a derived cache is fresh, stale, or rebuilt by another process.

    ``current``: its parents' generations in the store now.  ``saved``: the
    store's metadata of the cache (None if it has none).  ``held``: the parents'
    generations the copy in memory was built from; None when no copy in memory
    is judged (a load; a cache this process has not registered).
    ``invalidated``: the caller knows that the copy it holds, if any, predates
    the parents' current generations (a cascade after an invalidation).

    A parent missing from ``held`` was declared after the build: the copy in
    memory is taken as built from it as it is now (2.x code declares edges once
    the caches exist).  A saved copy counts as rebuilt elsewhere only if its
    metadata records every current parent at its current generation and no
    process marked it stale; with nothing in memory, a saved copy without a
    record of its parents (an older CacheMan's) may be loaded: nothing says it
    is stale.

    >>> decide({"raw": "a:2"}, {"parents": {"raw": "a:1"}}, {"raw": "a:1"})
    <Verdict.STALE: 'stale'>
    >>> decide({"raw": "a:2"}, {"parents": {"raw": "a:2"}}, {"raw": "a:1"})
    <Verdict.REBUILT_ELSEWHERE: 'rebuilt elsewhere'>
    >>> decide({"raw": "a:2"}, None, {"raw": "a:2"})
    <Verdict.FRESH: 'fresh'>
    """
    if (
        not invalidated
        and held is not None
        and all(
            held[parent] == generation for parent, generation in current.items() if parent in held
        )
    ):
        return Verdict.FRESH
    if invalidated or held is not None:
        return Verdict.REBUILT_ELSEWHERE if _built_from(saved, current) else Verdict.STALE
    return Verdict.STALE if is_stale(saved, current) else Verdict.FRESH


def _built_from(saved: Mapping[str, Any] | None, current: Generations) -> bool:
    """Whether the saved copy positively records ``current`` as what it was built from."""
    if saved is None or saved.get(STALE_FIELD) or not current:
        return False
    recorded = saved.get("parents")
    if not isinstance(recorded, dict):
        return False
    return all(
        parent in recorded and recorded[parent] == generation and generation is not None
        for parent, generation in current.items()
    )


class Derived(Protocol):
    """What :func:`settle` needs of a cache (:class:`~cacheman.cachewrap.PersistentCache`)."""

    @property
    def name(self) -> str: ...

    @property
    def _built_from(self) -> dict[str, str | None] | None: ...

    def _parents(self) -> list[str]: ...

    def _adopt_parents(self, current: Generations) -> None:
        """The copy in memory is fresh: record the parents declared since it was built."""

    def _load_rebuilt(self) -> None:
        """Replace the copy in memory with the saved one, which another process rebuilt."""

    def _rebuild(self, held: Generations | None, *, invalidated: bool) -> None:
        """Build anew from parents brought up to date (see :func:`settle`)."""


def settle(
    cache: Derived, store: Store, *, invalidated: bool = False, saving: bool = False
) -> Verdict:
    """Ask :func:`decide` about ``cache``'s copy in memory, and act on the answer.

    Called with the cache's lock held, before a save is planned (``saving``),
    after an invalidation here (``invalidated``) or elsewhere, and by
    ``refresh()``.  A cache that is not derived, or whose contents were given
    rather than built or loaded (nothing to judge), is left alone unless
    ``invalidated``.  Costs one metadata read per parent and one for the cache.
    A rebuild this process did not ask for is a WARNING naming the parents that
    moved on.
    """
    parents = cache._parents()
    held = cache._built_from
    if not parents or (held is None and not invalidated):
        return Verdict.FRESH
    current = parent_generations(store, parents)
    verdict = decide(current, store.read_meta(cache.name), held, invalidated=invalidated)
    if verdict is Verdict.FRESH:
        cache._adopt_parents(current)
    elif verdict is Verdict.REBUILT_ELSEWHERE:
        logger.info(
            "cache %r: another process rebuilt it from its parents as they are now; loading that",
            cache.name,
        )
        cache._load_rebuilt()
    else:
        if not invalidated and held is not None:  # (an invalidation here is its own reason)
            moved = [p for p, g in current.items() if p in held and held[p] != g]
            _log.reset_by_parents(cache.name, moved, instead_of_save=saving)
        cache._rebuild(held, invalidated=invalidated)
    return verdict
