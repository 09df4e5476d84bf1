"""One contract, every store: what the manager and the caches rely on of a store.

Each test runs against every store (the pickle store in a temporary directory,
and RedisStore on a real ``redis-server``), signed and unsigned.  The optional
capabilities (:mod:`cacheman._stores.api`: journal, events, builder lock, verify,
usage) are tested on the stores that declare them; the table of who declares
what is itself a test.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cacheman import RedisStore
from cacheman._stores.api import (
    Store,
    supports_builder_lock,
    supports_damage_switch,
    supports_events,
    supports_journal,
    supports_usage,
    supports_verify,
)
from cacheman._stores.journal import CLEAR, DEL, SET, apply_changes
from cacheman._stores.pickle import PickleStore
from cacheman.errors import SignatureMismatchError, UnpicklableValueError

KEY = b"k" * 32
MIXED = {
    "int": 1,
    ("tuple", 2): (1, "two", 3.0),
    3: {"nested": [1, 2, {"x": None}]},
    "bytes": b"\x00\xff",
    "none": None,
    frozenset({1}): "frozen",
}

StoreMaker = Callable[..., Store]


@pytest.fixture(params=["pickle", "pickle-signed", "redis", "redis-signed"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    """Make stores of one manager, as separate processes would hold them (one object each)."""
    made: list[Store] = []
    signing_key = KEY if kind.endswith("-signed") else None
    manager = f"contract-{uuid.uuid4().hex[:8]}"
    url = request.getfixturevalue("redis_url") if kind.startswith("redis") else ""

    def make_one(key: bytes | None = signing_key) -> Store:
        store: Store
        if kind.startswith("redis"):
            store = RedisStore(url).bind(manager, key)
        else:
            store = PickleStore(tmp_path / manager, signing_key=key)
        made.append(store)
        return store

    yield make_one
    for store in made:
        if isinstance(store, RedisStore):
            store.close()


@pytest.fixture
def store(make: StoreMaker) -> Store:
    return make()


# -- the capabilities each store declares ------------------------------------------------


def test_declared_capabilities(store: Store, kind: str) -> None:
    """The table in cacheman._stores.api's docstring: who implements which optional protocol."""
    declared = {
        "journal": supports_journal(store),
        "events": supports_events(store),
        "builder_lock": supports_builder_lock(store),
        "verify": supports_verify(store),
        "usage": supports_usage(store),
        "damage_switch": supports_damage_switch(store),
    }
    if kind.startswith("redis"):
        expected = {"journal": 1, "events": 1, "builder_lock": 1, "verify": 1, "usage": 1}
        expected["damage_switch"] = 1
    else:
        expected = {"journal": 1, "events": 1, "builder_lock": 0, "verify": 1, "usage": 1}
        expected["damage_switch"] = 1
    assert declared == {name: bool(flag) for name, flag in expected.items()}
    assert isinstance(store, Store)


# -- the Store protocol: every store -----------------------------------------------------


def test_nothing_saved(store: Store) -> None:
    assert store.load("absent") is None
    assert not store.exists("absent")
    assert store.names() == []
    assert store.read_meta("absent") is None
    assert store.read_edges() == []
    store.delete("absent")  # deleting what is not there is no error
    store.remove_edges("absent")


def test_save_then_load_in_another_process(make: StoreMaker) -> None:
    make().save("mixed", MIXED)
    reader = make()
    assert reader.load("mixed") == MIXED
    assert reader.exists("mixed")
    assert reader.names() == ["mixed"]


def test_an_empty_cache_saved_is_there(store: Store) -> None:
    store.save("empty", {})
    assert store.exists("empty")
    assert store.load("empty") == {}
    assert store.names() == ["empty"]


def test_save_replaces_everything_saved(store: Store) -> None:
    store.save("c", {"a": 1, "b": 2})
    store.save("c", {"c": 3})
    assert store.load("c") == {"c": 3}


def test_an_unpicklable_value_saves_nothing(store: Store) -> None:
    store.save("c", {"a": 1})
    with pytest.raises(UnpicklableValueError, match="'c'") as raised:
        store.save("c", {"a": 2, "lock": threading.Lock()})
    assert isinstance(raised.value, TypeError)
    assert store.load("c") == {"a": 1}


