"""Shared fixtures: every test gets caches in a private temporary directory."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before any test runs (and inherited by every subprocess a test starts), so no
# test ever writes to the real per-user cache directory.
os.environ["CACHEMAN_DIR"] = tempfile.mkdtemp(prefix="cacheman-tests-")

from cacheman import CacheManager, _registry


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[CacheManager]:
    """A manager of its own, saving under ``tmp_path``; forgotten after the test."""
    manager = CacheManager(f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    yield manager
    manager.deregister_all_caches()
    _registry.discard(manager)
