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
background saves are :mod:`cacheman._process.background`'s, through the interface that
module declares (``SaveTarget``).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from . import _log, _registry
from ._paths import validate_cache_name
from ._persist import saveplan as _saveplan
from ._persist.changes import (
    GONE,
    ChangeSet,
    Digests,
    digests_for,
    digests_of_all,
    watched,
)
from ._persist.editguard import edit_functions, guarded, under_apply_lock
from ._persist.hooks import check_hook
from ._persist.lineage import Verdict, decide, settle
from ._persist.saveplan import Write, plan_write
from ._process import background as _background
from ._process import lifecycle as _lifecycle
from ._process.background import SavePlan, SaveReason
from ._stores.api import supports_builder_lock, supports_journal, supports_keep_aside
from ._stores.generations import generation_of, next_generation, parent_generations
from ._stores.journal import CLEAR, DEL, REBASE, SET, Change
from .errors import CacheManError

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from ._stores.api import JournalStore
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


def _accepted_keywords(cls: type[CacheWrap]) -> frozenset[str] | None:
    """The keywords ``cls(...)`` accepts: every name its ``__init__`` chain declares.

    None when a class from outside CacheMan takes ``**kwargs``: it may use any
    keyword itself, so none can be called unknown.  (CacheMan's own classes
    pass their ``**kwargs`` on, up to ``CacheWrap``.)
    """
    try:
        return _keywords_by_class[cls]
    except KeyError:
        pass
    names: set[str] | None = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or not issubclass(klass, CacheWrap):
            continue
        for parameter in list(inspect.signature(init).parameters.values())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                if not klass.__module__.startswith("cacheman."):
                    names = None
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL and names is not None:
                names.add(parameter.name)
        if names is None:
            break
    accepted = None if names is None else frozenset(names)
    _keywords_by_class[cls] = accepted
    return accepted


_keywords_by_class: weakref.WeakKeyDictionary[type, frozenset[str] | None] = (
    weakref.WeakKeyDictionary()
)


