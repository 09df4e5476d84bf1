"""What a persistent cache changed since its last save, and how it detects in-place changes.

A cache tracks the keys changed through its ``dict`` interface (a set the
mutators add to), plus three facts a key set cannot hold:

* ``replace``: the saved copy must be replaced as a whole by the next write
  (after ``clear()``, ``contents=``, a build or a reset, or once the saved copy
  was deleted), because other keys saved earlier must not survive it;
* ``replace_pending``: such a replacement is itself a change to write (a clear,
  a build), even if no key changed since;
* ``everything``: every key this process holds changed (``mark_dirty()``).

Values changed in place (``c[k].append(x)``) are invisible to the mutators, so
they are *detected*: for every value that can change in place (see
:func:`watched`), the cache keeps a digest of its pickle as it was loaded, or as
it was last written.  The saves that end a unit of work (an explicit ``save()``,
the end of a ``with`` block, interpreter exit, SIGTERM) write a value that was
not assigned only if its pickle's digest differs from the one kept
(:meth:`ChangeSet.changed_in_place`).  A value this process merely holds is
never written back, so a process that only read a cache writes nothing, and
never puts an old value back over another process's newer one.

What it costs: a load pickles each watched value once (``pickle.dumps`` and a
64-bit hash); a detecting save pickles each watched value not assigned since
(at most one ``pickle.dumps`` of the cache); a value written by a save is
pickled once more for its new digest, in whichever process writes it.  Values
of the plain types (numbers, strings, bytes, tuples, frozensets, dates ...)
cost nothing: only a set look-up of their type.  A tuple counts as plain: an
in-place change to a list *inside* a tuple is not detected (``touch(key)``
says so).  The digests take one small int per watched value.

The key set is one object for the cache's whole life, so the mutators can keep
its bound ``add`` method; a save takes the keys it writes with
:meth:`ChangeSet.take` (copy, then remove what was copied: a key changed again
meanwhile is either in the copy and read afterwards, or added back after), and
a failed save puts them back with :meth:`ChangeSet.give_back`.  The digests are
changed only by whole-dict operations (``update``, ``pop``) and read through a
copy, so a background save landing on another thread never disturbs a reader.
"""

from __future__ import annotations

import decimal
import fractions
import operator
import pickle
import uuid
from collections.abc import Hashable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from itertools import compress, repeat
from typing import Any

__all__ = [
    "GONE",
    "ChangeSet",
    "Digests",
    "Taken",
    "digests_for",
    "digests_of",
    "digests_of_all",
    "watched",
]

#: Digests of the watched values: key -> hash of the value's pickle (None: unpicklable).
Digests = dict[Hashable, "int | None"]

