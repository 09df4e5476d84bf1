"""The cache classes: :class:`CacheWrap` (a ``dict`` with a lifecycle) and its kinds.

A cache *is* a ``dict``: reads (``c[k]``, ``c.get``, ``in``, iteration, ``len``)
are inherited untouched, so they cost what they cost on any dict subclass.
Everything CacheMan adds happens in the lifecycle methods (``load``, ``save``,
``invalidate`` ...), which run the user's hooks and are serialised per cache by
a re-entrant lock.

A cache does one cache's work.  Its public lifecycle methods hand the call to
its manager, which decides which caches an operation reaches (the cascade to
derived caches, parents first) and drives each of them through the
single-cache steps this module declares for it (:class:`CacheSteps`).  Its
background saves are :mod:`cacheman._background`'s, through the interface that
module declares (``SaveTarget``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import _background, _lifecycle, _registry
from ._paths import validate_cache_name

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from .cacher import CacheManager

__all__ = [
    "Builder",
    "CacheWrap",
    "Deleter",
    "Loader",
    "NonPersistentCache",
    "PersistentCache",
    "PostProcessor",
    "PreProcessor",
    "Saver",
    "Validator",
]

logger = logging.getLogger("cacheman")

Loader = Callable[[str], "Mapping[Any, Any] | None"]
Saver = Callable[[str, "Mapping[Any, Any]"], object]
Builder = Callable[[str], "Mapping[Any, Any] | None"]
Deleter = Callable[[str], object]
Validator = Callable[["Mapping[Any, Any]"], object]
PreProcessor = Callable[[dict[Any, Any]], "Mapping[Any, Any] | None"]
PostProcessor = Callable[[dict[Any, Any]], "Mapping[Any, Any] | None"]

#: The names of the seven hooks, in the order the docs list them.
HOOK_NAMES = (
    "loader",
    "saver",
    "builder",
    "deleter",
    "validator",
    "pre_processor",
    "post_processor",
)


def _as_mapping(
    cache_name: str, hook: str, result: object, *, fresh: bool = False
) -> dict[Any, Any] | None:
    """Check what a loader/builder/processor returned; copy it into a fresh dict.

    ``fresh`` says the result is a new plain dict nobody else holds (the store's
    own loader returns one), so the copy, a tenth of a large load, is skipped.
    """
    if result is None:
        return None
    if not isinstance(result, Mapping):
        raise TypeError(
            f"cache {cache_name!r}: the {hook} must return a mapping or None, "
            f"not {type(result).__name__}"
        )
    if fresh and type(result) is dict:
        return result
    return dict(result)


class CacheWrap(dict[Any, Any]):
    """A named ``dict`` registered with a :class:`~cacheman.cacher.CacheManager`.

    ``CacheWrap`` itself is persistent only through the hooks it is given; use
    :class:`PersistentCache` for the manager's pickle store, or
    :class:`NonPersistentCache` for a cache that never touches disk.

    Built without ``contents``, the cache loads at once (saved copy, else the
    builder, else empty); built with ``contents``, it starts with those and
    does not load (the 2.x behaviour: the next save replaces the saved copy).

    >>> from cacheman import NonPersistentCache
    >>> squares = NonPersistentCache("squares", builder=lambda name: {2: 4})
    >>> squares[3] = 9
    >>> squares
    {2: 4, 3: 9}
    >>> isinstance(squares, dict)
    True
    >>> squares.manager.deregister_cache("squares")
    """

    # __slots__ keeps the per-cache overhead to a handful of pointers and, more
    # importantly, adds nothing to the dict's own item storage.
    __slots__ = (
        "__weakref__",
        "_lock",
        "_manager",
        "_name",
        "async_save",
        "async_timeout",
        "builder",
        "deleter",
        "loader",
        "post_processor",
        "pre_processor",
        "save_on_blank_cache",
        "saver",
        "validator",
    )

    def __init__(
        self,
        cache_name: str,
        cache_manager: CacheManager | None = None,
        contents: Mapping[Any, Any] | None = None,
        dependents: Iterable[str | CacheWrap] | None = None,
        loader: Loader | None = None,
        saver: Saver | None = None,
        builder: Builder | None = None,
        deleter: Deleter | None = None,
        validator: Validator | None = None,
        pre_processor: PreProcessor | None = None,
        post_processor: PostProcessor | None = None,
        async_save: bool = False,
        async_timeout: float = 60,
        save_on_blank_cache: bool = True,
    ) -> None:
        super().__init__()
        self._name = validate_cache_name(cache_name)
        self._manager = cache_manager or _registry.get_or_create(_registry.DEFAULT_MANAGER_NAME)
        self._lock = threading.RLock()
        self.loader = loader
        self.saver = saver
        self.builder = builder
        self.deleter = deleter
        self.validator = validator
        self.pre_processor = pre_processor
        self.post_processor = post_processor
        self.async_save = async_save
        self.async_timeout = async_timeout
        self.save_on_blank_cache = save_on_blank_cache
        if contents is not None and not isinstance(contents, Mapping):
            raise TypeError(
                f"cache {cache_name!r}: contents must be a mapping, not {type(contents).__name__}"
            )
        self._manager.attach(self)
        if self._resolved("saver") is not None:
            # A cache that saves has edits a SIGTERM would otherwise drop.
            _lifecycle.install_signal_handlers()
        try:
            for dependent in dependents or ():
                self.add_dependent(dependent)
            if contents is None:
                self._load_self()
            else:
                # Through self.update, so an autosync cache counts the initial
                # contents as edits and saves them (they replace the saved copy).
                self.update(contents)
        except BaseException:
            self._manager.detach(self)
            raise

    # -- identity -------------------------------------------------------------

    @property
    def name(self) -> str:
        """The cache's name, unique within its manager."""
        return self._name

    @property
    def manager(self) -> CacheManager:
        """The manager this cache is registered with."""
        return self._manager

    @property
    def contents(self) -> Self:
        """The cache itself (2.x code reads ``cache.contents``).

        Assigning a mapping replaces the items in place, so references to the
        cache stay valid: ``cache.contents = {'a': 1}``.
        """
        return self

    @contents.setter
    def contents(self, new_contents: Mapping[Any, Any] | None) -> None:
        replacement = _as_mapping(self._name, "contents assignment", new_contents) or {}
        # Through self.clear/self.update so that subclasses which count edits see them.
        self.clear()
        self.update(replacement)

    @property
    def dependents(self) -> list[str]:
        """Names of the caches directly derived from this one."""
        return self._manager.dependency_graph().children(self._name)

    def add_dependent(self, dependent: str | CacheWrap) -> None:
        """Record that ``dependent`` (a cache or a name) is derived from this cache."""
        child = dependent.name if isinstance(dependent, CacheWrap) else dependent
        self._manager.register_dependent_cache(self._name, child)

    # -- pickling and copying: plain data, never the manager ------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (), None, None, iter(dict.items(self)))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> dict[Any, Any]:
        """Return a plain ``dict`` (a cache needs a name and a manager to exist)."""
        return dict.fromkeys(iterable, value)

    # -- lifecycle --------------------------------------------------------------

    def load(self, apply_to_dependents: bool = False) -> None:
        """Replace the contents with the saved copy (or the builder's, or nothing).

        Unsaved edits are dropped.  With ``apply_to_dependents``, every cache
        derived from this one is reloaded too, parents first.  An exception
        from a hook propagates and leaves that cache as it was.
        """
        self._manager.reload_cache(self, apply_to_dependents)

    def load_or_build(self, apply_to_dependents: bool = True) -> None:
        """Load the saved copy, building the contents if nothing valid is saved."""
        self._manager.reload_or_rebuild_cache(self, apply_to_dependents)

    def save(self, apply_to_dependents: bool = False) -> None:
        """Write the contents through the saver (the manager's store by default)."""
        self._manager.save_cache_contents(self, apply_to_dependents)

    def delete_saved_content(self, apply_to_dependents: bool = True) -> None:
        """Delete the saved copy (the in-memory contents stay).

        With ``apply_to_dependents``, the saved copies of every derived cache
        are deleted too, registered or not.
        """
        self._manager.delete_saved_cache_content(self, apply_to_dependents)

    def invalidate(self, apply_to_dependents: bool = True) -> None:
        """Drop unsaved edits and reload; reset every cache derived from this one.

        Resetting a derived cache clears it, deletes its saved copy and rebuilds
        it with its builder (or leaves it empty).
        """
        self._manager.invalidate_cache(self, apply_to_dependents)

    def invalidate_and_rebuild(self, apply_to_dependents: bool = True) -> None:
        """Reset this cache (clear, delete the saved copy, build) and its dependents."""
        self._manager.invalidate_and_rebuild_cache(self, apply_to_dependents)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.save()

    # -- the single-cache steps the manager drives (see CacheSteps) -------------

    def _load_self(self) -> None:
        """Replace the contents with the saved copy, else the builder's (this cache only)."""
        with self._lock:
            self._await_pending_save()
            new_contents = self._read_contents()
            if not isinstance(new_contents, _Keep):
                self._replace(new_contents)

    def _save_self(self) -> None:
        """Save this cache: in a child process with ``async_save``, else now."""
        if self.async_save:
            # A child process writes a snapshot; the caller goes on at once.
            _background.request_save(self)
        else:
            self._save_now()

    def _save_now(self) -> None:
        """Save in this thread, after any background save in flight (so it cannot land later)."""
        with self._lock:
            self._await_pending_save()
            plan = self._save_plan()
            if plan is None:
                return
            saver, mark = plan
            saver(self._name, self._prepared_for_save())
            self._saved_through(mark)

    def _reset_self(self) -> None:
        """Build anew, delete the saved copy, replace the contents (this cache only)."""
        with self._lock:
            # Build first: a builder that raises must leave the saved copy in place.
            rebuilt = self._build()
            self._delete_saved_self()
            self._replace(rebuilt)

    def _delete_saved_self(self) -> None:
        """Delete this cache's saved copy through its deleter; the contents stay."""
        with self._lock:
            self._await_pending_save()
            deleter = self._resolved("deleter")
            if deleter is not None:
                deleter(self._name)

    def _save_at_exit(self) -> None:
        """The process is ending: save what must be kept (subclasses skip clean caches)."""
        _background.stop_background_work()
        self._save_now()

    # -- what the background saver uses (_background.SaveTarget declares it) -----

    def _save_plan(self) -> tuple[Callable[..., Any], int] | None:
        """The saver to run and the edit mark it captures, or None when nothing is written.

        Every save path (in this thread, in a child, in-process fallback) starts
        here.  The mark is taken before the saver runs: edits other threads make
        meanwhile are not in what it writes, so they stay pending.
        """
        saver = self._resolved("saver")
        if saver is None:
            return None
        mark = self._edit_mark()
        if not self and not self.save_on_blank_cache:
            self._saved_through(mark)  # a blank cache is not written, by request
            return None
        return saver, mark

    def _prepared_for_save(self) -> Mapping[Any, Any]:
        """The mapping handed to the saver: the live cache, or a pre-processed copy."""
        if self.pre_processor is None:
            return self
        copy = dict(self)
        result = _as_mapping(self._name, "pre_processor", self.pre_processor(copy))
        return copy if result is None else result

    def _saved_through(self, mark: int) -> None:
        """Called after a background save that captured the edits up to ``mark``."""
        self._saved()

    def _has_unsaved_edits(self) -> bool:
        """Whether a deferred background save still has something to write."""
        return True

    # -- hooks for subclasses (autosync) ---------------------------------------

    def _await_pending_save(self) -> None:
        """Wait for this cache's background save in flight, so a load reads its own writes."""
        _background.await_idle(self)

    def _edit_mark(self) -> int:
        """A mark of the edits made so far (autosync counts them; 0 here)."""
        return 0

    @property
    def last_save_error(self) -> str | None:
        """Why the last background save failed, or None if it succeeded (or none ran).

        A failed background save is logged and retried after a back-off; this
        shows the failure to code that wants to check.
        """
        return _background.last_error(self)

    def _saved(self) -> None:
        """Called after the contents were saved; autosync clears its edit counts."""

    def _replace(self, new_contents: Mapping[Any, Any] | None) -> None:
        """Swap the items in place without counting them as edits, then mark clean."""
        dict.clear(self)
        if new_contents:
            dict.update(self, new_contents)
        self._saved()

    # -- hook plumbing -----------------------------------------------------------

    def _default_storage(self) -> Storage | None:
        """Where the cache is kept when it has no loader/saver/deleter of its own."""
        return None

    def _resolved(self, hook: str) -> Callable[..., Any] | None:
        """The hook to run: the cache's own, else its default storage's."""
        own: Callable[..., Any] | None = getattr(self, hook)
        if own is not None or hook not in _STORAGE_METHODS:
            return own
        storage = self._default_storage()
        return None if storage is None else getattr(storage, _STORAGE_METHODS[hook])

    def _read_contents(self) -> dict[Any, Any] | _Keep | None:
        """What a load should put in the cache, or ``_KEEP`` to leave it alone."""
        loader = self._resolved("loader")
        if loader is None and self.builder is None:
            # Nothing to load from and nothing to build: a non-persistent cache
            # keeps what it holds rather than being wiped by a reload.
            return _KEEP
        # A user's loader may hand back a dict it keeps using, so that one is copied;
        # the built-in loaders (no own hook) return a new dict each time.
        fresh = self.loader is None
        loaded = (
            None
            if loader is None
            else _as_mapping(self._name, "loader", loader(self._name), fresh=fresh)
        )
        if loaded is not None and not self._is_valid(loaded):
            loaded = None
        if loaded is None:
            return self._build()
        return self._post_processed(loaded)

    def _build(self) -> dict[Any, Any] | None:
        if self.builder is None:
            return None
        built = _as_mapping(self._name, "builder", self.builder(self._name))
        return None if built is None else self._post_processed(built)

    def _is_valid(self, loaded: dict[Any, Any]) -> bool:
        if self.validator is None:
            return True
        try:
            verdict = bool(self.validator(loaded))
        except Exception as error:  # a validator that raises is a "no", with a reason
            logger.warning(
                "cache %r: the validator raised %s: %s; the saved copy is treated as invalid",
                self._name,
                type(error).__name__,
                error,
            )
            return False
        if not verdict:
            logger.warning(
                "cache %r: the validator rejected the saved copy; rebuilding", self._name
            )
        return verdict

    def _post_processed(self, contents: dict[Any, Any]) -> dict[Any, Any]:
        if self.post_processor is None:
            return contents
        result = _as_mapping(self._name, "post_processor", self.post_processor(contents))
        return contents if result is None else result


