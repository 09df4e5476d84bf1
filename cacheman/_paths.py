"""Where caches live on disk: the default directory and the name -> file mapping."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from .errors import InsecureCacheError, InvalidCacheNameError

__all__ = [
    "CACHE_DIR_ENV",
    "MAX_NAME_BYTES",
    "check_private",
    "default_base_directory",
    "manager_directory",
    "validate_cache_name",
]

CACHE_DIR_ENV = "CACHEMAN_DIR"

# Names end up as file names; these characters would let a name address another
# directory (or truncate the path at the C level), so they are refused outright
# rather than encoded: a refused name is an error the user sees at once, while an
# encoded one silently gives a file name they did not expect.
_FORBIDDEN_IN_NAME = ("/", "\\", "\x00")

#: The longest name, in bytes of the file system encoding.  File names may not
#: exceed 255 bytes, and the longest one made from a name is the quarantined copy
#: ``<name>.pkl.corrupt-<UTC time to the microsecond>`` (36 bytes more).
MAX_NAME_BYTES = 200

# Group- or world-writable: someone other than the owner could plant a pickle.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


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

    Names are refused, never encoded: a refused name is an error the user sees
    at once, while an encoded one would give a file name they did not expect.
    Raises :class:`~cacheman.errors.InvalidCacheNameError` (a ``ValueError``) for a
    non-string, an empty name, a name starting with ``.`` (so also ``.`` and
    ``..``), a name holding ``/`` (so also every absolute path), ``\\``, NUL or
    another control character, or one longer than :data:`MAX_NAME_BYTES` bytes or
    not encodable as a file name.

    >>> validate_cache_name("squares")
    'squares'
    >>> validate_cache_name("../etc/passwd")
    Traceback (most recent call last):
    ...
    cacheman.errors.InvalidCacheNameError: invalid cache name '../etc/passwd': ...
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
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidCacheNameError(
            f"invalid {what} name {name!r}: it may not contain control characters"
        )
    if name.startswith("."):
        # The directory's dot-files are the store's own (locks, temporary files),
        # and every listing skips them: such a cache would be saved but invisible
        # to ``list``, ``verify`` and ``saved_cache_names()``.
        raise InvalidCacheNameError(
            f"invalid {what} name {name!r}: it may not start with '.' (dot-files in a "
            "cache directory are CacheMan's own, and listings skip them); drop the dot"
        )
    try:
        encoded = os.fsencode(name)
    except UnicodeEncodeError:
        raise InvalidCacheNameError(
            f"invalid {what} name {name!r}: it cannot be encoded as a file name"
        ) from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidCacheNameError(
            f"invalid {what} name {name[:40]!r}...: {len(encoded)} bytes long, "
            f"at most {MAX_NAME_BYTES} are allowed"
        )
    return name


def check_private(path: Path, info: os.stat_result, what: str) -> None:
    """Raise :class:`~cacheman.errors.InsecureCacheError` unless only we can write ``path``.

    ``info`` is its ``os.stat``/``os.fstat`` result (an ``fstat`` of an open file
    cannot be swapped between the check and the read).  A pickle that another
    user could have written is never loaded: unpickling runs code.
    """
    owner = os.geteuid()
    if info.st_uid != owner:
        raise InsecureCacheError(
            f"refusing to use {what} {str(path)!r}: it is owned by uid {info.st_uid}, "
            f"not by this user (uid {owner}); unpickling a file another user controls "
            "runs their code. Delete it or point CacheMan at a directory of your own."
        )
    if info.st_mode & _WRITABLE_BY_OTHERS:
        raise InsecureCacheError(
            f"refusing to use {what} {str(path)!r}: its mode "
            f"{stat.filemode(info.st_mode)} lets other users write it, so it may hold a "
            f"planted pickle; check its contents, then run: chmod go-w {str(path)!r}"
        )