#: Types whose instances are never changed in place (a tuple is taken as one: see above).
_PLAIN: frozenset[type] = frozenset(
    {
        str,
        bytes,
        int,
        float,
        complex,
        bool,
        type(None),
        range,
        tuple,
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
_PROTOCOL = 5


def watched(value: object) -> bool:
    """Tell whether ``value`` can change in place, so that a save checks its digest.

    >>> watched((1, "a")), watched([1]), watched({"status": "done"})
    (False, True, True)
    """
    return type(value) not in _PLAIN


def _digest(value: object) -> int | None:
    try:
        return hash(pickle.dumps(value, _PROTOCOL))
    except Exception:  # pickle refuses it (cloudpickle's bytes vary): never "the same"
        return None


def digests_of(items: Iterable[tuple[Hashable, Any]]) -> Digests:
    """The digests of the watched values among ``items`` (a type look-up for the others)."""
    plain = _PLAIN
    found = [(key, value) for key, value in items if type(value) not in plain]
    if not found:
        return {}
    return _digests([key for key, _value in found], [value for _key, value in found])


def _digests(keys: list[Hashable], values: list[Any]) -> Digests:
    """``{key: digest}`` for values known to be watched, pickled in C loops (map, not a frame)."""
    try:
        return dict(zip(keys, map(hash, map(pickle.dumps, values, repeat(_PROTOCOL))), strict=True))
    except Exception:  # a value pickle refuses: settle them one by one
        return {key: _digest(value) for key, value in zip(keys, values, strict=True)}


def digests_of_all(contents: dict[Any, Any], *, private: bool = False) -> Digests:
    """The digests of the watched values of ``contents``.

    Unless ``private`` (no other thread can reach ``contents``: a copy, a forked
    child's image, what a load just read), a shallow copy is iterated: copying a
    dict runs in C, which no other thread interrupts, and allocates no object
    per item (a list of its items would, and wake the garbage collector).
    """
    if not private:
        contents = dict.copy(contents)
    return _digests(*_watched_items(contents))


def _watched_items(contents: dict[Any, Any]) -> tuple[list[Hashable], list[Any]]:
    """The keys and values of the watched values of ``contents``, in its own order.

    In C loops (map, compress): no Python frame per value.  A cache of plain
    values is recognised by the set of its value types (35 ms a million).
    """
    if set(map(type, dict.values(contents))) <= _PLAIN:
        return [], []
    values = list(dict.values(contents))
    watched_ones = list(map(operator.not_, map(_PLAIN.__contains__, map(type, values))))
    return list(compress(dict.keys(contents), watched_ones)), list(compress(values, watched_ones))


def digests_for(contents: dict[Any, Any], keys: Iterable[Hashable]) -> Digests:
    """The digests of the watched values of ``keys`` in ``contents`` (missing keys skipped).

    In C loops (map, compress), as :func:`digests_of_all`: a save of a million
    keys of plain values pays a type look-up per value, not a Python frame.
    """
    if not isinstance(keys, (set, frozenset, list)):
        keys = list(keys)
    if len(keys) * 4 >= len(contents):
        # Most of the cache: walk it in its own order.  Looking a million keys up in
        # a set's order reads memory at random (0.7 s); the dict's order, 0.1 s.
        wanted = keys if isinstance(keys, (set, frozenset)) else set(keys)
        held_keys, held_values = _watched_items(contents)
        chosen = list(map(wanted.__contains__, held_keys))
        return _digests(list(compress(held_keys, chosen)), list(compress(held_values, chosen)))
    values = list(map(dict.get, repeat(contents), keys, repeat(_MISSING)))
    skipped = _PLAIN | {_Missing}
    kinds = list(map(skipped.__contains__, map(type, values)))
    if all(kinds):
        return {}
    watched_ones = list(map(operator.not_, kinds))
    return _digests(list(compress(keys, watched_ones)), list(compress(values, watched_ones)))


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
    #: The digests of the watched values as loaded or last written (see the module docstring).
    digests: Digests = field(default_factory=dict)

    def pending(self) -> bool:
        """Whether a save has something to write, not counting in-place changes."""
        return bool(self.keys) or self.replace_pending or self.everything

    def replaced(self, *, pending: bool = True) -> None:
        """The next write replaces the saved copy (``pending``: and that is itself a change)."""
        self.keys.clear()
        self.everything = False
        self.replace = True
        self.replace_pending = self.replace_pending or pending
        self.digests = {}  # every value is written by the replacing save anyway

    def synced(self, contents: dict[Any, Any] | None = None, *, keep_keys: bool = False) -> None:
        """The cache now matches its saved copy (after a load of ``contents``).

        ``contents``: what the load read, which no other thread holds yet.
        ``keep_keys``: keys changed since the load read are still to be written.
        """
        if not keep_keys:
            self.keys.clear()
        self.replace = self.replace_pending = self.everything = False
        self.digests = {} if contents is None else digests_of_all(contents, private=True)

    def take_in(self, contents: dict[Any, Any], incoming: dict[Hashable, Any]) -> None:
        """Apply other processes' values to ``contents``; this process's changes win.

        ``incoming``: key -> the value saved now (:data:`GONE`: deleted), objects
        no other thread holds yet.  Skipped: keys changed here since the last
        save (pending); keys whose saved value is the one this process holds as
        saved (same digest): its own object stays, so an in-place change a
        thread is making to it is not lost.  A replaced value that a thread
        changed in place since the last save (its digest moved) is put back
        and becomes pending: that change is newer than what was saved.  The
        caller holds edits off (:mod:`cacheman._persist.editguard`); a thread
        holding a value it looked up before can still change it in place, and
        the check after the replacement catches that.
        """
        pending, digests = self.keys, self.digests
        new = digests_of((key, value) for key, value in incoming.items() if value is not GONE)
        get = dict.get
        for key, value in incoming.items():
            if key in pending:
                continue
            held = digests.get(key, _MISSING)
            old = get(contents, key, _MISSING)
            if (
                value is not GONE
                and old is not _MISSING
                and isinstance(held, int)  # (not _MISSING, not None: unpicklable)
                and new.get(key) == held
            ):
                continue  # the same as this process's saved value: keep its object
            if value is GONE:
                dict.pop(contents, key, None)
            else:
                dict.__setitem__(contents, key, value)
            if old is not _MISSING and held is not _MISSING and _digest(old) != held:
                dict.__setitem__(contents, key, old)  # changed in place here: newer
                pending.add(key)
                continue
            if key in new:
                digests[key] = new[key]
            else:
                digests.pop(key, None)

    def written(self, digests: Digests, keys: AbstractSet[Hashable] | None) -> None:
        """A save wrote the values of ``keys`` (None: every key), whose digests are ``digests``.

        Their digests replace the ones kept: an in-place change made after this
        save is measured against what this save wrote.
        """
        if keys is None:
            self.digests = dict(digests)
            return
        current = self.digests
        # Over the smaller side: a large save of plain values has no digest at all.
        if len(current) < len(keys):
            gone = [key for key in list(current) if key in keys and key not in digests]
        else:
            gone = [key for key in keys if key in current and key not in digests]
        for key in gone:
            current.pop(key, None)
        current.update(digests)

    def take(self, extra: Iterable[Hashable] = ()) -> Taken:
        """Take what the next write must hold (plus ``extra`` keys); the set starts over."""
        keys = self.keys.copy()
        self.keys.difference_update(keys)
        keys.update(extra)
        taken = Taken(keys, self.replace and (self.replace_pending or bool(keys)), self.everything)
        if taken:
            self.replace = self.replace_pending = self.everything = False
        return taken

    def give_back(self, taken: Taken) -> None:
        """A save of ``taken`` failed: its changes are pending again."""
        self.keys.update(taken.keys)
        if taken.replace:
            self.replace = self.replace_pending = True
        self.everything = self.everything or taken.everything

    def changed_in_place(self, contents: dict[Any, Any]) -> list[Hashable]:
        """The keys whose values differ from their digests, not counting keys assigned since.

        Pickles each watched value not assigned since (the digests are read
        through a copy: a save landing on another thread may replace them).
        """
        if self.everything or self.replace:
            return []  # the next write holds every key anyway
        # In C loops (map, compress): a read-only exit pays about one pickling of the values.
        baseline = dict(self.digests)  # a copy: a save landing on another thread replaces it
        keys = list(baseline)
        values = list(map(dict.get, repeat(contents), keys, repeat(_MISSING)))
        try:
            now: Iterable[int | None] = map(hash, map(pickle.dumps, values, repeat(_PROTOCOL)))
            differ = list(compress(keys, map(operator.ne, baseline.values(), now)))
        except Exception:  # a value pickle refuses: one by one
            now = map(_digest, values)
            differ = list(compress(keys, map(operator.ne, baseline.values(), now)))
        differ += [key for key, digest in baseline.items() if digest is None]
        assigned = self.keys  # written anyway; and deleted keys are tracked
        return [
            key
            for key in dict.fromkeys(differ)
            if key not in assigned and dict.get(contents, key, _MISSING) is not _MISSING
        ]


class _Missing:
    """The type of :data:`_MISSING` (so that a type look-up tells it from a value)."""


_MISSING = _Missing()
#: In :meth:`ChangeSet.take_in`'s ``incoming``: the key was deleted.
GONE = object()
