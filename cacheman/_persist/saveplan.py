"""What a save writes: a pure function of the changes taken, the store's position and the base.

The model (docs/processes.rst states it for users): a save writes exactly
this process's changes, on top of the store's current state.

* Keys assigned, deleted, touched, or changed in place (detected, see
  :mod:`cacheman._persist.changes`) are written one by one: a journal append,
  which other processes' appends never undo, and which never undoes theirs.
* ``clear()``, ``contents = ...``, a build or a reset, and a cache registered
  with ``contents`` *replace* what is saved: those writes are the whole cache.
* ``mark_dirty()``, a first save, and a long journal rewrite the snapshot.  That
  rewrite starts from the store's current state: from this process's memory
  plus the records others appended since it last read the journal, or, when
  its memory is behind (an earlier rewrite folded in changes it has not read),
  from the saved state itself.  Either way this process's changes are applied
  last, and a key it never read is never dropped.

So on one key the last acknowledged save wins, whichever process made it; a
replacing write (clear, build) wins over every key saved before it.

:func:`plan_write` decides; it reads nothing and writes nothing.  The cache
turns its answer into I/O (``cachewrap.PersistentCache._save_plan``).
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal

from .changes import Taken

__all__ = ["COMPACT_JOURNAL_BYTES", "LIGHT_APPEND_KEYS", "Write", "plan_write"]

#: Journal appends of at most this many keys run in this process (a millisecond or
#: so); larger saves run in a forked child, or rewrite the snapshot.  Measured on a
#: 1,000,000-entry cache: an in-process append of 1,000 keys pauses the program
#: about 3.5 ms, of 2,000 about 7 ms, of 10,000 (one burst) about 40 ms, while a
#: fork pauses it 7-10 ms; so a burst forks, and small saves stay in-process.
LIGHT_APPEND_KEYS = 1_000
#: A journal past this many bytes is folded into the snapshot at the next save.
COMPACT_JOURNAL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Write:
    """One write, as decided by :func:`plan_write`.

    ``action``: ``"append"`` records ``keys`` (their values, or their deletion)
    after what is saved; ``"snapshot"`` rewrites the whole saved copy.
    ``keys``: the keys this process changed (None: every key it holds).
    ``written``: the keys whose values the write puts in the store (None: every
    key held: a snapshot that starts from this process's memory writes it all).
    ``replace``: the snapshot is this process's memory alone (a clear, a build):
    nothing saved before survives it.  ``rebase``: the snapshot starts from the
    saved state rather than from this process's memory, which is behind.
    ``light``: small enough to run in the calling thread rather than a child.
    """

    action: Literal["append", "snapshot"]
    keys: AbstractSet[Hashable] | None
    replace: bool = False
    rebase: bool = False
    light: bool = False

    @property
    def written(self) -> AbstractSet[Hashable] | None:
        return self.keys if self.action == "append" or self.rebase else None


def plan_write(
    taken: Taken,
    *,
    position: Any,
    behind: bool,
    size: int,
    first_save: bool,
    blank_refused: bool,
    light_keys: int = LIGHT_APPEND_KEYS,
) -> Write | None:
    """What to write for ``taken``; None when nothing is to be written.

    ``position``: how far this process has read the store's journal (None on a
    store without positions: Redis applies each change itself).  ``behind``:
    this process's memory lacks changes a snapshot it wrote folded in.
    ``size``: the number of keys held.  ``first_save``: an explicit save with
    nothing taken, and nothing saved yet (the cache is written whole, even if
    empty).  ``blank_refused``: the cache is empty and ``save_on_blank_cache``
    is False.  ``light_keys``: appends of at most this many keys are light.
    """
    if taken.replace:
        return None if blank_refused else Write("snapshot", None, replace=True)
    if not taken:
        if not first_save:
            return None
        # Written whole (even if empty), over what may have been saved meanwhile.
        keys = None
    else:
        keys = None if taken.everything else taken.keys  # the save's own copy
    if position is not None and (
        keys is None or _worth_compacting(len(keys), position, size, light_keys)
    ):
        return Write("snapshot", keys, rebase=behind)
    count = size if keys is None else len(keys)
    return Write("append", keys, light=count <= light_keys)


def _worth_compacting(changed: int, position: Any, size: int, light_keys: int) -> bool:
    """Rewrite the snapshot rather than append: none yet, most keys changed, a long journal.

    (A rewrite keeps what other processes appended, so it is as safe as an
    append; it costs a whole write.)
    """
    offset = getattr(position, "offset", 0)
    if offset == 0 or offset > COMPACT_JOURNAL_BYTES:  # no journal seen yet, or a long one
        return True
    return changed > max(light_keys, size // 2)
