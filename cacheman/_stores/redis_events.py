"""The Redis event listener: one daemon thread per store turning published generations into calls.

Events are a fast path, never the only one: pub/sub delivers at most once, and a
message published while the listener is disconnected is gone.  So whenever the
subscription starts over (a lost connection, redis-py reconnecting on its own,
a fork) and whenever a Redis Cluster fails over (its current epoch moves: a
promoted replica may lack the last writes of its primary, generation changes
included, and nothing announces that), the listener tells the store's callbacks
``(None, None)`` ("anything may be stale") and then re-reads every cache's
generation, announcing each one that differs from the last this process saw.

On a cluster it subscribes at the primary that owns the channel's slot, where
writers publish each event a second time (the copy their script relays over
the cluster bus can be ~40 ms late), and finds that primary again after losing
it (a failover promotes another).  Errors the listener cannot get
past (a wrong database number, a refused password) are logged once, without a
traceback or the password, and retried with back-off: a fixed server resumes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["Listener"]

logger = logging.getLogger("cacheman")

# Seconds between reconnection attempts, doubling up to the maximum.
_RECONNECT_FIRST = 0.05
_RECONNECT_MAX = 5.0
# How long one wait for a message lasts; on a cluster, how often the epoch is read.
POLL = 0.5
# After a reconnection or failover, generations are re-read every POLL for this
# long: while a cluster settles, a write may still land on a node that loses it.
_SETTLE = 5.0


class Listener(threading.Thread):
    """The daemon thread that turns messages on the events channel into callbacks."""

    def __init__(self, store: RedisStore, client: Any, stale_at_start: bool) -> None:
        super().__init__(name=f"cacheman-redis-events-{store.manager}", daemon=True)
        self.store = store
        self.client = client
        self.stale_at_start = stale_at_start
        self.ready = threading.Event()
        self.stopping = threading.Event()
        #: How many times every generation was read again (after a reconnection or failover).
        self.rechecks = 0
        self._settle_until = 0.0
        self._last_error: str | None = None
        self._lost = False  # the last subscription ended with a connection error

    def stop(self) -> None:
        self.stopping.set()
        if self is not threading.current_thread():
            self.join(POLL * 4)

    def run(self) -> None:
        redis = self.store._redis_module
        connection_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        delay = _RECONNECT_FIRST
        stale = self.stale_at_start
        while not self.stopping.is_set():
            try:
                self._listen(stale)
            except redis.AuthenticationError as error:  # a ConnectionError that no retry fixes
                self._report(error)
            except connection_errors as error:
                self._lost = True
                logger.debug(
                    "Redis event listener lost its connection: %s", self.store._redacted(error)
                )
            except Exception as error:  # a server that refuses us: say so once, keep trying
                self._report(error)
            # Whatever ended the subscription, events published until the next
            # one are lost: the next subscription starts with "anything is stale".
            stale = True
            self.ready.set()  # subscribe() must not wait out its timeout for a broken server
            self.stopping.wait(delay * (1 + random.random()))
            delay = min(delay * 2, _RECONNECT_MAX)

    def _report(self, error: Exception) -> None:
        text = self.store._redacted(error)
        level = logging.DEBUG if text == self._last_error else logging.ERROR
        self._last_error = text
        logger.log(
            level,
            "manager %r: the Redis event listener cannot subscribe at %s (%s); other processes' "
            "invalidations are not heard until it can. Retrying.",
            self.store.manager,
            self.store.display_url,
            text,
        )

    def _node(self) -> Any:
        """The client to subscribe with: on a cluster, the primary that owns the channel's slot.

        Writers publish each event there too (besides the copy their script
        relays over the cluster bus, which can be ~40 ms late): one node, no hop.
        A primary rather than a replica: a replica that lags or hangs would hold
        the events back while its primary answers everything else.
        """
        if not self.store.cluster:
            return self.client
        if self._lost:  # that primary may have failed over: read the slots' owners again
            with contextlib.suppress(Exception):  # (unreachable now: the retry says so)
                self.client.nodes_manager.initialize()
        return self.client.get_node_from_key(self.store.channel).redis_connection

    def _listen(self, stale: bool) -> None:
        node = self._node()
        pubsub = node.pubsub()
        epoch = _current_epoch(node) if self.store.cluster else None
        next_tick = time.monotonic() + POLL
        try:
            pubsub.subscribe(self.store.channel)
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=POLL)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + POLL
                    now = None if epoch is None else _current_epoch(node)
                    if now != epoch:
                        epoch = now
                        logger.info(
                            "manager %r: the Redis Cluster changed (epoch %s); re-reading "
                            "every generation",
                            self.store.manager,
                            now,
                        )
                        self._recheck()
                    elif time.monotonic() < self._settle_until:
                        self.store.recheck_generations()
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # redis-py may reconnect and resubscribe on its own: every
                    # confirmation after the first is a reconnection.
                    self._last_error = None
                    if stale:
                        self._recheck()
                    stale = True
                    self.ready.set()
                elif message["type"] == "message":
                    self.store._on_message(message["data"])
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _recheck(self) -> None:
        """Anything may be stale: say so, then announce every generation that moved."""
        self.store._notify(None, None)
        moved = self.store.recheck_generations()
        self.rechecks += 1
        logger.info(
            "manager %r: re-read every generation; moved meanwhile: %s",
            self.store.manager,
            ", ".join(moved) or "none",
        )
        self._settle_until = time.monotonic() + _SETTLE


def _current_epoch(node: Any) -> int:
    """``cluster_current_epoch`` of ``CLUSTER INFO``: it moves when a replica is promoted."""
    info = node.execute_command("CLUSTER", "INFO")
    if isinstance(info, dict):
        return int(info.get("cluster_current_epoch", 0))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "cluster_current_epoch":
            return int(value)
    return 0
