"""The Redis store on a real 6-node Redis Cluster (3 masters, 3 replicas): contract, failover.

The cluster runs on 127.0.0.1 (free ports, a private directory) and is stopped
by pid.  The store contract tests of tests/test_redis.py run here again, with
``store`` and ``store_manager`` bound to the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from redis_server import RedisCluster, find_redis_server

# The contract and event tests of the single-node store, collected again here.
from test_redis import (  # noqa: F401
    test_a_generation_change_reaches_another_process,
    test_a_raising_callback_is_logged_and_the_others_still_run,
    test_an_empty_saved_cache_exists_and_loads_empty,
    test_builder_lock_excludes_a_second_process,
    test_builder_lock_waits_for_the_holder,
    test_equal_keys_find_their_field_whatever_objects_hold_them,
    test_load_during_full_saves_never_mixes_two_snapshots,
    test_names_metadata_and_edges,
    test_save_load_exists_delete,
    test_save_with_pending_changes_applies_them_on_a_copy,
    test_unpicklable_value_leaves_saved_copy,
)

from cacheman import CacheManager, RedisStore
from cacheman._stores.generations import generation_of, next_generation


def _start_cluster(directory: Path) -> RedisCluster:
    executable = find_redis_server()
    try:
        import redis  # noqa: F401
    except ImportError:
        executable = None
    if executable is None:
        reason = "redis-server or redis-py (pip install 'cacheman[redis]') is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the Redis Cluster tests")
        pytest.skip(f"{reason}; the Redis Cluster tests run in CI")
    cluster = RedisCluster(directory, executable)
    cluster.start()
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 6-node cluster for the module; the failover tests start their own."""
    running = _start_cluster(tmp_path_factory.mktemp("cluster"))
    yield running
    running.stop()


@pytest.fixture
def store(cluster: RedisCluster) -> Iterator[RedisStore]:
    """The store of manager ``m`` on an emptied cluster (a cluster has only database 0)."""
    store = RedisStore(cluster.url(), manager="m")
    client = store._client()
    client.flushall(target_nodes=client.PRIMARIES)
    yield store
    store.close()


@pytest.fixture
def store_manager(cluster: RedisCluster, tmp_path: Path) -> Iterator[CacheManager]:
    manager = CacheManager(
        f"test-{uuid.uuid4().hex[:8]}", tmp_path, store=RedisStore(cluster.url())
    )
    yield manager
    manager.close()


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


# -- what only a cluster has --------------------------------------------------------------------


def test_a_cache_keys_share_one_slot_and_caches_spread_over_masters(
    store: RedisStore, cluster: RedisCluster
) -> None:
    names = [f"cache{i}" for i in range(8)]
    for name in names:
        store.save(name, {name: 1})
        store.update_meta(name, generation="g:1")
        keys = [store.data_key(name), store.meta_key(name), store.lock_key(name)]
        assert len({_slot(key) for key in keys}) == 1, keys
    client = store._client()
    masters = {client.get_node_from_key(store.data_key(name)).port for name in names}
    assert len(masters) >= 2  # 8 caches over 3 masters: all on one would mean no tags spread
    assert store.names() == names
    assert all(store.load(name) == {name: 1} for name in names)


def test_cluster_urls_refuse_a_database_and_braces_in_the_namespace(
    cluster: RedisCluster,
) -> None:
    with pytest.raises(ValueError, match="only database 0"):
        RedisStore(cluster.url() + "/3")
    with pytest.raises(ValueError, match="hash tag"):
        RedisStore(cluster.url(), namespace="a{b}")
    assert repr(RedisStore(cluster.url())).startswith("RedisStore('redis+cluster://")


def test_a_manager_on_the_cluster_resets_a_derived_cache_another_process_invalidated(
    store_manager: CacheManager, cluster: RedisCluster
) -> None:
    root = store_manager.register_custom_cache("root", {"v": 1}, autosync=False)
    root.save()
    child = store_manager.register_custom_cache(
        "child", builder=lambda name: {"from": root["v"]}, autosync=False
    )
    store_manager.register_dependent_cache("root", "child")
    assert child == {"from": 1}
    other = CacheManager(store_manager.name, store=RedisStore(cluster.url()))
    try:
        theirs = other.register_custom_cache("root", autosync=False)
        theirs["v"] = 2
        theirs.save()
        other.invalidate_cache("root")
    finally:
        other.close()
    wait_until(lambda: child == {"from": 2}, timeout=20)


def test_wait_for_replicas_returns_once_the_replica_has_the_write(
    cluster: RedisCluster,
) -> None:
    import redis

    store = RedisStore(cluster.url(), manager=f"m{uuid.uuid4().hex[:8]}", wait_for_replicas=1)
    try:
        store.save("c", {"a": 1})
        store.append("c", [("set", "b", 2)])
        store.update_meta("c", generation="g:1")
        # Read the replica itself (READONLY lets a replica answer for its slots).
        primary = store._client().get_node_from_key(store.data_key("c"))
        replica = next(
            node
            for node in store._client().get_replicas()
            if _replica_of(cluster, node.port) == primary.port
        )
        direct = redis.Redis(port=replica.port)
        try:
            direct.execute_command("READONLY")
            assert direct.hlen(store.data_key("c")) == 2
            assert json.loads(direct.hget(store.meta_key("c"), "generation")) == "g:1"
        finally:
            direct.close()
    finally:
        store.close()


