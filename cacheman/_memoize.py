"""``manager.memoize``: a function's results kept in a named AutoSyncCache.

Three parts: the key of a call (a stable digest, :mod:`cacheman._memokey`),
the fingerprint of the function (its code, ``version`` and what it depends
on; a change resets its cache and everything derived from it), and the call
path (a dict look-up on a hit; one computation per key on a miss, however many
threads ask).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

from . import _lifecycle, _log
from ._memokey import args_digest, code_parts, encode, value_digest
from ._paths import MAX_NAME_BYTES, validate_cache_name
from .autosync import AutoSyncCache

if TYPE_CHECKING:
    from .cacher import CacheManager

__all__ = ["MemoCache", "MemoStats", "Memoized", "memoize"]

logger = logging.getLogger("cacheman")

P = ParamSpec("P")
R = TypeVar("R")

#: Bumped when the fingerprint's recipe changes, so old fingerprints never match.
_FINGERPRINT_RECIPE = b"cacheman-memoize-1"


class MemoStats(NamedTuple):
    """How a memoized function's calls went, in this process.

    ``hits``: calls answered from the cache (or by another thread's computation
    of the same key); ``misses``: calls that ran the function (raising or not);
    ``saves``: saves of the cache that completed (background autosync saves and
    explicit ones: ``f.cache.save()``, ``with manager:``, interpreter exit).
    Loads and resets are not saves.  :meth:`Memoized.cache_clear` sets all three
    back to 0.  Hits are counted without a lock (it would double a hit's cost),
    so threads hitting at the same moment may, rarely, count one hit less.
    """

    hits: int
    misses: int
    saves: int


class MemoCache(AutoSyncCache):
    """The AutoSyncCache behind a memoized function: keys are call digests, values results.

    On top of an AutoSyncCache it counts completed saves, and writes the
    function's fingerprint to the cache's metadata after the first save that
    follows a deletion of the saved copy (a reset deletes the metadata too).
    """

    def __init__(
        self,
        *args: Any,
        fingerprint: Callable[[], str],
        **kwargs: Any,
    ) -> None:
        self.saves = 0
        #: Bumped whenever the saved copy is deleted (a reset): a computation that
        #: started before it must not store a result derived from what was reset.
        self.epoch = 0
        self._fingerprint = fingerprint
        self._fingerprint_saved = False  # set by Memoized when the saved one matches
        super().__init__(*args, **kwargs)

    def store(self, key: bytes, result: object, epoch: int) -> None:
        """Keep ``result`` unless the cache was reset since ``epoch`` (it may be stale)."""
        with self._lock:  # a reset holds it throughout: check and store are one step
            if self.epoch == epoch:
                self[key] = result

    def _saved(self) -> None:
        # A load or a reset replaced the contents; nothing was written, so no save counts.
        super()._saved_through(self._edit_mark())

    def _saved_through(self, mark: int) -> None:
        super()._saved_through(mark)
        if not self._fingerprint_saved:
            # After the contents, never before: a crash in between leaves contents
            # without a fingerprint, which the next run treats as stale (the safe side).
            self.manager.store.update_meta(self.name, fingerprint=self._fingerprint())
            self._fingerprint_saved = True
        self.saves += 1  # last: a save counts once all of it is written

    def _delete_saved_self(self) -> None:
        super()._delete_saved_self()
        self.epoch += 1
        self._fingerprint_saved = False


_UNSET: Any = object()  # a parameter no argument has filled yet


class _Call:
    """One computation in flight; the threads asking for the same key wait on it.

    ``running`` is held by the computing thread until the outcome is set (a bare
    lock: an Event costs a Condition and two locks on every miss).
    """

    __slots__ = ("error", "result", "retry", "running")

    def __init__(self) -> None:
        self.running = threading.Lock()
        self.running.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.retry = False  # the computing thread was interrupted: waiters compute themselves


class Memoized(Generic[P, R]):
    """A function whose results persist in the manager's cache called :attr:`name`.

    Made by :meth:`CacheManager.memoize <cacheman.cacher.CacheManager.memoize>`.
    Calling it looks the call's key up in :attr:`cache`; on a miss it runs the
    function once per key (other threads asking for that key wait for the
    result; an exception is raised to each of them and not cached) and stores
    the result, which the cache saves in the background.

    The cache is opened on first use (a call, :attr:`cache`, :meth:`cache_clear`),
    not at decoration, so importing a module of memoized functions does no I/O.
    Opening compares the function's :attr:`fingerprint` with the one saved
    beside the cache; if they differ, the cache and every cache derived from it
    are reset first.
    """

    def __init__(
        self,
        manager: CacheManager,
        function: Callable[P, R],
        name: str | None = None,
        *,
        depends_on: Iterable[Memoized[..., Any] | str] = (),
        version: object = None,
        key: Callable[..., object] | None = None,
        check_code: bool = True,
    ) -> None:
        functools.update_wrapper(self, function)
        self.manager = manager
        self.name = default_name(function) if name is None else validate_cache_name(name)
        self._function = function
        self._key = key
        self._version = version
        self._check_code = check_code
        self._depends_on = tuple(_checked_dependency(self, each) for each in depends_on)
        self._code_digest: bytes | None = None
        if check_code:
            self._code()  # now: a function without Python code is refused at decoration
        # The signature is read once here; the hot path only compares a length.
        try:
            self._signature: inspect.Signature | None = inspect.signature(function)
        except ValueError:  # some built-ins have none: calls are keyed as they are spelled
            self._signature = None
        params = [] if self._signature is None else list(self._signature.parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        simple = all(param.kind in positional for param in params)
        #: For a function of positional parameters only: their count and defaults, so
        #: a call without keywords is put in canonical form without binding.  -1 sends
        #: every call off the hot path (other kinds of parameters, or key=).
        self._arity = len(params) if simple and key is None and self._signature is not None else -1
        self._defaults = tuple(
            param.default for param in params if param.default is not inspect.Parameter.empty
        )
        self._index = {
            param.name: index
            for index, param in enumerate(params)
            if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }
        self._cache: MemoCache | None = None
        self._hits = 0
        self._misses = 0
        self._new_locks()
        _live.add(self)

    def _new_locks(self) -> None:
        """Fresh locks and no computation in flight (also in a child forked by the user)."""
        self._open_lock = threading.Lock()
        # A forked child inherits the in-flight computations of threads it does not
        # have: waiting on them would wait forever, so it starts with none.
        self._calls: dict[bytes, _Call] = {}
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<memoized {self.__wrapped__!r} in cache {self.name!r}>"  # type: ignore[attr-defined]

    def __reduce__(self) -> str:
        # Pickled by reference, like a function (multiprocessing sends it that way).
        return self.__qualname__  # type: ignore[attr-defined,no-any-return]

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Used as a method, bind like a function would (the instance is then part of the key).
        return self if instance is None else types.MethodType(self, instance)

    # -- the call path ------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        cache = self._cache
        if kwargs or len(args) != self._arity or cache is None:
            return self._call(args, kwargs)
        # The hot path: positional arguments already in canonical form.
        key = args_digest(args)
        try:
            result: R = cache[key]
        except KeyError:
            pass  # the miss runs outside this block, so its errors do not chain to a KeyError
        else:
            self._hits += 1
            return result
        return self._miss(cache, key, args, kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """A call off the hot path: keywords, defaults, ``key=``, or the cache not open yet."""
        cache = self._cache if self._cache is not None else self._open()
        if self._key is not None:
            key = value_digest(self._key(*args, **kwargs))
        else:
            key = args_digest(self._canonical(args, kwargs))
        try:
            result: R = cache[key]
        except KeyError:
            pass  # the miss runs outside this block, so its errors do not chain to a KeyError
        else:
            self._hits += 1
            return result
        return self._miss(cache, key, args, kwargs)

    def key_of(self, *args: Any, **kwargs: Any) -> bytes:
        """The key under which the result of ``self(*args, **kwargs)`` is cached.

        A 16-byte digest, equal in every process and run for equal arguments;
        ``f(1, b=2)``, ``f(1, 2)`` and (with ``b=2`` the default) ``f(1)``
        share it.  With ``key=``, the digest of what that function returns.
        """
        if self._key is not None:
            return value_digest(self._key(*args, **kwargs))
        return args_digest(self._canonical(args, kwargs))

    def _canonical(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Every parameter's value, in order, defaults filled in (``**kwargs`` sorted)."""
        if not kwargs and len(args) == self._arity:
            return args
        missing = self._arity - len(args)
        if not kwargs and 0 < missing <= len(self._defaults):  # f(1) for f(a, b=2)
            return args + self._defaults[len(self._defaults) - missing :]
        if missing >= 0:
            simple = self._simple_canonical(args, kwargs)
            if simple is not None:
                return simple
        if self._signature is None:
            return (args, tuple(sorted(kwargs.items())))
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.__qualname__}(): {error}") from None  # type: ignore[attr-defined]
        bound.apply_defaults()
        values = []
        for param in self._signature.parameters.values():
            value = bound.arguments[param.name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                value = tuple(sorted(value.items()))
            values.append(value)
        return tuple(values)

    def _simple_canonical(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        """``_canonical`` for positional parameters, without ``Signature.bind`` (5x faster).

        None for a call it cannot place (an unknown or repeated name, a missing
        argument): ``bind`` then raises the error Python would.
        """
        values = list(args)
        values += [_UNSET] * (self._arity - len(args))
        for name, value in kwargs.items():
            index = self._index.get(name)
            if index is None or values[index] is not _UNSET:
                return None
            values[index] = value
        first_default = self._arity - len(self._defaults)
        for index in range(len(args), self._arity):
            if values[index] is _UNSET:
                if index < first_default:
                    return None
                values[index] = self._defaults[index - first_default]
        return tuple(values)

    def _miss(
        self, cache: MemoCache, key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        with self._calls_lock:
            call = self._calls.get(key)
            if call is None:
                found = cache.get(key, _UNSET)
                if found is not _UNSET:  # stored by another thread since our look-up
                    self._hits += 1
                    return found  # type: ignore[no-any-return]
                call = self._calls[key] = _Call()
                self._misses += 1
                computing = True
            else:
                computing = False
        if not computing:
            return self._wait(call, args, kwargs)
        epoch = cache.epoch
        try:
            result = self._function(*args, **kwargs)
        except Exception as error:
            call.error = error
            raise
        except BaseException:
            call.retry = True  # KeyboardInterrupt, SystemExit: the waiters are not interrupted
            raise
        else:
            call.result = result
            cache.store(key, result, epoch)
        finally:
            # Stored before the call is dropped, so a later caller finds one or the other.
            with self._calls_lock:
                del self._calls[key]
            call.running.release()
        return result

    def _wait(self, call: _Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        with call.running:  # returns once the computing thread has released it
            pass
        if call.retry:
            return self(*args, **kwargs)
        if call.error is not None:
            raise call.error
        self._hits += 1
        return call.result  # type: ignore[no-any-return]

    # -- the cache and its fingerprint ---------------------------------------------

    @property
    def cache(self) -> MemoCache:
        """The AutoSyncCache holding the results (opened, and checked, on first use)."""
        return self._cache if self._cache is not None else self._open()

    @property
    def stats(self) -> MemoStats:
        """Hits, misses and completed saves in this process (see :class:`MemoStats`)."""
        saves = 0 if self._cache is None else self._cache.saves
        return MemoStats(self._hits, self._misses, saves)

    def cache_clear(self) -> None:
        """Empty the cache, delete its saved copy, and reset every cache derived from it."""
        cache = self.cache
        self.manager.invalidate_and_rebuild_cache(self.name)
        self._hits = self._misses = cache.saves = 0

    @property
    def fingerprint(self) -> str:
        """A digest of the code (unless ``check_code=False``), ``version`` and the dependencies.

        A dependency counts by its own fingerprint (a memoized function) or by
        the ``generation`` in its metadata (a cache, changed whenever it is
        invalidated).
        """
        parts = [_FINGERPRINT_RECIPE]
        if self._check_code:
            parts.append(self._code())
        encode(self._version, parts)
        for dependency in self._depends_on:
            if isinstance(dependency, Memoized):
                encode(("function", dependency.name, dependency.fingerprint), parts)
            else:
                meta = self.manager.store.read_meta(dependency) or {}
                encode(("cache", dependency, meta.get("generation")), parts)
        return hashlib.blake2b(b"".join(parts), digest_size=16).hexdigest()

    def _code(self) -> bytes:
        if self._code_digest is None:
            code = getattr(self._function, "__code__", None)
            if code is None:
                raise TypeError(
                    f"memoize {self.name!r}: {self._function!r} has no Python code to "
                    "fingerprint; pass check_code=False (and bump version= when it changes)"
                )
            parts: list[bytes] = []
            code_parts(code, parts)
            self._code_digest = hashlib.blake2b(b"".join(parts)).digest()
        return self._code_digest

    def _open(self) -> MemoCache:
        """Register the cache; reset it (and what derives from it) if the fingerprint changed."""
        with self._open_lock:
            if self._cache is not None:
                return self._cache
            for dependency in self._depends_on:
                if isinstance(dependency, Memoized):
                    # Parents first: a parent that resets on opening would otherwise
                    # reset this cache in the middle of its first computation.
                    dependency._open()
                    parent = dependency.name
                else:
                    parent = dependency
                self.manager.register_dependent_cache(parent, self.name)
            # Registered empty first: re-registering a name saves the previous object
            # (and its fingerprint), which the comparison below must see.
            cache = MemoCache(
                self.name,
                cache_manager=self.manager,
                contents={},
                fingerprint=lambda: self.fingerprint,
            )
            fingerprint = self.fingerprint
            store = self.manager.store
            saved = (store.read_meta(self.name) or {}).get("fingerprint")
            if saved == fingerprint:
                cache._fingerprint_saved = True
                self.manager.reload_cache(self.name)
            elif saved is not None or store.exists(self.name):
                # The stale copy is never loaded: unpickling it may fail now that the code changed.
                _log.reset_by_code(
                    self.name, "the memoized function's code, version or a dependency"
                )
                self.manager.invalidate_and_rebuild_cache(self.name)
            self._cache = cache
            return cache


# Every memoized function, for the fork hook.
_live: weakref.WeakSet[Memoized[..., Any]] = weakref.WeakSet()


def _forget_inherited_calls() -> None:
    for memoized in list(_live):
        memoized._new_locks()


_lifecycle.on_fork_child(_forget_inherited_calls)


def _checked_dependency(
    memoized: Memoized[..., Any], dependency: object
) -> Memoized[..., Any] | str:
    if isinstance(dependency, Memoized):
        if dependency.manager is not memoized.manager:
            raise ValueError(
                f"memoize {memoized.name!r}: depends_on {dependency.name!r} belongs to manager "
                f"{dependency.manager.name!r}, not {memoized.manager.name!r}"
            )
        return dependency
    if isinstance(dependency, str):
        return validate_cache_name(dependency)
    raise TypeError(
        f"memoize {memoized.name!r}: depends_on takes memoized functions and cache names, "
        f"not {type(dependency).__name__}"
    )


def default_name(function: Callable[..., Any]) -> str:
    """``<module>.<qualname>`` of ``function``, made a valid cache name.

    Characters a name cannot hold (``/``, ``\\``, control characters) become
    ``_``; a name too long for a file name is cut and given a digest of the
    whole, so two long names stay apart.

    >>> default_name(default_name)
    'cacheman._memoize.default_name'
    """
    module = getattr(function, "__module__", None) or "unknown"
    qualname = getattr(function, "__qualname__", None) or getattr(function, "__name__", "function")
    whole = f"{module}.{qualname}"
    name = "".join("_" if c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F else c for c in whole)
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        digest = hashlib.blake2b(whole.encode(), digest_size=8).hexdigest()
        head = os.fsencode(name)[: MAX_NAME_BYTES - len(digest) - 1].decode(errors="ignore")
        name = f"{head}-{digest}"
    return validate_cache_name(name)


def memoize(
    manager: CacheManager,
    name: str | Callable[P, R] | None = None,
    *,
    depends_on: Iterable[Memoized[..., Any] | str] = (),
    version: object = None,
    key: Callable[..., object] | None = None,
    check_code: bool = True,
) -> Any:
    """The decorator behind :meth:`CacheManager.memoize`; bare ``@manager.memoize`` works too."""
    if callable(name):
        return Memoized(manager, name)

    def decorate(function: Callable[P, R]) -> Memoized[P, R]:
        return Memoized(
            manager,
            function,
            name,
            depends_on=depends_on,
            version=version,
            key=key,
            check_code=check_code,
        )

    return decorate
