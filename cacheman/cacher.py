"""The registry: :class:`CacheManager` and :func:`get_cache_manager`.

A manager owns a directory, the caches registered under it, and the dependency
graph between them.  Every cascade lives here: an operation on a cache (load,
save, invalidate, delete), whether asked of the manager or of the cache itself,
comes to the manager, which walks the graph so that it reaches every derived
cache exactly once, parents before children, and drives each cache through the
single-cache steps declared by :class:`~cacheman.cachewrap.CacheSteps`.

At process exit (and on SIGTERM/SIGHUP) :mod:`cacheman._process.lifecycle` runs the
exit flush registered here: every manager saves what its caches must keep.

Lifetimes.  No module-level table keeps a manager alive, except the named ones
``get_cache_manager`` hands out (see :mod:`cacheman._registry`) and, for the exit
flush, a manager the program dropped while a cache of it may still hold changes
to save (see :meth:`CacheManager.__del__`).  :meth:`CacheManager.close` saves,
then lets go of everything the manager holds.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from . import _log, _registry
from ._graph import DependencyGraph
from ._memo.memoize import Memoized, memoize
from ._paths import manager_directory, validate_cache_name
from ._persist.bounds import BOUND_OPTIONS, BoundedCache, bound_options, bounded_class
from ._persist.hooks import check_hook
from ._process import lifecycle as _lifecycle
from ._stores.api import ClosableStore, JournalStore, Store, StoreFactory, supports_events
from ._stores.generations import STALE
from ._stores.pickle import PickleStore, resolve_signing_key
from ._stores.redis import REDIS_URL_ENV, RedisStore
from .autosync import AutoSyncCache
from .cachewrap import (
    HOOK_NAMES,
    CacheSteps,
    CacheWrap,
    NonPersistentCache,
    PersistentCache,
    _accepted_keywords,
    check_keywords,
)
from .errors import CacheNotRegisteredError, DependencyCycleError, ManagerClosedError

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self

    from ._stores.api import BuilderLocking, EventStore, UsageReporting, Verifying

    def _both_keep_journals(a: PickleStore, b: RedisStore) -> tuple[JournalStore, JournalStore]:
        """(Never called: mypy checks that both stores implement the journal interface.)"""
        return a, b

    def _optional_capabilities(
        a: PickleStore, b: RedisStore
    ) -> tuple[Verifying, UsageReporting, EventStore, BuilderLocking]:
        """(Never called: mypy checks the optional capabilities each store declares.)"""
        return a, a, b, b

    def _both_send_events(a: PickleStore, b: RedisStore) -> tuple[EventStore, EventStore]:
        """(Never called: mypy checks that both stores tell other processes' invalidations.)"""
        return a, b


__all__ = ["CacheManager", "get_cache_manager"]

logger = logging.getLogger("cacheman")

#: Seconds the event thread waits for a cache another thread is using before it marks
#: the cache stale instead (it then catches up at its next load, save or refresh).
EVENT_LOCK_WAIT = 1.0

P = ParamSpec("P")
R = TypeVar("R")


def get_cache_manager(
    manager_name: str = _registry.DEFAULT_MANAGER_NAME,
    base_cache_directory: str | os.PathLike[str] | None = None,
    *,
    signing_key: bytes | str | None = None,
) -> CacheManager:
    """Return the process's one manager called ``manager_name``, creating it on first use.

    ``base_cache_directory`` only matters on that first call; later calls
    return the existing manager whatever they pass.  A ``signing_key``, when
    given, is set on the manager whichever call it comes with (see
    :class:`CacheManager`).

    >>> import tempfile
    >>> manager = get_cache_manager("doc_example", base_cache_directory=tempfile.mkdtemp())
    >>> manager is get_cache_manager("doc_example")
    True
    """
    base = None if base_cache_directory is None else os.fspath(base_cache_directory)
    manager = _registry.get_or_create(validate_cache_name(manager_name, what="manager"), base)
    if signing_key is not None:
        manager.store.signing_key = resolve_signing_key(signing_key)  # type: ignore[attr-defined]
    return manager


class CacheManager:
    """A named registry of caches that share a directory and a dependency graph.

    Caches are saved under ``<base>/<manager name>/``, where the base is
    ``base_cache_directory``, else ``$CACHEMAN_DIR``, else the platform's user
    cache directory.  Building a manager does no I/O.  On a store with
    invalidation events (Redis) the manager subscribes to them when its first
    cache is registered: when another process invalidates or resets a cache,
    this process reloads its copy and resets the caches derived from it (see
    :meth:`_on_store_event`).

    ``store`` replaces the pickle files with another store (for example a
    ``RedisStore``); the manager calls ``store.bind(manager_name, signing_key)``
    and keeps what it returns.

    With ``signing_key`` (else ``$CACHEMAN_SIGNING_KEY``), every file the
    manager's store writes carries an HMAC-SHA256 of its contents, checked
    before anything is unpickled; a file without a valid one is refused with
    :class:`~cacheman.errors.SignatureMismatchError`.

    >>> import tempfile
    >>> manager = CacheManager("doc_manager", tempfile.mkdtemp())
    >>> squares = manager.register_cache("squares")
    >>> squares[4] = 16
    >>> squares.save()
    >>> manager.reload_cache("squares")
    {4: 16}
    >>> manager.deregister_all_caches()
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # A misspelt keyword (``base_cache_directry=``) gets a "did you mean".
        if kwargs:
            accepted = list(inspect.signature(cls.__init__).parameters)[1:]
            call = f"{cls.__name__}({args[0]!r})" if args else f"{cls.__name__}()"
            check_keywords(call, kwargs, accepted, hooks=False)
        return super().__new__(cls)

    def __init__(
        self,
        manager_name: str = _registry.DEFAULT_MANAGER_NAME,
        base_cache_directory: str | os.PathLike[str] | None = None,
        *,
        signing_key: bytes | str | None = None,
        store: StoreFactory | None = None,
    ) -> None:
        self.name = validate_cache_name(manager_name, what="manager")
        self.cache_directory: Path = manager_directory(self.name, base_cache_directory)
        key = resolve_signing_key(signing_key)
        if store is None and os.environ.get(REDIS_URL_ENV):
            store = RedisStore(os.environ[REDIS_URL_ENV])
        self.store: Store = (
            PickleStore(self.cache_directory, signing_key=key, manager=self.name)
            if store is None
            else store.bind(self.name, key)
        )
        self._caches: dict[str, CacheWrap] = {}
        self._graph = DependencyGraph()
        self._edges_read = False  # the edges persisted by other processes, merged lazily
        self._lock = threading.RLock()
        self._closed = False
        # The store is the manager's own unless ``store.bind`` handed back a shared one.
        factory: object = store
        self._owns_store = self.store is not factory
        self._unsubscribe: Callable[[], object] | None = None
        _registry.add(self)
        _live_managers[next(_manager_numbers)] = self
        self._subscribed = not supports_events(self.store)  # nothing to subscribe to

    def __repr__(self) -> str:
        where = str(self.cache_directory)
        state = "closed" if self._closed else f"{len(self._caches)} caches"
        return f"<CacheManager {self.name!r} at {where!r}: {state}>"

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Save what the caches hold, then let go of them; the manager is then unusable.

        Each registered cache writes its changes since its last save (as at
        interpreter exit), parents first; then every cache is deregistered, the
        manager unsubscribes from its store's events, and the store it made
        closes its connections and listener thread (a Redis store).  The cache
        objects stay usable as plain dicts, but no longer load or save; the
        manager is forgotten by :func:`get_cache_manager`, which builds a new one
        next time.  Any further use of the manager raises
        :class:`~cacheman.errors.ManagerClosedError`.  Closing twice does nothing.

        If a save raises, the exception propagates and the manager stays open,
        every cache still registered: nothing unsaved is dropped (fix the cause
        and close again).  Stop other threads' use of the caches first: what
        they change after a cache's save is not saved.

        >>> import tempfile
        >>> manager = CacheManager("doc_close", tempfile.mkdtemp())
        >>> manager.register_cache("squares")[3] = 9
        >>> manager.close()
        >>> CacheManager("doc_close", manager.cache_directory.parent).retrieve_cache("squares")
        {3: 9}
        """
        if self._closed:
            return
        # Not under the manager's lock: a save takes the cache's lock, and a thread
        # holding a cache's lock may be waiting for the manager's (a load asks for
        # the cache's parents).
        for cache in self._all_in_order():
            cache._save_changes_now()
        with self._lock:
            if self._closed:
                return  # another thread closed it meanwhile
            self._closed = True
            for cache in list(self._caches.values()):
                self.detach(cache)
            self._graph.clear()
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        if self._owns_store and isinstance(self.store, ClosableStore):
            self.store.close()
        _registry.discard(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError(
                f"manager {self.name!r} is closed: build a new one "
                "(get_cache_manager or CacheManager) to use its caches again"
            )

    def __del__(self) -> None:
        # The program let go of this manager and of all its caches.  A finalizer
        # may run anywhere the collector runs, so it does no I/O: if a cache may
        # hold changes to save, the manager is kept (resurrected) for the exit
        # flush, which saves them; otherwise it is freed.
        try:
            if not self._closed and self._may_need_saving():
                _kept_for_exit.append(self)
                for cache in list(self._caches.values()):
                    cache._revived()
        except Exception:  # at interpreter shutdown, module globals may be gone already
            pass

    def _may_need_saving(self) -> bool:
        """Whether the exit flush might write anything for one of the caches (no I/O)."""
        return any(cache._may_need_saving() for cache in list(self._caches.values()))

    # -- registering -------------------------------------------------------------

    def register_cache(
        self,
        cache_name: str,
        contents: Mapping[Any, Any] | None = None,
        *,
        ttl: float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
    ) -> AutoSyncCache:
        """Register a persistent, auto-saving cache (the manager's pickle store).

        Without ``contents`` the saved copy is loaded now; with ``contents``
        the cache starts with them and the next save replaces the saved copy.
        ``ttl`` (seconds), ``max_entries`` and ``max_bytes`` make it a
        :class:`~cacheman._persist.bounds.BoundedCache` (expiry, and
        least-recently-used eviction); see the "Expiry and bounds" page.
        """
        if ttl is None and max_entries is None and max_bytes is None:
            return AutoSyncCache(cache_name, cache_manager=self, contents=contents)
        return BoundedCache(
            cache_name,
            cache_manager=self,
            contents=contents,
            ttl=ttl,
            max_entries=max_entries,
            max_bytes=max_bytes,
        )

    def register_custom_cache(
        self,
        cache_name: str,
        contents: Mapping[Any, Any] | None = None,
        persistent: bool = True,
        autosync: bool = True,
        **kwargs: Any,
    ) -> CacheWrap:
        """Register a cache of the kind the flags choose; ``kwargs`` go to its constructor.

        ``persistent=False`` gives a :class:`~cacheman.cachewrap.NonPersistentCache`
        (``autosync`` is then ignored: there is nothing to save); ``autosync=False``
        a :class:`~cacheman.cachewrap.PersistentCache` that saves only when asked
        (``save()``, a ``with`` block, interpreter exit).  ``ttl``,
        ``max_entries`` or ``max_bytes`` make a persistent cache bounded.
        """
        cache_class: type[CacheWrap]
        if not persistent:
            cache_class = NonPersistentCache
        elif autosync:
            cache_class = AutoSyncCache
        else:
            cache_class = PersistentCache
        if bound_options(kwargs) and persistent:
            cache_class = bounded_class(AutoSyncCache if autosync else PersistentCache)
        else:
            for option in BOUND_OPTIONS:  # None: the same as not given
                if kwargs.get(option, 0) is None:
                    del kwargs[option]
        if kwargs:
            accepted = _accepted_keywords(cache_class)
            if accepted is not None:
                accepted = accepted | {"persistent", "autosync"}
            check_keywords(f"register_custom_cache({cache_name!r})", kwargs, accepted)
        return cache_class(cache_name, cache_manager=self, contents=contents, **kwargs)

    def retrieve_cache(
        self, cache_name: str, contents: Mapping[Any, Any] | None = None
    ) -> CacheWrap:
        """Return the cache called ``cache_name``, registering it (as ``register_cache``) if new."""
        self._check_open()
        with self._lock:
            cache = self._caches.get(cache_name)
            return cache if cache is not None else self.register_cache(cache_name, contents)

    def retrieve_raise(self, cache_name: str) -> CacheWrap:
        """Return the cache called ``cache_name``; raise ``KeyError`` if it is not registered."""
        self._check_open()
        try:
            return self._caches[cache_name]
        except KeyError:
            raise CacheNotRegisteredError(
                f"no cache named {cache_name!r} is registered with manager {self.name!r}; "
                "register it first (register_cache) or use retrieve_cache"
            ) from None

    def cache_registered(self, cache_name: str) -> bool:
        """Tell whether a cache called ``cache_name`` is registered."""
        return cache_name in self._caches

    def cache_names(self) -> list[str]:
        """Names of the registered caches, in registration order."""
        return list(self._caches)

    def deregister_cache(self, cache_name: str, apply_to_dependents: bool = False) -> None:
        """Forget a cache (and with ``apply_to_dependents`` its derived caches).

        Nothing is saved or deleted: save first if the edits matter.  The
        cache's dependency edges are forgotten too.
        """
        cache = self.retrieve_raise(cache_name)
        with self._lock:
            for each in self._cascade(cache, apply_to_dependents):
                self.detach(each)
                self._graph.remove_node(each.name)

    def deregister_all_caches(self) -> None:
        """Forget every cache and every dependency edge."""
        with self._lock:
            for cache in list(self._caches.values()):
                self.detach(cache)
            self._graph.clear()

    # -- hooks ----------------------------------------------------------------------

    # Each register_<hook> returns the cache, registering the name first if it is
    # new (as retrieve_cache does): 2.x code chains on it, ``register_loader(n, f).load()``.

    def _set_hook(
        self, cache_name: str, hook: str, function: Callable[..., Any] | None
    ) -> CacheWrap:
        assert hook in HOOK_NAMES
        check_hook(cache_name, hook, function)
        cache = self.retrieve_cache(cache_name)
        setattr(cache, hook, function)
        return cache

    def register_loader(self, cache_name: str, loader: Callable[[str], Any]) -> CacheWrap:
        """Set ``loader(name) -> Mapping | None``; it is used from the next load on."""
        return self._set_hook(cache_name, "loader", loader)

    def register_saver(self, cache_name: str, saver: Callable[[str, Any], Any]) -> CacheWrap:
        """Set ``saver(name, contents)``; it is used from the next save on."""
        return self._set_hook(cache_name, "saver", saver)

    def register_builder(self, cache_name: str, builder: Callable[[str], Any]) -> CacheWrap:
        """Set ``builder(name) -> Mapping``, run when a load finds nothing valid."""
        return self._set_hook(cache_name, "builder", builder)

    def register_deleter(self, cache_name: str, deleter: Callable[[str], Any]) -> CacheWrap:
        """Set ``deleter(name)``, run by ``delete_saved_content``."""
        return self._set_hook(cache_name, "deleter", deleter)

    def register_validator(self, cache_name: str, validator: Callable[[Any], Any]) -> CacheWrap:
        """Set ``validator(contents) -> bool``, run after each load."""
        return self._set_hook(cache_name, "validator", validator)

    def register_pre_processor(
        self, cache_name: str, pre_processor: Callable[[Any], Any]
    ) -> CacheWrap:
        """Set ``pre_processor(contents) -> contents | None``, run on a copy before each save."""
        return self._set_hook(cache_name, "pre_processor", pre_processor)

    def register_post_processor(
        self, cache_name: str, post_processor: Callable[[Any], Any]
    ) -> CacheWrap:
        """Set ``post_processor(contents) -> contents | None``, run after each load or build."""
        return self._set_hook(cache_name, "post_processor", post_processor)

    # -- the dependency graph ---------------------------------------------------------

    def register_dependent_cache(
        self, cache_name: str, dependent_cache_name: str
    ) -> CacheWrap | None:
        """Record that ``dependent_cache_name`` is derived from ``cache_name``.

        Either may be registered later: the edge is kept by name, and declaring
        it registers neither cache.  Returns the cache ``cache_name`` if it is
        registered (as 2.x did), else None.  Raises
        :class:`~cacheman.errors.DependencyCycleError` (a ``ValueError``) naming
        the cycle if the edge would close one.
        """
        self._check_open()
        validate_cache_name(cache_name)
        validate_cache_name(dependent_cache_name)
        self._merge_persisted_edges()
        with self._lock:
            known = dependent_cache_name in self._graph.children(cache_name)
            self._graph.add_edge(cache_name, dependent_cache_name)
        if not known:
            # Saved beside the caches, so that a program that never declares this
            # edge (a script that only invalidates the parent) still follows it.
            self.store.add_edges([(cache_name, dependent_cache_name)])
        derived = self._caches.get(dependent_cache_name)
        if derived is not None:
            derived._parent_declared(cache_name)
        return self._caches.get(cache_name)

    def parents_of(self, cache_name: str) -> list[str]:
        """The names ``cache_name`` is directly derived from, as declared by any process."""
        self._merge_persisted_edges()
        return self._graph.parents(cache_name)

    def in_graph(self, cache_name: str) -> bool:
        """Whether any dependency edge, declared by any process, touches ``cache_name``."""
        self._merge_persisted_edges()
        graph = self._graph
        return bool(graph.parents(cache_name) or graph.children(cache_name))

    def _merge_persisted_edges(self, again: bool = False) -> None:
        """Add the edges other processes declared (read once, or ``again``) to the graph."""
        if self._edges_read and not again:
            return
        edges = self.store.read_edges()
        with self._lock:
            self._edges_read = True
            for parent, child in edges:
                if child in self._graph.children(parent):
                    continue
                try:
                    self._graph.add_edge(parent, child)
                except DependencyCycleError:
                    # An edge saved by an older version of the program, contradicted
                    # by one this program declared: this program's wins.
                    logger.debug(
                        "ignoring the saved edge %r -> %r: it closes a cycle", parent, child
                    )

    @overload
    def memoize(self, name: Callable[P, R], /) -> Memoized[P, R]: ...

    @overload
    def memoize(
        self,
        name: str | None = None,
        *,
        depends_on: Iterable[Memoized[..., Any] | str] = (),
        version: object = None,
        key: Callable[..., object] | None = None,
        check_code: bool = True,
        lease: bool | Literal["auto"] = "auto",
        lease_timeout: float = 60.0,
        ttl: float | timedelta | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        stale_after: float | timedelta | None = None,
        refresh: Literal["background", "wait"] = "background",
    ) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...

    def memoize(
        self,
        name: str | Callable[P, R] | None = None,
        *,
        depends_on: Iterable[Memoized[..., Any] | str] = (),
        version: object = None,
        key: Callable[..., object] | None = None,
        check_code: bool = True,
        lease: bool | Literal["auto"] = "auto",
        lease_timeout: float = 60.0,
        ttl: float | timedelta | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        stale_after: float | timedelta | None = None,
        refresh: Literal["background", "wait"] = "background",
    ) -> Any:
        """Decorate a function so its results persist in a cache of this manager.

        ``name`` (default ``<module>.<qualname>``) names the cache.  The cache
        resets, with every cache derived from it, when the function's code
        (unless ``check_code=False``), ``version`` or a dependency in
        ``depends_on`` (memoized functions, cache names) changes.  ``key``
        replaces the default key of a call (a digest of its arguments).
        ``lease`` (True, False, or ``"auto"``: once a computation took 10 ms)
        makes one process at a time compute a key, the others waiting up to
        ``lease_timeout`` seconds for its result.  ``ttl``, ``max_entries``
        and ``max_bytes`` bound the results as for a cache; a result older
        than ``stale_after`` is served while a thread computes a fresh one
        (``refresh="wait"``: the call computes it).  ``async def``
        functions are memoized too.  See
        :class:`~cacheman._memo.memoize.Memoized` and the memoize page of the docs.

        >>> manager = CacheManager("doc_memoize")
        >>> @manager.memoize
        ... def square(x):
        ...     return x * x
        >>> square(4), square(4), square.stats
        (16, 16, MemoStats(hits=1, misses=1, saves=0))
        >>> manager.deregister_all_caches()
        """
        return memoize(
            self,
            name,
            depends_on=depends_on,
            version=version,
            key=key,
            check_code=check_code,
            lease=lease,
            lease_timeout=lease_timeout,
            ttl=ttl,
            max_entries=max_entries,
            max_bytes=max_bytes,
            stale_after=stale_after,
            refresh=refresh,
        )

    def dependency_graph(self) -> DependencyGraph:
        """The live dependency graph; ``.to_dot()`` and ``.to_mermaid()`` export it."""
        return self._graph

    # -- operations on one cache and its derived caches -------------------------------
    #
    # Each takes a cache's name or the cache itself (the cache's own methods,
    # ``cache.save()`` and the rest, come here with ``self``, registered or not),
    # and returns the cache, as 2.x did: ``cache = manager.reload_cache(name)``.

    def _resolve(self, cache: str | CacheWrap) -> CacheWrap:
        self._check_open()
        return cache if isinstance(cache, CacheWrap) else self.retrieve_raise(cache)

    def save_cache_contents(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = False
    ) -> CacheWrap:
        """Save one cache (and its derived caches with ``apply_to_dependents``); return it."""
        cache = self._resolve(cache_name)
        for each in self._steps(cache, apply_to_dependents):
            each._save_self()
        return cache

    def reload_cache(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = False
    ) -> CacheWrap:
        """Reload one cache from its saved copy, dropping unsaved edits; return it.

        With ``apply_to_dependents``, every cache derived from it is reloaded
        too, parents first.  An exception from a hook propagates and leaves
        that cache as it was.
        """
        cache = self._resolve(cache_name)
        for each in self._steps(cache, apply_to_dependents):
            each._load_self()
        return cache

    def reload_or_rebuild_cache(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = False
    ) -> CacheWrap:
        """Reload one cache, building it if nothing valid is saved; return it."""
        return self.reload_cache(cache_name, apply_to_dependents)

    def invalidate_cache(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = True
    ) -> CacheWrap:
        """Reload one cache and reset every cache derived from it; return the cache."""
        cache = self._resolve(cache_name)
        cache._load_self()
        if apply_to_dependents:
            self._forget_unregistered_downstream(cache.name)
        cache._bump_generation()
        if apply_to_dependents:
            self._rebuild_registered_downstream(cache.name)
        return cache

    def invalidate_and_rebuild_cache(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = True
    ) -> CacheWrap:
        """Reset one cache (clear, delete saved copy, build) and every cache derived from it.

        Returns the cache.
        """
        cache = self._resolve(cache_name)
        if apply_to_dependents:
            self._forget_unregistered_downstream(cache.name)
        cache._reset_self()
        if apply_to_dependents:
            self._rebuild_registered_downstream(cache.name)
        return cache

    def delete_saved_cache_content(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = True
    ) -> CacheWrap | None:
        """Delete the saved copy of one cache (and of every cache derived from it).

        The contents in memory stay.  Returns the cache; for a name that is not
        registered in this run, its copy in the manager's store is deleted
        (a cache saved by an earlier run, see :meth:`saved_cache_names`) and
        None is returned.  Derived caches that are not registered lose their
        copy in the manager's store too.
        """
        self._check_open()
        if isinstance(cache_name, str) and not self.cache_registered(cache_name):
            self._delete_unregistered(validate_cache_name(cache_name))
            if apply_to_dependents:
                self._delete_saved_downstream(cache_name)
            return None
        cache = self._resolve(cache_name)
        cache._delete_saved_self()
        if apply_to_dependents:
            self._delete_saved_downstream(cache.name)
        return cache

    def saved_cache_names(self) -> list[str]:
        """Names of the caches with a copy saved in the manager's store, sorted.

        Registered or not: this asks the store (for the pickle store, it lists
        the directory), so it also shows what earlier runs, other processes or
        CacheMan 2.x left there.  Metadata alone (such as the mark that a
        deleted cache must be rebuilt) is not a saved copy.  A
        :class:`~cacheman.csvcache.CSVCache` keeps its own file and is not listed.
        """
        self._check_open()
        store = self.store
        return [name for name in store.names() if store.exists(name)]

    # -- short names: each is exactly its 2.x name -----------------------------------

    def invalidate(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = True
    ) -> CacheWrap:
        """Reload a cache and reset every cache derived from it: :meth:`invalidate_cache`."""
        return self.invalidate_cache(cache_name, apply_to_dependents)

    def save(
        self, cache_name: str | CacheWrap | None = None, apply_to_dependents: bool = False
    ) -> CacheWrap | None:
        """Save one cache (:meth:`save_cache_contents`), or every one with no name.

        With no name, the same as :meth:`save_all_cache_contents` (and returns None).
        """
        if cache_name is None:
            self.save_all_cache_contents()
            return None
        return self.save_cache_contents(cache_name, apply_to_dependents)

    def reload(self, cache_name: str | CacheWrap, apply_to_dependents: bool = False) -> CacheWrap:
        """Reload a cache from its saved copy, dropping unsaved edits: :meth:`reload_cache`."""
        return self.reload_cache(cache_name, apply_to_dependents)

    def delete(
        self, cache_name: str | CacheWrap, apply_to_dependents: bool = True
    ) -> CacheWrap | None:
        """Delete a cache's saved copy (contents stay): :meth:`delete_saved_cache_content`."""
        return self.delete_saved_cache_content(cache_name, apply_to_dependents)

    # -- operations on every cache ---------------------------------------------------

    def save_all_cache_contents(self) -> None:
        """Save every registered cache."""
        for cache in self._all_in_order():
            cache._save_self()

    def reload_all_caches(self) -> None:
        """Reload every registered cache, parents first."""
        for cache in self._all_in_order():
            cache._load_self()

    def reload_or_rebuild_all_caches(self) -> None:
        """Reload every registered cache, building those with nothing valid saved."""
        self.reload_all_caches()

    def invalidate_and_rebuild_all_caches(self) -> None:
        """Reset every registered cache: clear, delete the saved copy, build."""
        for cache in self._all_in_order():
            cache._reset_self()

    def delete_all_saved_cache_contents(self) -> None:
        """Delete the saved copy of every registered cache (contents in memory stay)."""
        for cache in self._all_in_order():
            cache._delete_saved_self()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Saves and stays open, as in 2.x: a manager is usually process-wide (see close()).
        if not self._closed:
            self.save_all_cache_contents()

    # -- used by the caches' constructors ------------------------------------------------

    def attach(self, cache: CacheWrap) -> None:
        """Register ``cache`` under its name, replacing (after saving) any older one.

        Called by the cache's constructor; use ``register_cache`` or a cache
        class to make a cache.
        """
        with self._lock:
            self._check_open()
            if not self._subscribed:
                # Before the cache loads, so no event about what it loads is missed.
                self._subscribed = True
                self._unsubscribe = _subscribe(self, self.store)
            previous = self._caches.get(cache.name)
            if previous is not None and previous is not cache:
                # Re-registering a name (a re-run notebook cell, say) must not lose
                # the old object's edits: save them so the new cache loads them.
                logger.debug("cache %r re-registered; saving the previous object first", cache.name)
                previous._save_self()
                previous._released()
            self._caches[cache.name] = cache

    def detach(self, cache: CacheWrap) -> None:
        """Forget ``cache`` if it is the one registered under its name (nothing is saved).

        Its autosync rules stop: only a registered cache saves by itself.
        """
        with self._lock:
            if self._caches.get(cache.name) is cache:
                del self._caches[cache.name]
                cache._released()

    def holds(self, cache: CacheWrap) -> bool:
        """Whether ``cache`` is the object registered under its name."""
        return self._caches.get(cache.name) is cache

    # -- the cascades ------------------------------------------------------------------------

    def _cascade(self, cache: CacheWrap, apply_to_dependents: bool) -> list[CacheWrap]:
        """``cache`` and, if asked, every registered cache derived from it, parents first."""
        if not apply_to_dependents:
            return [cache]
        with self._lock:
            derived = [self._caches.get(name) for name in self._graph.downstream(cache.name)]
        return [cache, *(each for each in derived if each is not None)]

    def _steps(self, cache: CacheWrap, apply_to_dependents: bool) -> list[CacheSteps]:
        """What :meth:`_cascade` reaches, seen through the steps the manager may drive."""
        return list(self._cascade(cache, apply_to_dependents))

    def _all_in_order(self) -> list[CacheSteps]:
        """Every registered cache, each once, parents before the caches derived from them."""
        self._check_open()
        with self._lock:
            order = self._graph.topological(self._caches)
            return [self._caches[name] for name in order if name in self._caches]

    def _downstream(self, cache_name: str) -> list[tuple[str, CacheSteps | None]]:
        """Each cache derived from ``cache_name``, parents first: its name, and it if registered."""
        with self._lock:
            return [(name, self._caches.get(name)) for name in self._graph.downstream(cache_name)]

    def _forget_unregistered_downstream(self, cache_name: str) -> None:
        """Before ``cache_name`` gets its new generation: derived caches not registered here
        lose their saved copy (and are marked stale).

        Before, not after: once the generation is announced, another process may
        rebuild one of them, and this cascade must not delete what it rebuilt.
        """
        self._merge_persisted_edges(again=True)
        for name, cache in self._downstream(cache_name):
            if cache is None:
                self._delete_unregistered(name)

    def _rebuild_registered_downstream(self, cache_name: str) -> None:
        """After ``cache_name`` got its new generation: rebuild each registered derived cache,
        parents first (or load it, where another process already rebuilt it)."""
        for _name, cache in self._downstream(cache_name):
            if cache is not None:
                cache._parent_moved_on()

    def _delete_saved_downstream(self, cache_name: str) -> None:
        """Delete the saved copy of each cache derived from ``cache_name``, registered or not."""
        self._merge_persisted_edges(again=True)
        for name, cache in self._downstream(cache_name):
            if cache is not None:
                cache._delete_saved_self()
            else:
                self._delete_unregistered(name)

    def _delete_unregistered(self, cache_name: str) -> None:
        # A derived cache not registered in this run may still have a copy saved by
        # an earlier run; left in place, it would come back stale when registered.
        # Only the default store is known for it, so that is where it is deleted; its
        # own store may be another (a CSV file), so it is also marked stale: whoever
        # registers it next resets it with its own deleter and builder.
        self.store.delete(cache_name)
        self.store.update_meta(cache_name, **{STALE: True})

    def _on_store_event(self, cache_name: str | None, generation: str | None) -> None:
        """Another process gave ``cache_name`` a new generation: bring this process up to date.

        Runs on the store's event thread.  The cache, if registered, is reloaded
        and every registered cache derived from it (edges of any process
        included) is reloaded too, parents first, which the generation check
        turns into a reset where needed: what ``invalidate`` did in the other
        process.  This process's own changes are ignored (it has cascaded
        already).  ``(None, None)`` says events may have been missed: every
        cache is marked stale, and reloads at its next load, save or refresh.
        Errors are logged, never raised into the event thread.
        """
        try:
            if cache_name is None:
                self._check_all_lineage()
                return
            store = self.store
            if supports_events(store) and store.wrote_generation(cache_name, generation):
                return
            self._merge_persisted_edges(again=True)
            reached: list[tuple[str, CacheSteps | None]] = [
                (cache_name, self._caches.get(cache_name)),
                *self._downstream(cache_name),
            ]
        except Exception:
            logger.exception("manager %r: handling an event about %r failed", self.name, cache_name)
            return
        for name, each in reached:
            if each is None:
                continue
            try:
                each._catch_up(name != cache_name, EVENT_LOCK_WAIT)
            except Exception:
                logger.exception(
                    "cache %r: catching up after another process changed %r failed; "
                    "it reloads at its next use",
                    name,
                    cache_name,
                )
                each._mark_stale()

    def _check_all_lineage(self) -> None:
        """The full check, when events from other processes may have been missed.

        Run on a lost or restored Redis connection, a replaced pickle-store event
        log (any thread; errors are logged, never raised).  Parents first, every
        registered cache whose generation moved on in the store is brought up to
        date now, and every derived cache whose parents moved on is rebuilt (or
        loaded, where another process rebuilt it), as the events would have done;
        the others take in what other processes appended at their next load, save
        or refresh.  A cache busy for more than :data:`EVENT_LOCK_WAIT` seconds
        does all of it then.
        """
        try:
            self._merge_persisted_edges(again=True)
            caches = self._all_in_order()
        except Exception:
            logger.exception("manager %r: the full check after missed events failed", self.name)
            with self._lock:
                caches = list(self._caches.values())
            for cache in caches:
                cache._mark_stale()
            return
        for cache in caches:
            try:
                cache._check_generation(EVENT_LOCK_WAIT)
            except Exception:
                logger.exception(
                    "cache %r: the check after missed events failed; it reloads at its next use",
                    cache.name,
                )
                cache._mark_stale()

    def _save_at_exit(self) -> None:
        if self._closed:
            return
        for cache in self._all_in_order():
            try:
                cache._save_at_exit()
            except Exception:
                logger.exception("cache %r: saving at interpreter exit failed", cache.name)


# Every live manager, oldest first, held weakly: the exit flush saves each.
_live_managers: weakref.WeakValueDictionary[int, CacheManager] = weakref.WeakValueDictionary()
_manager_numbers = itertools.count()
# Managers the program dropped while a cache of theirs might hold changes to save
# (see CacheManager.__del__): kept for the exit flush.
_kept_for_exit: list[CacheManager] = []


def _subscribe(manager: CacheManager, store: Any) -> Callable[[], object]:
    """Subscribe ``manager`` to the events of its ``store``, without keeping it alive.

    Returns the call that unsubscribes (made anyway when the manager is collected).
    """
    reference = weakref.ref(manager)

    def on_event(cache_name: str | None, generation: str | None) -> None:
        alive = reference()
        if alive is not None:
            alive._on_store_event(cache_name, generation)

    store.subscribe(on_event)
    unsubscribe = weakref.finalize(manager, store.unsubscribe, on_event)
    unsubscribe.atexit = False
    return unsubscribe


def _save_every_manager_at_exit() -> None:
    """Save what each manager holds as the process ends (never from ``__del__``)."""
    with _log.exit_flush():
        for manager in dict.fromkeys([*_live_managers.values(), *_kept_for_exit]):
            manager._save_at_exit()


_lifecycle.on_exit(_save_every_manager_at_exit)


def _build_manager(name: str, base_cache_directory: str | None) -> CacheManager:
    return CacheManager(name, base_cache_directory)


_registry.set_factory(_build_manager)