def test_values_pickle_refuses_fall_back_to_cloudpickle(make: StoreMaker) -> None:
    offset = 7
    make().save("c", {"f": lambda x: x + offset})
    loaded = make().load("c")
    assert loaded is not None
    assert loaded["f"](1) == 8


def test_delete_removes_contents_and_metadata(make: StoreMaker) -> None:
    store = make()
    store.save("gone", {"a": 1})
    store.update_meta("gone", generation="g1")
    store.save("kept", {"b": 2})
    make().delete("gone")
    assert store.load("gone") is None
    assert not store.exists("gone")
    assert store.read_meta("gone") is None
    assert store.names() == ["kept"]
    assert store.load("kept") == {"b": 2}


def test_names_are_sorted_and_count_metadata_alone(store: Store) -> None:
    for name in ("b", "a", "c"):
        store.save(name, {name: 1})
    store.update_meta("meta-only", generation="g")
    assert store.names() == ["a", "b", "c", "meta-only"]
    assert not store.exists("meta-only")


def test_metadata_fields_are_set_removed_and_kept_apart(make: StoreMaker) -> None:
    one, two = make(), make()
    result = one.update_meta("c", generation="g1", parents={"p": "g0"})
    assert result["generation"] == "g1"
    two.update_meta("c", stale=True)  # another process, another field: both kept
    meta = one.read_meta("c")
    assert meta is not None
    assert (meta["generation"], meta["parents"], meta["stale"]) == ("g1", {"p": "g0"}, True)
    one.update_meta("c", stale=None)  # None removes a field
    meta = two.read_meta("c")
    assert meta is not None
    assert "stale" not in meta
    assert meta["generation"] == "g1"


def test_edges_keep_their_order_once_and_are_removed_by_name(make: StoreMaker) -> None:
    one, two = make(), make()
    one.add_edges([("raw", "features"), ("raw", "stats"), ("raw", "features")])
    two.add_edges([("features", "model"), ("raw", "stats")])
    assert one.read_edges() == [("raw", "features"), ("raw", "stats"), ("features", "model")]
    two.remove_edges("features")
    assert one.read_edges() == [("raw", "stats")]


def test_a_store_with_another_key_refuses_signed_data(make: StoreMaker, kind: str) -> None:
    if not kind.endswith("-signed"):
        pytest.skip("unsigned store: nothing to check")
    make().save("c", {"a": 1})
    with pytest.raises(SignatureMismatchError):
        make(b"j" * 32).load("c")


# -- JournalStore: changes key by key ------------------------------------------------------


def test_append_applies_sets_deletes_and_clears(make: StoreMaker) -> None:
    store = make()
    assert supports_journal(store)
    store.append("c", [(SET, "a", 1), (SET, "b", [2])])  # creates the cache
    store.append("c", [(DEL, "a", None), (SET, "c", (3,))])
    assert make().load("c") == {"b": [2], "c": (3,)}
    store.append("c", [(CLEAR, None, None), (SET, "d", 4)])
    assert make().load("c") == {"d": 4}


def test_append_keeps_the_changes_of_others(make: StoreMaker) -> None:
    one, two = make(), make()
    assert supports_journal(one)
    assert supports_journal(two)
    one.save("c", {"a": 1, "b": 1})
    two.append("c", [(SET, "b", 2)])
    one.append("c", [(SET, "a", 2)])
    assert make().load("c") == {"a": 2, "b": 2}


def test_an_append_is_in_sync_when_nobody_else_wrote(make: StoreMaker) -> None:
    store = make()
    assert supports_journal(store)
    store.save("c", {"a": 1})
    _, position = store.load_tracked("c")
    result = store.append("c", [(SET, "b", 2)], since=position)
    assert result.in_sync
    again = store.append("c", [(SET, "b", 3)], since=result.position)
    assert again.in_sync


