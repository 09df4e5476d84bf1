"""The default pickle store: one ``<name>.pkl`` file per cache, written atomically."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from ._paths import validate_cache_name

__all__ = ["PickleStore", "atomic_write"]

PICKLE_PROTOCOL = 5
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def ensure_private_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) with mode 0700 if it does not exist."""
    directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with what ``write`` writes, all or nothing.

    The bytes go to a temporary file in the same directory (so ``os.replace`` is
    a rename within one file system), which is flushed and fsynced before the
    rename; a crash at any moment leaves either the old file or the new one.
    On any error the temporary file is removed and the old file is untouched.
    """
    ensure_private_directory(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class PickleStore:
    """Saves and loads whole caches as pickle files in one directory."""

    suffix = ".pkl"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r})"

    def path_for(self, name: str) -> Path:
        """Return the file that holds cache ``name``; the name can never leave the directory."""
        return self.directory / (validate_cache_name(name) + self.suffix)

    def load(self, name: str) -> dict[Any, Any] | None:
        """Return the saved contents of ``name``, or ``None`` if nothing is saved."""
        try:
            with open(self.path_for(name), "rb") as handle:
                loaded = pickle.load(handle)
        except FileNotFoundError:
            return None
        if not isinstance(loaded, Mapping):
            raise TypeError(
                f"cache {name!r}: {self.path_for(name)} holds a "
                f"{type(loaded).__name__}, not a mapping"
            )
        return loaded if type(loaded) is dict else dict(loaded)

    def save(self, name: str, contents: Mapping[Any, Any]) -> None:
        """Write ``contents`` as the saved copy of ``name``, atomically."""
        plain = contents if type(contents) is dict else dict(contents)
        atomic_write(
            self.path_for(name), lambda handle: pickle.dump(plain, handle, PICKLE_PROTOCOL)
        )

    def delete(self, name: str) -> None:
        """Remove the saved copy of ``name``, if there is one."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_for(name))

    def exists(self, name: str) -> bool:
        """Tell whether a saved copy of ``name`` exists."""
        return self.path_for(name).exists()
