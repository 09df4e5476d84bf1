"""The tour behind ``python -m cacheman demo``.

The parent process only prints headings and runs each step in a fresh
interpreter (``python -m cacheman demo --step NAME``), so "survives a restart"
means a real restart.  All the demo's caches belong to the manager
``cacheman-demo``, whose directory (``<base>/cacheman-demo``, the base being
``$CACHEMAN_DIR`` or the platform's user cache directory) is removed at the end,
after every child has exited and so can no longer save into it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ._paths import manager_directory
from .cacher import get_cache_manager

__all__ = ["DEMO_MANAGER", "run_demo"]

DEMO_MANAGER = "cacheman-demo"

_INDENT = "   "


def _say(text: str) -> None:
    print(_INDENT + text, flush=True)


def _step_write() -> int:
    squares = get_cache_manager(DEMO_MANAGER).register_cache("squares")
    for number in range(1, 6):
        squares[number] = number * number
    _say(f"process {os.getpid()} stored {squares} and exited without calling save()")
    return 0


def _step_read() -> int:
    squares = get_cache_manager(DEMO_MANAGER).register_cache("squares")
    _say(f"process {os.getpid()}, a fresh interpreter, loaded {squares}")
    if not squares:
        _say("the cache did not survive the restart: that is a bug, please report it")
        return 1
    return 0


def _word_lengths(name: str) -> dict[str, int]:
    return {word: len(word) for word in ("cache", "manager", "hook")}


def _step_build() -> int:
    manager = get_cache_manager(DEMO_MANAGER)
    lengths = manager.register_custom_cache("word_lengths", autosync=False, builder=_word_lengths)
    _say(f"nothing was saved for 'word_lengths', so its builder filled it: {lengths}")
    return 0


def _step_invalidate() -> int:
    manager = get_cache_manager(DEMO_MANAGER)
    prices = manager.register_cache("prices", {"apple": 3, "pear": 2})
    prices.save()

    def basket_total(name: str) -> dict[str, Any]:
        return {"total": sum(prices.values())}

    basket = manager.register_custom_cache("basket", autosync=False, builder=basket_total)
    notes = manager.register_cache("notes")
    manager.register_dependent_cache("prices", "basket")
    manager.register_dependent_cache("prices", "notes")
    notes["reminder"] = "pears are cheap"
    _say(f"prices = {prices}; 'basket' and 'notes' are derived from it")
    _say(f"basket = {basket}, notes = {notes}")
    prices["apple"] = 5
    prices.save()
    prices.invalidate()
    _say(f"the apple price changed, then prices.invalidate(): prices = {prices}")
    _say(f"basket = {basket} (rebuilt by its builder), notes = {notes} (reset)")
    return 0


# name -> (heading printed before it, or "" to continue the previous one; the step)
_STEPS: dict[str, tuple[str, Callable[[], int]]] = {
    "write": ("1. A cache survives a restart", _step_write),
    "read": ("", _step_read),
    "build": ("2. A builder fills a cache that has nothing saved", _step_build),
    "invalidate": ("3. Invalidating a cache resets the caches derived from it", _step_invalidate),
}


def run_demo(step: str | None = None) -> int:
    """Run the whole demo (or, in a child process, one ``step``); return the exit status."""
    if step is not None:
        if step not in _STEPS:
            print(f"python -m cacheman demo: error: unknown step {step!r}", file=sys.stderr)
            return 2
        return _STEPS[step][1]()

    directory = manager_directory(DEMO_MANAGER, None)
    # On a fresh machine the base directory is created by the demo itself; then
    # it is removed as well (only if empty: rmdir never takes anything else).
    base_existed = directory.parent.exists()
    # Left over from an interrupted demo: start clean so step 1 proves something.
    shutil.rmtree(directory, ignore_errors=True)
    print(f"CacheMan demo: caches under {directory}", flush=True)
    status = 0
    try:
        for name, (heading, _) in _STEPS.items():
            if heading:
                print(heading, flush=True)
            command = [sys.executable, "-m", "cacheman", "demo", "--step", name]
            status = subprocess.run(command, check=False).returncode
            if status != 0:
                print(f"step {name!r} failed with exit status {status}", file=sys.stderr)
                break
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if not base_existed:
            with contextlib.suppress(OSError):
                directory.parent.rmdir()
    if status == 0:
        print(f"Done; removed the demo data in {directory}", flush=True)
    return status