class CacheSteps(Protocol):
    """The single-cache steps a :class:`~cacheman.cacher.CacheManager` drives.

    The manager decides which caches an operation reaches and in what order;
    each step does one cache's work under that cache's lock and never looks at
    other caches.  They are single-underscore names, not for users, but a
    declared contract: the manager calls nothing else of a cache's private side.
    """

    @property
    def name(self) -> str: ...

    def _load_self(self) -> None: ...

    def _save_self(self) -> None: ...

    def _reset_self(self) -> None: ...

    def _delete_saved_self(self) -> None: ...

    def _save_at_exit(self) -> None: ...


class Storage(Protocol):
    """Where a cache is kept when it has no loader/saver/deleter hooks (pickle store, CSV file)."""

    def load(self, name: str) -> Mapping[Any, Any] | None: ...

    def save(self, name: str, contents: Mapping[Any, Any]) -> None: ...

    def delete(self, name: str) -> None: ...


#: Which method of a :class:`Storage` stands in for each storage hook.
_STORAGE_METHODS = {"loader": "load", "saver": "save", "deleter": "delete"}


class _Keep:
    """Marker: a load found nothing to load or build, so the contents stay."""

    def __repr__(self) -> str:
        return "<keep contents>"


_KEEP = _Keep()


class NonPersistentCache(CacheWrap):
    """A cache that never touches disk unless it is given hooks that do."""

    __slots__ = ()


class PersistentCache(CacheWrap):
    """A cache saved to, and loaded from, its manager's pickle store by default.

    Any of ``loader``, ``saver`` and ``deleter`` passed in (or registered on the
    manager later) replaces the store for that step.
    """

    __slots__ = ()

    def _default_storage(self) -> Storage:
        return self._manager.store