def test_an_append_after_another_writer_is_not_in_sync(make: StoreMaker) -> None:
    one, two = make(), make()
    assert supports_journal(one)
    assert supports_journal(two)
    one.save("c", {"a": 1})
    _, position = one.load_tracked("c")
    if position is None:
        pytest.skip("a store without positions applies every change itself (always in sync)")
    two.append("c", [(SET, "b", 2)])
    assert not one.append("c", [(SET, "a", 2)], since=position).in_sync


def test_changes_since_replay_to_what_load_reads(make: StoreMaker) -> None:
    """What changes_since returns, applied to the old load, is the new load; None means reload."""
    one, two = make(), make()
    assert supports_journal(one)
    assert supports_journal(two)
    one.save("c", {"a": 1, "b": 2})
    before, position = one.load_tracked("c")
    assert before == {"a": 1, "b": 2}
    two.append("c", [(SET, "a", 10), (DEL, "b", None), (SET, "z", 26)])
    news = one.changes_since("c", position)
    if position is None:
        assert news is None  # no position: the only way to catch up is to reload
        return
    assert news is not None
    changes, moved = news
    apply_changes(before, changes)
    assert before == one.load("c") == {"a": 10, "z": 26}
    assert one.changes_since("c", moved) == ([], moved)


def test_a_full_save_with_since_keeps_what_others_appended(make: StoreMaker) -> None:
    one, two = make(), make()
    assert supports_journal(one)
    assert supports_journal(two)
    one.save("c", {"a": 1})
    _, position = one.load_tracked("c")
    if position is None:
        pytest.skip("a store without positions has nothing to fold in at this level")
    two.append("c", [(SET, "theirs", 1)])
    result = one.save("c", {"a": 2, "mine": 1}, since=position, pending=[(SET, "a", 3)])
    assert result.was_behind
    assert make().load("c") == {"a": 3, "mine": 1, "theirs": 1}


# -- optional capabilities ------------------------------------------------------------------


def test_verify_finds_nothing_wrong_with_what_was_saved(store: Store) -> None:
    if not supports_verify(store):
        pytest.skip("this store does not declare Verifying")
    store.save("c", {"a": 1})
    assert supports_journal(store)
    store.append("c", [(SET, "b", 2)])
    assert store.verify("c").problems == []
    assert store.verify("absent").problems == []


def test_verify_reports_a_damaged_snapshot(store: Store) -> None:
    if not isinstance(store, PickleStore):
        pytest.skip("damaging a file is the pickle store's own way to fail")
    store.save("c", {"a": 1})
    path = store.path_for("c")
    path.write_bytes(path.read_bytes()[:-3])
    assert store.verify("c").problems != []


def test_usage_counts_the_bytes_kept(store: Store) -> None:
    if not supports_usage(store):
        pytest.skip("this store does not declare UsageReporting")
    assert tuple(store.usage("c")) == (0, None)
    store.save("c", {"a": "x" * 1000})
    size, modified = store.usage("c")
    assert size > 1000
    assert modified is not None


def test_one_builder_at_a_time(make: StoreMaker) -> None:
    one, two = make(), make()
    if not supports_builder_lock(one) or not supports_builder_lock(two):
        pytest.skip("this store does not declare BuilderLocking")
    with (
        one.builder_lock("c", 30),
        pytest.raises(TimeoutError, match="'c'"),
        two.builder_lock("c", 30, wait=0.05),
    ):
        pass
    with two.builder_lock("c", 30, wait=1):  # released: the next one gets it at once
        pass


def test_events_reach_other_processes_and_tell_own_writes_apart(make: StoreMaker) -> None:
    listener, writer = make(), make()
    if not supports_events(listener) or not supports_events(writer):
        pytest.skip("this store does not declare EventStore")
    heard: list[tuple[Any, Any]] = []
    arrived = threading.Event()

    def on_event(name: str | None, generation: str | None) -> None:
        heard.append((name, generation))
        if name == "c":
            arrived.set()

    listener.subscribe(on_event)
    try:
        writer.update_meta("c", generation="g-1")
        assert arrived.wait(10), "no event within 10 s"
        assert ("c", "g-1") in heard
        assert writer.wrote_generation("c", "g-1")
        assert not listener.wrote_generation("c", "g-1")
    finally:
        listener.unsubscribe(on_event)
