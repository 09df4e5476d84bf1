"""What a cache changed: tracked keys, and in-place changes detected by digests."""

from __future__ import annotations

from cacheman._persist.changes import GONE, ChangeSet, digests_of, digests_of_all, watched


def test_only_values_that_can_change_in_place_are_watched() -> None:
    assert not any(map(watched, [1, 2.5, "s", b"b", None, (1, [2]), frozenset({1})]))
    assert all(map(watched, [[1], {"a": 1}, {1}, bytearray(b"x"), object()]))
    assert digests_of([("n", 1), ("t", (1, 2)), ("l", [1])]).keys() == {"l"}


def test_a_value_loaded_and_not_changed_is_not_written() -> None:
    contents = {"l": [1], "d": {"a": 1}, "n": 3}
    changes = ChangeSet()
    changes.synced(contents)
    assert changes.changed_in_place(contents) == []
    contents["l"].append(2)
    contents["d"]["a"] = 2
    assert sorted(changes.changed_in_place(contents)) == ["d", "l"]


def test_assigned_and_deleted_keys_are_left_to_the_key_set() -> None:
    contents = {"l": [1], "m": [2]}
    changes = ChangeSet()
    changes.synced(contents)
    contents["l"] = [9]
    changes.keys.add("l")
    del contents["m"]
    changes.keys.add("m")
    assert changes.changed_in_place(contents) == []
    assert changes.take().keys == {"l", "m"}


def test_a_save_s_digests_become_the_baseline() -> None:
    contents = {"l": [1], "other": [5]}
    changes = ChangeSet()
    changes.synced(contents)
    contents["l"].append(2)
    written = digests_of_all(contents)
    changes.written({"l": written["l"]}, {"l"})
    assert changes.changed_in_place(contents) == []
    contents["other"].append(6)  # its baseline is still the loaded value
    assert changes.changed_in_place(contents) == ["other"]


def test_an_unpicklable_value_always_counts_as_changed() -> None:
    contents = {"f": [lambda: 1]}
    changes = ChangeSet()
    changes.synced(contents)
    assert changes.digests == {"f": None}
    assert changes.changed_in_place(contents) == ["f"]


def test_a_whole_replacement_needs_no_detection() -> None:
    contents = {"l": [1]}
    changes = ChangeSet()
    changes.synced(contents)
    changes.replaced()
    contents["l"].append(2)
    assert changes.changed_in_place(contents) == []
    taken = changes.take()
    assert taken.replace


def test_taking_in_keeps_this_process_s_object_where_the_saved_value_is_the_same() -> None:
    """A refresh must not swap a list a thread is appending to for an equal copy."""
    held = [1]
    contents = {"same": held, "theirs": [1], "gone": [1], "n": 1}
    changes = ChangeSet()
    changes.synced(contents)
    changes.take_in(contents, {"same": [1], "theirs": [2], "gone": GONE, "n": 2, "new": (3,)})
    assert contents["same"] is held
    assert contents == {"same": [1], "theirs": [2], "n": 2, "new": (3,)}
    held.append(2)  # an in-place change after the refresh: still detected
    assert changes.changed_in_place(contents) == ["same"]


def test_taking_in_keeps_this_process_s_changes() -> None:
    contents = {"assigned": [1], "in place": [1]}
    changes = ChangeSet()
    changes.synced(contents)
    contents["assigned"] = [5]
    changes.keys.add("assigned")
    contents["in place"].append(5)  # changed here since the last save, not yet detected
    changes.take_in(contents, {"assigned": [9], "in place": [9]})
    assert contents == {"assigned": [5], "in place": [1, 5]}
    assert changes.take().keys == {"assigned", "in place"}  # both written at the next save
