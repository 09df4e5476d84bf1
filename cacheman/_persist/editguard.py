"""Keeping edits and a refresh apart, with no lock on the edit path until a refresh runs.

A refresh takes other processes' values in key by key, skipping the keys this
process changed since its save; an edit (``c[k] = v``) is a ``dict`` store
followed by a ``set.add`` of its key.  Unguarded, the two can interleave: a
thread stores its value, the refresh finds the key not yet changed and puts the
saved value over it, then the thread records the key: its value is lost.

So a refresh *guards* the cache while it applies (:func:`guarded`):

1. it raises the cache's ``_guarded`` flag: every edit that starts from then on
   sees it, and makes its change under the cache's ``_apply_lock``
   (:func:`under_apply_lock`);
2. it waits for the edits that had already passed the flag to finish (at most
   one per thread, found on the threads' stacks; see :func:`_drain`);
3. it applies under ``_apply_lock``, so each key's check and store run with
   no edit in between; then it lowers the flag.

An edit thus costs one attribute test while no refresh runs (the write
benchmark's row: within its 1.3 x target).  The edit functions that test the
flag are registered with :func:`edit_functions`, so that step 2 can find them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any, Protocol

__all__ = ["Guarded", "edit_functions", "guarded", "under_apply_lock"]

logger = logging.getLogger("cacheman")

#: Seconds a refresh waits for edits already under way before it goes on (never, in practice).
DRAIN_SECONDS = 5.0
#: The code of the edit functions that test the flag, then edit without a lock.
_EDIT_CODES: set[CodeType] = set()


class Guarded(Protocol):
    """What a guarded cache holds: the flag and the lock edits take while it is up."""

    _guarded: bool
    _apply_lock: threading.RLock


def edit_functions(*functions: Callable[..., Any]) -> None:
    """Register edit functions that test ``_guarded`` first (see the module docstring)."""
    _EDIT_CODES.update(function.__code__ for function in functions)


def under_apply_lock(cache: Guarded, edit: Callable[..., Any], *args: Any) -> Any:
    """Run ``edit(cache, *args)`` under the cache's ``_apply_lock`` (a refresh is applying)."""
    with cache._apply_lock:
        return edit(cache, *args)


_UNDER_LOCK = under_apply_lock.__code__


@contextlib.contextmanager
def guarded(cache: Guarded) -> Iterator[None]:
    """Hold off every edit of ``cache`` while the block applies other processes' values."""
    if cache._guarded:  # nested (a reload inside a refresh): already guarded
        with cache._apply_lock:
            yield
        return
    cache._guarded = True
    try:
        _drain()
        with cache._apply_lock:
            yield
    finally:
        cache._guarded = False


def _unguarded_edit(frame: FrameType | None) -> FrameType | None:
    """The frame of a cache edit running without the lock on this stack, if any."""
    found = None
    while frame is not None:
        code = frame.f_code
        if code is _UNDER_LOCK:
            return None  # it edits under the lock: the refresh's lock holds it off
        # Any cache's edit counts, not only this one's: telling them apart needs the
        # frame's locals, and reading another thread's ``f_locals`` can crash CPython
        # 3.11 (seen: a segmentation fault).  Edits are a few bytecodes each, so waiting
        # for another cache's too costs next to nothing.
        if found is None and code in _EDIT_CODES:
            found = frame
        frame = frame.f_back
    return found


def _drain() -> None:
    """Wait until the cache edits that other threads began without the lock return.

    Each is a few bytecodes (an autosync edit that fires a rule never waits for
    the cache's lock), and an edit that starts after the flag went up takes the
    lock, so this waits for at most one edit per thread.  Past
    :data:`DRAIN_SECONDS` (a thread stopped by a debugger, say) it goes on
    with a warning rather than hang the refresh.
    """
    me = threading.get_ident()
    waiting = [
        found
        for ident, frame in sys._current_frames().items()
        if ident != me and (found := _unguarded_edit(frame)) is not None
    ]
    deadline = time.monotonic() + DRAIN_SECONDS
    while waiting:
        if time.monotonic() > deadline:
            logger.warning(
                "a refresh waited %g s for %d edits to finish", DRAIN_SECONDS, len(waiting)
            )
            return
        time.sleep(0)  # (releases the GIL: the thread finishes its edit)
        on_stacks = set()
        for ident, frame in sys._current_frames().items():
            walked: FrameType | None = frame
            while ident != me and walked is not None:
                on_stacks.add(id(walked))
                walked = walked.f_back
        waiting = [frame for frame in waiting if id(frame) in on_stacks]
