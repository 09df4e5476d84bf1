"""One computation per key across processes: a per-key lease in the store, and a look for results.

A process that misses a key takes the key's *lease* before computing; the
others, finding it held, wait, and read the result the holder saved once it
lets go.  The holder saves before it lets go, so a waiter that gets the lease
next finds the result and does not compute.

* **Pickle store**: a lease is an ``flock`` on ``.<cache>.leases/<key>`` in
  the manager's directory.  The kernel drops the lock of a process that dies
  (SIGKILL included), so a dead holder's lease is free at once.  A holder
  deletes the file before unlocking; a process that locked a file deleted
  meanwhile notices (the path no longer names its inode) and tries again.
  Results saved by others are read with ``cache.refresh()`` (the journal read
  from where this process last was: a ``stat`` and the new bytes).
* **Redis**: ``SET <prefix>:<cache>:lease:<key> <token> NX PX <timeout>``; it
  expires by itself ``timeout`` after a holder died, and is deleted only by its
  holder (compare-and-delete).  While the holder computes, a heartbeat thread
  extends its leases every third of ``timeout`` (compare-and-``PEXPIRE``), so
  a live holder's lease does not expire under it however long it computes
  (without it, a computation longer than ``timeout`` let a second process
  take the lease and compute too).  The token names the holder's host and process
  id, so a waiter on the same machine frees the lease of a holder that died at
  once instead of at expiry.  Results saved by others are read with one
  ``HGET`` of the key's field.

A live holder that takes longer than the lease timeout is waited for no
longer: the waiter computes too, with a warning (leases save work; they are
not needed for correctness).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._process import lifecycle as _lifecycle
from .._stores.pickle import PickleStore, ensure_private_directory
from .._stores.redis import RedisStore

if TYPE_CHECKING:
    from ..cachewrap import PersistentCache

__all__ = ["MISSING", "FileLeases", "Held", "Leases", "RedisLeases", "leases_for"]

MISSING: Any = object()  # no saved result for the key

logger = logging.getLogger("cacheman")


class Held(Protocol):
    """A lease this process holds; :meth:`release` lets the next process have it."""

    def release(self) -> None: ...


class Leases(Protocol):
    """The leases of one cache's keys in one store, and a look at what others saved."""

    def acquire(self, key: bytes) -> Held | None:
        """Take the lease of ``key`` if it is free (never blocks); None if another holds it."""

    def saved_result(self, cache: PersistentCache, key: bytes) -> Any:
        """The result of ``key`` saved by another process (put in ``cache``), else MISSING."""

    def publish(self, cache: PersistentCache) -> None:
        """Make this process's results visible to others (a durable save of the changes)."""


class _FileLease:
    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        # Delete, then unlock: a waiter that locks the old inode sees it is gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)


class FileLeases:
    """Leases as ``flock`` on one file per key (see the module docstring)."""

    def __init__(self, store: PickleStore, name: str) -> None:
        self.directory = store.directory / f".{name}.leases"
        self._ready = False

    def acquire(self, key: bytes) -> Held | None:
        if not self._ready:
            ensure_private_directory(self.directory)
            self._ready = True
        path = self.directory / key.hex()
        for _ in range(100):  # a handful of rounds at most, when holders come and go
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                mine.st_ino,
                mine.st_dev,
            ):
                return _FileLease(fd, path)
            os.close(fd)  # the holder we waited for deleted it: lock the new one
        return None

    def saved_result(self, cache: PersistentCache, key: bytes) -> Any:
        cache.refresh()
        return cache.get(key, MISSING)

    def publish(self, cache: PersistentCache) -> None:
        cache.refresh()  # writes this process's changes (durable), reads the others'


# KEYS[1] lease; ARGV[1] our token.  Deletes the lease only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _RedisLease:
    __slots__ = ("key", "leases", "token")

    def __init__(self, leases: RedisLeases, key: str, token: str) -> None:
        self.leases = leases
        self.key = key
        self.token = token

    def release(self) -> None:
        self.leases._forget(self.key)
        client = self.leases.store._client()
        client.register_script(_RELEASE)(keys=[self.key], args=[self.token])


