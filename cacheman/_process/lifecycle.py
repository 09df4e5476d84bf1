"""The process's lifecycle: interpreter exit, SIGTERM/SIGHUP, forks, forked workers' exit.

This module is the one place that hooks into the interpreter's own lifecycle
(``atexit``, ``signal``, ``os.register_at_fork``, ``multiprocessing.util``).
It knows nothing of caches: the other modules register callbacks with it.

* :func:`on_exit` callbacks run once when the process ends: at interpreter exit
  (``atexit``), or on SIGTERM/SIGHUP before the process dies of that signal.
  They run in registration order (the scheduler registers its shutdown first,
  so no background save starts during the flush that follows).
* :func:`on_fork_child` callbacks run in a child forked by anyone but
  :mod:`cacheman._process.fork` (whose save children must touch no state, see
  :func:`own_fork`).
* :func:`on_worker_exit` callbacks run when a forked ``multiprocessing`` worker
  ends: such a worker leaves with ``os._exit``, which skips ``atexit``.

Signals.  SIGTERM (the polite "please stop" of ``kill``, systemd, Docker) and
SIGHUP (the terminal closed) end a Python process at once, without ``atexit``,
so unsaved edits would be lost.  When the first persistent cache is created,
:func:`install_signal_handlers` installs a handler for both, in the main thread
only, and only over the default action or a Python handler (a signal the
program ignores stays ignored; a handler set outside Python stays).  The
handler runs the exit callbacks, then calls the handler it replaced, if that
was a Python one, or else restores the default action and sends the signal
again, so the process ends with the status a shell expects (128 + 15 for
SIGTERM).  A signal that stops the main thread inside the package's own code
(a save holding a file's lock, say) is put off until that code returns, so the
flush never waits for a lock its own thread holds.  In a forked child the
handler saves only what a forked worker saves at its exit (its own pending
autosync edits), never the state it inherited.  Set ``CACHEMAN_NO_SIGNAL_HANDLERS=1`` or call
:func:`disable_signal_handlers` to opt out.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "NO_SIGNAL_HANDLERS_ENV",
    "disable_signal_handlers",
    "flush",
    "install_signal_handlers",
    "on_exit",
    "on_fork_child",
    "on_worker_exit",
    "own_fork",
    "start_thread",
]

logger = logging.getLogger("cacheman")

#: Set this environment variable to a non-empty value other than ``0`` to keep
#: CacheMan from installing its SIGTERM/SIGHUP handlers.
NO_SIGNAL_HANDLERS_ENV = "CACHEMAN_NO_SIGNAL_HANDLERS"
#: The signals whose default action ends the process without running ``atexit``.
SIGNAL_NAMES = ("SIGTERM", "SIGHUP")
#: Seconds a signal waits for the main thread to finish a cache operation it
#: interrupted (a save holding a file's lock, a builder) before the process
#: ends without the flush.
SIGNAL_DEFER_LIMIT = 30.0

SignalHandler = Callable[[int, "FrameType | None"], Any]

_exit_callbacks: list[Callable[[], None]] = []
_fork_child_callbacks: list[Callable[[], None]] = []
_worker_exit_callbacks: list[Callable[[], None]] = []

# The exit callbacks run once: a chained handler that raises SystemExit must not
# make atexit run them a second time, nor must a second signal during the flush.
_flush_lock = threading.RLock()
_flushed = False
_flushing = False

# Signal state: the handler each signal had before ours, for chaining.
_previous: dict[int, SignalHandler | int | None] = {}
# Signals put off until the main thread leaves a cache operation, and those
# that waited longer than SIGNAL_DEFER_LIMIT for it.
_deferred: set[int] = set()
_defer_deadline: dict[int, float] = {}  # from the first time a signal was put off
_overdue: set[int] = set()
_PACKAGE = __name__.partition(".")[0] + "."  # "cacheman.": frames of any of its modules
_signals_disabled = False
_in_signal_handler = False

# Set, in the forking thread only, around a fork by cacheman._process.fork.
_local = threading.local()
# True in a process forked (by anyone but cacheman._process.fork) from one that imported us.
_forked = False


# -- registration ---------------------------------------------------------------------


def on_exit(callback: Callable[[], None]) -> None:
    """Run ``callback()`` once when the process ends (interpreter exit, SIGTERM, SIGHUP)."""
    _exit_callbacks.append(callback)


def on_fork_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every child forked by someone else (not in save children)."""
    _fork_child_callbacks.append(callback)


