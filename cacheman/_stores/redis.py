"""The Redis store: every cache of a manager in one Redis, shared by many machines.

Layout, for a manager ``m`` under the namespace ``cacheman`` (the default)::

    cacheman:m:<name>:data    hash: pickled key -> pickled value (signed: 0x01 + HMAC + pickle)
    cacheman:m:<name>:meta    hash: metadata field -> JSON text (never pickled)
    cacheman:m:<name>:lock    string: the token of the process building the cache
    cacheman:m:edges          sorted set: JSON [parent, child], scored in declaration order
    cacheman:m:events         pub/sub channel: [name, generation] when a generation changes

On a Redis Cluster (``redis+cluster://``) the cache's name is a hash tag,
``cacheman:m:{<name>}:data`` and so on, so that every key of one cache lives in
one slot (its saves stay one ``MULTI`` or one script), while different caches
spread over the masters.  The events go out with ``PUBLISH``, which a cluster
relays to every node: a listener may subscribe at any node, and the publish
stays inside the script that changes the generation (a sharded ``SPUBLISH``
to a per-manager channel could not: its slot is not the cache's).  Relayed
over the cluster bus, an event reaches other nodes up to ~40 ms late, so the
listeners subscribe at the node that owns the channel's slot, and the writer
publishes each event once more after the script, at that node; listeners drop
the second copy.

One field per entry is what makes a change cheap: the single-machine journal
(``append``) maps onto a pipelined ``HSET``/``HDEL`` of the changed keys in one
``MULTI``, so several processes writing different keys all keep theirs.  A full
save builds a temporary hash and ``RENAME``-s it over the data key, so readers
see the old contents or the new, never a mix; a load walks the hash with
``HSCAN`` (a million entries in one ``HGETALL`` would stall the server for
everyone else) and starts over if a full save or a clear landed meanwhile,
which it notices by the ``_snapshot`` token every such write changes.

Unpickling is code execution, and a Redis is often writable by more programs
than the one reading it.  With a signing key, each value carries an
HMAC-SHA256 of the data key's name, the field (the pickled key) and the pickled
value, and both are unpickled only after it checked out.

Keys that compare equal must pickle to the same bytes for ``HSET``/``HDEL`` to
find their field: keys of one type do (containers are pickled without the
memo, so object identity never shows), but ``1``, ``1.0`` and ``True`` do
not; a cache that mixes them may see a deleted key come back.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hmac
import io
import json
import logging
import os
import pickle
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from hashlib import sha256
from typing import Any

from .._paths import validate_cache_name
from .._process import lifecycle as _lifecycle
from ..errors import (
    CorruptCacheError,
    InvalidCacheNameError,
    SignatureMismatchError,
    UnpicklableValueError,
)
from .api import Edge
from .generations import STALE, generation_of, is_stale
from .journal import CLEAR, DEL, SET, AppendResult, SaveResult, VerifyReport
from .pickle import (
    _REFUSED_BY_PICKLE,
    PICKLE_PROTOCOL,
    StoreUsage,
    _cloudpickle,
    _describe_unpicklable,
)
from .redis_events import Listener
from .redis_url import connect, is_cluster_url, node_url, password_of, redact, redact_text

__all__ = [
    "REDIS_URL_ENV",
    "EventCallback",
    "RedisStore",
]

logger = logging.getLogger("cacheman")

#: When set (and no ``store=`` is given), every CacheManager keeps its caches in this Redis.
REDIS_URL_ENV = "CACHEMAN_REDIS_URL"
FORMAT_VERSION = 1

#: ``callback(name, generation)``; ``(None, None)`` means "events may have been missed".
EventCallback = Callable[[str | None, str | None], object]


# Entries per HSET command, and commands per pipeline round trip, in a full save.
_BATCH = 1000
_BATCHES_PER_ROUND_TRIP = 20
_SCAN_COUNT = 10_000
# A temporary hash of a writer that died mid-save disappears after this (refreshed per batch).
_TEMPORARY_TTL_MS = 10 * 60 * 1000
_LOAD_ATTEMPTS = 3

# A signed value starts with this byte and the HMAC; an unsigned one is a bare
# pickle, which starts with b"\x80" (the PROTO opcode), so the two never mix up.
_SIGNED = b"\x01"
_PICKLE_START = b"\x80"
_MAC_SIZE = 32
_FIELD_LENGTH = struct.Struct("<I")
#: The meta field changed by every full save and clear (internal, not in read_meta).
_SNAPSHOT = "_snapshot"

# How many of this process's latest generation writes wrote_generation remembers.
_OWN_GENERATIONS = 1024

# Scalar keys pickle the same whatever object holds them; anything else goes
# through a memo-less pickler (see _dump_key).
_SCALAR_KEYS = frozenset({str, int, bytes, float, bool, type(None)})

# KEYS[1] meta hash; ARGV: channel, name, count of fields to set, then field/value
# pairs to set, then fields to delete.  Publishes when the generation changed.
_UPDATE_META = """
local old = redis.call('HGET', KEYS[1], 'generation')
local count = tonumber(ARGV[3])
local i = 4
for _ = 1, count do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
local new = redis.call('HGET', KEYS[1], 'generation')
local all = redis.call('HGETALL', KEYS[1])
if old ~= new then
  local event = cjson.encode({ARGV[2], new})
  redis.call('PUBLISH', ARGV[1], event)
  table.insert(all, '_published')
  table.insert(all, event)
end
return all
"""
#: The pseudo-field by which _UPDATE_META returns the event it published.
_PUBLISHED = "_published"

# KEYS[1] edges sorted set; ARGV: members.  A new member scores one above the last.
_ADD_EDGES = """
for _, member in ipairs(ARGV) do
  if not redis.call('ZSCORE', KEYS[1], member) then
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    local score = 1
    if last[2] then score = tonumber(last[2]) + 1 end
    redis.call('ZADD', KEYS[1], score, member)
  end
end
return 0
"""

# KEYS[1] edges sorted set; ARGV[1] a cache name.
_REMOVE_EDGES = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local edge = cjson.decode(member)
  if edge[1] == ARGV[1] or edge[2] == ARGV[1] then
    redis.call('ZREM', KEYS[1], member)
  end
end
return 0
"""

