"""AutoSyncCache: a persistent cache that saves itself when its edit rules fire.

(Interim version: edits are counted and saved at exit; the rules, the background
thread and child-process saves arrive with the autosync issue.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .cachewrap import PersistentCache

__all__ = ["DEFAULT_TIME_CHECKS", "AutoSyncCache", "TimeCount"]


@dataclass(frozen=True)
class TimeCount:
    """A rule: save once ``count`` edits fall within a window of ``time_length`` seconds."""

    time_length: float
    count: int


DEFAULT_TIME_CHECKS = (TimeCount(60, 10000), TimeCount(300, 10), TimeCount(900, 1))


class AutoSyncCache(PersistentCache):
    """A persistent cache that counts its edits and saves them without being asked."""

    # No __slots__ here: a subclass may also derive from CSVCache, and two bases
    # that each add slots cannot be combined.

    def __init__(
        self, *args: Any, time_checks: Iterable[TimeCount] | None = None, **kwargs: Any
    ) -> None:
        self._pending_edits = 0
        self.time_checks = tuple(DEFAULT_TIME_CHECKS if time_checks is None else time_checks)
        super().__init__(*args, **kwargs)

    @property
    def pending_edits(self) -> int:
        """How many edits were made since the last save."""
        return self._pending_edits

    def _record_edits(self, count: int = 1) -> None:
        self._pending_edits += count

    def _saved(self) -> None:
        self._pending_edits = 0

    def _save_at_exit(self) -> None:
        if self._pending_edits:
            self._save_self()

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._pending_edits += 1

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._pending_edits += 1

    def update(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self, *args, **kwargs)
        self._record_edits()

    def __ior__(self, other: Any) -> AutoSyncCache:  # type: ignore[misc]
        dict.update(self, other)
        self._record_edits()
        return self

    def pop(self, key: Any, *default: Any) -> Any:
        value = dict.pop(self, key, *default)
        self._record_edits()
        return value

    def popitem(self) -> tuple[Any, Any]:
        item = dict.popitem(self)
        self._record_edits()
        return item

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return dict.__getitem__(self, key)
        dict.__setitem__(self, key, default)
        self._record_edits()
        return default

    def clear(self) -> None:
        dict.clear(self)
        self._record_edits()
