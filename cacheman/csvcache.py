"""Caches saved as CSV files, one ``key,value`` row per item.

Useful when a person or another tool must read the saved copy.  Keys and values
come back as strings unless ``row_reader`` converts them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ._paths import validate_cache_name
from ._stores.pickle import atomic_write, keep_aside, open_regular
from .autosync import AutoSyncCache
from .cachewrap import PersistentCache

__all__ = ["AutoSyncCSVCache", "CSVCache", "default_row_builder", "default_row_reader"]

RowReader = Callable[[list[str]], "tuple[Any, Any]"]
RowBuilder = Callable[[Any, Any], "Sequence[Any]"]


def default_row_reader(row: list[str]) -> tuple[Any, Any]:
    """Read a ``key,value`` row as two strings."""
    if len(row) != 2:
        raise ValueError(f"expected a key,value row of 2 fields, got {len(row)}: {row!r}")
    return row[0], row[1]


def default_row_builder(key: Any, value: Any) -> Sequence[Any]:
    """Write an item as a ``key,value`` row (``csv`` turns each field into text)."""
    return (key, value)


class _CSVFile:
    """The loader/saver/deleter trio for one CSV cache, bound to its file."""

    def __init__(self, cache: CSVCache) -> None:
        self.cache = cache

    @property
    def path(self) -> Path:
        return self.cache.manager.cache_directory / (validate_cache_name(self.cache.name) + ".csv")

    def load(self, name: str) -> dict[Any, Any] | None:
        reader = self.cache.row_reader
        try:
            # Never a hang on a FIFO planted in its place (CSV is not unpickled:
            # who may write it is the program's business, not checked).
            fd, _info = open_regular(self.path, os.O_RDONLY, "CSV file", private=False)
        except FileNotFoundError:
            return None
        try:
            with open(fd, newline="", encoding="utf-8") as handle:
                return dict(reader(row) for row in csv.reader(handle) if row)
        except (ValueError, csv.Error) as error:
            raise ValueError(f"cache {name!r}: cannot read {self.path}: {error}") from error

    def save(self, name: str, contents: Mapping[Any, Any]) -> None:
        build_row = self.cache.row_builder

        def write(handle: IO[bytes]) -> None:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            csv.writer(text).writerows(build_row(key, value) for key, value in contents.items())
            text.flush()
            text.detach()  # leave the binary handle open for atomic_write's fsync

        atomic_write(self.path, write)

    def keep_aside(self, name: str) -> Path | None:
        """Move a file that cannot be read aside (``<name>.csv.corrupt-<time>``); return where."""
        return keep_aside(self.path)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class CSVCache(PersistentCache):
    """A persistent cache stored as ``<name>.csv`` in its manager's directory.

    ``row_reader(row) -> (key, value)`` turns a row (a list of strings) into an
    item; ``row_builder(key, value) -> row`` does the reverse.  Explicit
    ``loader``/``saver``/``deleter`` hooks still take precedence.
    """

    def __init__(
        self,
        cache_name: str,
        *args: Any,
        row_builder: RowBuilder | None = None,
        row_reader: RowReader | None = None,
        **kwargs: Any,
    ) -> None:
        self.row_builder = row_builder or default_row_builder
        self.row_reader = row_reader or default_row_reader
        self._csv_file = _CSVFile(self)
        super().__init__(cache_name, *args, **kwargs)

    @property
    def csv_path(self) -> Path:
        """The CSV file this cache is saved to."""
        return self._csv_file.path

    def _default_storage(self) -> _CSVFile:
        return self._csv_file


class AutoSyncCSVCache(CSVCache, AutoSyncCache):
    """A :class:`CSVCache` that saves itself by the autosync rules."""

    # No __slots__ of its own: CSVCache keeps its attributes in a __dict__ and only
    # AutoSyncCache adds slots, which is the one way two such bases combine.
