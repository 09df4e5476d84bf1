"""Benchmark the Redis store against raw redis-py and against a one-key-per-entry layout.

Starts its own ``redis-server`` (127.0.0.1, a free port, no persistence) and
measures, in this one run (the minimum over several repeats, alternating the
two sides, so a noisy machine moves both alike):

* ``save()`` of N entries through a PersistentCache on a RedisStore, against
  raw redis-py: ``pickle.dumps`` of each key and value, ``HSET`` of 1,000
  entries a command, 20 commands a pipeline round trip (target <= 1.2 x).
* ``load()`` of the same cache (``HSCAN`` + unpickle + copy into the live
  cache), against raw ``HGETALL`` + unpickle (target <= 1.2 x).
* the same two with a signing key (HMAC-SHA256 per entry), reported.
* one changed key made durable in Redis (``append``: one ``MULTI`` with ``HSET``
  and the metadata stamp) in the N-entry cache, median and p99, against a raw
  single ``HSET`` round trip and against a full save.
* a generation change (``update_meta``) seen by a second process subscribed to
  the store, median and p99, against a raw ``PUBLISH`` seen by a raw subscriber.
* the one-key-per-entry layout of cachetools-utils / dogpile.cache's Redis
  backend (``SET``/``MGET`` per entry; here ``MSET`` 1,000 a command, which
  favours it): save, load (``SCAN`` + ``MGET``), forgetting the whole cache,
  and server memory, each against the hash layout.

Run ``python benchmarks/bench_redis.py`` (1,000,000 entries) or ``--quick``
(100,000 entries, fewer repeats).  The exit status is 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

# One way to start a throw-away server, shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import verdict
from bench_core import Row, best_of, entries, print_table
from redis_server import RedisServer, find_redis_server

from cacheman import CacheManager, PersistentCache, RedisStore

SAVE_TARGET = 1.20
LOAD_TARGET = 1.20
BATCH = 1000
BATCHES_PER_ROUND_TRIP = 20


def percentiles(samples: list[float]) -> tuple[float, float]:
    """Median and 99th percentile, in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# -- raw redis-py, the baseline --------------------------------------------------------------


def raw_save(client: redis.Redis, key: str, data: dict[Any, Any]) -> None:
    client.delete(key)
    dumps = pickle.dumps
    items = list(data.items())
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(items), BATCH):
        fields: list[bytes] = []
        for item_key, value in items[start : start + BATCH]:
            fields.append(dumps(item_key, 5))
            fields.append(dumps(value, 5))
        pipe.execute_command("HSET", key, *fields)
        if len(pipe) >= BATCHES_PER_ROUND_TRIP:
            pipe.execute()
    pipe.execute()


def raw_load(client: redis.Redis, key: str) -> dict[Any, Any]:
    loads = pickle.loads
    return {loads(field): loads(value) for field, value in client.hgetall(key).items()}


def save_load_rows(url: str, data: dict[Any, Any], repeats: int, tmp: Path) -> list[Row]:
    count = len(data)
    client = redis.Redis.from_url(url)
    rows = []
    for signing_key in (None, b"benchmark key"):
        manager = CacheManager(
            f"bench{'signed' if signing_key else ''}",
            tmp,
            signing_key=signing_key,
            store=RedisStore(url),
        )
        cache = PersistentCache("big", cache_manager=manager, contents=data)
        raw_save_time, save_time = best_of(
            repeats, lambda: raw_save(client, "raw", data), cache.save
        )
        raw_load_time, load_time = best_of(repeats, lambda: raw_load(client, "raw"), cache.load)
        assert cache == data, "the benchmark cache did not round-trip"
        signed = ", signed" if signing_key else ""
        rows += [
            Row(
                f"save() of {count:,} entries{signed}",
                save_time / raw_save_time,
                "raw HSET pipeline",
                None if signing_key else SAVE_TARGET,
                f"{ms(save_time)} vs {ms(raw_save_time)}",
            ),
            Row(
                f"load() of {count:,} entries{signed}",
                load_time / raw_load_time,
                "raw HGETALL",
                None if signing_key else LOAD_TARGET,
                f"{ms(load_time)} vs {ms(raw_load_time)}",
            ),
        ]
        manager.store.delete("big")
        manager.deregister_all_caches()
        manager.store.close()  # type: ignore[attr-defined]
    client.delete("raw")
    client.close()
    return rows


def change_row(url: str, data: dict[Any, Any], rounds: int) -> list[Row]:
    store = RedisStore(url, manager="bench")
    client = redis.Redis.from_url(url)
    store.save("big", data)
    full_save = best_of(2, lambda: store.save("big", data))[0]
    append_times, raw_times = [], []
    for index in range(rounds):
        start = time.perf_counter()
        store.append("big", [("set", f"key-{index:08d}", (index, 0.0, "changed"))])
        append_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        client.hset("raw", pickle.dumps(f"key-{index:08d}", 5), pickle.dumps(index, 5))
        raw_times.append(time.perf_counter() - start)
    median, p99 = percentiles(append_times)
    raw_median, raw_p99 = percentiles(raw_times)
    store.delete("big")
    client.delete("raw")
    client.close()
    store.close()
    return [
        Row(
            f"one changed key in {len(data):,} entries (append)",
            median / raw_median,
            "raw HSET",
            None,
            f"median {median:.2f} ms, p99 {p99:.2f} ms (raw {raw_median:.2f} / {raw_p99:.2f}); "
            f"full save {ms(full_save)}, {full_save * 1000 / median:,.0f} x longer",
        )
    ]


# -- invalidation seen by another process ---------------------------------------------------------

