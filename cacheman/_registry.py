"""The process-wide table of managers, importable by both ``cachewrap`` and ``cacher``.

``cachewrap`` needs the default manager (a cache built without ``cache_manager=``)
but must not import ``cacher``, which imports ``cachewrap``.  Both import this
module instead; ``cacher`` installs the factory that builds a manager.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cacher import CacheManager

__all__ = ["DEFAULT_MANAGER_NAME", "all_managers", "get_or_create", "set_factory"]

DEFAULT_MANAGER_NAME = "general_cacher"

_lock = threading.RLock()
_managers: dict[str, CacheManager] = {}
_factory: Callable[[str, str | None], CacheManager] | None = None


def set_factory(factory: Callable[[str, str | None], CacheManager]) -> None:
    """Install the callable that builds a manager (done once, by ``cacher``)."""
    global _factory
    _factory = factory


def get_or_create(name: str, base_cache_directory: str | None = None) -> CacheManager:
    """Return the manager called ``name``, building it on first use."""
    with _lock:
        manager = _managers.get(name)
        if manager is None:
            if _factory is None:  # pragma: no cover - cacheman/__init__ always imports cacher
                from . import cacher  # noqa: F401  (installs the factory)
            assert _factory is not None
            manager = _factory(name, base_cache_directory)
            _managers.setdefault(name, manager)
        return _managers[name]


def add(manager: CacheManager) -> None:
    """Record ``manager`` as the one for its name, unless that name is taken."""
    with _lock:
        _managers.setdefault(manager.name, manager)


def discard(manager: CacheManager) -> None:
    """Forget ``manager`` if it is the one recorded for its name."""
    with _lock:
        if _managers.get(manager.name) is manager:
            del _managers[manager.name]


def all_managers() -> list[CacheManager]:
    """Every recorded manager, oldest first."""
    with _lock:
        return list(_managers.values())