def _replica_of(cluster: RedisCluster, port: int) -> int | None:
    """The port of the master the replica at ``port`` copies."""
    import redis

    client = redis.Redis(port=port)
    try:
        info = client.info("replication")
        return int(info["master_port"]) if info.get("role") == "slave" else None
    finally:
        client.close()


# -- failover --------------------------------------------------------------------------------------

READER = """
import json, sys
from cacheman import CacheManager, RedisStore
from cacheman._stores.generations import generation_of
import logging
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
manager = CacheManager(sys.argv[2], store=RedisStore(sys.argv[1]))
raw = manager.register_custom_cache("raw", autosync=False)
feat = manager.register_custom_cache(
    "feat", builder=lambda name: {"keys": len(raw)}, autosync=False
)
manager.register_dependent_cache("raw", "feat")
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "save":
        manager.save_all_cache_contents()
    listener = manager.store._listener
    print(json.dumps({
        "rechecks": listener.rechecks,
        "built_from": feat._built_from.get("raw"),
        "raw_now": generation_of(manager.store.read_meta("raw")),
    }), flush=True)
"""


class Reader:
    """A long-running process holding ``raw`` and ``feat`` (derived from it), asked over a pipe."""

    def __init__(self, url: str, manager: str, log: Path) -> None:
        self.log = log
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", READER, url, manager],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def ask(self, command: str = "report") -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return dict(json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        self.process.communicate("", timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("wait", [0, 1], ids=["no-wait", "wait-for-replica"])
def test_failover_loses_only_unreplicated_writes_and_nothing_serves_stale_derived_data(
    tmp_path: Path, wait: int, record_property: Any
) -> None:
    """Kill the master of a parent cache while a write and an invalidation sit unreplicated.

    The replica is frozen (SIGSTOP) and cut off from its master first, so the
    writes made then exist on the master only, deterministically: without
    ``wait_for_replicas`` they are acknowledged and lost at the failover; with
    it they are never acknowledged.  A reader process heard of the lost
    invalidation and rebuilt its derived cache from it: after the failover it
    must notice, with no event to tell it, that the parent went back, and
    rebuild from the parent that survived.
    """
    cluster = _start_cluster(tmp_path)
    name = f"f{uuid.uuid4().hex[:8]}"
    store = RedisStore(cluster.url(), manager=name, wait_for_replicas=wait, replica_timeout=0.5)
    reader: Reader | None = None
    try:
        manager = CacheManager(name, tmp_path, store=store)
        raw = manager.register_custom_cache("raw", autosync=False)
        acknowledged: list[str] = []
        for i in range(20):
            raw[f"k{i}"] = i
            raw.save()
            acknowledged.append(f"k{i}")
        manager.invalidate_cache("raw")
        reader = Reader(cluster.url(), name, tmp_path / "reader.log")
        before = reader.ask()
        assert before["built_from"] == before["raw_now"] == raw.generation

        # Freeze the replica of raw's master and cut it off: what follows is on the master only.
        client = store._client()
        primary = client.get_node_from_key(store.meta_key("raw")).port
        replica_port = next(p for p in _ports(cluster) if _replica_of(cluster, p) == primary)
        replica = cluster.node(replica_port)
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        primary_client = client.get_node_from_key(store.meta_key("raw")).redis_connection
        primary_client.execute_command("CLIENT", "KILL", "TYPE", "replica")

        unreplicated = []
        for i in range(20, 25):
            raw[f"k{i}"] = i
            try:
                raw.save()
                acknowledged.append(f"k{i}")
            except TimeoutError:
                pass  # not acknowledged: fewer replicas than asked for have it
            unreplicated.append(f"k{i}")
        lost_generation = next_generation(generation_of(store.read_meta("raw")))
        try:
            store.update_meta("raw", generation=lost_generation)  # as an invalidation does
        except TimeoutError:
            assert wait  # published on the primary, not acknowledged
        wait_until(lambda: reader.ask()["built_from"] == lost_generation, timeout=20)

        killed = time.monotonic()
        primary_node = cluster.node(primary)
        primary_node.kill()
        os.kill(replica.process.pid, signal.SIGCONT)
        cluster.wait_until_ok(60)  # the replica is promoted
        promoted = time.monotonic() - killed
        fresh = RedisStore(f"redis+cluster://127.0.0.1:{replica_port}", manager=name)
        writer = RedisStore(fresh.url, manager=name, wait_for_replicas=wait, replica_timeout=0.5)

        def writes() -> bool:  # a new key, so that nothing pending hides a failure
            try:
                writer.append("raw", [("set", "after", 1)])
            except Exception:
                return False
            return True

        if wait:  # the new primary has no replica until the old one comes back
            primary_node.start()
        wait_until(writes, timeout=60)
        writable = time.monotonic() - killed
        writer.close()
        if not wait:
            primary_node.start()  # the machine comes back: as a replica of the new master
        cluster.wait_until_ok(60)

        saved = fresh.load("raw") or {}
        reports = []
        lost = [key for key in acknowledged if key not in saved]
        record_property("acknowledged_writes_lost", len(lost))
        record_property("seconds_until_promoted", round(promoted, 2))
        record_property("seconds_until_writable", round(writable, 2))
        print(
            f"wait_for_replicas={wait}: {len(lost)} of {len(acknowledged)} acknowledged "
            f"writes lost; promoted after {promoted:.1f} s, writable after {writable:.1f} s"
        )
        survived = generation_of(fresh.read_meta("raw"))
        assert survived != lost_generation
        if wait:
            assert lost == []
        else:
            assert lost == unreplicated  # acknowledged by the primary alone, and gone

        # No event told the reader; it re-read every generation after the failover.
        def caught_up() -> bool:
            reports.append(reader.ask())
            return bool(
                reports[-1]["rechecks"] > before["rechecks"]
                and reports[-1]["built_from"] == survived
            )

        try:
            wait_until(caught_up, timeout=30)
        except AssertionError:
            log = reader.log.read_text()[-3000:]
            raise AssertionError(f"the reader never caught up: {reports[-3:]}\n{log}") from None
        reader.ask("save")  # and what it saves is built from the surviving parent
        assert fresh.read_meta("feat")["parents"]["raw"] == survived
        assert not [p for p in fresh.verify("feat").problems if p.startswith("stale")]
        fresh.close()
        manager.close()
    finally:
        if reader is not None:
            reader.close()
        store.close()
        for node in cluster.nodes:
            if node.process is not None:
                os.kill(node.process.pid, signal.SIGCONT)
        cluster.stop()


