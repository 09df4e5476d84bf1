"""What the manager and the caches need of a store: the :class:`Store` protocol.

A store keeps, for each cache name, the saved contents, a little metadata (a
JSON-able dict: generation, parents' generations, save time; never pickled) and,
for the whole manager, the dependency edges any process declared.  The default
store is :class:`~cacheman._stores.pickle.PickleStore` (one directory of files); other
stores (Redis) implement the same methods.

Stores that can record a cache's changes one key at a time (both of the
above) also implement :class:`JournalStore`: the persistent caches then write
only the keys they changed, and several processes can write one cache.

Optional capabilities are protocols too, checked with the ``supports_*`` guards
where they are used (never by probing for an attribute), so that what a store offers
is written down in one place and a new store knows what to implement:

========================  ==================  ===========================================
protocol                  implemented by      used by
========================  ==================  ===========================================
:class:`JournalStore`     PickleStore, Redis  persistent caches: key-by-key saves, refresh
:class:`EventStore`       PickleStore, Redis  the manager: other processes' invalidations
:class:`BuilderLocking`   RedisStore          one build per invalidation across processes
:class:`Verifying`        PickleStore, Redis  ``cacheman verify`` and ``list``
:class:`UsageReporting`   PickleStore, Redis  ``cacheman list`` and ``delete`` (sizes)
:class:`KeepsAside`       CSV file storage    a loader that raised: where the data was kept
:class:`DamageSwitch`     PickleStore, Redis  ``cacheman list``/``show``: loads that move nothing
:class:`ClosableStore`    RedisStore          ``CacheManager.close()``: connections, listener
========================  ==================  ===========================================

``tests/test_store_contract.py`` runs one contract suite against every store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from .journal import AppendResult, Change, SaveResult, VerifyReport

__all__ = [
    "BuilderLocking",
    "ClosableStore",
    "DamageSwitch",
    "Edge",
    "EventCallback",
    "EventStore",
    "JournalStore",
    "KeepsAside",
    "Store",
    "StoreFactory",
    "UsageReporting",
    "Verifying",
    "supports_builder_lock",
    "supports_damage_switch",
    "supports_events",
    "supports_journal",
    "supports_keep_aside",
    "supports_usage",
    "supports_verify",
]

#: A dependency edge: ``(parent, child)``, *child is derived from parent*.
Edge = tuple[str, str]


@runtime_checkable
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


@runtime_checkable
class JournalStore(Store, Protocol):
    """A store that takes a cache's changes key by key (see :mod:`cacheman._stores.journal`).

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


#: ``callback(name, generation)``: ``name`` got a new generation in some process;
#: ``(None, None)``: events may have been missed.
EventCallback = Callable[[str | None, str | None], object]


@runtime_checkable
class EventStore(Protocol):
    """A store that tells every process when a cache's generation changes.

    Redis by pub/sub, the pickle store by its event log (:mod:`cacheman._stores.file_events`).
    """

    def subscribe(self, callback: EventCallback, *, wait: float = 5.0) -> None:
        """Call ``callback`` on each generation change, in any process, from a thread of its own."""

    def unsubscribe(self, callback: EventCallback) -> None:
        """Stop calling ``callback``."""

    def wrote_generation(self, name: str, generation: str | None) -> bool:
        """Whether this process itself lately gave ``name`` that ``generation``."""


@runtime_checkable
class BuilderLocking(Protocol):
    """A store with a lock that lets one process at a time build a cache."""

    def builder_lock(
        self, name: str, timeout: float = 60.0, *, wait: float | None = None
    ) -> AbstractContextManager[str]:
        """Hold the builder lock of ``name`` (it frees itself after ``timeout`` s)."""


@runtime_checkable
class Verifying(Protocol):
    """A store that can check (and repair) what it keeps without unpickling it."""

    def verify(self, name: str, fix: bool = False) -> VerifyReport:
        """Check the saved data of ``name``; with ``fix``, repair what can be repaired."""


@runtime_checkable
class UsageReporting(Protocol):
    """A store that can tell how much it keeps for a cache."""

    def usage(self, name: str) -> tuple[int, float | None]:
        """The bytes kept for ``name`` and the newest modification time (None if nothing)."""


@runtime_checkable
class KeepsAside(Protocol):
    """Storage that can move data its loader could not read out of the way, and say where."""

    def keep_aside(self, name: str) -> Path | None:
        """Move the unreadable data of ``name`` aside; return where it went (None: nothing)."""


@runtime_checkable
class DamageSwitch(Protocol):
    """A store that can be told to leave damaged data in place when a load finds it."""

    #: True (the default): a load moves damaged data aside; False: it leaves it, reads
    #: what it can and changes nothing (the command line's ``list`` and ``show``).
    keep_aside_damaged: bool


# (type of store, protocol) -> whether it implements it.  An isinstance check against
# a runtime protocol looks up every member (about 50 us on CPython 3.11), and saves
# ask on every call; the methods of a store are its class's, so the answer is kept.
_supported: dict[tuple[type, type], bool] = {}


def _implements(store: object, capability: type) -> bool:
    key = (type(store), capability)
    try:
        return _supported[key]
    except KeyError:
        answer = _supported[key] = isinstance(store, capability)
        return answer


# One guard per capability (mypy cannot take a protocol as ``type[T]``): each is an
# ``isinstance`` check against the protocol, cached per type of store.


def supports_journal(store: object) -> TypeGuard[JournalStore]:
    """Whether ``store`` is a :class:`JournalStore`.

    >>> from pathlib import Path
    >>> from cacheman._stores.pickle import PickleStore
    >>> supports_journal(PickleStore(Path("x"))), supports_builder_lock(PickleStore(Path("x")))
    (True, False)
    """
    return _implements(store, JournalStore)


def supports_events(store: object) -> TypeGuard[EventStore]:
    """Whether ``store`` is an :class:`EventStore`."""
    return _implements(store, EventStore)


def supports_builder_lock(store: object) -> TypeGuard[BuilderLocking]:
    """Whether ``store`` implements :class:`BuilderLocking`."""
    return _implements(store, BuilderLocking)


def supports_verify(store: object) -> TypeGuard[Verifying]:
    """Whether ``store`` implements :class:`Verifying`."""
    return _implements(store, Verifying)


def supports_usage(store: object) -> TypeGuard[UsageReporting]:
    """Whether ``store`` implements :class:`UsageReporting`."""
    return _implements(store, UsageReporting)


def supports_keep_aside(storage: object) -> TypeGuard[KeepsAside]:
    """Whether ``storage`` implements :class:`KeepsAside`."""
    return _implements(storage, KeepsAside)


def supports_damage_switch(store: object) -> TypeGuard[DamageSwitch]:
    """Whether ``store`` implements :class:`DamageSwitch`."""
    return _implements(store, DamageSwitch)