# KEYS[1] lock; ARGV[1] our token.  Deletes the lock only if we still hold it.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _redis_module() -> Any:
    """Import redis-py, or say which extra installs it."""
    try:
        import redis
    except ImportError as error:
        raise ImportError(
            "RedisStore needs the redis package: pip install 'cacheman[redis]' "
            "(or 'cacheman[redis-fast]' for the hiredis parser too)"
        ) from error
    return redis


def _dump_key(key: Any) -> bytes:
    """The field of ``key``: the same bytes for equal keys of one type, in any process.

    ``pickle.dumps`` memoizes by object identity, so ``("a", "a")`` pickles
    differently when its two strings are one object or two; a memo-less
    ("fast") pickler does not.  Scalars cannot differ that way and take the
    quicker path.
    """
    try:
        if type(key) in _SCALAR_KEYS:
            return pickle.dumps(key, PICKLE_PROTOCOL)
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, PICKLE_PROTOCOL)
        pickler.fast = True  # no memo: see above (keys are hashable, so not self-referencing)
        pickler.dump(key)
        return buffer.getvalue()
    except _REFUSED_BY_PICKLE:
        return bytes(_cloudpickle().dumps(key, PICKLE_PROTOCOL))


def _dump_value(value: Any) -> bytes:
    try:
        return pickle.dumps(value, PICKLE_PROTOCOL)
    except _REFUSED_BY_PICKLE:
        return bytes(_cloudpickle().dumps(value, PICKLE_PROTOCOL))


def _meta_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _published_event(raw: Mapping[bytes, bytes] | list[bytes]) -> bytes | None:
    """The event :data:`_UPDATE_META` published (its flat reply's last pair), or None."""
    if isinstance(raw, Mapping) or len(raw) < 2 or raw[-2] != _PUBLISHED.encode():
        return None
    return raw[-1]


def _decode_meta(raw: Mapping[bytes, bytes] | list[bytes], name: str) -> dict[str, Any]:
    """Metadata from Redis (a dict, or HGETALL's flat list from Lua), JSON-decoded."""
    pairs = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2], strict=True)
    meta: dict[str, Any] = {}
    for field, text in pairs:
        key = field.decode()
        if key in (_SNAPSHOT, _PUBLISHED):
            continue
        try:
            meta[key] = json.loads(text)
        except ValueError:
            logger.warning("cache %r: metadata field %r is not JSON; ignoring it", name, key)
    return meta


