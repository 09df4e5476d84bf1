"""``manager.memoize``: a function's results kept in a named AutoSyncCache.

Three parts: the key of a call (a stable digest, :mod:`cacheman._memo.keys`),
the fingerprint of the function (its code, ``version`` and what it depends
on; a change resets its cache and everything derived from it), and the call
path (a dict look-up on a hit; one computation per key on a miss, however many
threads ask).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import hashlib
import inspect
import logging
import os
import pickle
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, ParamSpec, TypeVar, cast

from .. import _log
from .._paths import MAX_NAME_BYTES, validate_cache_name
from .._persist.bounds import bounded_class
from .._process import lifecycle as _lifecycle
from ..autosync import AutoSyncCache
from ..cachewrap import PersistentCache
from ..errors import ManagerClosedError
from .fingerprint import describe_changes, fingerprint_parts, function_behind
from .keys import _plain, args_digest, encode, value_digest
from .leases import MISSING, Held, Leases, leases_for
from .stale import REFRESH_MODES, StaleAfter, seconds, stale_class

if TYPE_CHECKING:
    from ..cacher import CacheManager

__all__ = ["AsyncMemoized", "MemoCache", "MemoStats", "Memoized", "memoize"]

logger = logging.getLogger("cacheman")

P = ParamSpec("P")
R = TypeVar("R")

#: Bumped when the fingerprint's recipe changes, so old fingerprints never match.
_FINGERPRINT_RECIPE = b"cacheman-memoize-2"
#: With ``lease="auto"``, a function takes leases while its computations typically take this
#: long: a lease and a durable save cost about a millisecond, so cheaper functions just compute.
LEASE_AUTO_SECONDS = 0.01
#: Stale results of one function refreshed at once; a stale hit past them is served
#: without starting one (a later call does).
MAX_REFRESHES = 8
#: A waiter polls a held lease from every millisecond up to every 50 ms (back-off).
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.05


class MemoStats(NamedTuple):
    """How a memoized function's calls went, in this process.

    ``hits``: calls answered from the cache (or by another thread's computation
    of the same key, or with a stale result: ``stale_after``); ``misses``: calls
    that ran the function (raising or not; a stale result's refresh counts);
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
    function's fingerprint (and its parts, which name what a later change
    touched) to the cache's metadata when it opens an empty cache, and after
    the first save that follows a later deletion of the saved copy (a reset
    deletes the metadata too).
    """

    def __init__(
        self,
        *args: Any,
        fingerprint: Callable[[], dict[str, Any]],
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
            self.manager.store.update_meta(self.name, **self._fingerprint())
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
        lease: bool | Literal["auto"] = "auto",
        lease_timeout: float = 60.0,
        ttl: float | datetime.timedelta | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        stale_after: float | datetime.timedelta | None = None,
        refresh: Literal["background", "wait"] = "background",
    ) -> None:
        functools.update_wrapper(self, function)
        self.manager = manager
        self.name = default_name(function) if name is None else validate_cache_name(name)
        self._function = function
        self._key = key
        self._version = version
        self._check_code = check_code
        if lease not in (True, False, "auto"):
            raise ValueError(f"memoize {self.name!r}: lease must be True, False or 'auto'")
        if not lease_timeout > 0:
            raise ValueError(f"memoize {self.name!r}: lease_timeout must be > 0 seconds")
        self._lease = lease
        ttl = seconds(ttl, "ttl", self.name)
        stale_after = seconds(stale_after, "stale_after", self.name)
        if refresh not in REFRESH_MODES:
            raise ValueError(
                f"memoize {self.name!r}: refresh must be 'background' or 'wait', not {refresh!r}"
            )
        if stale_after is not None and ttl is not None and stale_after >= ttl:
            raise ValueError(
                f"memoize {self.name!r}: stale_after ({stale_after:g} s) must be shorter than "
                f"ttl ({ttl:g} s): a result past its ttl is deleted, never stale"
            )
        #: ttl, max_entries, max_bytes, stale_after: given, the memo cache is bounded (see
        #: _persist.bounds and _memo.stale)
        self._bounds = {
            option: value
            for option, value in (
                ("ttl", ttl),
                ("max_entries", max_entries),
                ("max_bytes", max_bytes),
                ("stale_after", stale_after),
            )
            if value is not None
        }
        #: A stale result is served while a thread computes the fresh one.
        self._serve_stale = stale_after is not None and refresh == "background"
        self._lease_timeout = float(lease_timeout)
        self._slow = False  # computations typically take LEASE_AUTO_SECONDS or more
        self._typical: float | None = None  # seconds a computation typically takes
        self._leases: tuple[MemoCache, Leases | None] | None = None
        self._depends_on = tuple(_checked_dependency(self, each) for each in depends_on)
        #: The parts of the code's fingerprint, walked at the first call (not here: the
        #: helpers a function calls may be defined below it in its module).
        self._code_parts: dict[str, str] | None = None
        if check_code and function_behind(function) is None:
            raise TypeError(
                f"memoize {self.name!r}: {function!r} has no Python code to "
                "fingerprint; pass check_code=False (and bump version= when it changes)"
            )
        self._unpicklable_warned: set[type] = set()
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
        _claim(self)
        _live.add(self)

    def _new_locks(self) -> None:
        """Fresh locks and no computation in flight (also in a child forked by the user)."""
        self._open_lock = threading.Lock()
        # A forked child inherits the in-flight computations of threads it does not
        # have: waiting on them would wait forever, so it starts with none.
        self._calls: dict[bytes, Any] = {}  # _Call, or _AsyncCall for an async function
        self._calls_lock = threading.Lock()
        # Refreshes of stale results running at once (each a thread, or a task when async).
        self._refreshers = threading.BoundedSemaphore(MAX_REFRESHES)
        self._refresh_tasks: set[asyncio.Task[None]] = set()

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
        if not self.manager.holds(cache):  # deregistered, or its manager closed
            cache = self._reopen(cache)
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
            stale, computing = self._stale_locked(cache, key, computing)
        if stale is not _UNSET:
            if computing:
                self._start_refresh(call, cache, key, args, kwargs)
            return stale  # type: ignore[no-any-return]
        if not computing:
            return self._wait(call, args, kwargs)
        try:
            result = self._compute(cache, key, args, kwargs)
        except Exception as error:
            call.error = error
            raise
        except BaseException:
            call.retry = True  # KeyboardInterrupt, SystemExit: the waiters are not interrupted
            raise
        else:
            call.result = result
        finally:
            # Stored before the call is dropped, so a later caller finds one or the other.
            with self._calls_lock:
                del self._calls[key]
            call.running.release()
        return result

    def _stale_locked(self, cache: MemoCache, key: bytes, computing: bool) -> tuple[Any, bool]:
        """The stale result to serve for ``key`` now (else _UNSET), and whether to refresh it.

        Called with ``_calls_lock`` held, after a miss of a fresh result;
        ``computing``: this caller took the key's computation on.  With a stale
        result to serve, that computation becomes a refresh, unless
        ``MAX_REFRESHES`` run already (then it is dropped: a later call refreshes).
        """
        if not self._serve_stale or not isinstance(cache, StaleAfter):
            return _UNSET, computing
        stale = cache.stale(key, _UNSET)
        if stale is _UNSET:
            return _UNSET, computing
        self._hits += 1
        if computing and not self._refreshers.acquire(blocking=False):
            del self._calls[key]
            self._misses -= 1
            computing = False
        return stale, computing

    def _start_refresh(
        self,
        call: _Call,
        cache: MemoCache,
        key: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        _lifecycle.start_thread(
            threading.Thread(
                target=self._refresh,
                args=(call, cache, key, args, kwargs),
                name=f"cacheman-refresh {self.name}",
                daemon=True,
            )
        )

    def _refresh(
        self,
        call: _Call,
        cache: MemoCache,
        key: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """A thread's body: compute a stale key again; callers meanwhile get the stale result."""
        try:
            call.result = self._compute(cache, key, args, kwargs)
        except Exception as error:
            call.error = error  # raised to a caller that waits (its result expired meanwhile)
            self._refresh_failed(error)
        except BaseException:
            call.retry = True
            raise
        finally:
            with self._calls_lock:
                if self._calls.get(key) is call:
                    del self._calls[key]
            call.running.release()
            self._refreshers.release()

    def _refresh_failed(self, error: Exception) -> None:
        logger.warning(
            "memoize %r: refreshing a stale result failed (%s: %s); the stale result is "
            "served until a refresh succeeds",
            self.name,
            type(error).__name__,
            error,
        )

    def _compute(
        self, cache: MemoCache, key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        """Run the function for ``key`` and store the result, under the key's lease if leased."""
        leases = self._leases_for(cache)
        if leases is None:
            return self._run(cache, key, args, kwargs)
        held = self._take_lease(leases, key)
        try:
            found = self._saved_elsewhere(leases, cache, key)
            if found is not MISSING:
                return found  # type: ignore[no-any-return]
            result = self._run(cache, key, args, kwargs)
            self._publish(leases, cache)
            return result
        finally:
            if held is not None:
                held.release()

    def _run(
        self, cache: MemoCache, key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        epoch = cache.epoch
        if self._lease != "auto":
            result = self._function(*args, **kwargs)
        else:
            started = time.perf_counter()
            result = self._function(*args, **kwargs)
            self._timed(started)
        self._keep(cache, key, result, epoch)
        return result

    # -- leases: one computation per key across processes ---------------------------

    def _leases_for(self, cache: MemoCache) -> Leases | None:
        """The leases to take for a miss now; None when this function goes without."""
        if self._lease is False or (self._lease == "auto" and not self._slow):
            return None
        if self._leases is None or self._leases[0] is not cache:
            self._leases = (cache, leases_for(self.manager.store, self.name, self._lease_timeout))
        return self._leases[1]

    def _timed(self, started: float) -> None:
        """Keep the typical computation time (a moving average): lease="auto" decides by it.

        An average, so one call slowed by a pause (a GC, a busy machine) does not
        make every later miss pay a lease and a durable save.
        """
        elapsed = time.perf_counter() - started
        typical = self._typical
        self._typical = elapsed if typical is None else typical + 0.2 * (elapsed - typical)
        self._slow = self._typical >= LEASE_AUTO_SECONDS

    def _take_lease(self, leases: Leases, key: bytes) -> Held | None:
        """Wait for the lease of ``key``; None (compute anyway) after twice ``lease_timeout``.

        Twice: a dead holder's Redis lease expires after ``lease_timeout``, and
        one waiter must get it then, not give up at the same moment and compute
        beside the one that did.
        """
        deadline = time.monotonic() + 2 * self._lease_timeout
        pause = _FIRST_PAUSE
        while True:
            held = leases.acquire(key)
            if held is not None:
                return held
            if time.monotonic() >= deadline:
                self._lease_timed_out()
                return None
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)

    def _lease_timed_out(self) -> None:
        logger.warning(
            "memoize %r: another process has held a key's lease for over %g s; computing it "
            "here too (raise lease_timeout= if computations take longer)",
            self.name,
            2 * self._lease_timeout,
        )

    def _saved_elsewhere(self, leases: Leases, cache: MemoCache, key: bytes) -> Any:
        try:
            found = leases.saved_result(cache, key)
        except Exception as error:  # a failed look costs a computation, nothing more
            logger.warning("memoize %r: reading others' results failed: %s", self.name, error)
            return MISSING
        if found is not MISSING and isinstance(cache, StaleAfter) and key not in cache:
            return MISSING  # what the store holds is the stale result being refreshed
        if found is not MISSING:
            self._misses -= 1  # counted when this thread took the computation on
            self._hits += 1
        return found

    def _publish(self, leases: Leases, cache: MemoCache) -> None:
        try:
            leases.publish(cache)
        except Exception as error:  # the result stays pending; autosync saves it later
            logger.warning(
                "memoize %r: saving a result for other processes failed: %s", self.name, error
            )

    def _wait(self, call: _Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        with call.running:  # returns once the computing thread has released it
            pass
        if call.retry:
            return self(*args, **kwargs)
        if call.error is not None:
            raise call.error
        self._hits += 1
        return call.result  # type: ignore[no-any-return]

    def _keep(self, cache: MemoCache, key: bytes, result: object, epoch: int) -> None:
        """Store a computed result, unless it cannot be saved or its cache was reset meanwhile."""
        if not (_plain((result,)) or _surely_picklable(result) or _picklable(result)):
            # Stored, it would make every save of the cache fail: all results lost.
            if type(result) not in self._unpicklable_warned:
                self._unpicklable_warned.add(type(result))
                logger.warning(
                    "memoize %r: a result of type %s.%s can be pickled neither by pickle nor "
                    "by cloudpickle; it is returned but not stored (the other results are "
                    "saved). Return a picklable value to cache it.",
                    self.name,
                    type(result).__module__,
                    type(result).__qualname__,
                )
            return
        if not self.manager.holds(cache):
            # Deregistered while computing: store where the results are saved now.
            if cache.epoch != epoch:
                return
            cache = self._reopen(cache)
            epoch = cache.epoch
        cache.store(key, result, epoch)

    def _reopen(self, stale: MemoCache) -> MemoCache:
        """The cache was deregistered: register it again (or raise if the manager is closed).

        A memoized function never computes into a cache its manager no longer
        saves: its results would be lost at exit.
        """
        if self.manager.closed:
            raise ManagerClosedError(
                f"memoize {self.name!r}: manager {self.manager.name!r} is closed; "
                "decorate the function with an open manager's memoize"
            )
        with self._open_lock:
            if self._cache is stale:
                self._cache = None
        logger.debug("memoize %r: its cache was deregistered; registering it again", self.name)
        return self._open()

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

        The code counts with what it reaches of the user's own code: the
        functions and methods it calls, the classes it uses, the module
        constants it reads, its closure cells and default arguments (see
        :mod:`cacheman._memo.fingerprint`).  A dependency counts by its own
        fingerprint (a memoized function) or by the ``generation`` in its
        metadata (a cache, changed whenever it is invalidated).
        """
        return _combined(self._fingerprint_parts())

    def _fingerprint_parts(self) -> dict[str, str]:
        """What the fingerprint is made of, each part named (for the log of a reset)."""
        if self._code_parts is None:
            self._code_parts = self._walked_code() if self._check_code else {}
        parts = dict(self._code_parts)
        parts["version"] = _part_digest(self._version)
        for dependency in self._depends_on:
            if isinstance(dependency, Memoized):
                parts[f"depends_on {dependency.name}"] = dependency.fingerprint
            else:
                meta = self.manager.store.read_meta(dependency) or {}
                parts[f"depends_on {dependency}"] = _part_digest(meta.get("generation"))
        return parts

    def _walked_code(self) -> dict[str, str]:
        try:
            return fingerprint_parts(self._function)
        except RecursionError:  # a call graph deeper than the interpreter's stack
            logger.warning(
                "memoize %r: its call graph is too deep to walk; only the function's own "
                "code counts in its fingerprint (bump version= when a helper changes)",
                self.name,
            )
            return fingerprint_parts(self._function, follow=False)

    def _meta_fields(self) -> dict[str, Any]:
        parts = self._fingerprint_parts()
        return {"fingerprint": _combined(parts), "fingerprint_parts": parts}

    def _cache_class(self) -> type[PersistentCache]:
        """MemoCache, or its variant with bounds (or ages, for ``stale_after``) when asked."""
        if "stale_after" in self._bounds:
            return stale_class(MemoCache)
        return bounded_class(MemoCache) if self._bounds else MemoCache

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
            cache = cast(
                "MemoCache",
                self._cache_class()(
                    self.name,
                    cache_manager=self.manager,
                    contents={},
                    fingerprint=self._meta_fields,
                    **self._bounds,
                ),
            )
            parts = self._fingerprint_parts()
            fingerprint = _combined(parts)
            store = self.manager.store
            meta = store.read_meta(self.name) or {}
            saved = meta.get("fingerprint")
            if saved == fingerprint:
                cache._fingerprint_saved = True
                self.manager.reload_cache(self.name)
            elif saved is not None or store.exists(self.name):
                old_parts = meta.get("fingerprint_parts")
                if saved is None:
                    why = "results were saved without a fingerprint"
                elif isinstance(old_parts, dict):
                    why = describe_changes(old_parts, parts)
                else:
                    why = "they were saved by an older CacheMan (another fingerprint recipe)"
                # WARNING (in _log): results the user may have waited hours for are dropped.
                _log.reset_by_code(self.name, f"its code or a dependency ({why})")
                # The stale copy is never loaded: unpickling it may fail now that the code changed.
                self.manager.invalidate_and_rebuild_cache(self.name)
            else:
                # Nothing saved yet: load that nothing, so the first save appends to what
                # other processes may save meanwhile instead of replacing it.
                self.manager.reload_cache(self.name)
            if not cache._fingerprint_saved:
                # Nothing is saved now (never, or just reset): the fingerprint goes first,
                # so another process opening the cache before this one's first save lands
                # loads it, rather than taking its results for stale ones and resetting.
                store.update_meta(self.name, **self._meta_fields())
                cache._fingerprint_saved = True
            self._cache = cache
            return cache


class AsyncMemoized(Memoized[P, R]):
    """A memoized ``async def``: the function is awaited once per key, its result stored.

    Concurrent awaits of one key, in one event loop or several (threads),
    run the function once; the others await its outcome.  A hit returns the
    cached result without suspending.  An exception reaches every awaiter and
    is not cached; if the computing task is cancelled, the awaiters compute
    for themselves.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Frameworks ask iscoroutinefunction() before awaiting a handler: say yes.
        mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
        if mark is not None:
            mark(self)
        self._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)  # 3.10-3.11

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:  # type: ignore[override]
        cache = self._cache
        if kwargs or len(args) != self._arity or cache is None:
            cache = self._cache if self._cache is not None else self._open()
            key = self.key_of(*args, **kwargs)
        else:
            key = args_digest(args)
        try:
            result: R = cache[key]
        except KeyError:
            pass
        else:
            self._hits += 1
            return result
        return await self._amiss(cache, key, args, kwargs)

    async def _amiss(
        self, cache: MemoCache, key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        if not self.manager.holds(cache):  # deregistered, or its manager closed
            cache = self._reopen(cache)
        with self._calls_lock:
            call = self._calls.get(key)
            if call is None:
                found = cache.get(key, _UNSET)
                if found is not _UNSET:
                    self._hits += 1
                    return found  # type: ignore[no-any-return]
                call = self._calls[key] = _AsyncCall()
                self._misses += 1
                computing = True
            else:
                computing = False
            stale, computing = self._stale_locked(cache, key, computing)
        if stale is not _UNSET:
            if computing:
                task = asyncio.get_running_loop().create_task(
                    self._arefresh(call, cache, key, args, kwargs)
                )
                self._refresh_tasks.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(self._refresh_tasks.discard)
            return stale  # type: ignore[no-any-return]
        if not computing:
            outcome = await asyncio.wrap_future(call.future)
            if outcome is _RETRY:
                return await self(*args, **kwargs)
            self._hits += 1
            return outcome  # type: ignore[no-any-return]
        try:
            result: R = await self._acompute(cache, key, args, kwargs)
        except Exception as error:
            call.future.set_exception(error)
            raise
        except BaseException:
            call.future.set_result(_RETRY)  # cancelled: the awaiters were not
            raise
        else:
            call.future.set_result(result)
        finally:
            with self._calls_lock:
                del self._calls[key]
        return result

    async def _arefresh(
        self,
        call: _AsyncCall,
        cache: MemoCache,
        key: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """:meth:`Memoized._refresh` as a task of the caller's event loop."""
        try:
            result = await self._acompute(cache, key, args, kwargs)
        except Exception as error:
            call.future.set_exception(error)
            self._refresh_failed(error)
        except BaseException:
            call.future.set_result(_RETRY)  # cancelled: the awaiters compute themselves
            raise
        else:
            call.future.set_result(result)
        finally:
            with self._calls_lock:
                if self._calls.get(key) is call:
                    del self._calls[key]
            self._refreshers.release()

    async def _acompute(
        self, cache: MemoCache, key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        leases = self._leases_for(cache)
        if leases is None:
            return await self._arun(cache, key, args, kwargs)
        held = await self._atake_lease(leases, key)
        try:
            found = self._saved_elsewhere(leases, cache, key)
            if found is not MISSING:
                return found  # type: ignore[no-any-return]
            result = await self._arun(cache, key, args, kwargs)
            self._publish(leases, cache)
            return result
        finally:
            if held is not None:
                held.release()

    async def _arun(
        self, cache: MemoCache, key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        epoch = cache.epoch
        started = time.perf_counter()
        result: R = await self._function(*args, **kwargs)  # type: ignore[misc]
        if self._lease == "auto":
            self._timed(started)
        self._keep(cache, key, result, epoch)
        return result

    async def _atake_lease(self, leases: Leases, key: bytes) -> Held | None:
        """:meth:`Memoized._take_lease` without blocking the event loop while waiting."""
        deadline = time.monotonic() + 2 * self._lease_timeout
        pause = _FIRST_PAUSE
        while True:
            held = leases.acquire(key)
            if held is not None:
                return held
            if time.monotonic() >= deadline:
                self._lease_timed_out()
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)


_RETRY: Any = object()  # an async computation was cancelled: its awaiters compute themselves


class _AsyncCall:
    """One async computation in flight: a thread-safe future its awaiters wait on, in any loop."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # Running: an awaiter that is cancelled cannot cancel the others' outcome.
        self.future.set_running_or_notify_cancel()


def _part_digest(value: object) -> str:
    out: list[bytes] = []
    encode(value, out)
    return hashlib.blake2b(b"".join(out), digest_size=8).hexdigest()


def _combined(parts: dict[str, str]) -> str:
    out = [_FINGERPRINT_RECIPE]
    encode(sorted(parts.items()), out)
    return hashlib.blake2b(b"".join(out), digest_size=16).hexdigest()


_PLAIN = frozenset({str, int, float, bool, bytes, type(None), complex})


def _surely_picklable(value: object, depth: int = 0) -> bool:
    """A quick yes for the usual results (scalars, small containers of them); else ask pickle."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if depth > 2:
        return False
    if kind is tuple or kind is list:
        return len(value) <= 64 and all(_surely_picklable(v, depth + 1) for v in value)  # type: ignore[arg-type,attr-defined]
    if kind is dict:
        return len(value) <= 64 and all(  # type: ignore[arg-type]
            _surely_picklable(k, depth + 1) and _surely_picklable(v, depth + 1)
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    return False


def _picklable(value: object) -> bool:
    """Whether the store can save ``value`` (it tries pickle, then cloudpickle)."""
    try:
        pickle.dumps(value, protocol=5)
    except Exception:  # any failure: cloudpickle may still manage
        pass
    else:
        return True
    try:
        import cloudpickle  # type: ignore[import-untyped]

        cloudpickle.dumps(value, protocol=5)
    except Exception:  # what the store would hit at save time
        return False
    return True


# Who holds each memo name, per manager: two functions sharing a cache would reset
# each other at every run (each sees the other's fingerprint).
_claims: weakref.WeakValueDictionary[tuple[int, str], Memoized[..., Any]] = (
    weakref.WeakValueDictionary()
)
_claims_lock = threading.Lock()


def _identity(memoized: Memoized[..., Any]) -> str:
    function = memoized._function
    module = getattr(function, "__module__", None)
    return f"{module}.{getattr(function, '__qualname__', function)}"


def _claim(memoized: Memoized[..., Any]) -> None:
    """Refuse a second function under a name another live function of the manager uses.

    The same function decorated again (a re-run notebook cell, a reloaded
    module, a new version of it) takes the name over.
    """
    slot = (id(memoized.manager), memoized.name)
    with _claims_lock:
        holder = _claims.get(slot)
        if (
            holder is not None
            and holder.manager is memoized.manager
            and _identity(holder) != _identity(memoized)
        ):
            raise ValueError(
                f"memoize {memoized.name!r}: the name is already used by "
                f"{_identity(holder)} in manager {memoized.manager.name!r}; give "
                f"{_identity(memoized)} another name= (two functions sharing one cache "
                "would reset each other's results at every run)"
            )
        _claims[slot] = memoized


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
    'cacheman._memo.memoize.default_name'
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
    lease: bool | Literal["auto"] = "auto",
    lease_timeout: float = 60.0,
    ttl: float | datetime.timedelta | None = None,
    max_entries: int | None = None,
    max_bytes: int | None = None,
    stale_after: float | datetime.timedelta | None = None,
    refresh: Literal["background", "wait"] = "background",
) -> Any:
    """The decorator behind :meth:`CacheManager.memoize`; bare ``@manager.memoize`` works too."""
    if callable(name):
        return _kind(name)(manager, name)

    def decorate(function: Callable[P, R]) -> Memoized[P, R]:
        return _kind(function)(  # type: ignore[return-value]
            manager,
            function,
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

    return decorate


def _kind(function: Callable[..., Any]) -> type[Memoized[..., Any]]:
    """:class:`AsyncMemoized` for an ``async def`` (its calls return coroutines), else Memoized."""
    behind = function_behind(function)
    if inspect.iscoroutinefunction(function) or (
        behind is not None and inspect.iscoroutinefunction(behind)
    ):
        return AsyncMemoized
    return Memoized
