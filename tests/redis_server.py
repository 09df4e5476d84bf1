"""A real ``redis-server`` for the tests and the benchmark: free port, private dir, stop by pid.

Used by tests/conftest.py (one server per test session) and by
benchmarks/bench_redis.py (one per run), so there is one way to start one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: Databases per server: each test that needs a Redis of its own gets a fresh number.
DATABASES = 4096


class RedisServer:
    """``redis-server`` on 127.0.0.1, without persistence, in ``directory``."""

    def __init__(self, directory: Path, executable: str = "redis-server") -> None:
        self.directory = directory
        self.executable = executable
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers PING (a few tries for a port race)."""
        for _ in range(5):
            self.port = _free_port()
            log = open(self.directory / f"redis-{self.port}.log", "wb")  # noqa: SIM115
            with log:
                self.process = subprocess.Popen(
                    [
                        self.executable,
                        "--port", str(self.port),
                        "--bind", "127.0.0.1",
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                        "--databases", str(DATABASES),
                        "--dir", str(self.directory),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            if self._answers_ping(timeout):
                return
            self.stop()
        raise RuntimeError(f"redis-server did not start; see the logs in {self.directory}")

    def _answers_ping(self, timeout: float) -> bool:
        assert self.process is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                return False  # exited: most likely the port was taken meanwhile
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe,
            ):
                probe.sendall(b"PING\r\n")
                if probe.recv(64).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def find_redis_server() -> str | None:
    """The path of ``redis-server``, or None if it is not installed."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