LISTENER = """
import sys, time
import redis
from cacheman import RedisStore
url, kind = sys.argv[1], sys.argv[2]
if kind == "store":
    store = RedisStore(url, manager="bench")
    store.subscribe(lambda name, generation: print(time.monotonic(), flush=True))
else:
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("raw-events")
    while pubsub.get_message(timeout=1) is None and not pubsub.subscribed:
        pass
print("ready", flush=True)
if kind == "raw":
    while True:
        message = pubsub.get_message(timeout=1)
        if message is not None:
            print(time.monotonic(), flush=True)
else:
    sys.stdin.readline()
"""


def event_latencies(url: str, kind: str, rounds: int, send: Callable[[int], object]) -> list[float]:
    """Seconds from ``send(i)`` in this process to the callback in a second one (same clock)."""
    listener = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LISTENER), url, kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    try:
        assert listener.stdout.readline().strip() == "ready"
        latencies = []
        for index in range(rounds):
            sent = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
            send(index)
            latencies.append(float(listener.stdout.readline()) - sent)
        return latencies
    finally:
        listener.kill()
        listener.wait()


def event_row(url: str, rounds: int) -> Row:
    store = RedisStore(url, manager="bench")
    client = redis.Redis.from_url(url)
    ours = event_latencies(
        url, "store", rounds, lambda i: store.update_meta("root", generation=f"g:{i}")
    )
    raw = event_latencies(url, "raw", rounds, lambda i: client.publish("raw-events", str(i)))
    median, p99 = percentiles(ours)
    raw_median, raw_p99 = percentiles(raw)
    store.delete("root")
    store.close()
    client.close()
    return Row(
        "generation change seen by a 2nd process",
        median / raw_median,
        "raw PUBLISH",
        None,
        f"median {median:.2f} ms, p99 {p99:.2f} ms (raw {raw_median:.2f} / {raw_p99:.2f})",
    )


# -- one key per entry (cachetools-utils, dogpile.cache) ---------------------------------------


def per_entry_save(client: redis.Redis, data: dict[Any, Any]) -> None:
    dumps = pickle.dumps
    items = list(data.items())
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(items), BATCH):
        pipe.mset({f"entry:{key}": dumps(value, 5) for key, value in items[start : start + BATCH]})
        if len(pipe) >= BATCHES_PER_ROUND_TRIP:
            pipe.execute()
    pipe.execute()


def per_entry_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="entry:*", count=10_000))


def per_entry_load(client: redis.Redis) -> dict[Any, Any]:
    keys = per_entry_keys(client)
    loads = pickle.loads
    loaded = {}
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        for key, value in zip(batch, client.mget(batch), strict=True):
            loaded[key[6:].decode()] = loads(value)
    return loaded


def per_entry_forget(client: redis.Redis) -> None:
    keys = per_entry_keys(client)
    for start in range(0, len(keys), BATCH):
        client.unlink(*keys[start : start + BATCH])


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def layout_rows(url: str, data: dict[Any, Any], repeats: int) -> list[Row]:
    store = RedisStore(url, manager="bench")
    client = redis.Redis.from_url(url)
    count = len(data)

    def forget_hash() -> None:
        store.delete("layout")

    def save_hash() -> None:
        store.save("layout", data)

    empty = used_memory(client)
    save_hash()
    hash_memory = used_memory(client) - empty
    forget_hash()
    per_entry_save(client, data)
    entry_memory = used_memory(client) - empty
    per_entry_forget(client)

    hash_save, entry_save = best_of(repeats, save_hash, lambda: per_entry_save(client, data))
    hash_load, entry_load = best_of(
        repeats, lambda: store.load("layout"), lambda: per_entry_load(client)
    )
    assert per_entry_load(client) == data
    hash_forget, entry_forget = best_of(
        1, forget_hash, lambda: per_entry_forget(client)
    )  # once: each empties the store
    store.close()
    client.close()
    return [
        Row(
            f"1 key per entry: save {count:,}",
            entry_save / hash_save,
            "hash (ours)",
            None,
            f"{ms(entry_save)} vs {ms(hash_save)}",
        ),
        Row(
            f"1 key per entry: load {count:,}",
            entry_load / hash_load,
            "hash (ours)",
            None,
            f"{ms(entry_load)} vs {ms(hash_load)} (SCAN + MGET)",
        ),
        Row(
            f"1 key per entry: forget {count:,}",
            entry_forget / hash_forget,
            "hash (ours)",
            None,
            f"{entry_forget * 1000:.1f} ms vs {hash_forget * 1000:.1f} ms (SCAN + UNLINK vs DEL)",
        ),
        Row(
            f"1 key per entry: server memory {count:,}",
            entry_memory / hash_memory,
            "hash (ours)",
            None,
            f"{entry_memory / 1e6:.0f} MB vs {hash_memory / 1e6:.0f} MB",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100,000 entries, fewer repeats")
    args = parser.parse_args(argv)
    count, repeats, rounds = (100_000, 2, 200) if args.quick else (1_000_000, 3, 1000)
    executable = find_redis_server()
    if executable is None:
        print("redis-server is not installed (Debian package redis-server)", file=sys.stderr)
        return 2
    data = entries(count)
    with tempfile.TemporaryDirectory(prefix="cacheman-bench-") as directory:
        server = RedisServer(Path(directory), executable)
        server.start()
        try:
            rows = save_load_rows(server.url(1), data, repeats, Path(directory))
            rows += change_row(server.url(2), data, rounds)
            rows.append(event_row(server.url(3), rounds // 2))
            rows += layout_rows(server.url(4), data, repeats)
        finally:
            server.stop()
    print(f"CacheMan Redis benchmark, Python {sys.version.split()[0]}, redis-py "
          f"{redis.__version__}, {count:,} entries")  # fmt: skip
    print_table(rows)
    return verdict([row.what for row in rows if not row.passed])


if __name__ == "__main__":
    sys.exit(main())
