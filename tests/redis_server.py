"""Real ``redis-server``s for the tests and the benchmark: free ports, private dirs, stop by pid.

Used by tests/conftest.py (one server per test session), the cluster tests (a
6-node Redis Cluster: 3 masters, 3 replicas) and benchmarks/bench_redis.py, so
there is one way to start either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

#: Databases per server: each test that needs a Redis of its own gets a fresh number.
DATABASES = 4096


class RedisServer:
    """``redis-server`` on 127.0.0.1, without persistence, in ``directory``."""

    def __init__(
        self,
        directory: Path,
        executable: str = "redis-server",
        extra_args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.directory = directory
        self.executable = executable
        self.extra_args = list(extra_args)
        self.fixed_port = port
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers PING (a few tries for a port race)."""
        for _ in range(5):
            self.port = self.fixed_port or _free_port()
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
                        *self.extra_args,
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
                # -NOAUTH: it answers, but wants a password (a test of passwords).
                if probe.recv(64).startswith((b"+PONG", b"-NOAUTH")):
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

    def kill(self) -> None:
        """SIGKILL the server, as a machine that dies would stop it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


class RedisCluster:
    """A Redis Cluster of ``masters`` masters, each with one replica, on 127.0.0.1.

    Each node runs in its own directory under ``directory`` with a short node
    timeout (1 s), so a killed master's replica is promoted within seconds.
    """

    def __init__(self, directory: Path, executable: str = "redis-server", masters: int = 3) -> None:
        self.directory = directory
        self.executable = executable
        self.masters = masters
        self.nodes: list[RedisServer] = []

    def url(self) -> str:
        """The cluster URL of RedisStore, through the first node."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 60.0) -> None:
        ports = _free_cluster_ports(self.masters * 2)
        try:
            for port in ports:
                node_dir = self.directory / f"node-{port}"
                node_dir.mkdir()
                node = RedisServer(
                    node_dir,
                    self.executable,
                    port=port,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "1000",
                        "--databases", "1",
                    ],
                )  # fmt: skip
                self.nodes.append(node)
                node.start()
            cli = shutil.which("redis-cli") or "redis-cli"
            subprocess.run(
                [
                    cli, "--cluster", "create",
                    *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas", "1", "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )  # fmt: skip
            self.wait_until_ok(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_until_ok(self, timeout: float = 60.0) -> None:
        """Wait until every live node says ``cluster_state:ok``, sees the same masters, and
        every replica is in sync with its master."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.is_ok():
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Redis Cluster did not become ready; see {self.directory}")

    def is_ok(self) -> bool:
        """Whether every live node is ``ok`` and agrees on the masters, replicas in sync."""
        views = set()
        for node in self.nodes:
            if node.process is None:
                continue
            info = _command(node.port, "CLUSTER", "INFO")
            if info is None or "cluster_state:ok" not in info:
                return False
            replication = _command(node.port, "INFO", "replication") or ""
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False  # a replica still copying its master: WAIT would count it out
            views.add(_masters_in(_command(node.port, "CLUSTER", "NODES") or ""))
        return len(views) == 1

    def master_ports(self) -> list[int]:
        """The ports of the live masters."""
        for node in self.nodes:
            if node.process is not None:
                return sorted(_masters_in(_command(node.port, "CLUSTER", "NODES") or ""))
        return []

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _masters_in(nodes: str) -> frozenset[int]:
    masters = set()
    for line in nodes.splitlines():
        parts = line.split()
        if len(parts) > 8 and "master" in parts[2] and "fail" not in parts[2]:
            masters.add(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
    return frozenset(masters)


def _command(port: int, *words: str) -> str | None:
    """One command over a bare socket (RESP), its bulk reply as text; None if it fails."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.sendall(request.encode())
            reply = b""
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if reply.startswith(b"$"):
                    header, _, rest = reply.partition(b"\r\n")
                    if len(rest) >= int(header[1:]) + 2:
                        return rest[: int(header[1:])].decode()
                elif reply.endswith(b"\r\n"):
                    return None
    except OSError:
        return None
    return None


def _free_cluster_ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def find_redis_server() -> str | None:
    """The path of ``redis-server``, or None if it is not installed."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