class RedisStore:
    """Keeps a manager's caches in Redis: one hash per cache, shared by every process.

    ``RedisStore(url)`` is what you pass as ``CacheManager(name, store=...)``;
    the manager binds it to its name (and signing key).  ``url`` is a redis-py
    URL (``redis://host:6379/0``, ``rediss://`` for TLS, ``unix://``), or
    ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) for a Redis
    Cluster reached through any of its nodes; ``client_options`` go to
    ``redis.Redis.from_url`` (``RedisCluster.from_url`` for a cluster).  Setting
    ``$CACHEMAN_REDIS_URL`` gives every manager built without ``store=`` a
    ``RedisStore`` of that URL.

    ``wait_for_replicas=n`` makes every write (save, append, metadata) wait,
    with ``WAIT``, until ``n`` replicas have it, up to ``replica_timeout``
    seconds; a write that fewer replicas confirmed raises ``TimeoutError``
    (it reached the primary, but a failover could still lose it).  The default,
    0, acknowledges a write as soon as the primary has it.

    Raises ``ImportError`` naming the ``cacheman[redis]`` extra if redis-py is
    not installed.  Nothing connects until the first operation.

    >>> from cacheman import CacheManager, RedisStore
    >>> store = RedisStore("redis://127.0.0.1:6379/0")
    >>> store
    RedisStore('redis://127.0.0.1:6379/0', namespace='cacheman')
    """

    #: False makes loads change nothing, as the command line's ``list`` and ``show``
    #: want: damaged or unreadable contents raise CorruptCacheError instead of going aside.
    keep_aside_damaged = True

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "cacheman",
        manager: str | None = None,
        signing_key: bytes | None = None,
        wait_for_replicas: int = 0,
        replica_timeout: float = 1.0,
        **client_options: Any,
    ) -> None:
        self._redis_module = _redis_module()
        exceptions = self._redis_module.exceptions
        #: What redis-py raises when the data cannot be reached (as opposed to damaged).
        self._unreachable: tuple[type[Exception], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            exceptions.ClusterDownError,
            exceptions.RedisClusterException,
            exceptions.TryAgainError,
            exceptions.BusyLoadingError,
        )
        if client_options.get("decode_responses"):
            raise ValueError("RedisStore reads bytes: decode_responses must stay False")
        if not namespace:
            raise ValueError("the namespace of a RedisStore must not be empty")
        self.cluster = is_cluster_url(url)
        if self.cluster:
            node_url(url)  # refuses a database other than 0, now rather than at first use
            if "{" in namespace or "}" in namespace:
                raise ValueError(
                    f"the namespace {namespace!r} of a Redis Cluster store may not hold "
                    "'{' or '}': they would change the hash tag that keeps a cache in one slot"
                )
        if wait_for_replicas < 0 or replica_timeout <= 0:
            raise ValueError("wait_for_replicas must be >= 0 and replica_timeout > 0")
        self.wait_for_replicas = wait_for_replicas
        self.replica_timeout = replica_timeout
        self.url = url
        self.namespace = namespace
        self.manager = None if manager is None else _check_manager_name(manager)
        self.signing_key = signing_key
        self.client_options = client_options
        self._pid = os.getpid()
        self._client_now: Any = None
        self._callbacks: list[EventCallback] = []
        # Reentrant: unsubscribe() takes it, and is a manager's finalizer, which a
        # garbage collection can run on a thread that holds it (the listener's).
        self._callbacks_lock = threading.RLock()
        self._listener: Listener | None = None
        # The generations this process wrote lately, so that a subscriber can tell
        # its own events from other processes' (see wrote_generation).
        self._own_generations: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=_OWN_GENERATIONS
        )
        self._own_generations_lock = threading.Lock()
        # Clients (and listeners) of the process we were forked from.  They are
        # kept, never closed: their sockets are the parent's too.
        self._inherited: list[object] = []
        # The latest generation of each cache this process wrote or heard of (an
        # event, or a re-read): after a reconnection or a failover, the caches
        # whose generation is not this one are announced (see recheck_generations).
        # Reads do not count: a read_meta says nothing of what the caches hold.
        self._seen_generations: dict[str, str | None] = {}
        # On a cluster, the events heard once and awaited a second time (bounded: an
        # event whose twin never comes, its publisher killed between the two, ages out).
        self._heard_events: collections.deque[bytes] = collections.deque(maxlen=1024)
        _lifecycle.on_fork_child(_weak_fork_hook(self))

    def __repr__(self) -> str:
        bound = "" if self.manager is None else f", manager={self.manager!r}"
        signed = ", signed" if self.signing_key else ""
        waits = f", wait_for_replicas={self.wait_for_replicas}" if self.wait_for_replicas else ""
        return (
            f"{type(self).__name__}({self.display_url!r}, namespace={self.namespace!r}"
            f"{bound}{signed}{waits})"
        )

    @property
    def display_url(self) -> str:
        """The URL without its password: what logs, errors and the command line show."""
        return redact(self.url)

    def _redacted(self, error: BaseException) -> str:
        """The message of ``error`` with every password it might quote hidden."""
        secrets_ = (self.client_options.get("password"), password_of(self.url))
        return redact_text(f"{type(error).__name__}: {error}", secrets_)

    def bind(self, manager_name: str, signing_key: bytes | None) -> RedisStore:
        """A store for the manager ``manager_name`` (same URL, namespace and options).

        Manager names holding ``:`` are refused: the key layout could not tell
        manager ``a`` with cache ``b:c`` from manager ``a:b`` with cache ``c``.
        """
        return type(self)(
            self.url,
            namespace=self.namespace,
            manager=manager_name,
            signing_key=signing_key,
            wait_for_replicas=self.wait_for_replicas,
            replica_timeout=self.replica_timeout,
            **self.client_options,
        )

    # -- connections, per process ------------------------------------------------------

    def _client(self) -> Any:
        """This process's client; a forked child makes its own (it must not share sockets)."""
        if self._pid != os.getpid():
            self._forget_parent_connections()
        client = self._client_now
        if client is None:
            # A server that stops answering raises instead of hanging the program
            # (a generous read timeout: deleting a big replaced hash takes a while).
            options = {"socket_connect_timeout": 5, "socket_timeout": 30, "socket_keepalive": True}
            options.update(self.client_options)
            client = connect(self._redis_module, self.url, options)
            self._client_now = client
        return client

    def _forget_parent_connections(self) -> None:
        # The parent's sockets must stay untouched: a command sent on one by the
        # child would interleave with the parent's, and closing one is harmless
        # only because redis-py skips shutdown() in another pid; keeping a
        # reference avoids even that.
        self._inherited.extend((self._client_now, self._listener))
        self._client_now = None
        self._listener = None
        self._callbacks_lock = threading.RLock()
        self._own_generations_lock = threading.Lock()
        self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        """In a child forked by the program (not a save child): listen again if we listened."""
        self._forget_parent_connections()
        if self._callbacks:
            # Events published between the fork and the new subscription are lost.
            self._start_listener(stale_at_start=True)

    def close(self) -> None:
        """Stop the event listener and close this process's connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        if self._client_now is not None and self._pid == os.getpid():
            self._client_now.close()  # a RedisCluster closes every node's pool
            if not self.cluster:
                self._client_now.connection_pool.disconnect()
        self._client_now = None

    # -- names of keys ----------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """``<namespace>:<manager>``: the start of every key of this store."""
        if self.manager is None:
            raise TypeError(
                f"{self!r} is not bound to a manager: pass it as CacheManager(name, store=...) "
                "or give manager= when building it"
            )
        return f"{self.namespace}:{self.manager}"

    def cache_key(self, name: str, kind: str) -> str:
        """The key ``kind`` (``data``, ``meta``, ``lock``...) of cache ``name``.

        On a cluster the name is a hash tag (``{name}``): all keys of one cache
        share a slot, so one ``MULTI`` or script may touch them all.
        """
        tag = validate_cache_name(name)
        if self.cluster:
            tag = "{" + tag + "}"
        return f"{self.prefix}:{tag}:{kind}"

    def data_key(self, name: str) -> str:
        """The hash holding the entries of cache ``name``."""
        return self.cache_key(name, "data")

    def meta_key(self, name: str) -> str:
        """The hash holding the metadata of cache ``name``."""
        return self.cache_key(name, "meta")

    @property
    def channel(self) -> str:
        """The pub/sub channel on which generation changes are announced."""
        return f"{self.prefix}:events"

    @property
    def edges_key(self) -> str:
        return f"{self.prefix}:edges"

    # -- encoding -------------------------------------------------------------------------

    def _mac(self, name: str) -> _Signer | None:
        """The signer of the entries of ``name`` (None without a key)."""
        if self.signing_key is None:
            return None
        return _Signer(self.signing_key, self.data_key(name).encode())

    def _encoder(self, name: str) -> Callable[[Any, Any], tuple[bytes, bytes]] | None:
        """A function turning ``(key, value)`` into ``(field, stored value)``; None if unsigned."""
        base = self._mac(name)
        if base is None:
            return None

        def encode_signed(key: Any, value: Any) -> tuple[bytes, bytes]:
            field = _dump_key(key)
            payload = _dump_value(value)
            return field, _SIGNED + base.sign(field, payload) + payload

        return encode_signed

    def _decode_into(
        self, name: str, base: _Signer | None, chunk: Mapping[bytes, bytes], into: dict[Any, Any]
    ) -> None:
        """Check (with a key) and unpickle a chunk of fields into ``into``.

        Raises SignatureMismatchError before unpickling anything unsigned or
        forged, CorruptCacheError for what does not unpickle.
        """
        loads = pickle.loads
        if base is None:
            try:
                # The common case at the speed of a bare loop: unsigned values are
                # plain pickles.  A signed one (b"\x01...") makes pickle refuse at
                # its first byte, and the careful loop below sorts it out.
                for field, stored in chunk.items():
                    into[loads(field)] = loads(stored)
                return
            except Exception:
                pass
        try:
            for field, stored in chunk.items():
                into[loads(field)] = loads(self._checked_payload(name, base, field, stored))
        except (CorruptCacheError, SignatureMismatchError):
            raise
        except Exception as error:  # garbage can raise almost any exception
            raise CorruptCacheError(
                f"an entry does not unpickle ({type(error).__name__}: {error})"
            ) from error

    def _checked_payload(
        self, name: str, base: _Signer | None, field: bytes, stored: bytes
    ) -> memoryview:
        """The pickle in a stored value, once its signature (if we have a key) checked out."""
        view = memoryview(stored)
        signed = stored[:1] == _SIGNED
        if base is None:  # no key: we trust this Redis, signed by another writer or not
            return view[1 + _MAC_SIZE :] if signed else view
        payload = view[1 + _MAC_SIZE :]
        if not signed or not hmac.compare_digest(
            base.sign(field, payload), view[1 : 1 + _MAC_SIZE]
        ):
            problem = "forged or signed with another key" if signed else "not signed"
            raise SignatureMismatchError(
                f"cache {name!r}: an entry of {self.data_key(name)} is {problem}"
                " (written by another client?); nothing was unpickled. If you changed "
                "the key, delete the cache's saved contents; otherwise find out who "
                "wrote it."
            )
        return payload

    # -- save ---------------------------------------------------------------------------

    def save(
        self,
        name: str,
        contents: Mapping[Any, Any],
        *,
        since: object = None,
        pending: Iterable[tuple[str, Any, Any]] = (),
    ) -> SaveResult:
        """Replace the saved contents of ``name`` with ``contents``, atomically.

        The entries go to a temporary hash (pipelined ``HSET``, 1,000 entries a
        command), which one ``MULTI`` then renames over the data key while it
        stamps the metadata; readers see the old contents or the new.  The
        ``pending`` changes are applied on top (on a copy).  ``since`` is
        accepted for the journal interface and ignored: there is no position in
        Redis, so a full save replaces whatever other processes appended.

        Raises :class:`~cacheman.errors.UnpicklableValueError` (a ``TypeError``)
        if an entry cannot be pickled; the saved contents are then unchanged.
        """
        pending = list(pending)
        if pending:
            contents = dict(contents)
            _apply(contents, pending)
        # A list first: the dict may be a live cache other threads change while we send.
        items = list(contents.items())
        data, meta = self.data_key(name), self.meta_key(name)
        token = secrets.token_hex(8)
        temporary = self.cache_key(name, f"tmp:{token}")
        client = self._client()
        encode = self._encoder(name)
        try:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(items), _BATCH):
                fields = _encoded(name, encode, items[start : start + _BATCH])
                pipe.execute_command("HSET", temporary, *fields)
                if len(pipe) >= _BATCHES_PER_ROUND_TRIP:
                    pipe.pexpire(temporary, _TEMPORARY_TTL_MS)
                    pipe.execute()
            pipe.pexpire(temporary, _TEMPORARY_TTL_MS)
            pipe.execute()
        except BaseException:
            # Our half-written temporary hash; it would expire anyway.
            with contextlib.suppress(Exception):
                client.delete(temporary)
            raise
        commands: list[tuple[Any, ...]] = []
        if items:
            # PERSIST: RENAME carries the temporary hash's TTL over.
            commands += [("RENAME", temporary, data), ("PERSIST", data)]
        else:
            commands.append(("DEL", data))  # Redis has no empty hash: the meta says "saved, empty"
        commands.append(("HSET", meta, *_flat(self._stamp(token))))
        self._transaction(name, meta, commands)
        return SaveResult(None, False)

    def _transaction(self, name: str, key: str, commands: list[tuple[Any, ...]]) -> None:
        """Run ``commands`` (all on the slot of ``key``) in one ``MULTI``; WAIT if asked to."""
        if not self.wait_for_replicas:
            with self._client().pipeline(transaction=True) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()
            return
        replies = self._on_one_connection(key, [("MULTI",), *commands, ("EXEC",)])
        for reply in replies[-2]:  # EXEC's replies: an error there is a value, not raised
            if isinstance(reply, Exception):
                raise reply
        self._check_replicas(name, replies[-1])

    def _on_one_connection(self, key: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` then ``WAIT`` on one connection to the primary of ``key``'s slot.

        ``WAIT`` counts the replicas that have the writes of *its own*
        connection, so it must follow them on the connection that sent them:
        a pooled pipeline may hand the next command another one.  The cluster
        client's routing is used to find the node, not its retries: an error
        (a failover under way) is raised, the write unacknowledged, after
        the client was told to map the cluster again.
        """
        client = self._client()
        pool = (
            client.get_node_from_key(key).redis_connection if self.cluster else client
        ).connection_pool
        wait = ("WAIT", self.wait_for_replicas, max(1, int(self.replica_timeout * 1000)))
        commands = [*commands, wait]
        connection = pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            return [connection.read_response() for _ in commands]
        except BaseException:
            connection.disconnect()
            if self.cluster:
                with contextlib.suppress(Exception):
                    client.nodes_manager.initialize()
            raise
        finally:
            pool.release(connection)

    def _check_replicas(self, name: str, confirmed: int) -> None:
        if confirmed < self.wait_for_replicas:
            raise TimeoutError(
                f"cache {name!r}: the write reached the Redis primary but only {confirmed} of "
                f"{self.wait_for_replicas} replica(s) confirmed it within "
                f"{self.replica_timeout:g} s (wait_for_replicas); a failover now could lose it"
            )

    def _stamp(self, snapshot: str | None) -> dict[str, str]:
        stamp = {"saved_at": _meta_text(time.time()), "format": _meta_text(FORMAT_VERSION)}
        if snapshot is not None:
            stamp[_SNAPSHOT] = snapshot
        return stamp

    # -- the journal, mapped onto HSET/HDEL -----------------------------------------------

    def append(
        self, name: str, changes: Iterable[tuple[str, Any, Any]], since: object = None
    ) -> AppendResult:
        """Apply ``changes`` (``("set", k, v)``, ``("del", k, None)``, ``("clear", None, None)``).

        One ``MULTI`` of pipelined ``HSET``/``HDEL`` (a clear is a ``DEL`` of the
        data key), so the changes land together or not at all, and changes of
        other keys by other processes are kept.  Durable as Redis is configured
        to be (see the docs).  Redis applies the changes itself, so there is
        nothing to reconcile: the position is None and ``in_sync`` always True.
        """
        data, meta = self.data_key(name), self.meta_key(name)
        encode = self._encoder(name)
        snapshot = None
        commands: list[tuple[Any, ...]] = []
        fields: list[bytes] = []
        for op, key, value in changes:
            if op == SET:
                fields += _encoded(name, encode, [(key, value)])
                continue
            if fields:
                commands.append(("HSET", data, *fields))
                fields = []
            if op == DEL:
                commands.append(("HDEL", data, _dump_key(key)))
            elif op == CLEAR:
                commands.append(("DEL", data))
                snapshot = secrets.token_hex(8)
            else:
                raise ValueError(f"cache {name!r}: unknown change {op!r}")
        if fields:
            commands.append(("HSET", data, *fields))
        commands.append(("HSET", meta, *_flat(self._stamp(snapshot))))
        if snapshot is None:
            commands.append(("HSETNX", meta, _SNAPSHOT, secrets.token_hex(8)))
        self._transaction(name, meta, commands)
        return AppendResult(None, True)

    def load_tracked(self, name: str) -> tuple[dict[Any, Any] | None, None]:
        """:meth:`load`, and the position read through (always None in Redis)."""
        return self.load(name), None

    def changes_since(
        self, name: str, position: object
    ) -> tuple[list[tuple[str, Any, Any]], object] | None:
        """Always None: Redis keeps no journal to replay, so the caller reloads."""
        return None

    # -- load ------------------------------------------------------------------------------

    def load(self, name: str) -> dict[Any, Any] | None:
        """The saved contents of ``name``, or None if nothing is saved.

        Walks the hash with ``HSCAN`` (10,000 entries a round trip).  If a full
        save or a clear replaced the hash meanwhile, it reads again; after
        three such races it reads with one ``HGETALL``.

        Raises :class:`~cacheman.errors.SignatureMismatchError` when a signing
        key is set and an entry is unsigned or its signature is wrong (nothing
        is unpickled).  Entries that do not unpickle are moved aside to a
        ``...:corrupt:<time>`` key with a warning, and None is returned so the
        cache is rebuilt.
        """
        try:
            return self._load_once(name)
        except CorruptCacheError as damage:
            if not self.keep_aside_damaged:
                raise CorruptCacheError(
                    f"cache {name!r}: {self.data_key(name)} cannot be read here ({damage})"
                ) from None
            self._quarantine(name, damage)
            return None
        except self._unreachable as error:
            # An OSError, as for a file that cannot be read now: the data may be
            # fine, and a cache that took this for damage would rebuild and write
            # over it at its next save.
            raise ConnectionError(
                f"cache {name!r}: Redis at {self.display_url} cannot be reached now "
                f"({self._redacted(error)}); nothing was loaded"
            ) from None

    def _load_once(self, name: str) -> dict[Any, Any] | None:
        data, meta = self.data_key(name), self.meta_key(name)
        client = self._client()
        base = self._mac(name)
        for _ in range(_LOAD_ATTEMPTS):
            snapshot = client.hget(meta, _SNAPSHOT)
            contents: dict[Any, Any] = {}
            cursor = 0
            while True:
                try:
                    cursor, chunk = client.hscan(data, cursor, count=_SCAN_COUNT)
                except self._unreachable:
                    raise
                except self._redis_module.ResponseError as error:  # not a hash
                    raise CorruptCacheError(str(error)) from error
                self._decode_into(name, base, chunk, contents)
                if cursor == 0:
                    break
            if client.hget(meta, _SNAPSHOT) == snapshot:
                break
        else:
            with client.pipeline(transaction=True) as pipe:
                pipe.hget(meta, _SNAPSHOT)
                pipe.hgetall(data)
                snapshot, everything = pipe.execute()
            contents = {}
            self._decode_into(name, base, everything, contents)
        if snapshot is None and not contents:
            return None
        return contents

    def _quarantine(self, name: str, damage: CorruptCacheError) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        kept = self.cache_key(name, f"corrupt:{stamp}")
        client = self._client()
        with client.pipeline(transaction=True) as pipe:
            # execute_command: a cluster pipeline refuses its .renamenx() (multi-key).
            pipe.execute_command("RENAMENX", self.data_key(name), kept)
            pipe.hdel(self.meta_key(name), _SNAPSHOT)
            with contextlib.suppress(self._redis_module.ResponseError):
                pipe.execute()
        logger.warning(
            "cache %r: the saved contents in Redis (%s) are damaged (%s); they were kept as "
            "%s and the cache will be rebuilt",
            name,
            self.data_key(name),
            damage,
            kept,
        )

    # -- verify and usage: what the command line reports ----------------------------------------

    def verify(self, name: str, fix: bool = False) -> VerifyReport:
        """Check what Redis holds for ``name`` without unpickling anything.

        Checks the key types, the metadata (JSON, a format this version reads),
        every entry's framing and, with a signing key, its signature (one
        ``HSCAN`` pass), and the lineage: a derived cache whose recorded parent
        generations are not the parents' current ones is stale.  Changes
        nothing unless ``fix``: then damaged entries are moved aside as a load
        would, metadata fields that are not JSON are removed, and the contents
        of a stale derived cache are deleted (the next process that registers
        it rebuilds it).  Entries that fail their signature are reported
        (``refused``), never fixed: the user must look.
        """
        report = VerifyReport(name)
        client = self._client()
        data, meta = self.data_key(name), self.meta_key(name)
        with client.pipeline(transaction=False) as pipe:
            pipe.type(data)
            pipe.type(meta)
            data_type, meta_type = (t.decode() for t in pipe.execute())
        report.snapshot_exists = data_type != "none"
        if meta_type not in ("none", "hash"):
            report.problems.append(f"{meta} is a {meta_type}, not a hash")
            return report
        if data_type not in ("none", "hash"):
            report.snapshot_ok = False
            report.problems.append(f"{data} is a {data_type}, not a hash")
            if fix:
                self._quarantine(name, CorruptCacheError(report.problems[-1]))
                report.fixed.append(f"moved {data} aside")
            return report
        self._verify_meta(name, client.hgetall(meta), report, fix)
        if report.snapshot_exists:
            self._verify_entries(name, report, fix)
        if not report.refused:
            self._verify_lineage(name, report, fix)
        return report

    def _verify_meta(
        self, name: str, raw: Mapping[bytes, bytes], report: VerifyReport, fix: bool
    ) -> None:
        broken = []
        for field, text in raw.items():
            try:
                value = json.loads(text) if field != _SNAPSHOT.encode() else None
            except ValueError:
                broken.append(field.decode())
                continue
            if field == b"format":
                report.snapshot_format = value if isinstance(value, int) else None
                if not isinstance(value, int) or value > FORMAT_VERSION:
                    report.problems.append(
                        f"format {value!r}: written by a newer CacheMan (this one reads "
                        f"{FORMAT_VERSION})"
                    )
        if broken:
            report.problems.append(f"metadata field(s) {', '.join(broken)} are not JSON")
            if fix:
                self._client().hdel(self.meta_key(name), *broken)
                report.fixed.append(f"removed the metadata field(s) {', '.join(broken)}")

    def _verify_entries(self, name: str, report: VerifyReport, fix: bool) -> None:
        client = self._client()
        base = self._mac(name)
        cursor = 0
        forged = damaged = signed = 0
        while True:
            cursor, chunk = client.hscan(self.data_key(name), cursor, count=_SCAN_COUNT)
            for field, stored in chunk.items():
                if stored[:1] == _SIGNED and len(stored) > 1 + _MAC_SIZE:
                    signed += 1
                    payload = memoryview(stored)[1 + _MAC_SIZE :]
                    ok_mac = base is None or hmac.compare_digest(
                        base.sign(field, payload), stored[1 : 1 + _MAC_SIZE]
                    )
                    forged += not ok_mac
                elif stored[:1] == _PICKLE_START:
                    payload = memoryview(stored)
                    forged += base is not None  # a signing key requires a signature
                else:
                    damaged += 1
                    continue
                damaged += field[:1] != _PICKLE_START or payload[:1] != _PICKLE_START
            if cursor == 0:
                break
        report.signed = signed > 0
        if forged:
            report.refused = True
            report.problems.append(
                f"{forged} entr{'y is' if forged == 1 else 'ies are'} of {self.data_key(name)} "
                "unsigned, forged or signed with another key; a load refuses the cache"
            )
        if damaged:
            report.snapshot_ok = False
            report.problems.append(f"{damaged} entr{'y is' if damaged == 1 else 'ies are'} damaged")
            if fix and not forged:
                self._quarantine(name, CorruptCacheError(report.problems[-1]))
                report.fixed.append(f"moved {self.data_key(name)} aside; the cache is rebuilt")

    def _verify_lineage(self, name: str, report: VerifyReport, fix: bool) -> None:
        meta = self.read_meta(name)
        if not meta:
            return
        recorded = meta.get("parents")
        parents = {parent for parent, child in self.read_edges() if child == name}
        if isinstance(recorded, dict):
            parents |= set(recorded)
        current = {parent: generation_of(self.read_meta(parent)) for parent in sorted(parents)}
        if not is_stale(meta, current):
            return
        moved = [
            f"{parent!r} is at {now} (built from {recorded.get(parent)})"
            for parent, now in current.items()
            if isinstance(recorded, dict) and recorded.get(parent) != now
        ]
        reason = "; ".join(moved) if moved else "marked stale by an invalidation"
        report.problems.append(f"stale: {reason}; it is rebuilt when next registered")
        if fix:
            self._client().delete(self.data_key(name))
            self.update_meta(name, **{STALE: True, "parents": None})
            report.fixed.append("deleted its stale contents")

    def usage(self, name: str) -> StoreUsage:
        """The bytes Redis spends on ``name`` (``MEMORY USAGE``, sampled) and its last save.

        ``modified`` is the ``saved_at`` of the metadata (None if never saved).
        """
        client = self._client()
        with client.pipeline(transaction=False) as pipe:
            pipe.memory_usage(self.data_key(name))
            pipe.memory_usage(self.meta_key(name))
            pipe.hget(self.meta_key(name), "saved_at")
            data_bytes, meta_bytes, saved_at = pipe.execute()
        try:
            modified = float(json.loads(saved_at)) if saved_at else None
        except (TypeError, ValueError):
            modified = None
        return StoreUsage((data_bytes or 0) + (meta_bytes or 0), modified)

    # -- delete, exists, names ---------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Remove the saved contents and metadata of ``name`` (one ``DEL``)."""
        self._client().delete(self.data_key(name), self.meta_key(name))

    def exists(self, name: str) -> bool:
        """Whether contents are saved for ``name`` (an empty saved cache counts)."""
        with self._client().pipeline(transaction=False) as pipe:
            pipe.exists(self.data_key(name))
            pipe.hexists(self.meta_key(name), _SNAPSHOT)
            return any(pipe.execute())

    def names(self) -> list[str]:
        """Names of the caches with contents or metadata saved, sorted (``SCAN MATCH``)."""
        start = f"{self.prefix}:"
        pattern = _glob_escape(start) + "*"
        found = set()
        for raw in self._client().scan_iter(match=pattern, count=1000):
            key = raw.decode()
            for suffix in (":data", ":meta"):
                if key.endswith(suffix) and len(key) > len(start) + len(suffix):
                    name = key[len(start) : -len(suffix)]
                    if self.cluster:
                        if not (name.startswith("{") and name.endswith("}")):
                            continue
                        name = name[1:-1]
                    found.add(name)
        return sorted(found)

    def managers(self) -> list[str]:
        """The managers with keys under this store's namespace, sorted (``SCAN MATCH``)."""
        start = f"{self.namespace}:"
        found = set()
        for raw in self._client().scan_iter(match=_glob_escape(start) + "*", count=1000):
            manager, colon, rest = raw.decode()[len(start) :].partition(":")
            if manager and colon and rest:
                found.add(manager)
        return sorted(found)

    # -- metadata ------------------------------------------------------------------------------

    def read_meta(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name`` (JSON values, never unpickled), or None."""
        raw = self._client().hgetall(self.meta_key(name))
        return _decode_meta(raw, name) if raw else None

    def update_meta(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set metadata fields (None removes one) in one atomic script; return the result.

        When the ``generation`` changes, ``[name, generation]`` is published on
        :attr:`channel` by the same script, so every subscribed process hears of it
        (on a cluster, once more after the script: see the module docstring).
        """
        generation = fields.get("generation")
        if isinstance(generation, str):
            # Before the write: its event may reach the listener before the reply reaches us.
            with self._own_generations_lock:
                self._own_generations.append((name, generation))
        to_set = [(k, _meta_text(v)) for k, v in fields.items() if v is not None]
        to_delete = [k for k, v in fields.items() if v is None]
        arguments: list[str] = [self.channel, name, str(len(to_set))]
        for field, text in to_set:
            arguments += (field, text)
        arguments += to_delete
        key = self.meta_key(name)
        if self.wait_for_replicas:
            raw, confirmed = self._on_one_connection(
                key, [("EVAL", _UPDATE_META, 1, key, *arguments)]
            )
            self._check_replicas(name, confirmed)
        else:
            raw = self._client().register_script(_UPDATE_META)(keys=[key], args=arguments)
        event = _published_event(raw)
        if event is not None and self.cluster:
            # Once more, outside the script, at the node that owns the channel's slot,
            # where the listeners subscribe (cacheman._stores.redis_events): a PUBLISH
            # relayed over the cluster bus from the cache's node reaches other nodes'
            # subscribers up to ~40 ms late (p99 39-42 ms, where one published at the
            # subscribers' own node took 2-7 ms, measured).  The script's own stays, so
            # that the event cannot be lost to a crash between the two; a listener
            # hears the first to arrive and drops the other (see _on_message).
            node = self._client().get_node_from_key(self.channel)
            node.redis_connection.publish(self.channel, event)
        meta = _decode_meta(raw, name)
        self._seen_generations[name] = generation_of(meta)
        return meta

    def wrote_generation(self, name: str, generation: str | None) -> bool:
        """Whether this process itself lately set the generation of ``name`` to ``generation``.

        A subscriber hears its own process's changes too; this tells them apart
        (the last thousand or so generation writes are remembered).
        """
        if generation is None:
            return False
        with self._own_generations_lock:
            return (name, generation) in self._own_generations

    # -- the dependency edges ----------------------------------------------------------------

    def read_edges(self) -> list[Edge]:
        """Every persisted edge ``(parent, child)``, in the order first declared."""
        members = self._client().zrange(self.edges_key, 0, -1)
        return [(str(p), str(c)) for p, c in map(json.loads, members)]

    def add_edges(self, edges: Iterable[Edge]) -> None:
        """Persist ``edges`` as well (edges already there are kept once, in their place)."""
        members = [json.dumps([parent, child]) for parent, child in edges]
        if members:
            self._client().register_script(_ADD_EDGES)(keys=[self.edges_key], args=members)

    def remove_edges(self, name: str) -> None:
        """Forget every persisted edge that touches ``name``."""
        self._client().register_script(_REMOVE_EDGES)(keys=[self.edges_key], args=[name])

    # -- one builder at a time -----------------------------------------------------------------

    def lock_key(self, name: str) -> str:
        """The key of the builder lock of ``name``."""
        return self.cache_key(name, "lock")

    @contextlib.contextmanager
    def builder_lock(
        self, name: str, timeout: float = 60.0, *, wait: float | None = None
    ) -> Iterator[str]:
        """Hold the lock that lets one process at a time build ``name``; yields its token.

        ``SET <lock> <token> NX PX <timeout>``: the lock frees itself after
        ``timeout`` seconds if its holder dies or hangs.  Waits up to ``wait``
        seconds (default: ``timeout``) for another holder, then raises
        ``TimeoutError``.  Leaving the block deletes the lock only if it still
        holds our token (a compare-and-delete script), so a holder that ran past
        its timeout never frees the lock of the next one.

        This is for efficiency, not correctness: if the Redis primary fails over
        before the lock reached its replica, a second builder can get the lock
        (the caveat of any single-Redis lock, Redlock included).
        """
        key = self.lock_key(name)
        token = secrets.token_hex(16)
        client = self._client()
        deadline = time.monotonic() + (timeout if wait is None else wait)
        pause = 0.01
        while not client.set(key, token, nx=True, px=max(1, int(timeout * 1000))):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"cache {name!r}: another process holds its builder lock ({key}); "
                    "gave up waiting. It frees itself when its holder finishes or after its "
                    "timeout."
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.2)
        try:
            yield token
        finally:
            released = self._client().register_script(_RELEASE_LOCK)(keys=[key], args=[token])
            if not released:
                logger.warning(
                    "cache %r: the builder lock expired (after %g s) before the build ended; "
                    "another process may have built it at the same time. Give builder_lock a "
                    "longer timeout.",
                    name,
                    timeout,
                )

    # -- invalidation events ----------------------------------------------------------------------

    def subscribe(self, callback: EventCallback, *, wait: float = 5.0) -> None:
        """Call ``callback(name, generation)`` whenever a generation changes, in any process.

        Events come from ``update_meta`` (which publishes on :attr:`channel`),
        including this process's own.  One daemon thread per store listens; it
        reconnects with back-off after a lost connection and then calls
        ``callback(None, None)``: events may have been missed, anything may be
        stale.  Callbacks run on that thread; an exception is logged.  Waits up
        to ``wait`` seconds for the subscription to be in place (a later start
        is followed by a ``(None, None)`` call).
        """
        with self._callbacks_lock:
            self._callbacks.append(callback)
            listener = self._listener
        if listener is None or self._pid != os.getpid():
            listener = self._start_listener(stale_at_start=False)
        listener.ready.wait(wait)

    def unsubscribe(self, callback: EventCallback) -> None:
        """Stop calling ``callback``; the listener stops with the last one."""
        with self._callbacks_lock:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)
            if self._callbacks or self._listener is None:
                return
            listener, self._listener = self._listener, None
        listener.stop()

    def _start_listener(self, *, stale_at_start: bool) -> Listener:
        client = self._client()
        with self._callbacks_lock:
            if self._listener is None:
                self._listener = Listener(self, client, stale_at_start)
                _lifecycle.start_thread(self._listener)
            return self._listener

    def _notify(self, name: str | None, generation: str | None) -> None:
        with self._callbacks_lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(name, generation)
            except Exception:
                logger.exception("a Redis event callback (%r) raised", callback)

    def _on_message(self, payload: bytes) -> None:
        try:
            name, generation_text = json.loads(payload)
            generation = None if not generation_text else json.loads(generation_text)
        except (ValueError, TypeError):
            logger.warning("ignoring a malformed event on %s: %r", self.channel, payload[:200])
            return
        name, generation = str(name), None if generation is None else str(generation)
        if self.cluster:
            # Each event comes twice on a cluster (see update_meta): the second is dropped.
            if payload in self._heard_events:
                self._heard_events.remove(payload)
                return
            self._heard_events.append(payload)
        self._seen_generations[name] = generation
        self._notify(name, generation)

    def recheck_generations(self) -> list[str]:
        """Announce every cache whose generation is not the last this process saw; return them.

        For when events may have been lost (a reconnection, a failover): each
        such cache is passed to the subscribed callbacks as if its event had
        just arrived.  Costs a ``SCAN`` of the manager's keys and one ``HGET``
        per cache (found, or heard of before), pipelined.
        """
        # The names heard of too: on a cluster in the middle of a failover, a SCAN
        # with the client's old map of the slots misses the keys of the failed
        # master without an error, while a read of one key finds its new master.
        names = sorted(set(self.names()) | set(self._seen_generations))
        client = self._client()
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.meta_key(name), "generation")
            replies = pipe.execute()
        moved = []
        for name, raw in zip(names, replies, strict=True):
            generation = generation_of({"generation": json.loads(raw)} if raw else None)
            if self._seen_generations.get(name, "") != generation:
                self._seen_generations[name] = generation
                moved.append(name)
                self._notify(name, generation)
        return moved


