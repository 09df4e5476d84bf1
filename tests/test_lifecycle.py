"""The process's lifecycle with real processes and real signals: exit, SIGTERM/SIGHUP, forks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import run_python, wait_until_reading_stdin

from cacheman import AutoSyncCache, CacheManager
from cacheman._process import lifecycle

EXIT_SCRIPT = """
import sys
from cacheman import CacheManager, TimeCount
manager = CacheManager("exit", sys.argv[1])
cache = manager.register_cache("flushed")
for i in range(500):
    cache[i] = i
burst = manager.register_custom_cache("in_flight", time_checks=[TimeCount(60, 100)])
for i in range(150):  # a child save starts at 100; 50 edits stay pending
    burst[i] = i
"""


def test_exit_flush_in_a_fresh_interpreter(tmp_path: Path) -> None:
    done = run_python(
        "-W", "error::DeprecationWarning", "-c", EXIT_SCRIPT, str(tmp_path), timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr
    manager = CacheManager("exit", tmp_path)  # what the next run would see
    assert manager.store.load("flushed") == {i: i for i in range(500)}
    assert manager.store.load("in_flight") == {i: i for i in range(150)}


def _edit_in_worker(cache: AutoSyncCache) -> None:
    cache["from_worker"] = os.getpid()


def test_exit_flush_in_a_forked_multiprocessing_worker(manager: CacheManager) -> None:
    cache = manager.register_cache("worker")  # default rules: nothing saves by itself
    cache["from_parent"] = 1
    context = multiprocessing.get_context("fork")
    worker = context.Process(target=_edit_in_worker, args=(cache,))
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0
    saved = manager.store.load("worker") or {}
    assert saved.get("from_worker") == worker.pid
    assert "from_worker" not in cache  # the worker's edit lives in the worker's copy
    assert cache.pending_edits == 1  # the parent's edit is still the parent's to save


# A program that makes 50 edits no rule saves by itself (the default rules wait
# minutes), says "ready", then waits on stdin for a signal or for stdin to close.
SIGNAL_SCRIPT = """
import os, signal, sys
from cacheman import CacheManager
{before}
manager = CacheManager("signals", sys.argv[1])
cache = manager.register_cache("edits")
{after}
for i in range(50):
    cache[i] = i
print("ready", flush=True)
sys.stdin.read()
print("stdin closed", flush=True)
"""


def start(
    tmp_path: Path, before: str = "", after: str = "", *, expect: str = "ready\n", **env: str
) -> subprocess.Popen[str]:
    """Start SIGNAL_SCRIPT in a fresh interpreter; wait until it prints ``expect``.

    After "ready", also until it waits on its stdin, where a signal finds it.
    """
    script = SIGNAL_SCRIPT.format(before=textwrap.dedent(before), after=textwrap.dedent(after))
    child_env = {**os.environ, "CACHEMAN_DIR": str(tmp_path), **env}
    child_env.pop("PYTHONSTARTUP", None)
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == expect, line + (process.stderr.read() if process.stderr else "")
    if expect == "ready\n":
        wait_until_reading_stdin(process.pid)
    return process


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for the program to end; its exit status, output and error output.

    Its stdin stays open while it runs: only a signal (or the test closing
    stdin first) ends it.
    """
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()  # a hung program must not outlive the test
        process.wait()
        raise
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    if not process.stdin.closed:
        process.stdin.close()
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    return process.returncode, out, err


def saved(tmp_path: Path, name: str = "edits") -> dict[object, object]:
    """What the next run would load."""
    return CacheManager("signals", tmp_path).store.load(name) or {}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_saves_every_pending_edit_then_ends_the_process_as_usual(
    tmp_path: Path, signum: signal.Signals
) -> None:
    process = start(tmp_path)
    process.send_signal(signum)
    status, out, err = finish(process)
    assert status == -signum, err  # a shell sees 128 + signum
    assert "stdin closed" not in out
    assert saved(tmp_path) == {i: i for i in range(50)}


