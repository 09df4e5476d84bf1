"""The save plan is a pure function: what a save writes, from the changes, position and base."""

from __future__ import annotations

import pytest

from cacheman._persist.changes import Taken
from cacheman._persist.saveplan import COMPACT_JOURNAL_BYTES, Write, plan_write
from cacheman._stores.journal import NO_POSITION, Position

READ = Position(b"12345678", 4_000)  # a process that has read a journal up to here


def plan(
    keys: set[object] | None = None,
    *,
    replace: bool = False,
    everything: bool = False,
    position: object = READ,
    behind: bool = False,
    size: int = 10_000,
    first_save: bool = False,
    blank_refused: bool = False,
) -> Write | None:
    taken = Taken(set(keys or ()), replace, everything)
    return plan_write(
        taken,
        position=position,
        behind=behind,
        size=size,
        first_save=first_save,
        blank_refused=blank_refused,
    )


def test_nothing_changed_writes_nothing() -> None:
    assert plan() is None


def test_a_few_keys_are_a_light_append_of_just_those() -> None:
    assert plan({"a", "b"}) == Write("append", frozenset({"a", "b"}), light=True)


def test_many_keys_append_in_a_child() -> None:
    write = plan(set(range(2_000)))
    assert write is not None
    assert (write.action, write.light) == ("append", False)


@pytest.mark.parametrize(
    "why",
    [
        {"everything": True},  # mark_dirty()
        {"keys": set(range(6_000))},  # most keys changed
        {"keys": {"a"}, "position": NO_POSITION},  # no journal seen yet
        {"keys": {"a"}, "position": Position(b"12345678", COMPACT_JOURNAL_BYTES + 1)},
    ],
)
def test_whole_rewrites_keep_what_others_saved(why: dict[str, object]) -> None:
    write = plan(**why)  # type: ignore[arg-type]
    assert write is not None
    assert (write.action, write.replace, write.rebase) == ("snapshot", False, False)


def test_a_rewrite_by_a_process_behind_starts_from_the_saved_state() -> None:
    write = plan(everything=True, behind=True)
    assert write == Write("snapshot", None, rebase=True)
    # Only the keys it changed are written then: their digests, not others', are renewed.
    some = plan({"a"}, behind=True, position=NO_POSITION)
    assert some is not None
    assert some.written == {"a"}


def test_a_rewrite_from_memory_writes_every_value_held() -> None:
    write = plan(everything=True)
    assert write is not None
    assert write.written is None


def test_clear_and_builds_replace_unless_a_blank_cache_is_refused() -> None:
    assert plan(replace=True) == Write("snapshot", None, replace=True)
    assert plan(replace=True, blank_refused=True) is None


def test_a_first_explicit_save_writes_the_whole_cache() -> None:
    assert plan(first_save=True) == Write("snapshot", None)
    # A store without positions (Redis) takes every key as changes instead.
    assert plan(first_save=True, position=None, size=3) == Write("append", None, light=True)


def test_a_store_without_positions_never_rewrites_from_memory() -> None:
    write = plan(everything=True, position=None)
    assert write is not None
    assert write.action == "append"
