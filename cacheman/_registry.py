"""The process-wide table of managers, importable by both ``cachewrap`` and ``cacher``.

``cachewrap`` needs the default manager (a cache built without ``cache_manager=``)
but must not import ``cacher``, which imports ``cachewrap``.  Both import this
module instead; ``cacher`` installs the factory that builds a manager.

Lifetimes.  The table holds managers weakly: a manager built with
``CacheManager(...)`` lives as long as the program holds it (or one of its
caches).  A manager that :func:`get_or_create` hands out (``get_cache_manager``,
the default manager of a cache built without one) is *named*: the table keeps
it for the rest of the process, as 2.x did, so that code anywhere can find its
caches and hooks by name, until it is closed (:func:`discard`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cacher import CacheManager

__all__ = ["DEFAULT_MANAGER_NAME", "add", "all_managers", "discard", "get_or_create", "set_factory"]

DEFAULT_MANAGER_NAME = "general_cacher"

_lock = threading.RLock()
_managers: weakref.WeakValueDictionary[str, CacheManager] = weakref.WeakValueDictionary()
_named: dict[str, CacheManager] = {}  # the managers get_or_create handed out: kept
_factory: Callable[[str, str | None], CacheManager] | None = None


def set_factory(factory: Callable[[str, str | None], CacheManager]) -> None:
    """Install the callable that builds a manager (done once, by ``cacher``)."""
    global _factory
    _factory = factory


def get_or_create(name: str, base_cache_directory: str | None = None) -> CacheManager:
    """Return the live manager called ``name``, building it if there is none; keep it."""
    with _lock:
        manager = _managers.get(name)
        if manager is None:
            if _factory is None:  # pragma: no cover - cacheman/__init__ always imports cacher
                from . import cacher  # noqa: F401  (installs the factory)
            assert _factory is not None
            manager = _factory(name, base_cache_directory)
            manager = _managers.setdefault(name, manager)
        _named[name] = manager
        return manager


def add(manager: CacheManager) -> None:
    """Record ``manager`` (weakly) as the one for its name, unless a live one has that name."""
    with _lock:
        _managers.setdefault(manager.name, manager)


def discard(manager: CacheManager) -> None:
    """Forget ``manager`` if it is the one recorded for its name (it is closed, say)."""
    with _lock:
        if _managers.get(manager.name) is manager:
            del _managers[manager.name]
        if _named.get(manager.name) is manager:
            del _named[manager.name]


def all_managers() -> list[CacheManager]:
    """Every live recorded manager."""
    with _lock:
        return list(_managers.values())
