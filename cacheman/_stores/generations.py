"""Generations: how a derived cache notices, in any process, that a parent moved on.

Each saved cache has a *generation*, ``"<random id>:<counter>"``, kept in its
store's metadata.  Invalidating or resetting a cache gives it a new generation
(same random id, counter + 1; a cache rebuilt from nothing gets a new random id).
A derived cache records, in its own metadata, the generations of the parents it
was built from.  Whenever it is loaded, and before it is written, those are
compared with the parents' current generations: a parent that moved on (in this
process or any other) means the derived cache is stale, and it is reset instead
of being served or written back.

A process that invalidates a parent but never registered some derived cache
(its store may even be one that process cannot reach, a CSV file say) marks
that cache's metadata ``stale``; whoever loads it next resets it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Store

__all__ = ["STALE", "is_stale", "next_generation", "parent_generations"]

#: The metadata field a process sets on a derived cache it could not reset itself.
STALE = "stale"


def next_generation(previous: str | None) -> str:
    """The generation after ``previous`` (a new lineage when there is none).

    >>> next_generation("0123456789abcdef:4")
    '0123456789abcdef:5'
    """
    if previous:
        lineage, _, counter = previous.rpartition(":")
        if lineage and counter.isdigit():
            return f"{lineage}:{int(counter) + 1}"
    return f"{secrets.token_hex(8)}:1"


def generation_of(meta: Mapping[str, Any] | None) -> str | None:
    """The generation recorded in ``meta``, if any."""
    value = None if meta is None else meta.get("generation")
    return value if isinstance(value, str) else None


def parent_generations(store: Store, parents: Iterable[str]) -> dict[str, str | None]:
    """The current generation of each parent (None for a parent never saved)."""
    return {parent: generation_of(store.read_meta(parent)) for parent in parents}


def is_stale(meta: Mapping[str, Any] | None, current: Mapping[str, str | None]) -> bool:
    """Whether a cache whose metadata is ``meta`` must be reset, its parents being at ``current``.

    A cache without metadata, or without a record of its parents (saved by an
    older CacheMan, or never derived), is not stale: nothing says it is.  A
    parent it did not record (a dependency declared since) makes it stale.
    """
    if meta is None:
        return False
    if meta.get(STALE):
        return True
    recorded = meta.get("parents")
    if not isinstance(recorded, dict):
        return False
    return any(recorded.get(parent) != generation for parent, generation in current.items())