def _encoded(
    name: str,
    encode: Callable[[Any, Any], tuple[bytes, bytes]] | None,
    items: list[tuple[Any, Any]],
) -> list[bytes]:
    """``[field, value, field, value...]`` of ``items``; UnpicklableValueError names the culprit.

    ``encode`` None means unsigned: then the common case (keys of scalar types,
    values the standard pickler takes) runs as a bare loop of ``pickle.dumps``,
    and anything else goes through the general encoder.
    """
    if encode is None:
        dumps, scalar = pickle.dumps, _SCALAR_KEYS
        fields: list[bytes] = []
        append = fields.append
        try:
            for key, value in items:
                append(dumps(key, PICKLE_PROTOCOL) if type(key) in scalar else _dump_key(key))
                append(dumps(value, PICKLE_PROTOCOL))
            return fields
        except _REFUSED_BY_PICKLE:
            encode = _unsigned_encode
    fields = []
    try:
        for key, value in items:
            fields.extend(encode(key, value))
    except Exception as error:
        raise UnpicklableValueError(_describe_unpicklable(name, dict(items))) from error
    return fields


def _unsigned_encode(key: Any, value: Any) -> tuple[bytes, bytes]:
    return _dump_key(key), _dump_value(value)


class _Signer:
    """HMAC-SHA256 of one cache's entries: data key name, field and pickled value, each framed.

    The key's name binds an entry to its cache (a signed hash renamed into
    another cache's place fails); the length prefixes keep the parts from
    sliding into each other.  This is RFC 2104 HMAC written out with the inner
    hash already fed the padded key and the key name, so each entry costs two
    hash copies; ``hmac.HMAC.copy`` per entry costs twice that, the one-shot
    ``hmac.digest`` (which re-keys every call) three times.
    """

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes, key_name: bytes) -> None:
        block = sha256().block_size
        if len(key) > block:
            key = sha256(key).digest()
        key = key.ljust(block, b"\0")
        self.inner = sha256(bytes(b ^ 0x36 for b in key))
        self.inner.update(_FIELD_LENGTH.pack(len(key_name)) + key_name)
        self.outer = sha256(bytes(b ^ 0x5C for b in key))

    def sign(self, field: bytes, payload: bytes | memoryview) -> bytes:
        inner = self.inner.copy()
        inner.update(_FIELD_LENGTH.pack(len(field)))
        inner.update(field)
        inner.update(payload)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _flat(mapping: Mapping[str, str]) -> list[str]:
    """``[field, value, field, value...]``: the arguments of ``HSET`` for ``mapping``."""
    return [part for pair in mapping.items() for part in pair]


def _apply(contents: dict[Any, Any], changes: Iterable[tuple[str, Any, Any]]) -> None:
    for op, key, value in changes:
        if op == SET:
            contents[key] = value
        elif op == DEL:
            contents.pop(key, None)
        elif op == CLEAR:
            contents.clear()


def _check_manager_name(name: str) -> str:
    validate_cache_name(name, what="manager")
    if ":" in name:
        raise InvalidCacheNameError(
            f"invalid manager name {name!r} for a RedisStore: it may not contain ':' "
            "(the key layout <namespace>:<manager>:<cache>:data could not be read back)"
        )
    return name


def _glob_escape(text: str) -> str:
    """Escape the characters SCAN MATCH treats as a pattern."""
    return "".join("\\" + c if c in "*?[]\\^-" else c for c in text)


def _weak_fork_hook(store: RedisStore) -> Callable[[], None]:
    """A fork hook that does not keep ``store`` alive."""
    reference = weakref.ref(store)

    def hook() -> None:
        alive = reference()
        if alive is not None:
            alive._after_fork_in_child()

    return hook
