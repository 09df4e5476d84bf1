"""The pickle store's event log: what one process writes, the others hear (and only that)."""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from pathlib import Path

import pytest
from helpers import wait_until

from cacheman import CacheManager
from cacheman._stores import file_events
from cacheman._stores.file_events import EventLog

Event = tuple[object, object]


def test_another_writer_is_heard_and_its_own_events_are_not(tmp_path: Path) -> None:
    mine, theirs = EventLog(tmp_path), EventLog(tmp_path)  # two processes' views
    heard: list[Event] = []

    def hear(*event: object) -> None:
        heard.append(event)

    mine.subscribe(hear)
    try:
        mine.publish("raw", "a:1")  # this process's own: already handled here
        theirs.publish("raw", "a:2")
        theirs.publish("other", "b:1")
        wait_until(lambda: len(heard) >= 2)
        assert heard == [("raw", "a:2"), ("other", "b:1")]
    finally:
        mine.unsubscribe(hear)


def test_only_events_after_the_subscription_are_heard(tmp_path: Path) -> None:
    log, writer = EventLog(tmp_path), EventLog(tmp_path)
    writer.publish("old", "a:1")
    heard: list[Event] = []

    def hear(*event: object) -> None:
        heard.append(event)

    log.subscribe(hear)
    try:
        writer.publish("new", "a:2")
        wait_until(lambda: heard)
        assert heard == [("new", "a:2")]
    finally:
        log.unsubscribe(hear)


def test_a_malformed_line_is_skipped_and_a_replaced_log_says_events_were_missed(
    tmp_path: Path,
) -> None:
    log, writer = EventLog(tmp_path), EventLog(tmp_path)
    writer.publish("first", "a:1")
    heard: list[Event] = []

    def hear(*event: object) -> None:
        heard.append(event)

    log.subscribe(hear)
    try:
        with open(log.path, "ab") as raw:
            raw.write(b'{"not": "an event"}\nnot json\n')
        writer.publish("second", "a:2")
        wait_until(lambda: heard)
        assert heard == [("second", "a:2")]
        replacement = tmp_path / "new-log"
        replacement.write_bytes(b"")
        os.replace(replacement, log.path)
        wait_until(lambda: len(heard) == 2)
        assert heard[1] == (None, None)
    finally:
        log.unsubscribe(hear)


def test_a_fifo_in_place_of_the_log_neither_hangs_nor_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path)
    os.mkfifo(log.path)
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        log.publish("raw", "a:1")
    assert str(log.path) in caplog.text
    log.poll()  # a reader does not open it either


def test_a_manager_collected_by_a_thread_holding_the_watchers_locks_unsubscribes(
    tmp_path: Path,
) -> None:
    """A garbage collection runs a dropped manager's finalizer (it unsubscribes) on
    whichever thread allocates: the watcher's own, holding its lock, hung for ever."""
    manager = CacheManager("dropped", tmp_path)
    manager.register_cache("c")
    log = manager.store._events  # type: ignore[attr-defined]
    assert log._callbacks, "registering a cache subscribed the manager"
    manager.deregister_all_caches()
    reference, held = weakref.ref(manager), [manager]
    del manager
    finished = threading.Event()

    def collect_holding_the_locks() -> None:
        with file_events._watcher._lock, log._lock:  # as the watcher holds them
            held.clear()
            gc.collect()
        finished.set()

    threading.Thread(target=collect_holding_the_locks, daemon=True).start()
    assert finished.wait(10), "the finalizer waited for a lock its own thread held"
    assert reference() is None
    assert not log._callbacks  # it unsubscribed...
    assert log not in file_events._watcher._logs  # ...and the log is no longer watched