# KEYS[1] lease; ARGV[1] our token, ARGV[2] milliseconds.  Extends it only if we still hold it.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisLeases:
    """Leases as ``SET NX PX`` keys beside the cache's hash (see the module docstring)."""

    def __init__(self, store: RedisStore, name: str, timeout: float) -> None:
        self.store = store
        self.name = name
        self.timeout_ms = max(1, int(timeout * 1000))
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # lease key -> our token, while we compute
        self._heartbeat: threading.Thread | None = None
        self._released = threading.Condition(self._lock)
        self._pid = os.getpid()

    def acquire(self, key: bytes) -> Held | None:
        lease_key = f"{self.store.prefix}:{self.name}:lease:{key.hex()}"
        token = f"{_HOST}:{os.getpid()}:{secrets.token_hex(8)}"
        client = self.store._client()
        for _ in range(2):
            if client.set(lease_key, token, nx=True, px=self.timeout_ms):
                self._beat_for(lease_key, token)
                return _RedisLease(self, lease_key, token)
            holder = client.get(lease_key)
            if holder is None or not _dead_here(holder):
                return None
            # A process of this machine that died holding it: free it now, not at expiry.
            client.register_script(_RELEASE)(keys=[lease_key], args=[holder])
        return None

    # -- the heartbeat: a live holder's leases do not expire ------------------------------

    def _beat_for(self, lease_key: str, token: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's leases and thread are not ours
                self._pid, self._held, self._heartbeat = os.getpid(), {}, None
            self._held[lease_key] = token
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._beat, name=f"cacheman-lease-heartbeat {self.name}", daemon=True
                )
                _lifecycle.start_thread(self._heartbeat)

    def _forget(self, lease_key: str) -> None:
        with self._lock:
            self._held.pop(lease_key, None)
            if not self._held:
                self._released.notify_all()  # the thread ends at once, not at its next beat

    def _beat(self) -> None:
        """The thread: every third of the timeout, extend every lease held; end when none is."""
        interval = self.timeout_ms / 3000
        while True:
            with self._lock:
                if self._heartbeat is not threading.current_thread():
                    return  # a forked child's stale record of its parent's thread
                if self._held:
                    self._released.wait(interval)
                held = list(self._held.items())
                if not held:
                    self._heartbeat = None
                    return
            try:
                extend = self.store._client().register_script(_EXTEND)
                for lease_key, token in held:
                    extend(keys=[lease_key], args=[token, self.timeout_ms])
            except Exception as error:  # the next beat tries again; the lease may expire
                logger.warning(
                    "memoize %r: extending a computation's lease failed (%s: %s)",
                    self.name,
                    type(error).__name__,
                    error,
                )

    def saved_result(self, cache: PersistentCache, key: bytes) -> Any:
        from .._stores.redis import _dump_key

        store = self.store
        field = _dump_key(key)
        stored = store._client().hget(store.data_key(self.name), field)
        if stored is None:
            return MISSING
        found: dict[Any, Any] = {}
        # The store's own decoding: signatures are checked before anything is unpickled.
        store._decode_into(self.name, store._mac(self.name), {field: stored}, found)
        value = found.get(key, MISSING)
        if value is not MISSING:
            # Seen, not changed here: the dict's own method, so no save writes it again.
            dict.__setitem__(cache, key, value)
        return value

    def publish(self, cache: PersistentCache) -> None:
        cache._save_now("rule")  # the changes this process tracked (an HSET), nothing more


_HOST = socket.gethostname()


def _dead_here(token: bytes | str) -> bool:
    """Whether a lease token names a process of this machine that no longer exists."""
    text = token.decode(errors="replace") if isinstance(token, bytes) else token
    host, _, rest = text.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def leases_for(store: object, name: str, timeout: float) -> Leases | None:
    """The leases of cache ``name`` in ``store``; None for a store without them."""
    if isinstance(store, PickleStore):
        return FileLeases(store, name)
    if isinstance(store, RedisStore):
        return RedisLeases(store, name, timeout)
    return None
