"""What the manager and the caches need of a store: the :class:`Store` protocol.

A store keeps, for each cache name, the saved contents, a little metadata (a
JSON-able dict: generation, parents' generations, save time; never pickled) and,
for the whole manager, the dependency edges any process declared.  The default
store is :class:`~cacheman._store.PickleStore` (one directory of files); other
stores (Redis) implement the same methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["Edge", "Store", "StoreFactory"]

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


class StoreFactory(Protocol):
    """A store not yet bound to a manager (``CacheManager(name, store=RedisStore(url))``)."""

    def bind(self, manager_name: str, signing_key: bytes | None) -> Store:
        """The store of the manager called ``manager_name``, signing with ``signing_key``."""
