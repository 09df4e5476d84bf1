"""The scheduler (one thread, sorted deadlines, watched pipes) and the edit log's invariants."""

from __future__ import annotations

import os
import random
import threading
import time

import psutil
import pytest

from cacheman import TimeCount
from cacheman._process import scheduler as _scheduler
from cacheman.autosync import DEFAULT_TIME_CHECKS, EditLog


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """Something that owns a deadline."""


def test_tasks_run_in_deadline_order_and_reschedule_themselves() -> None:
    clock = VirtualClock()
    scheduler = _scheduler.Scheduler(clock, threaded=False)
    ran: list[tuple[str, float]] = []
    a, b = Owner(), Owner()

    def task_a(now: float) -> float | None:
        ran.append(("a", now))
        return now + 10 if now < 20 else None

    scheduler.call_at(a, 5, task_a)
    scheduler.call_at(b, 3, lambda now: ran.append(("b", now)))
    for moment in (1, 3, 5, 15, 25, 100):
        clock.now = moment
        scheduler.run_due()
    assert ran == [("b", 3), ("a", 5), ("a", 15), ("a", 25)]
    assert scheduler.next_deadline() is None


def test_an_owner_keeps_its_earliest_deadline_and_can_cancel() -> None:
    clock = VirtualClock()
    scheduler = _scheduler.Scheduler(clock, threaded=False)
    owner = Owner()
    scheduler.call_at(owner, 10, lambda now: None)
    scheduler.call_at(owner, 20, lambda now: None)
    assert scheduler.next_deadline() == 10
    scheduler.call_at(owner, 4, lambda now: None)
    assert scheduler.next_deadline() == 4
    scheduler.cancel(owner)
    assert scheduler.next_deadline() is None


def test_a_failing_task_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    scheduler = _scheduler.Scheduler(clock, threaded=False)
    ran = []
    scheduler.call_at(Owner(), 1, lambda now: 1 / 0)
    keep = Owner()
    scheduler.call_at(keep, 2, ran.append)
    clock.now = 5
    scheduler.run_due()
    assert ran == [5]
    assert "ZeroDivisionError" in caplog.text


def test_the_thread_sleeps_until_the_deadline_and_does_not_spin() -> None:
    scheduler = _scheduler.Scheduler(time.monotonic, threaded=True)
    fired = threading.Event()
    owner = Owner()
    started = time.monotonic()
    scheduler.call_at(owner, started + 0.3, lambda now: fired.set())
    assert fired.wait(5)
    assert time.monotonic() - started >= 0.29
    thread = scheduler._thread
    assert thread is not None
    assert thread.daemon
    # Idle, with nothing scheduled: the thread must not use the CPU.
    time.sleep(0.1)
    cpu = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    time.sleep(0.5)
    after = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    assert after[thread.native_id] - cpu[thread.native_id] < 0.02
    scheduler.stop()
    assert not thread.is_alive()


def test_a_watched_pipe_wakes_the_thread() -> None:
    scheduler = _scheduler.Scheduler(time.monotonic, threaded=True)
    read_end, write_end = os.pipe()
    seen = threading.Event()

    def readable() -> None:
        os.read(read_end, 100)
        seen.set()

    scheduler.watch(read_end, readable)
    os.write(write_end, b"x")
    assert seen.wait(5)
    scheduler.unwatch(read_end)
    scheduler.stop()
    os.close(read_end)
    os.close(write_end)


def test_the_process_thread_is_restarted_in_a_forked_child() -> None:
    scheduler = _scheduler.process_scheduler()
    parent_ran = threading.Event()
    scheduler.call_at(Owner(), time.monotonic(), lambda now: parent_ran.set())
    assert parent_ran.wait(5)  # the parent's thread runs
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ran = threading.Event()
        owner = Owner()
        scheduler.call_at(owner, time.monotonic() + 0.05, lambda now: ran.set())
        os._exit(0 if ran.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- the edit log: seeded random operations, invariants checked after each -----------


@pytest.mark.parametrize("seed", range(5))
def test_edit_log_random_operations_keep_its_invariants(seed: int) -> None:
    rng = random.Random(seed)
    rules = (
        DEFAULT_TIME_CHECKS if seed % 2 else (TimeCount(1, 50), TimeCount(3, 5), TimeCount(7, 1))
    )
    log = EditLog(rules, bucket_size=min(1.0, rules[0].time_length))
    now, edits = 0.0, 0
    for _ in range(2000):
        operation = rng.choice(["edit", "edit", "wait", "close", "check", "save"])
        if operation == "edit":
            edits += rng.randint(1, 30)
            if log.open_time is None:
                log.open(now)
        elif operation == "wait":
            now += rng.random() * rules[-1].time_length / 10
        elif operation == "close":
            log.close(edits)
        elif operation == "check":
            log.later_rules_fire(now)
            deadline = log.next_deadline()
            if log.open_time is not None:  # the open bucket must be closed on time
                assert deadline is not None
                assert deadline <= log.open_time + log.bucket_size
        else:
            log.saved_through(rng.randint(log.floor, edits))
        assert 0 <= log.recent(now, edits) <= edits - log.floor
        log._check()


def test_unwatch_with_a_callback_leaves_a_newer_watch_of_the_same_number() -> None:
    # Pipe numbers are reused as soon as they are closed: a finished save must not
    # stop the scheduler watching the next save's pipe that got the same number.
    scheduler = _scheduler.Scheduler(time.monotonic, threaded=True)
    read_end, write_end = os.pipe()
    seen = threading.Event()

    def old_job() -> None:  # pragma: no cover - never called
        raise AssertionError("the old job's watch was replaced")

    def new_job() -> None:
        os.read(read_end, 100)
        seen.set()

    scheduler.watch(read_end, old_job)
    scheduler.watch(read_end, new_job)
    scheduler.unwatch(read_end, old_job)
    os.write(write_end, b"x")
    assert seen.wait(5)
    scheduler.unwatch(read_end, new_job)
    scheduler.stop()
    os.close(read_end)
    os.close(write_end)


def test_unwatch_returns_only_once_the_thread_has_left_its_poll() -> None:
    # A thread blocked in poll() keeps every polled file open; if a descriptor were
    # closed and its number reused (a subprocess's output pipe, say) meanwhile,
    # that pipe's reader would wait for end-of-file until the poll timed out.
    scheduler = _scheduler.Scheduler(time.monotonic, threaded=True)
    read_end, write_end = os.pipe()
    scheduler.watch(read_end, lambda: None)
    deadline = time.monotonic() + 5
    while read_end not in scheduler._polling and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_end in scheduler._polling  # the thread is blocked in poll() on it
    scheduler.unwatch(read_end)
    assert read_end not in scheduler._polling
    os.close(read_end)
    os.close(write_end)
    scheduler.stop()