def on_worker_exit(callback: Callable[[], None]) -> None:
    """Run ``callback()`` when a forked ``multiprocessing`` worker ends (it skips atexit)."""
    _worker_exit_callbacks.append(callback)


# -- the exit flush -----------------------------------------------------------------------


def flush() -> None:
    """Run the exit callbacks, unless an exit flush has run (or is running) already.

    A callback that raises is logged and the next one still runs.
    """
    _flush_once(_exit_callbacks, "the exit flush")


def _flush_once(callbacks: list[Callable[[], None]], what: str) -> None:
    global _flushed, _flushing
    with _flush_lock:
        if _flushed or _flushing:
            return
        _flushing = True
    try:
        _run_each(callbacks, what)
    finally:
        with _flush_lock:
            _flushing = False
            _flushed = True


def _run_each(callbacks: list[Callable[[], None]], what: str) -> None:
    for callback in list(callbacks):
        try:
            callback()
        except Exception:
            logger.exception("%s: %r failed", what, callback)


atexit.register(flush)


# -- signals --------------------------------------------------------------------------------


def _opted_out() -> bool:
    return _signals_disabled or os.environ.get(NO_SIGNAL_HANDLERS_ENV, "") not in ("", "0")


def install_signal_handlers() -> None:
    """Flush on SIGTERM and SIGHUP (called when the first persistent cache is created).

    Does nothing outside the main thread (Python only lets the main thread set
    handlers; a later cache created there installs them), after an opt-out, or
    for a signal whose current handler is ``SIG_IGN`` or was set outside Python.
    """
    if _opted_out() or threading.current_thread() is not threading.main_thread():
        return
    for name in SIGNAL_NAMES:
        signum = getattr(signal, name, None)
        if signum is None or signum in _previous:
            continue
        current = signal.getsignal(signum)
        if current is not signal.SIG_DFL and not callable(current):
            continue  # SIG_IGN, or a handler Python did not set: leave it alone
        try:
            signal.signal(signum, _on_signal)
        except (OSError, ValueError):  # pragma: no cover - an embedded interpreter
            continue
        _previous[signum] = current


def disable_signal_handlers() -> None:
    """Keep CacheMan from flushing on SIGTERM/SIGHUP; put back the handlers it replaced.

    Pending edits are then saved only at a normal interpreter exit (or when the
    program saves).  Setting ``CACHEMAN_NO_SIGNAL_HANDLERS=1`` in the environment
    does the same before any cache is created.  Call it from the main thread.
    """
    global _signals_disabled
    _signals_disabled = True
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        del _previous[signum]


def start_thread(thread: threading.Thread) -> None:
    """Start one of the package's background threads: SIGTERM/SIGHUP never go to it.

    The kernel hands a process's signal to any thread that does not block it,
    and Python runs the handler only when the *main* thread next runs Python
    code.  A signal taken by a background thread while the main thread waits in
    a blocking call (``input()``, a socket read) would never be handled: the
    program would neither save nor end.  A new thread inherits the signal mask
    of the thread that starts it, so the signals are blocked here around
    ``start()``: blocking them from the thread's own first line would leave open
    the moment between ``start()`` returning and that line, in which the new
    thread could take a signal sent right after the program's first edit (which
    starts the autosync thread).  A signal that comes to this thread meanwhile
    waits, pending, until the mask is put back, and is then handled as usual.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        thread.start()
        return
    wanted = {getattr(signal, name) for name in SIGNAL_NAMES if hasattr(signal, name)}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _inside_the_package(frame: FrameType | None) -> bool:
    """Whether the interrupted thread is running the package's code (or a hook it called)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.startswith(_PACKAGE) and module != __name__:
            return True
        frame = frame.f_back
    return False