def test_the_programs_own_handler_is_still_called_after_the_flush(tmp_path: Path) -> None:
    own_handler = """
        def goodbye(signum, frame):
            print("own handler", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, goodbye)
    """
    process = start(tmp_path, before=own_handler)
    process.send_signal(signal.SIGTERM)
    status, out, err = finish(process)
    assert status == 3, err
    assert "own handler" in out
    assert saved(tmp_path) == {i: i for i in range(50)}


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    ignored = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    report = "print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, file=sys.stderr)"
    process = start(tmp_path, before=ignored, after=report)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None, "SIGTERM is still ignored"
    assert saved(tmp_path) == {}, "and nothing was flushed for it"
    assert process.stdin is not None
    process.stdin.close()  # lets the program end normally
    status, out, err = finish(process)
    assert "stdin closed" in out
    assert status == 0, err
    assert err.strip() == "True", err  # our handler was not installed over it
    assert saved(tmp_path) == {i: i for i in range(50)}  # by the exit flush


# A saver that counts its calls in a file, and on its first call sends the
# process a second SIGTERM while the first one's flush is running.
COUNTING_SAVER = """
import pathlib
calls = pathlib.Path(sys.argv[1]) / "calls"
def counting_saver(name, contents):
    with calls.open("a") as handle:
        handle.write("call\\n")
    if os.environ.get("SECOND_SIGNAL") and calls.read_text().count("call") == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    manager.store.save(name, contents)
cache.saver = counting_saver
"""


def test_no_double_flush_with_a_chained_handler_that_exits(tmp_path: Path) -> None:
    # The chained handler's sys.exit runs atexit: the flush must not run again.
    own_handler = "signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(4))"
    process = start(tmp_path, before=own_handler, after=COUNTING_SAVER)
    process.send_signal(signal.SIGTERM)
    status, _, err = finish(process)
    assert status == 4, err
    assert (tmp_path / "calls").read_text() == "call\n"
    assert saved(tmp_path) == {i: i for i in range(50)}


def test_no_double_flush_when_a_second_signal_comes_during_the_flush(tmp_path: Path) -> None:
    process = start(tmp_path, after=COUNTING_SAVER, SECOND_SIGNAL="1")
    process.send_signal(signal.SIGTERM)
    status, _, err = finish(process)
    assert status == -signal.SIGTERM, err
    assert (tmp_path / "calls").read_text() == "call\n"
    assert saved(tmp_path) == {i: i for i in range(50)}


def test_opting_out_by_environment_leaves_the_signal_alone(tmp_path: Path) -> None:
    process = start(tmp_path, CACHEMAN_NO_SIGNAL_HANDLERS="1")
    process.send_signal(signal.SIGTERM)
    status, _, err = finish(process)
    assert status == -signal.SIGTERM, err
    assert saved(tmp_path) == {}, "without the handler, SIGTERM drops pending edits"


def test_a_package_thread_blocks_the_signals_from_its_first_instruction() -> None:
    # A thread that blocked them only from its own first line left a moment in
    # which the kernel could hand it a SIGTERM the main thread then never ran.
    at_first_instruction: list[set[int]] = []
    thread = threading.Thread(
        target=lambda: at_first_instruction.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    )
    lifecycle.start_thread(thread)
    thread.join(10)
    assert {signal.SIGTERM, signal.SIGHUP} <= at_first_instruction[0]
    # ...and the thread that started it takes signals as before.
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_disable_signal_handlers_puts_back_the_handlers_it_replaced(tmp_path: Path) -> None:
    script = """
        import signal, sys
        import cacheman
        def mine(signum, frame): pass
        signal.signal(signal.SIGHUP, mine)
        manager = cacheman.CacheManager("signals", sys.argv[1])
        manager.register_cache("edits")
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, mine)
        cacheman.disable_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is mine
        manager.register_cache("another")  # a later cache installs nothing again
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    """
    done = run_python("-c", textwrap.dedent(script), str(tmp_path), cache_dir=tmp_path)
    assert done.returncode == 0, done.stderr


