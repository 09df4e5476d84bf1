"""What the manager and the caches need of a store: the :class:`Store` protocol.

A store keeps, for each cache name, the saved contents, a little metadata (a
JSON-able dict: generation, parents' generations, save time; never pickled) and,
for the whole manager, the dependency edges any process declared.  The default
store is :class:`~cacheman._store.PickleStore` (one directory of files); other
stores (Redis) implement the same methods.

Stores that can record a cache's changes one key at a time (both of the
above) also implement :class:`JournalStore`: the persistent caches then write
only the keys they changed, and several processes can write one cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._journal import AppendResult, Change, SaveResult

__all__ = ["ClosableStore", "Edge", "JournalStore", "Store", "StoreFactory"]

#: A dependency edge: ``(parent, child)``, *child is derived from parent*.
Edge = tuple[str, str]


class Store(Protocol):
    """The storage of one manager's caches."""

    def load(self, name: str) -> dict[Any, Any] | None:
        """The saved contents of ``name``, or None if nothing (usable) is saved."""

    def save(self, name: str, contents: Mapping[Any, Any]) -> Any:
        """Replace everything saved for ``name`` with ``contents``."""

    def delete(self, name: str) -> None:
        """Remove everything saved for ``name``: contents and metadata."""

    def exists(self, name: str) -> bool:
        """Whether anything is saved for ``name``."""

    def names(self) -> list[str]:
        """The names of the caches with anything saved, sorted."""

    def read_meta(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name``, or None if it has none."""

    def update_meta(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set metadata fields of ``name`` (None removes one) atomically; return the result."""

    def read_edges(self) -> list[Edge]:
        """Every dependency edge persisted by any process, in the order first declared."""

    def add_edges(self, edges: Iterable[Edge]) -> None:
        """Persist ``edges`` too (edges already there are kept once)."""

    def remove_edges(self, name: str) -> None:
        """Forget every persisted edge that touches ``name``."""


class JournalStore(Store, Protocol):
    """A store that takes a cache's changes key by key (the journal; see :mod:`cacheman._journal`).

    A position says how far a process has read what was saved; it is opaque to
    callers, and None on a store that has none (Redis applies every change
    itself: a process sees other processes' changes by reloading).
    """

    def append(self, name: str, changes: Iterable[Change], since: Any = None) -> AppendResult:
        """Record ``changes`` durably; ``in_sync`` says nobody else wrote since ``since``."""

    def load_tracked(self, name: str) -> tuple[dict[Any, Any] | None, Any]:
        """:meth:`load`, and the position read through."""

    def changes_since(self, name: str, position: Any) -> tuple[list[Change], Any] | None:
        """What was appended after ``position``, and the new position; None: reload instead."""

    def save(
        self,
        name: str,
        contents: Mapping[Any, Any],
        *,
        since: Any = None,
        pending: Iterable[Change] = (),
    ) -> SaveResult:
        """Replace what is saved; with ``since``, keep what others appended after it."""


class StoreFactory(Protocol):
    """A store not yet bound to a manager (``CacheManager(name, store=RedisStore(url))``)."""

    def bind(self, manager_name: str, signing_key: bytes | None) -> Store:
        """The store of the manager called ``manager_name``, signing with ``signing_key``."""


@runtime_checkable
class ClosableStore(Protocol):
    """A store holding resources of its own (connections, a listener thread) until closed."""

    def close(self) -> None:
        """Let go of them; the store may be used again afterwards (it reconnects)."""
