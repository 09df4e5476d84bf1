"""Helpers shared by the test modules: fresh interpreters, polling with a bound, both stores."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest


def run_python(
    *args: str,
    cache_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    stdin: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in a fresh interpreter; return the result, whatever its exit status.

    The child gets this process's environment (or ``env``), with ``CACHEMAN_DIR``
    set to ``cache_dir`` when given, and without ``PYTHONSTARTUP``.  Its standard
    input is ``stdin`` when given (a file descriptor, or ``subprocess.DEVNULL``).
    """
    child_env = dict(os.environ if env is None else env)
    child_env.pop("PYTHONSTARTUP", None)
    if cache_dir is not None:
        child_env["CACHEMAN_DIR"] = str(cache_dir)
    return subprocess.run(
        [sys.executable, *args],
        env=child_env,
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


#: The number of the ``read`` system call, as ``/proc/<pid>/syscall`` shows it.
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())


def wait_until_reading_stdin(pid: int, timeout: float = 30.0) -> None:
    """Wait until process ``pid``'s main thread is blocked reading its standard input.

    A program that prints "ready" and then calls ``sys.stdin.read()`` is not yet
    waiting when the line arrives.  On CPython 3.11 a signal that comes in the
    instant before that read begins, while another thread runs Python code, is
    handled only when the read returns (python/cpython#98140; any Python handler,
    not only the package's): a test that signalled then would wait forever.  Once
    the read has begun, the signal interrupts it and the handler runs at once.
    Where ``/proc`` does not say (not Linux, an unlisted machine) this waits half
    a second instead.
    """
    status = Path(f"/proc/{pid}/syscall")
    if _READ_SYSCALL is None or not status.exists():
        time.sleep(0.5)
        return

    def reading_stdin() -> bool:
        fields = status.read_text().split()
        return len(fields) > 1 and fields[0] == str(_READ_SYSCALL) and int(fields[1], 16) == 0

    wait_until(reading_stdin, timeout)


#: Run a test that uses the ``manager`` fixture once on the pickle store and once on Redis.
both_stores = pytest.mark.parametrize("manager", ["pickle", "redis"], indirect=True)