def _unknown_keyword_error(
    call: str, keyword: str, accepted: Iterable[str], *, hooks: bool = True
) -> TypeError:
    """A TypeError for a misspelt keyword of ``call`` that says what was meant (and the hooks)."""
    close = difflib.get_close_matches(keyword, sorted(accepted), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = f"; the hooks are {', '.join(HOOK_NAMES)}" if hooks else ""
    return TypeError(f"{call} got an unexpected keyword argument {keyword!r}{hint}{listed}")


def check_keywords(
    call: str, given: Iterable[str], accepted: Iterable[str] | None, *, hooks: bool = True
) -> None:
    """Raise :func:`_unknown_keyword_error` for the first of ``given`` not in ``accepted``.

    ``accepted`` None accepts everything (a class from outside CacheMan taking ``**kwargs``).
    """
    if accepted is None:
        return
    known = frozenset(accepted)
    for keyword in given:
        if keyword not in known:
            raise _unknown_keyword_error(call, keyword, known, hooks=hooks)


def _call_text(cls: type, args: tuple[Any, ...]) -> str:
    """How a call is shown in an error: ``PersistentCache('name')``."""
    return f"{cls.__name__}({args[0]!r})" if args else f"{cls.__name__}()"


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

    #: The 2.x name of :data:`HOOK_NAMES`.
    CALLBACK_NAMES: ClassVar[tuple[str, ...]] = HOOK_NAMES

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # Checked before any __init__ runs, so a misspelt hook (``lodaer=``) is
        # reported with what was meant and never leaves a half-registered cache.
        if kwargs:
            check_keywords(_call_text(cls, args), kwargs, _accepted_keywords(cls))
        return super().__new__(cls)

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
        given = (loader, saver, builder, deleter, validator, pre_processor, post_processor)
        for hook, function in zip(HOOK_NAMES, given, strict=True):
            check_hook(self._name, hook, function)
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
                self._contents_given()
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
    def async_saver(self) -> bool:
        """The 2.x name of ``async_save``: whether saves run in a child process."""
        return self.async_save

    @async_saver.setter
    def async_saver(self, value: bool) -> None:
        self.async_save = value

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

    def _save_now(self, why: SaveReason = "save") -> None:
        """Save in this thread, after any background save in flight (so it cannot land later)."""
        with self._lock:
            self._await_pending_save()
            self._check_lineage()  # before planning: the plan only says what to write
            plan = self._save_plan(why)
            if plan is None:
                return
            started = _log.clock()
            try:
                # A copy: other threads may edit the cache while this thread writes it.
                outcome = plan.write(True)
            except BaseException as error:
                plan.failed()
                _background.note_save_outcome(self, error)
                raise
            plan.landed(outcome)
            self._saved_through(plan.mark)
            _background.note_save_outcome(self, None)
            _log.saved(self._name, plan.kind, plan.entries, started, store=plan.store)

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
        """The process is ending: save what must be kept (see :meth:`_save_plan`)."""
        _background.stop_background_work()
        self._save_now("exit")

    def _save_changes_now(self) -> None:
        """Write, in this thread, what the exit flush would (the manager is closing)."""
        self._save_now("exit")

    def _released(self) -> None:
        """The manager let go of this cache (it closed): drop timers that would keep it alive."""

    def _may_need_saving(self) -> bool:
        """Whether the exit flush might write something for this cache; no I/O.

        Asked when the program drops the manager (from its finalizer): True keeps
        the manager for the exit flush.  Here: whenever there is a saver to call.
        """
        return self._resolved("saver") is not None

    def _revived(self) -> None:
        """Its manager, found unreachable, was kept for the exit flush (see ``_may_need_saving``).

        The collector may have cleared the weak references to this cache
        already: take again those that matter.
        """

    def _bump_generation(self) -> None:
        """This cache was invalidated: its derived caches, in any process, must rebuild."""

    def _catch_up(self, derived: bool, wait: float) -> None:
        """Another process invalidated this cache (or, ``derived``, a cache it derives from).

        Called by the manager on the store's event thread: reload (reset when
        ``derived``), as the invalidation did in the other process.  A cache busy
        for more than ``wait`` seconds (a long save or build on another thread)
        is marked stale instead, so the event thread never waits on it for long.
        """
        if not self._lock.acquire(timeout=wait):
            self._mark_stale()
            return
        try:
            if derived:
                self._reset_self()
            else:
                self._load_self()
        finally:
            self._lock.release()

    def _mark_stale(self) -> None:
        """Events from other processes may have been missed (a persistent cache reloads)."""

    def _check_generation(self, wait: float) -> None:
        """The full check (events may have been missed): catch up if moved on elsewhere."""
        self._mark_stale()

    def _parent_moved_on(self) -> None:
        """A parent was invalidated in this process: rebuild (a persistent cache may load
        what another process already rebuilt instead)."""
        self._reset_self()

    def _check_lineage(self) -> None:
        """Before a save is planned (cache lock held, no background save in flight).

        A persistent cache asks :mod:`cacheman._persist.lineage` whether it is still
        derived from its parents as they are; one kept by hooks alone has nothing to check.
        """

    def _parent_declared(self, parent: str) -> None:
        """``parent`` was just declared a parent of this registered cache."""

    # -- what the background saver uses (_background.SaveTarget declares it) -----

    def _save_plan(self, why: SaveReason = "rule") -> SavePlan | None:
        """The save to run, or None when nothing is written (cache lock held).

        Every save path (in this thread, in a child, in-process fallback) starts
        here.  The mark is taken before the saver runs: edits other threads make
        meanwhile are not in what it writes, so they stay pending.  A cache kept
        by hooks alone is written whole, whatever ``why``.
        """
        saver = self._resolved("saver")
        if saver is None:
            return None
        mark = self._edit_mark()
        if not self and not self.save_on_blank_cache:
            self._saved_through(mark)  # a blank cache is not written, by request
            return None
        name = self._name
        return SavePlan(
            lambda copy: saver(name, self._prepared_for_save(copy)), mark, entries=len(self)
        )

    def _prepared_for_save(self, copy: bool = False) -> Mapping[Any, Any]:
        """The mapping handed to the saver: the live cache (or a copy), or a pre-processed copy."""
        if self.pre_processor is None:
            return dict(self) if copy else self
        contents = dict(self)
        result = _as_mapping(self._name, "pre_processor", self.pre_processor(contents))
        return contents if result is None else result

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
        """Why the last save failed (``"OSError: ..."``), or None if it succeeded (or none ran).

        Set by every save: a background save (logged and retried after a
        back-off) and an explicit ``save()`` that raised; cleared by the next
        save that succeeds.
        """
        return _background.last_error(self)

    def _saved(self) -> None:
        """Called after the contents were saved; autosync clears its edit counts."""

    def _contents_given(self) -> None:
        """The cache was built with ``contents``: they replace the saved copy at the next save."""

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
        loaded = None if loader is None else self._call_loader(loader)
        if loaded is not None and not self._is_valid(loaded):
            loaded = None
        if loaded is None:
            return self._build()
        return self._post_processed(loaded)

    def _call_loader(self, loader: Callable[..., Any]) -> dict[Any, Any] | None:
        """What ``loader`` returns, checked; None (after a warning) if it cannot read its data.

        A loader that raises is treated like a damaged pickle file: a warning
        names the cache and the cause, the data is kept aside where CacheMan
        knows where it is (its own files), and the cache is rebuilt.  Two kinds
        of exception are not damage and propagate: an ``OSError`` (a file that
        cannot be read now, a database that is down: rebuilding over data that
        may be fine would lose it; ``FileNotFoundError`` alone means nothing is
        saved) and the errors CacheMan raises on purpose (an insecure
        directory, a bad signature).
        """
        # A user's loader may hand back a dict it keeps using, so that one is copied;
        # the built-in loaders (no own hook) return a new dict each time.
        fresh = self.loader is None
        started = _log.clock()
        try:
            result = loader(self._name)
        except FileNotFoundError:
            return None  # nothing saved
        except (CacheManError, OSError):
            raise  # a refusal, or data that cannot be reached now (not damaged): keep it
        except Exception as error:
            self._loader_failed(error)
            return None
        checked = _as_mapping(self._name, "loader", result, fresh=fresh)
        if checked is not None:
            store = None if self.loader is not None else self._default_storage()
            _log.loaded(
                self._name, "hook" if store is None else "store", len(checked), started, store=store
            )
        return checked

    def _loader_failed(self, error: Exception) -> None:
        storage = None if self.loader is not None else self._default_storage()
        kept = storage.keep_aside(self._name) if supports_keep_aside(storage) else None
        where = (
            f"it was kept as {kept}"
            if kept is not None
            else "its data was left where the loader reads it, and the next save writes over it"
        )
        logger.warning(
            "cache %r: the loader raised %s: %s; %s and the cache will be rebuilt",
            self._name,
            type(error).__name__,
            error,
            where,
        )

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

    def _save_changes_now(self) -> None: ...

    def _released(self) -> None: ...

    def _may_need_saving(self) -> bool: ...

    def _revived(self) -> None: ...

    def _bump_generation(self) -> None: ...

    def _catch_up(self, derived: bool, wait: float) -> None: ...

    def _parent_declared(self, parent: str) -> None: ...

    def _mark_stale(self) -> None: ...

    def _check_generation(self, wait: float) -> None: ...

    def _parent_moved_on(self) -> None: ...


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
    """A cache saved to, and loaded from, its manager's store by default.

    Any of ``loader``, ``saver`` and ``deleter`` passed in (or registered on the
    manager later) replaces the store for that step.

    The cache remembers which keys it changed (see :mod:`cacheman._persist.changes`), so
    that a save through the store appends just those to the cache's journal, and
    several processes can write one cache without losing each other's edits.
    ``touch(key)`` marks a value changed in place; ``refresh()`` pulls what
    other processes saved.  A save also checks, through generations (see
    :mod:`cacheman._stores.generations`), that the parents this cache was built from
    have not moved on; if they have, the cache is reset instead of written.
    """

    __slots__ = (
        "_apply_lock",
        "_behind",
        "_building",
        "_built_from",
        "_changes",
        "_generation_held",
        "_guarded",
        "_has_generation",
        "_keep_pending",
        "_position",
        "_stale",
        "_track",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._changes = ChangeSet()
        # The mutators call this bound method: one attribute load, no method lookup.
        self._track = self._changes.keys.add
        self._position: Any = None  # how far this process has read the journal
        self._behind = False  # a save took in changes this process has not seen: reload
        self._built_from: dict[str, str | None] | None = None
        self._has_generation = False
        # The generation of the saved copy that the contents in memory correspond to:
        # a parent whose generation in the store differs is refreshed before a build.
        self._generation_held: str | None = None
        self._stale = False  # events may have been missed: reload at the next load/save/refresh
        self._building = False  # this cache holds its store's builder lock
        self._keep_pending = False  # the next load keeps edits made since the last save
        # Up while a refresh applies other processes' values: edits then take
        # _apply_lock (see cacheman._persist.editguard).
        self._guarded = False
        self._apply_lock = threading.RLock()
        super().__init__(*args, **kwargs)
        _live[id(self)] = self

    def _default_storage(self) -> Storage:
        return self._manager.store

    # -- the mutators: each records the keys it changes --------------------------------

    # Each edit first tests _guarded (one attribute test): while a refresh applies, it
    # edits under _apply_lock instead (see cacheman._persist.editguard).

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._guarded:
            under_apply_lock(self, PersistentCache._locked_edit, dict.__setitem__, key, value)
            return
        dict.__setitem__(self, key, value)
        self._track(key)

    def __delitem__(self, key: Any) -> None:
        if self._guarded:
            under_apply_lock(self, PersistentCache._locked_edit, dict.__delitem__, key)
            return
        dict.__delitem__(self, key)
        self._track(key)

    def _locked_edit(self, edit: Callable[..., None], key: Any, *value: Any) -> None:
        """``c[k] = v`` or ``del c[k]`` while a refresh is applying (``_apply_lock`` held)."""
        edit(self, key, *value)
        self._note((key,), 1)

    def _note(self, keys: Iterable[Any], count: int) -> None:
        """``count`` edits changed ``keys`` (autosync also counts them)."""
        self._changes.keys.update(keys)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        if self._guarded:
            under_apply_lock(self, PersistentCache._update, other, kwargs)
            return
        self._update(other, kwargs)

    def _update(self, other: Any, kwargs: dict[str, Any]) -> None:
        if hasattr(other, "keys"):
            dict.update(self, other)
            keys = list(other.keys())
        else:
            pairs = [tuple(pair) for pair in other]
            dict.update(self, pairs)
            keys = [pair[0] for pair in pairs]
        if kwargs:
            dict.update(self, kwargs)
            keys += kwargs
        self._note(keys, len(keys))

    def __ior__(self, other: Any) -> Self:  # type: ignore[misc]
        self.update(other)
        return self

    def pop(self, key: Any, *default: Any) -> Any:
        if self._guarded:
            return under_apply_lock(self, PersistentCache._pop, key, *default)
        return self._pop(key, *default)

    def _pop(self, key: Any, *default: Any) -> Any:
        # One dict.pop, atomic: a test first, then a pop, lets another thread's delete or
        # replacement come between (a KeyError despite the default), and a subclass's
        # ``in`` may drop a key that expired just after the subclass's pop found it there.
        value = dict.pop(self, key, _GONE)
        if value is _GONE:
            if default:
                return default[0]
            raise KeyError(key)
        self._note((key,), 1)
        return value

    def popitem(self) -> tuple[Any, Any]:
        if self._guarded:
            return under_apply_lock(self, PersistentCache._popitem)  # type: ignore[no-any-return]
        return self._popitem()

    def _popitem(self) -> tuple[Any, Any]:
        item = dict.popitem(self)
        self._note((item[0],), 1)
        return item

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if self._guarded:
            return under_apply_lock(self, PersistentCache._setdefault, key, default)
        return self._setdefault(key, default)

    def _setdefault(self, key: Any, default: Any) -> Any:
        value = dict.get(self, key, _GONE)  # one look-up: another thread may delete it
        if value is not _GONE:
            return value
        dict.__setitem__(self, key, default)
        self._note((key,), 1)
        return default

    def clear(self) -> None:
        if self._guarded:
            under_apply_lock(self, PersistentCache._clear)
            return
        self._clear()

    def _clear(self) -> None:
        removed = len(self)
        dict.clear(self)
        self._changes.replaced()
        self._note((), removed)

    def _contents_given(self) -> None:
        self._changes.replaced()

    # -- in-place changes, and other processes' ----------------------------------------

    def touch(self, key: Any, *more: Any) -> None:
        """Mark values changed in place (``c[k].append(x)``) so that the next save writes them.

        Raises ``KeyError`` for a key the cache does not hold.  For an autosync
        cache each key counts as an edit toward the rules.
        """
        keys = (key, *more)
        for each in keys:
            if each not in self:
                raise KeyError(each)
        self._note(keys, len(keys))

    def mark_dirty(self) -> None:
        """Mark every value changed, so that the next save writes the whole cache."""
        self._changes.everything = True
        # One edit, not one per key: a whole rewrite is one change for the rules
        # (counting every key would fire the burst rule and save twice).
        self._note((), 1)

    @property
    def generation(self) -> str | None:
        """The saved copy's generation (a random id and a counter), or None if it has none.

        It changes when the cache is invalidated or reset; caches derived from
        this one record it, to notice in any process that they are stale.
        """
        return generation_of(self._manager.store.read_meta(self._name))

    def refresh(self) -> None:
        """Save this process's changes, then take in what other processes saved since.

        Replays the journal records other processes appended since this one
        last read it (or reloads the whole cache, if one of them compacted the
        journal meanwhile).  Costs a journal append and a read of what is new.
        """
        with self._lock:
            self._stale = False  # this reloads anyway
            # The save settles lineage first: a derived cache whose parents moved on is
            # rebuilt from them brought up to date (or loaded, if another process did it).
            # Like save(), it writes the values changed in place: refresh() acknowledges them.
            self._save_now("refresh")
            if self._changes.replace:
                # A clear() whose write was refused (an empty cache, save_on_blank_cache
                # off): what others saved is replaced at the write, so it is not taken in.
                return
            store = self._journal_store()
            if store is None:
                self._load_self()
                return
            # Read before the contents: a generation given meanwhile makes a later check
            # refresh again, never take older contents for newer.
            generation = generation_of(self._manager.store.read_meta(self._name))
            if self._position is not None and not self._behind:
                news = store.changes_since(self._name, self._position)
                if news is not None and not any(op == CLEAR for op, _k, _v in news[0]):
                    changes, self._position = news
                    # Not over the keys changed here since the save above (other threads):
                    # their values are newer than any record (ours included, replayed
                    # when others appended in between).
                    incoming = {key: GONE if op == DEL else value for op, key, value in changes}
                    with guarded(self):  # no edit between a key's check and its store
                        # (Nothing, if a clear() made since the save above is to replace
                        # the saved copy: what others saved before it is dropped then.)
                        if not self._changes.replace:
                            self._changes.take_in(self, incoming)
                    self._behind = False
                    self._generation_held = generation
                    return
            loaded, position = store.load_tracked(self._name)
            if loaded is None:
                # Nothing saved (another process reset it and has not saved its build
                # yet, say): as at registration, wait for its builder or build here.
                self._keep_pending = True  # edits made since the save above are kept
                self._load_self()
                return
            self._position = position
            self._take_in(self._post_processed(loaded))
            self._behind = False
            self._generation_held = generation

    def _take_in(self, saved: dict[Any, Any]) -> None:
        """Make the contents ``saved``, except keys changed here since the save before.

        Other threads may be editing: their changes since that save (the keys
        pending) keep their values, and the contents change key by key in C
        calls, never through an empty cache.  Edits wait while it applies
        (see :mod:`cacheman._persist.editguard`), so none falls between a
        key's check and its store.
        """
        with guarded(self):
            if not self._changes.replace:  # (a clear() made meanwhile replaces it all)
                self._take_in_guarded(saved)

    def _take_in_guarded(self, saved: dict[Any, Any]) -> None:
        incoming = dict.fromkeys([key for key in list(self) if key not in saved], GONE)
        incoming.update(saved)
        self._changes.take_in(self, incoming)

    # -- load and reset ------------------------------------------------------------------

    def _journal_store(self) -> JournalStore | None:
        """The store, when it does this cache's saving and keeps a journal; else None."""
        if self.saver is not None or self.pre_processor is not None:
            return None
        storage = self._default_storage()
        return storage if supports_journal(storage) else None

    def _parents(self) -> list[str]:
        return self._manager.parents_of(self._name)

    def _load_self(self) -> None:
        """Load (see :meth:`CacheWrap._load_self`), or, in :meth:`refresh`, catch up.

        A reload that follows a save of this process's changes (catching up
        with another process: ``_keep_pending``) keeps the edits other threads
        made after that save, pending, rather than dropping them.
        """
        keep_pending, self._keep_pending = self._keep_pending, False
        with self._lock:
            self._await_pending_save()
            self._stale = False
            parents = self._parents()
            current = parent_generations(self._manager.store, parents) if parents else {}
            meta = self._manager.store.read_meta(self._name)
            if parents and decide(current, meta) is Verdict.STALE:
                _log.reset_by_parents(self._name, _log.changed_parents(_recorded(meta), current))
                self._rebuild(None, invalidated=False)
                return
            store = self._journal_store() if self.loader is None else None
            loaded, position, rejected = self._read_saved(store)
            if loaded is None and keep_pending and self.builder is None and not rejected:
                # A refresh, with nothing saved and nothing to build: what the cache holds,
                # and the edits other threads made since its save (pending), stay.
                self._position = position
                return
            if loaded is None:
                with self._one_builder() as locked:
                    if locked:  # another process may have built and saved it while we waited
                        meta = self._manager.store.read_meta(self._name)
                        loaded, position, rejected = self._read_saved(store)
                    if loaded is None:
                        # A copy the validator rejected is still saved: what is built now
                        # must replace it at the next save, not be added to it.
                        built_from = self._parents_up_to_date()
                        self._install_built(self._build(), built_from, fresh=not rejected)
                        self._position = position  # where the journal stands (maybe empty)
                        if locked:
                            self._save_build()
                        return
            loaded = self._post_processed(loaded)
            if keep_pending:
                self._take_in(loaded)
                self._changes.synced(loaded, keep_keys=True)
            else:
                dict.clear(self)
                dict.update(self, loaded)
                self._changes.synced(loaded)  # the digests of what was loaded
            self._position, self._behind = position, False
            self._built_from = current
            self._generation_held = generation_of(meta)
            self._saved()

    def _read_saved(self, store: JournalStore | None) -> tuple[dict[Any, Any] | None, Any, bool]:
        """The saved contents (None if none is valid), the position read, and if it was rejected."""
        position = None
        if store is not None:
            started = _log.clock()
            try:
                loaded, position = store.load_tracked(self._name)
            except (CacheManError, OSError):
                raise
            except Exception as error:
                self._loader_failed(error)
                loaded = None
            loaded = _as_mapping(self._name, "loader", loaded, fresh=True)
            if loaded is not None:
                _log.loaded(self._name, "store", len(loaded), started, store=store)
        else:
            loader = self._resolved("loader")
            loaded = None if loader is None else self._call_loader(loader)
        rejected = loaded is not None and not self._is_valid(loaded)
        return (None if rejected else loaded), position, rejected

    def _reset_self(self) -> None:
        with self._lock, self._one_builder() as locked:
            self._build_anew(locked)

    def _build_anew(self, locked: bool) -> None:
        """Build from the parents brought up to date, delete the saved copy, install the build."""
        built_from = self._parents_up_to_date()
        # Build first: a builder that raises must leave the saved copy in place.
        rebuilt = self._build()
        self._delete_saved_self()
        self._install_built(rebuilt, built_from, fresh=False)
        if locked:
            self._save_build()

    # -- lineage: what cacheman._persist.lineage decides, done (cache lock held) ---------

    def _check_lineage(self) -> None:
        if self._stale:
            # Events from other processes were missed: catch up (settling lineage on the way).
            self.refresh()
        settle(self, self._manager.store, saving=True)

    def _adopt_parents(self, current: Mapping[str, str | None]) -> None:
        """Fresh: record the parents declared (by any process) since the build, as they are now."""
        built_from = self._built_from
        if built_from is None:
            return
        declared = [parent for parent in current if parent not in built_from]
        if declared:
            built_from.update(self._parents_with_generations(declared))
            self._manager.store.update_meta(self._name, parents=built_from)

    def _load_rebuilt(self) -> None:
        """Load the copy another process rebuilt; this process's changes were to a stale copy."""
        self._changes.synced()
        self._load_self()

    def _rebuild(self, held: Mapping[str, str | None] | None, *, invalidated: bool) -> None:
        """Build anew: once per invalidation across processes where the store has a builder lock."""
        with self._lock, self._one_builder() as locked:
            if locked:
                # Another process may have rebuilt it while this one waited for the lock.
                store = self._manager.store
                current = parent_generations(store, self._parents())
                verdict = decide(
                    current, store.read_meta(self._name), held, invalidated=invalidated
                )
                if verdict is Verdict.FRESH and held is not None:
                    return
                if verdict is not Verdict.STALE:
                    self._load_rebuilt()
                    return
            self._build_anew(locked)

    def _parents_up_to_date(self) -> dict[str, str | None]:
        """Bring the parents this process holds up to date; the generations a build reads.

        A builder reads a parent registered here from memory: one another process
        moved on is refreshed first, so a build never reads a stale parent, and
        what is recorded is the generation its contents correspond to.  A cache
        without a builder reads nothing: its parents are recorded as they are.
        """
        parents = self._parents()
        if self.builder is None:
            return parent_generations(self._manager.store, parents)
        for name in parents:
            parent = self._manager._caches.get(name)
            if isinstance(parent, PersistentCache) and parent is not self:
                parent._up_to_date_for_build()
        return self._parents_with_generations(parents)

    def _up_to_date_for_build(self) -> None:
        """A cache derived from this one is about to build: settle, and refresh if moved on."""
        with self._lock:
            store = self._manager.store
            settle(self, store)
            if self._stale or self._moved_on_elsewhere():
                self.refresh()

    def _moved_on_elsewhere(self) -> bool:
        """Whether the store has a generation of this cache other than the one held here.

        (None there means nothing is saved, or the saved copy was deleted: then the
        contents in memory are the best there is, and are kept.)
        """
        stored = generation_of(self._manager.store.read_meta(self._name))
        return stored is not None and stored != self._generation_held

    def _catch_up(self, derived: bool, wait: float) -> None:
        """Another process invalidated this cache or a parent: settle lineage, take in its changes.

        A derived cache whose parents moved on is rebuilt (or loaded, if the other
        process rebuilt it); otherwise this process's changes are saved and the
        other processes' taken in (:meth:`refresh`).
        """
        if not derived and self._generation_held is None:
            # Nothing here came from a saved copy (a first save elsewhere, say): taking
            # in the other process's changes can wait for this process's next save or
            # refresh, on its own thread, rather than run under its edits.
            self._mark_stale()
            return
        if not self._lock.acquire(timeout=wait):
            self._mark_stale()
            return
        try:
            self._stale = False
            if settle(self, self._manager.store) is Verdict.FRESH:
                self.refresh()
            else:
                self._save_now("rule")
        finally:
            self._lock.release()

    def _check_generation(self, wait: float) -> None:
        """The full check: catch up now if it or a parent moved on; take in appends later."""
        if not self._lock.acquire(timeout=wait):
            self._mark_stale()
            return
        try:
            store = self._manager.store
            if self._moved_on_elsewhere():
                self._catch_up(False, wait)
            elif settle(self, store) is not Verdict.FRESH:
                self._save_now("rule")
            else:
                # Appends are not announced: the next load, save or refresh takes them in.
                self._mark_stale()
        finally:
            self._lock.release()

    def _parent_moved_on(self) -> None:
        with self._lock:
            settle(self, self._manager.store, invalidated=True)

    @contextlib.contextmanager
    def _one_builder(self) -> Iterator[bool]:
        """Hold the store's builder lock (Redis) while building; yields whether it is held.

        On a store with a ``builder_lock`` one process at a time builds a cache,
        and saves what it built before letting go (see :meth:`_save_build`), so
        the processes that waited load it instead of building it again.  Other
        stores (the pickle store), a cache without a builder, and a build nested
        in one already holding the lock yield False.  Waiting longer than
        :data:`BUILDER_LOCK_SECONDS` (a holder that died frees it by then) ends
        with a warning and a build here too: the lock saves work, it is not
        needed for correctness.
        """
        store = self._manager.store
        if not supports_builder_lock(store) or self.builder is None or self._building:
            yield False
            return
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(store.builder_lock(self._name, BUILDER_LOCK_SECONDS))
            except TimeoutError as error:
                logger.warning("cache %r: %s; building it here too", self._name, error)
                yield False
                return
            self._building = True
            try:
                yield True
            finally:
                self._building = False

    def _save_build(self) -> None:
        """Save what was just built, while the builder lock is still held.

        A failure is logged, not raised: the build stays pending and is saved
        by the next save, like any edit.
        """
        try:
            self._save_now("rule")
        except Exception as error:
            logger.warning(
                "cache %r: saving what its builder built failed (%s: %s); it stays pending",
                self._name,
                type(error).__name__,
                error,
            )

    def _mark_stale(self) -> None:
        # A flag, so a lost connection costs nothing until the cache is used: the
        # next load, save or refresh reloads it.  Reads of the dict cannot be
        # intercepted (they are the dict's own), so they serve the old contents.
        self._stale = True

    def _install_built(
        self, built: dict[Any, Any] | None, built_from: dict[str, str | None], *, fresh: bool
    ) -> None:
        """Put what a builder built in place; it replaces the saved copy at the next save.

        ``built_from``: the parents' generations the builder read (see
        :meth:`_parents_up_to_date`).  ``fresh``: nothing valid was saved (a first
        load); else the saved copy was just deleted (a reset).  A build is a change
        (one edit per item, for autosync), and gives the cache a new generation
        that records its parents'.
        """
        dict.clear(self)
        if built:
            dict.update(self, built)
        self._position, self._behind = None, False
        self._saved()
        self._built_from = built_from
        if not built and fresh:
            self._changes.synced()  # nothing saved, nothing built: no change to write
            return
        self._changes.replaced()
        if self._keeps_generation():
            generation = next_generation(None)
            self._manager.store.update_meta(
                self._name, generation=generation, parents=built_from, stale=None
            )
            self._has_generation = True
            self._generation_held = generation
        self._note((), len(self))

    def _keeps_generation(self) -> bool:
        """Whether this cache has a generation in the store's metadata.

        Derived caches compare generations; a cache kept by hooks alone, outside
        any dependency, has no use for one (and leaves its manager's directory
        untouched).
        """
        return self._journal_store() is not None or self._manager.in_graph(self._name)

    def _parents_with_generations(self, parents: list[str]) -> dict[str, str | None]:
        """The parents' generations as this process holds them, giving one to a parent without.

        A parent registered here is taken at the generation its contents in memory
        correspond to (what a builder reads); the others at theirs in the store.
        A parent never saved has no generation; recording None would make this
        cache stale as soon as the parent is saved and gets one.
        """
        store = self._manager.store
        current = parent_generations(store, parents)
        for parent, generation in current.items():
            cache = self._manager._caches.get(parent)
            held = cache._generation_held if isinstance(cache, PersistentCache) else None
            if held is not None:
                current[parent] = held
            elif generation is None:
                given = generation_of(store.update_meta(parent, generation=next_generation(None)))
                current[parent] = given
                if isinstance(cache, PersistentCache):
                    cache._generation_held = given
        return current

    def _delete_saved_self(self) -> None:
        with self._lock:
            super()._delete_saved_self()
            # The saved copy is gone: a later write must be the whole cache.
            self._changes.replaced(pending=False)
            self._position, self._behind = None, False
            self._has_generation = False
            self._generation_held = None

    def _bump_generation(self) -> None:
        store = self._manager.store
        generation = next_generation(generation_of(store.read_meta(self._name)))
        store.update_meta(self._name, generation=generation)
        self._has_generation = True
        self._generation_held = generation

    # -- save ---------------------------------------------------------------------------

    def _save_plan(self, why: SaveReason = "rule") -> SavePlan | None:
        """The save to run: this process's changes, over the store's current state.

        First what must happen before anything is decided (catching up with
        missed events, resetting a cache whose parents moved on); then the
        changes are taken and :func:`~cacheman._persist.saveplan.plan_write`
        decides, purely, what to write; the plan returned does that I/O.

        ``why`` is ``"rule"`` for autosync, which writes the changes tracked;
        ``"save"`` (explicit ``save()``, a ``with`` block), ``"refresh"`` and ``"exit"`` also
        write the values changed in place (detected against their digests); an
        explicit save of a cache with nothing saved writes it whole.
        """
        store = self._journal_store()
        if store is None:
            return self._whole_save_plan(why)
        mark = self._edit_mark()
        in_place = () if why == "rule" else self._changes.changed_in_place(self)
        taken = self._changes.take(in_place)
        first_save = not taken and why == "save" and not store.exists(self._name)
        write = plan_write(
            taken,
            position=self._position,
            behind=self._behind,
            size=len(self),
            first_save=first_save,
            blank_refused=not self and not self.save_on_blank_cache,
            light_keys=LIGHT_APPEND_KEYS,
        )
        if write is None:
            self._changes.give_back(taken)  # a blank replacement refused stays pending
            self._saved_through(mark)
            return None
        plan = SavePlan(self._writer(store, write, taken.keys), mark, light=write.light)
        if write.action == "append":
            kind, entries = "append", len(self) if write.keys is None else len(write.keys)
        else:
            kind, entries = ("snapshot" if write.replace else "compaction"), len(self)
        plan.kind, plan.entries, plan.store = kind, entries, store
        # A first save stands for the whole cache too: its lineage is recorded as a build's.
        replaced = write.replace or first_save
        plan.landed = lambda outcome: self._landed(outcome, replaced=replaced)
        plan.failed = lambda: self._changes.give_back(taken)
        return plan

    def _writer(
        self, store: JournalStore, write: Write, changed: AbstractSet[Any]
    ) -> Callable[[bool], _Written]:
        """The I/O of ``write``: ``writer(copy)`` writes, and returns what landed.

        ``copy``: other threads may edit the cache meanwhile (a save in this
        process), so a whole write works from a copy taken at once (in C code,
        which no other thread interrupts); a forked child's image is frozen.

        With what landed come the digests of the values written, the baseline of
        later in-place checks.  In a child they cost the program nothing: they
        are taken for every value written, after the write (the image is
        frozen).  In this process they are taken only for ``changed`` (the keys
        assigned, touched or found changed in place: a detecting save has just
        pickled the latter anyway), before the write, so that an in-place
        change racing with it is found again, never lost.  (A value changed in
        place and written by a rewrite that did not look for it keeps its old
        digest, so the next detecting save writes it once more.)
        """
        name, since, keys = self._name, self._position, write.keys

        def baseline(
            contents: dict[Any, Any], copy: bool
        ) -> tuple[Digests, AbstractSet[Any] | None]:
            """The digests to keep, and of which keys (None: every key held)."""
            if write.replace or (not copy and write.written is None):
                return digests_of_all(contents, private=True), None
            of = changed if copy else write.written
            return digests_for(contents, of or ()), of

        if write.action == "append":

            def append(copy: bool) -> _Written:
                before = baseline(self, copy) if copy else None
                every = _held_and_deleted(self, changed, frozen=False) if keys is None else keys
                records = _records(self, every)
                outcome = store.append(name, records, since=since)
                return _Written(outcome, *(before or baseline(self, copy)))

            return append

        def snapshot(copy: bool) -> _Written:
            contents = dict(self) if copy else self
            # In this process, the digests come first (see above); a child's image is
            # frozen, so there they come after the write, which they must not delay.
            before = baseline(contents, copy) if copy else None
            if write.replace:
                outcome = store.save(name, contents)
            else:
                # Lazy: the store reads these records only if others appended meanwhile.
                every = _held_and_deleted(contents, changed, frozen=True) if keys is None else keys
                pending = _lazy_records(contents, every)
                base = REBASE if write.rebase else since
                outcome = store.save(name, contents, since=base, pending=pending)
            return _Written(outcome, *(before or baseline(contents, copy)))

        return snapshot

    def _parent_declared(self, parent: str) -> None:
        """Record the generation ``parent`` has now: what this cache holds derives from it.

        (Declared after the build, as 2.x code does: the contents were computed
        from the parent as it is at this moment, not as it is at the next save,
        by which time another process may have invalidated it.)
        """
        with self._lock:
            if self._built_from is None or parent in self._built_from:
                return
            self._built_from.update(self._parents_with_generations([parent]))
            if self._keeps_generation():
                self._manager.store.update_meta(self._name, parents=self._built_from)

    def _whole_save_plan(self, why: SaveReason) -> SavePlan | None:
        """A cache saved by a hook (or a CSV file) is written whole, when it has changed."""
        mark = self._edit_mark()
        in_place = () if why == "rule" else self._changes.changed_in_place(self)
        taken = self._changes.take(in_place)
        if not taken and why != "save":
            self._saved_through(mark)
            return None
        plan = super()._save_plan(why)
        if plan is None:
            return None
        write = plan.write

        def whole(copy: bool) -> _Written:
            if not copy:  # a child's frozen image: the write first (see _writer)
                outcome = write(copy)
                return _Written(outcome, digests_of_all(self, private=True), None)
            digests = digests_of_all(self)
            return _Written(write(copy), digests, None)

        plan.write = whole
        replaced = taken.replace
        plan.landed = lambda outcome: self._landed(outcome, replaced=replaced)
        plan.failed = lambda: self._changes.give_back(taken)
        return plan

    def _landed(self, written: object, *, replaced: bool = False) -> None:
        """After a save: the new digests, where the journal ends, a generation for a new cache."""
        outcome = written
        if isinstance(written, _Written):
            self._changes.written(written.digests, written.keys)
            outcome = written.outcome
        in_sync = getattr(outcome, "in_sync", None)
        if in_sync is not None:  # an append
            if in_sync or self._position is None:
                self._position = getattr(outcome, "position", None)
            # else others appended before us: the position stays where this process
            # last read, and refresh() replays from there (our records included).
        elif hasattr(outcome, "was_behind"):  # a snapshot
            self._position = getattr(outcome, "position", None)
            # The new snapshot holds other processes' changes this process has not
            # seen, and no journal to replay them from: refresh() must reload, and
            # a later rewrite starts from the saved state (saveplan's ``rebase``).
            self._behind = self._behind or bool(getattr(outcome, "was_behind", False))
        if replaced and self._manager.in_graph(self._name):
            # What was written replaces everything saved: record what it derives from
            # (a stale mark left by another process no longer applies).
            if self._built_from is None:
                self._built_from = self._parents_with_generations(self._parents())
            store = self._manager.store
            old = generation_of(store.read_meta(self._name))
            generation = old or next_generation(None)
            store.update_meta(
                self._name, generation=generation, parents=self._built_from, stale=None
            )
            self._has_generation = True
            self._generation_held = generation  # what was written is the saved copy now
        if not self._has_generation and self._keeps_generation():
            store = self._manager.store
            held = generation_of(store.read_meta(self._name))
            if held is None:
                held = next_generation(None)
                store.update_meta(self._name, generation=held)
            self._has_generation = True
            self._generation_held = self._generation_held or held

    def _may_need_saving(self) -> bool:
        # Changes the mutators recorded, or values that may have changed in place
        # (which only a save can tell: it compares them with what was saved).
        if self._resolved("saver") is None:
            return False
        changes = self._changes
        return changes.pending() or bool(changes.changed_in_place(self))

    def _revived(self) -> None:
        # A process forked later must still forget these changes (they are ours).
        _live[id(self)] = self

    def _forget_inherited(self) -> None:
        """In a process forked by the user: the parent's changes are the parent's to save."""
        if self._lock.acquire(blocking=False):
            self._lock.release()
        else:  # held by a thread that does not exist in this process
            self._lock = threading.RLock()
        # Likewise a refresh that was applying on another thread of the parent.
        self._apply_lock = threading.RLock()
        self._guarded = False
        changes = self._changes
        # What the parent changed and has not saved yet is the parent's to write: the
        # child takes the values it holds now as its baseline (else its exit would
        # "detect" them as its own changes and write them after the parent's save).
        if changes.replace or changes.everything:
            digests = digests_of_all(self)
        else:
            digests = {**changes.digests, **digests_for(self, list(changes.keys))}
            for key in changes.keys:
                if key not in self or not watched(dict.__getitem__(self, key)):
                    digests.pop(key, None)
        changes.synced()
        changes.digests = digests


#: Seconds a build may hold its store's builder lock (a dead holder's lock frees itself
#: then), and that another process waits for it before building too.
edit_functions(
    PersistentCache.__setitem__,
    PersistentCache.__delitem__,
    PersistentCache.update,
    PersistentCache.pop,
    PersistentCache.popitem,
    PersistentCache.setdefault,
    PersistentCache.clear,
)

BUILDER_LOCK_SECONDS = 300.0
#: Saves of at most this many keys append in this process (see cacheman._persist.saveplan).
LIGHT_APPEND_KEYS = _saveplan.LIGHT_APPEND_KEYS


def _recorded(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The parents' generations a saved copy records (its metadata's ``parents``)."""
    parents = None if meta is None else meta.get("parents")
    return parents if isinstance(parents, dict) else None


class _Written(NamedTuple):
    """What a save wrote: the store's outcome, and digests of values written.

    ``keys``: the keys whose digests these are (None: every key held).
    """

    outcome: object
    digests: Digests
    keys: AbstractSet[Any] | None


def _records(contents: dict[Any, Any], keys: Iterable[Any]) -> list[Change]:
    """The journal records of ``keys``: their values in ``contents``, or deletions."""
    return list(_lazy_records(contents, keys))


def _held_and_deleted(
    contents: dict[Any, Any], changed: Iterable[Any], *, frozen: bool
) -> Iterator[Any]:
    """A whole write's keys: every key held, and the keys this process deleted.

    (Others' values of the deleted keys must not survive a ``mark_dirty()`` rewrite.)
    ``frozen``: ``contents`` is a copy or a save child's image, read as late as
    the records are; else it is the live cache, whose keys are listed now (other
    threads may add or remove keys while the records are read).
    """
    held = contents if frozen else list(contents)
    return itertools.chain(held, (key for key in changed if key not in contents))


def _lazy_records(contents: dict[Any, Any], keys: Iterable[Any]) -> Iterator[Change]:
    # One look-up per key: another thread may delete a key between two of them.
    get = dict.get
    for key in keys:
        value = get(contents, key, _GONE)
        yield (DEL, key, None) if value is _GONE else (SET, key, value)


_GONE = object()


# Every live persistent cache, for the fork hook and a forked worker's exit flush.
_live: weakref.WeakValueDictionary[int, PersistentCache] = weakref.WeakValueDictionary()


def _forget_inherited_changes() -> None:
    for cache in list(_live.values()):
        cache._forget_inherited()


def _flush_worker() -> None:
    """Save the pending changes of a forked multiprocessing worker (its exit skips atexit)."""
    with _log.exit_flush("worker exit"):
        for cache in list(_live.values()):
            try:
                if cache.manager.holds(cache):
                    cache._save_at_exit()
            except Exception:
                logger.exception("cache %r: saving at worker exit failed", cache.name)


_lifecycle.on_fork_child(_forget_inherited_changes)
_lifecycle.on_worker_exit(_flush_worker)
