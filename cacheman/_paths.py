"""Where caches live on disk: the default directory and the name -> file mapping."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from .errors import InvalidCacheNameError

__all__ = ["CACHE_DIR_ENV", "default_base_directory", "manager_directory", "validate_cache_name"]

CACHE_DIR_ENV = "CACHEMAN_DIR"

# Names end up as file names; these characters would let a name address another
# directory (or truncate the path at the C level), so they are refused outright
# rather than encoded: a refused name is an error the user sees at once, while an
# encoded one silently gives a file name they did not expect.
_FORBIDDEN_IN_NAME = ("/", "\\", "\x00")


def default_base_directory() -> Path:
    """Return ``$CACHEMAN_DIR`` if set, else the platform's user cache dir for ``cacheman``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("cacheman"))


def manager_directory(
    manager_name: str, base_cache_directory: str | os.PathLike[str] | None
) -> Path:
    """Return the directory of one manager: ``<base>/<manager name>``.

    The base is ``base_cache_directory`` when given, else :func:`default_base_directory`.
    Every manager gets its own sub-folder, so two managers sharing a base never
    share files.
    """
    base = default_base_directory() if base_cache_directory is None else Path(base_cache_directory)
    return base.expanduser() / validate_cache_name(manager_name, what="manager")


def validate_cache_name(name: object, *, what: str = "cache") -> str:
    """Return ``name`` if it is usable as a cache (or manager) name, else raise.

    Raises :class:`~cacheman.errors.InvalidCacheNameError` (a ``ValueError``) for a
    non-string, an empty name, ``.``/``..``, or one holding ``/``, ``\\`` or NUL.
    """
    if not isinstance(name, str):
        raise InvalidCacheNameError(
            f"{what} name must be a str, not {type(name).__name__}: {name!r}"
        )
    if not name or name in (".", ".."):
        raise InvalidCacheNameError(
            f"invalid {what} name {name!r}: it must be a non-empty file name"
        )
    bad = [c for c in _FORBIDDEN_IN_NAME if c in name]
    if bad:
        raise InvalidCacheNameError(
            f"invalid {what} name {name!r}: it may not contain {', '.join(map(repr, bad))} "
            "(names map to files inside the cache directory and must not address other paths)"
        )
    return name