def _ports(cluster: RedisCluster) -> list[int]:
    return [node.port for node in cluster.nodes if node.process is not None]


def test_damaged_entries_are_kept_aside_in_their_slot_and_verify_finds_them(
    store: RedisStore,
) -> None:
    import pickle

    store.save("c", {"a": 1})
    store._client().hset(store.data_key("c"), pickle.dumps("b"), b"garbage")
    assert store.verify("c").problems == ["1 entry is damaged"]
    assert store.load("c") is None  # moved aside: the cache is rebuilt
    kept = [key.decode() for key in store._client().scan_iter(match="cacheman:m:{c}:corrupt:*")]
    assert len(kept) == 1
    assert store.usage("c").size > 0  # the metadata is still there
    assert store.verify("c").problems == []


def test_each_generation_change_is_heard_once(cluster: RedisCluster, store: RedisStore) -> None:
    """A cluster event goes out twice (from the script, then plainly, for latency): heard once."""
    listener = RedisStore(cluster.url(), manager="m")
    heard: list[tuple[str | None, str | None]] = []
    listener.subscribe(lambda name, generation: heard.append((name, generation)))
    try:
        sent = [(f"c{i % 4}", f"g:{i}") for i in range(20)]
        for name, generation in sent:
            store.update_meta(name, generation=generation)
        wait_until(lambda: len(heard) >= len(sent))
        time.sleep(0.2)  # (time for a second copy to arrive, if one were let through)
        # Each cache's events in the order they happened (different caches' may interleave).
        for name in {name for name, _ in sent}:
            assert [e for e in heard if e[0] == name] == [e for e in sent if e[0] == name]
        assert len(heard) == len(sent)
    finally:
        listener.close()


@pytest.mark.slow
def test_listeners_follow_the_events_channel_to_its_new_primary(tmp_path: Path) -> None:
    """Listeners subscribe at the channel's primary: when it dies, they find the promoted one."""
    cluster = _start_cluster(tmp_path)
    listener = writer = None
    try:
        listener = RedisStore(cluster.url(), manager="ev")
        heard: list[tuple[str | None, str | None]] = []
        listener.subscribe(lambda name, generation: heard.append((name, generation)))
        channel_port = listener._client().get_node_from_key(listener.channel).port
        cluster.node(channel_port).kill()
        cluster.wait_until_ok(60)  # its replica is promoted
        survivor = next(port for port in _ports(cluster) if port != channel_port)
        writer = RedisStore(f"redis+cluster://127.0.0.1:{survivor}", manager="ev")
        sent: list[str] = []

        def heard_a_new_generation() -> bool:
            if any(("c", generation) in heard for generation in sent):
                return True
            sent.append(f"g:{len(sent)}")
            with contextlib.suppress(Exception):  # (the cluster may still be settling)
                writer.update_meta("c", generation=sent[-1])
            time.sleep(0.3)
            return False

        wait_until(heard_a_new_generation, timeout=60)
        assert (None, None) in heard  # and it said that anything may have been missed
    finally:
        for store in (listener, writer):
            if store is not None:
                store.close()
        cluster.stop()
