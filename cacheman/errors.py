"""Exceptions raised by CacheMan.

Every exception derives from :class:`CacheManError` and from the built-in that
fits, so ``except KeyError`` written against 2.x keeps working.
"""

from __future__ import annotations

__all__ = [
    "CacheManError",
    "CacheNotRegisteredError",
    "CorruptCacheError",
    "DependencyCycleError",
    "InsecureCacheError",
    "InvalidCacheNameError",
    "ManagerClosedError",
    "SignatureMismatchError",
    "UnpicklableValueError",
]


class CacheManError(Exception):
    """Base class of every error CacheMan raises on purpose."""


class CacheNotRegisteredError(CacheManError, KeyError):
    """A cache name was looked up that the manager does not know."""

    def __str__(self) -> str:
        # KeyError's repr-quoting of its argument reads badly for a sentence.
        return str(self.args[0]) if self.args else ""


class InvalidCacheNameError(CacheManError, ValueError):
    """A cache name that cannot be used (empty, not a string, or a path escape)."""


class DependencyCycleError(CacheManError, ValueError):
    """Registering a dependency would make the cache graph cyclic."""


class CorruptCacheError(CacheManError, ValueError):
    """A saved cache file is damaged: bad header, checksum, length or pickle."""


class InsecureCacheError(CacheManError, PermissionError):
    """A cache file or directory is writable by another user, so it is not unpickled."""


class ManagerClosedError(CacheManError, ValueError):
    """A :class:`~cacheman.cacher.CacheManager` was used after ``close()``."""


class SignatureMismatchError(CacheManError, ValueError):
    """A signed cache file's HMAC does not match its payload (or the signature is missing)."""


class UnpicklableValueError(CacheManError, TypeError):
    """A cache holds a value that neither pickle nor cloudpickle can serialise."""
