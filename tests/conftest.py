"""Shared fixtures, and a test session that leaves nothing behind in $TMPDIR.

Every test gets caches in a private temporary directory (or Redis database).
The session works in one private directory, ``$TMPDIR/cacheman-tests-*``, and
removes it at the end:

- ``TMPDIR`` points at it, in this process and in every child a test starts, so
  whatever a test, a doctest or a child creates with ``tempfile`` lands there;
- ``CACHEMAN_DIR`` points at ``cacheman-dir/`` inside it, so no test ever writes
  to the real per-user cache directory;
- pytest's ``tmp_path`` directories live in ``pytest/`` inside it (unless
  ``--basetemp=DIR`` is given: then they stay in DIR, for a look after a failure).

Anything else left in that directory when the tests end is a test that forgot to
clean up (it should use ``tmp_path``): the run fails and names what was left.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cacheman-tests-"))
_CACHE_DIR = _SESSION_DIR / "cacheman-dir"
_BASETEMP = _SESSION_DIR / "pytest"
_OWNED = {_CACHE_DIR.name, _BASETEMP.name}
_CACHE_DIR.mkdir()

# Registered before cacheman is imported, so it runs after cacheman's own exit
# handlers (atexit is last in, first out): their last saves land in a directory
# that is then removed, instead of re-creating one after the removal.
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)

# Set before any test runs, and inherited by every subprocess a test starts.
os.environ["CACHEMAN_DIR"] = str(_CACHE_DIR)
os.environ["TMPDIR"] = str(_SESSION_DIR)
tempfile.tempdir = None  # tempfile caches the directory it found; make it read TMPDIR again
# A Redis URL from the caller's environment must not redirect the pickle-store tests.
os.environ.pop("CACHEMAN_REDIS_URL", None)

# Imported only now, so they see the environment set above.
from redis_server import DATABASES, RedisServer, find_redis_server  # noqa: E402

from cacheman import CacheManager, RedisStore, _registry  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:
        config.option.basetemp = str(_BASETEMP)


def pytest_sessionfinish(session: pytest.Session) -> None:
    left = sorted(path.name for path in _SESSION_DIR.iterdir() if path.name not in _OWNED)
    if not left:
        return
    message = f"the tests left files in $TMPDIR (use tmp_path): {', '.join(left)}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