def test_handlers_are_installed_from_the_main_thread_only(tmp_path: Path) -> None:
    script = """
        import signal, sys, threading
        from cacheman import CacheManager
        manager = CacheManager("signals", sys.argv[1])
        worker = threading.Thread(target=manager.register_cache, args=("in_thread",))
        worker.start(); worker.join()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        manager.register_cache("in_main")
        assert callable(signal.getsignal(signal.SIGTERM))
    """
    done = run_python("-c", textwrap.dedent(script), str(tmp_path), cache_dir=tmp_path)
    assert done.returncode == 0, done.stderr


def test_terminated_pool_workers_do_not_write_back_what_they_inherited(
    manager: CacheManager,
) -> None:
    # Pool.terminate() sends SIGTERM to every busy worker; a worker holds the
    # parent's caches as of the fork and must not save them over newer saves.
    cache = manager.register_custom_cache("parents", autosync=False)
    cache["version"] = 1
    cache.save()
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        busy = [pool.apply_async(time.sleep, (30,)) for _ in range(2)]
        time.sleep(0.5)  # both workers are sleeping now
        cache["version"] = 2
        cache.save()
    finally:
        pool.terminate()
        pool.join()
    assert not any(result.ready() for result in busy)
    assert manager.store.load("parents") == {"version": 2}


def test_a_signal_during_a_save_of_the_main_thread_waits_for_it_then_flushes(
    tmp_path: Path,
) -> None:
    # The save holds the file's lock while it pickles; a flush started inside it,
    # in the same thread, would wait for that lock forever.
    slow_save = """
        import time
        class SlowToPickle:
            def __reduce__(self):
                print("pickling", flush=True)
                time.sleep(1)
                return (SlowToPickle, ())
        for i in range(50):
            cache[i] = i
        other = manager.register_custom_cache("other", autosync=False)
        other["slow"] = SlowToPickle()
        other.save()
    """
    process = start(tmp_path, after=slow_save, expect="pickling\n")
    process.send_signal(signal.SIGTERM)
    status, _, err = finish(process)
    assert status == -signal.SIGTERM, err
    assert saved(tmp_path) == {i: i for i in range(50)}
    assert (tmp_path / "signals" / "other.pkl").exists(), "the interrupted save finished"


KEPT_THEN_FORKED = """
import gc, os, sys
from cacheman import CacheManager

def work():
    manager = CacheManager("kept", sys.argv[1])
    cache = manager.register_custom_cache("c", autosync=False, contents={"k": "saved"})
    cache.save()
    cache["k"] = "the parent's pending edit"

work()
gc.collect()  # the manager is unreachable: kept for the exit flush
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: the child's exit flush runs
os.waitpid(pid, 0)
from pathlib import Path
from cacheman._stores.pickle import PickleStore
print(PickleStore(Path(sys.argv[1]) / "kept").load("c")["k"])
"""


def test_a_dropped_manager_kept_for_the_exit_flush_is_saved_by_its_own_process_only(
    tmp_path: Path,
) -> None:
    done = run_python("-c", KEPT_THEN_FORKED, str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    # The forked child's exit wrote nothing of what it inherited...
    assert done.stdout.strip() == "saved"
    # ...and the parent's own exit saved its edit.
    assert CacheManager("kept", tmp_path).store.load("c") == {"k": "the parent's pending edit"}


@pytest.mark.parametrize("suffix", [".pkl", ".journal"])
def test_a_fifo_planted_in_place_of_a_cache_file_never_holds_up_sigterm(
    tmp_path: Path, suffix: str
) -> None:
    plant = (
        "manager.cache_directory.mkdir(mode=0o700, parents=True, exist_ok=True)\n"
        f"os.mkfifo(str(manager.cache_directory / 'edits') + {suffix!r}, 0o600)"
    )
    process = start(tmp_path, after=plant)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)  # it hung for ever (the flush opened the FIFO)
    finally:
        if process.returncode is None:
            process.kill()
    status, _out, err = finish(process)
    assert time.monotonic() - started < 20
    assert status == -signal.SIGTERM, err
    assert "FIFO (named pipe), not a regular file" in err  # the failed save is logged
