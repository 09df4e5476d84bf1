"""Shared fixtures: every test gets caches in a private temporary directory (or Redis database)."""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before any test runs (and inherited by every subprocess a test starts), so no
# test ever writes to the real per-user cache directory.
os.environ["CACHEMAN_DIR"] = tempfile.mkdtemp(prefix="cacheman-tests-")
# A Redis URL from the caller's environment must not redirect the pickle-store tests.
os.environ.pop("CACHEMAN_REDIS_URL", None)

from redis_server import DATABASES, RedisServer, find_redis_server

from cacheman import CacheManager, RedisStore, _registry


@pytest.fixture
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheManager]:
    """A manager of its own, saving under ``tmp_path``; forgotten after the test.

    On the pickle store, unless parametrized indirectly (``helpers.both_stores``).
    """
    yield from _fresh_manager(getattr(request, "param", "pickle"), tmp_path, request)


@pytest.fixture(params=["pickle", "redis"])
def store_manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheManager]:
    """Like ``manager``, once on each store: the behaviour suites run against both."""
    yield from _fresh_manager(request.param, tmp_path, request)


def _fresh_manager(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CacheManager]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    if kind == "pickle":
        manager = CacheManager(name, tmp_path)
    else:
        manager = CacheManager(
            name, tmp_path, store=RedisStore(request.getfixturevalue("redis_url"))
        )
    yield manager
    manager.deregister_all_caches()
    _registry.discard(manager)
    if isinstance(manager.store, RedisStore):
        manager.store.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (127.0.0.1, a free port), stopped by pid at the end.

    Without redis-server on PATH (or redis-py) the Redis tests are skipped, except
    in CI (``$CI`` set), where they fail: CI must run them.
    """
    executable = find_redis_server()
    try:
        import redis  # noqa: F401
    except ImportError:
        executable = None
    if executable is None:
        reason = (
            "redis-server (Debian package redis-server) or redis-py (pip install "
            "'cacheman[redis]') is not installed"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the Redis tests")
        pytest.skip(f"{reason}; the Redis tests run in CI")
    server = RedisServer(tmp_path_factory.mktemp("redis"), executable)
    server.start()
    yield server
    server.stop()


_databases = itertools.count(1)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a database no other test has used (so no test needs FLUSHDB)."""
    db = next(_databases)
    assert db < DATABASES, "more Redis tests than databases: raise DATABASES"
    return redis_server.url(db)
