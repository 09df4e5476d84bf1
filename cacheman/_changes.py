"""What a persistent cache must write at its next save: its changes since the last one.

A cache tracks the keys changed through its ``dict`` interface (a set the
mutators add to), plus three facts a key set cannot hold:

* ``replace``: the saved copy must be replaced as a whole by the next write
  (after ``clear()``, ``contents=``, a build or a reset, or once the saved copy
  was deleted), because other keys saved earlier must not survive it;
* ``replace_pending``: such a replacement is itself a change to write (a clear,
  a build), even if no key changed since;
* ``everything``: every key changed (``mark_dirty()``).

Values changed in place (``c[k].append(x)``) are invisible to the mutators.  The
saves that end a unit of work (explicit ``save()``, the end of a ``with`` block,
interpreter exit, SIGTERM) therefore also write every value that *can* change
in place (see :func:`changeable_in_place`), unless the saved copy was deleted and
the cache not used since.

The key set is one object for the cache's whole life, so the mutators can keep
its bound ``add`` method; a save takes the keys it writes with
:meth:`ChangeSet.take` (copy, then remove what was copied: a key changed again
meanwhile is either in the copy and read afterwards, or added back after), and
a failed save puts them back with :meth:`ChangeSet.give_back`.
"""

from __future__ import annotations

import decimal
import fractions
import uuid
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import PurePath
from typing import Any

__all__ = ["ChangeSet", "Taken", "changeable_in_place"]

#: Types whose instances cannot change after they are made.
_IMMUTABLE: frozenset[type] = frozenset(
    {
        str,
        bytes,
        int,
        float,
        complex,
        bool,
        type(None),
        range,
        frozenset,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
        date,
        datetime,
        time,
        timedelta,
        type(Ellipsis),
    }
)


def changeable_in_place(value: object) -> bool:
    """Tell whether ``value`` could have been changed without an assignment to its key.

    True for lists, dicts, sets, arrays and any object of a class that is not
    known to be immutable; a tuple (or frozenset) is changeable when an item is.

    >>> changeable_in_place((1, "a", None)), changeable_in_place((1, [2]))
    (False, True)
    """
    # A save of a large cache calls this for every value, so the common cases (an
    # immutable scalar, a tuple of them) are settled by set look-ups, not calls.
    kind = type(value)
    if kind in _IMMUTABLE:
        return False
    if kind is tuple or kind is frozenset:
        for item in value:  # type: ignore[attr-defined]  # noqa: SIM110 (no generator per value)
            if type(item) not in _IMMUTABLE and changeable_in_place(item):
                return True
        return False
    return not isinstance(value, PurePath)


@dataclass
class Taken:
    """The changes one save writes, taken from a :class:`ChangeSet`."""

    keys: set[Hashable]
    replace: bool
    everything: bool

    def __bool__(self) -> bool:
        return bool(self.keys) or self.replace or self.everything


@dataclass
class ChangeSet:
    """The changes of one cache since its last save (see the module docstring)."""

    keys: set[Hashable] = field(default_factory=set)
    replace: bool = False
    replace_pending: bool = False
    everything: bool = False
    watch_in_place: bool = True
    #: The keys whose values can change in place, kept up to date from the keys each
    #: save takes (an assignment brings a new value); None until the first scan.
    changeable: set[Hashable] | None = None

    def pending(self) -> bool:
        """Whether a save has something to write, not counting in-place changes."""
        return bool(self.keys) or self.replace_pending or self.everything

    def replaced(self, *, pending: bool = True) -> None:
        """The next write replaces the saved copy (``pending``: and that is itself a change)."""
        self.keys.clear()
        self.everything = False
        self.replace = True
        self.replace_pending = self.replace_pending or pending
        self.watch_in_place = pending
        self.changeable = None

    def synced(self) -> None:
        """The cache now matches its saved copy (after a load)."""
        self.keys.clear()
        self.replace = self.replace_pending = self.everything = False
        self.watch_in_place = True
        self.changeable = None

    def take(self, contents: Mapping[Any, Any], extra: Iterable[Hashable] = ()) -> Taken:
        """Take what the next write must hold (plus ``extra`` keys); the set starts over."""
        keys = self.keys.copy()
        self.keys.difference_update(keys)
        if self.changeable is not None:
            self._rescan(contents, keys)
        keys.update(extra)
        taken = Taken(keys, self.replace and (self.replace_pending or bool(keys)), self.everything)
        if taken:
            self.replace = self.replace_pending = self.everything = False
            self.watch_in_place = True
        return taken

    def _rescan(self, contents: Mapping[Any, Any], keys: Iterable[Hashable]) -> None:
        """Keep :attr:`changeable` current for ``keys``, whose values were assigned anew."""
        assert self.changeable is not None
        for key in keys:
            if key in contents and changeable_in_place(contents[key]):
                self.changeable.add(key)
            else:
                self.changeable.discard(key)

    def give_back(self, taken: Taken) -> None:
        """A save of ``taken`` failed: its changes are pending again."""
        self.keys.update(taken.keys)
        if taken.replace:
            self.replace = self.replace_pending = True
        self.everything = self.everything or taken.everything

    def changed_in_place(self, contents: dict[Any, Any]) -> list[Hashable]:
        """The keys whose values could have changed in place, if this cache watches for that.

        The first call scans every value; later ones only the keys assigned since,
        so an explicit save of a large cache of immutable values stays cheap.
        """
        if not self.watch_in_place or self.everything or self.replace_pending:
            return []  # the next write holds every key anyway: skip the scan
        if self.changeable is None:
            immutable = _IMMUTABLE
            self.changeable = {
                key
                for key, value in dict.items(contents)
                if type(value) not in immutable and changeable_in_place(value)
            }
        else:
            self._rescan(contents, self.keys)
        return list(self.changeable)