def _main_thread_frame() -> FrameType | None:
    ident = threading.main_thread().ident
    return None if ident is None else sys._current_frames().get(ident)


def _redeliver_when_outside(signum: int) -> None:
    """Send ``signum`` to the main thread again once it has left the package's code."""
    end = _defer_deadline[signum]
    while _inside_the_package(_main_thread_frame()) and time.monotonic() < end:
        time.sleep(0.005)
    with _flush_lock:
        _deferred.discard(signum)
        if time.monotonic() >= end:
            _overdue.add(signum)
    ident = threading.main_thread().ident
    if ident is not None:
        signal.pthread_kill(ident, signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Save pending edits, then let the signal do what it did before we were installed."""
    global _in_signal_handler, _flushed
    if _in_signal_handler or _flushing:
        # A second signal while a flush runs: the flush goes on, and the process
        # then ends as it was going to; running the flush twice would not help.
        return
    with _flush_lock:
        overdue = signum in _overdue
        _overdue.discard(signum)
        if not overdue and _inside_the_package(frame):
            # The main thread was stopped inside a cache operation, maybe holding a
            # file's lock: a flush from here could wait for that lock forever.
            # Let the operation finish, then take the signal again.
            if signum not in _deferred:
                _deferred.add(signum)
                _defer_deadline.setdefault(signum, time.monotonic() + SIGNAL_DEFER_LIMIT)
                start_thread(
                    threading.Thread(
                        target=_redeliver_when_outside,
                        args=(signum,),
                        name="cacheman-signal",
                        daemon=True,
                    )
                )
            return
    _defer_deadline.pop(signum, None)
    if overdue:
        logger.warning(
            "signal %s: the main thread stayed in a cache operation for %g s; "
            "ending without saving pending edits",
            signal.Signals(signum).name,
            SIGNAL_DEFER_LIMIT,
        )
        _end_as_before(signum, frame)
        return
    _in_signal_handler = True
    try:
        logger.info("signal %s: saving pending edits", signal.Signals(signum).name)
        if _forked:
            # A forked child (a multiprocessing worker told to stop by
            # Pool.terminate, say) saves only its own edits, as at its normal
            # exit: the rest of what it holds is the parent's, as of the fork.
            _flush_once(_worker_exit_callbacks, "a forked process's signal flush")
        else:
            flush()
    finally:
        _in_signal_handler = False
    if _end_as_before(signum, frame):
        # The program's handler let it go on: what it edits from now on is saved
        # at exit (or at the next signal).
        with _flush_lock:
            _flushed = False


def _end_as_before(signum: int, frame: FrameType | None) -> bool:
    """Do what the signal did before our handler: call the old handler, or die of it.

    Returns True when the program's own handler returned (the program goes on).
    """
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return True
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return False


# -- forks --------------------------------------------------------------------------------------


@contextlib.contextmanager
def own_fork() -> Iterator[None]:
    """Around a fork by :mod:`cacheman._process.fork`: its save child runs no fork callback."""
    _local.in_own_fork = True
    try:
        yield
    finally:
        _local.in_own_fork = False


def _after_fork_in_child() -> None:
    global _flush_lock, _flushed, _flushing, _forked, _in_signal_handler
    if getattr(_local, "in_own_fork", False):
        return  # a save child: touch nothing
    _flush_lock = threading.RLock()  # another thread of the parent may have held it
    _flushed = _flushing = _in_signal_handler = False
    _forked = True
    _run_each(_fork_child_callbacks, "the fork hook")


def _run_worker_exit() -> None:
    _flush_once(_worker_exit_callbacks, "a worker's exit flush")


def _arm_worker_exit(_token: object) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _run_worker_exit, exitpriority=100)


class _WorkerToken:
    """A weak-referenceable object for multiprocessing's after-fork registry."""


_token = _WorkerToken()


def _register_hooks() -> None:
    # multiprocessing.util is imported by the interpreter's own startup in most
    # programs; importing it here costs nothing more.
    import multiprocessing.util

    multiprocessing.util.register_after_fork(_token, _arm_worker_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


_register_hooks()
