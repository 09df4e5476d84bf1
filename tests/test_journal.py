"""The journal beside each snapshot: records, replay, damage, signing, crashes and many writers.

Store level (``PickleStore``): the caches build on these calls.  Processes here
are real (``sys.executable`` children) and so are the signals; files are damaged
on disk as a killed writer, a bad disk or an attacker would.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python
from test_store import planted_pickle

from cacheman import InsecureCacheError, SignatureMismatchError, UnpicklableValueError
from cacheman._stores.journal import (
    CLEAR,
    DEL,
    HEADER_SIZE,
    MAGIC,
    NO_POSITION,
    SET,
    Position,
    apply_changes,
)
from cacheman._stores.pickle import MAGIC as SNAPSHOT_MAGIC
from cacheman._stores.pickle import PickleStore

RECORD_HEAD = 12  # length, length check, payload CRC
MAC = 32


@pytest.fixture
def store(tmp_path: Path) -> PickleStore:
    return PickleStore(tmp_path / "manager")


def corrupt_files(store: PickleStore) -> list[Path]:
    return sorted(store.directory.glob("*.corrupt-*"))


def record_head(payload: bytes) -> bytes:
    """A record's header with a correct length check and checksum, as a forger would write it."""
    return struct.pack("<III", len(payload), len(payload) ^ 0xFFFFFFFF, zlib.crc32(payload))


def record_offsets(store: PickleStore, name: str) -> list[int]:
    """Where each record of the journal of ``name`` starts, then the file's end."""
    data = store.journal_path(name).read_bytes()
    signed = struct.unpack_from("<H", data, 10)[0] & 1
    offsets, position = [], HEADER_SIZE
    while position < len(data):
        offsets.append(position)
        position += (
            RECORD_HEAD + (MAC if signed else 0) + struct.unpack_from("<I", data, position)[0]
        )
    return [*offsets, position]


# -- round trips ------------------------------------------------------------------------


def test_set_del_and_clear_batches_round_trip(store: PickleStore) -> None:
    expected: dict[Any, Any] = {}
    batches = [
        [(SET, "a", 1), (SET, ("tuple", 2), [1, 2]), (SET, 3, {"x": None})],
        [(DEL, "a", None), (DEL, "never there", None)],
        [(SET, "b", 2)],
        [(CLEAR, None, None), (SET, "after clear", True)],
        [(SET, "b", 3), (SET, "b", 4)],
    ]
    for batch in batches:
        store.append("c", batch)
        apply_changes(expected, batch)
        assert store.load("c") == expected
    assert expected == {"after clear": True, "b": 4}
    # One append, one record.
    assert len(record_offsets(store, "c")) == len(batches) + 1


def test_a_journal_without_a_snapshot_is_a_cache(store: PickleStore) -> None:
    assert store.load("c") is None
    assert not store.exists("c")
    store.append("c", [(SET, "k", "v")])
    assert store.exists("c")
    assert store.names() == ["c"]
    assert not store.path_for("c").exists()
    assert store.load("c") == {"k": "v"}
    store.delete("c")
    assert store.names() == []
    assert store.load("c") is None


def test_the_journal_is_replayed_over_the_snapshot(store: PickleStore) -> None:
    store.save("c", {"a": 1, "b": 2})
    store.append("c", [(SET, "a", 10), (DEL, "b", None), (SET, "c", 3)])
    assert store.load("c") == {"a": 10, "c": 3}
    data = store.journal_path("c").read_bytes()
    assert data.startswith(MAGIC)
    assert oct(store.journal_path("c").stat().st_mode & 0o777) == "0o600"


def test_a_journal_is_replayed_over_an_older_snapshot_or_a_bare_2x_pickle(
    store: PickleStore,
) -> None:
    store.directory.mkdir(mode=0o700, parents=True)
    shutil.copyfile(
        Path(__file__).parent / "fixtures" / "cacheman2_bare.pkl", store.path_for("legacy")
    )
    store.append("legacy", [(SET, "alpha", "changed")])
    loaded = store.load("legacy")
    assert loaded is not None
    assert loaded["alpha"] == "changed"
    assert loaded["beta"] == [1, 2, 3]
    # A version-1 snapshot (no journal id in its header) also gets its journal replayed.
    payload = pickle.dumps({"v1": 1}, 5)
    fields = struct.pack("<8sHHQ", SNAPSHOT_MAGIC, 1, 0, len(payload))
    crc = zlib.crc32(fields, zlib.crc32(payload))
    store.path_for("v1").write_bytes(fields + struct.pack("<I32s", crc, bytes(32)) + payload)
    store.path_for("v1").chmod(0o600)
    store.append("v1", [(SET, "more", 2)])
    assert store.load("v1") == {"v1": 1, "more": 2}


def test_a_malformed_change_is_refused(store: PickleStore) -> None:
    with pytest.raises(ValueError, match="op, key, value"):
        store.append("c", [("upsert", "k", 1)])  # type: ignore[list-item]
    assert not store.journal_path("c").exists()


def test_an_unpicklable_value_leaves_the_journal_untouched(store: PickleStore) -> None:
    store.append("c", [(SET, "fine", 1)])
    before = store.journal_path("c").read_bytes()
    with pytest.raises(UnpicklableValueError) as caught:
        store.append("c", [(SET, "ok", 2), (SET, ("the", "key"), threading.Lock())])
    assert isinstance(caught.value, TypeError)
    assert "cache 'c'" in str(caught.value)
    assert "('the', 'key')" in str(caught.value)
    assert store.journal_path("c").read_bytes() == before
    assert store.load("c") == {"fine": 1}


def test_lambdas_go_through_cloudpickle_per_record(store: PickleStore) -> None:
    store.append("c", [(SET, "f", lambda x: x + 1)])
    store.append("c", [(SET, "n", 1)])
    data = store.journal_path("c").read_bytes()
    first, second = record_offsets(store, "c")[:2]
    assert b"cloudpickle" in data[first:second]  # the fallback was needed for that record only
    assert b"cloudpickle" not in data[second:]
    loaded = store.load("c")
    assert loaded is not None
    assert loaded["f"](1) == 2


# -- positions ---------------------------------------------------------------------------


def test_positions_follow_the_journal_and_compaction_starts_a_new_one(store: PickleStore) -> None:
    contents, start = store.load_tracked("c")
    assert (contents, start) == (None, NO_POSITION)
    assert store.changes_since("c", start) == ([], NO_POSITION)
    first = store.append("c", [(SET, "a", 1)], since=start)
    assert first.in_sync  # there was no journal, and the caller saw none
    second = store.append("c", [(SET, "b", 2)], since=first.position)
    assert second.in_sync
    assert second.position.offset > first.position.offset
    # Someone else appends: the next append is not in sync, changes_since shows theirs.
    other = PickleStore(store.directory)
    theirs = other.append("c", [(DEL, "a", None)])
    assert theirs.position.file_id == second.position.file_id
    assert store.changes_since("c", second.position) == ([(DEL, "a", None)], theirs.position)
    assert store.changes_since("c", theirs.position) == ([], theirs.position)
    assert not store.append("c", [(SET, "c", 3)], since=second.position).in_sync
    assert store.load_tracked("c")[0] == {"b": 2, "c": 3}

    saved = store.save("c", {"b": 2, "c": 3})
    assert saved.position.file_id != theirs.position.file_id
    assert saved.position.offset == HEADER_SIZE
    assert store.changes_since("c", theirs.position) is None  # compacted: reload
    assert store.load_tracked("c") == ({"b": 2, "c": 3}, saved.position)
    assert store.changes_since("c", saved.position) == ([], saved.position)
    store.delete("c")
    assert store.changes_since("c", saved.position) is None


def test_compaction_keeps_other_processes_records_and_own_pending_wins(store: PickleStore) -> None:
    store.save("c", {"shared": 0, "mine": 0})
    contents, position = store.load_tracked("c")
    assert contents is not None
    # Another process appends while this one edits without appending yet.
    other = PickleStore(store.directory)
    other.append("c", [(SET, "theirs", 1), (SET, "shared", "theirs")])
    other.append("c", [(DEL, "mine", None)])
    pending = [(SET, "shared", "mine"), (SET, "new", 2)]
    apply_changes(contents, pending)

    result = store.save("c", contents, since=position, pending=pending)

    assert result.was_behind
    assert store.load("c") == {"shared": "mine", "theirs": 1, "new": 2}
    assert contents == {"shared": "mine", "mine": 0, "new": 2}  # the caller's copy is untouched


def test_compaction_with_nothing_behind_writes_the_contents_as_they_are(
    store: PickleStore,
) -> None:
    saved = store.save("c", {"a": 1})
    appended = store.append("c", [(SET, "b", 2)], since=saved.position)
    result = store.save("c", {"a": 1, "b": 2, "c": 3}, since=appended.position, pending=[])
    assert not result.was_behind
    assert store.load("c") == {"a": 1, "b": 2, "c": 3}


def test_compaction_after_another_compaction_starts_from_the_saved_state(
    store: PickleStore,
) -> None:
    saved = store.save("c", {"a": 1})
    other = PickleStore(store.directory)
    other.save("c", {"a": 1, "theirs": 2})
    result = store.save("c", {"a": 1, "mine": 3}, since=saved.position, pending=[(SET, "mine", 3)])
    assert result.was_behind
    assert store.load("c") == {"a": 1, "theirs": 2, "mine": 3}


def test_save_without_since_replaces_everything(store: PickleStore) -> None:
    store.save("c", {"a": 1})
    store.append("c", [(SET, "b", 2)])
    result = store.save("c", {"only": 1})
    assert not result.was_behind
    assert store.load("c") == {"only": 1}
    assert store.journal_path("c").stat().st_size == HEADER_SIZE


# -- a crash between the two steps of a save ----------------------------------------------


@pytest.mark.parametrize("since", [False, True], ids=["replace everything", "with since"])
def test_a_crash_between_the_snapshot_and_the_journal_replace_gives_the_saved_state(
    store: PickleStore, since: bool
) -> None:
    store.save("c", {"a": 1, "b": 1})
    appended = store.append("c", [(SET, "a", "journal"), (SET, "b", "journal")])
    old_journal = store.journal_path("c").read_bytes()
    if since:
        # The caller re-set "a" after the journal record, without appending it.
        contents = {"a": "mine", "b": "journal"}
        store.save("c", contents, since=appended.position, pending=[(SET, "a", "mine")])
        intended = {"a": "mine", "b": "journal"}
    else:
        # The caller cleared the cache: the journal's keys must not come back.
        store.save("c", {})
        intended = {}
    assert store.load("c") == intended
    # Only the first rename happened: the new snapshot lies beside the old journal.
    store.journal_path("c").write_bytes(old_journal)

    assert store.load("c") == intended
    assert PickleStore(store.directory).load("c") == intended
    report = store.verify("c")
    assert report.stale_journal
    # The next append starts the journal the snapshot names; nothing is replayed twice.
    store.append("c", [(SET, "later", 1)])
    assert store.load("c") == {**intended, "later": 1}
    assert store.verify("c").ok


# -- damage ---------------------------------------------------------------------------------


def test_a_torn_last_record_is_cut_off_at_every_byte(
    store: PickleStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save("c", {"base": 0})
    for i in range(3):
        store.append("c", [(SET, f"k{i}", i)])
    store.append("c", [(SET, "last", "x" * 30)])
    whole = store.journal_path("c").read_bytes()
    start, end = record_offsets(store, "c")[-2:]
    complete = {"base": 0, "k0": 0, "k1": 1, "k2": 2}
    caplog.set_level(logging.WARNING, logger="cacheman")
    for cut in range(start + 1, end):
        store.journal_path("c").write_bytes(whole[:cut])
        caplog.clear()
        assert PickleStore(store.directory).load("c") == complete, cut
        [record] = caplog.records
        assert "cache 'c'" in record.getMessage()
        assert "cut off" in record.getMessage()
        assert store.journal_path("c").read_bytes() == whole[:start]
    assert corrupt_files(store) == []
    # Appends continue after the complete records.
    store.append("c", [(SET, "after", 1)])
    assert store.load("c") == {**complete, "after": 1}
    # Cut exactly between records: nothing is wrong, nothing is said.
    caplog.clear()
    store.journal_path("c").write_bytes(whole[:start])
    assert store.load("c") == complete
    assert caplog.records == []


def test_a_torn_tail_is_cut_off_before_the_next_append(store: PickleStore) -> None:
    store.append("c", [(SET, "a", 1)])
    store.append("c", [(SET, "b", 2)])
    whole = store.journal_path("c").read_bytes()
    store.journal_path("c").write_bytes(whole[:-3])  # killed mid-append
    # Another process appends without loading first: its record must not land after the debris.
    PickleStore(store.directory).append("c", [(SET, "c", 3)])
    assert store.load("c") == {"a": 1, "c": 3}
    assert corrupt_files(store) == []


def test_a_zero_filled_tail_is_torn_not_corrupt(store: PickleStore) -> None:
    store.append("c", [(SET, "a", 1)])
    with open(store.journal_path("c"), "ab") as handle:
        handle.write(bytes(100))  # what a power cut can leave of an unsynced append
    assert store.load("c") == {"a": 1}
    assert corrupt_files(store) == []


def test_a_flipped_byte_in_a_middle_record_keeps_the_file_and_the_prefix(
    store: PickleStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save("c", {"base": 0})
    for i in range(5):
        store.append("c", [(SET, f"k{i}", i)])
    offsets = record_offsets(store, "c")
    whole = bytearray(store.journal_path("c").read_bytes())
    whole[offsets[2] + RECORD_HEAD + 3] ^= 0x10  # inside the third record's payload
    store.journal_path("c").write_bytes(bytes(whole))
    caplog.set_level(logging.WARNING, logger="cacheman")

    assert store.load("c") == {"base": 0, "k0": 0, "k1": 1}

    [kept] = corrupt_files(store)
    assert kept.name.startswith("c.journal.corrupt-")
    assert kept.read_bytes() == bytes(whole)  # every byte kept
    [record] = caplog.records
    assert "cache 'c'" in record.getMessage()
    assert str(kept) in record.getMessage()
    # The journal now holds the good prefix; appends continue and loads are quiet.
    caplog.clear()
    store.append("c", [(SET, "after", 1)])
    assert store.load("c") == {"base": 0, "k0": 0, "k1": 1, "after": 1}
    assert caplog.records == []
    assert store.verify("c").ok


def test_a_damaged_length_in_the_middle_is_not_mistaken_for_a_torn_tail(
    store: PickleStore,
) -> None:
    for i in range(3):
        store.append("c", [(SET, f"k{i}", i)])
    offsets = record_offsets(store, "c")
    whole = bytearray(store.journal_path("c").read_bytes())
    whole[offsets[1] + 3] ^= 0x40  # the length now points far past the end of the file
    store.journal_path("c").write_bytes(bytes(whole))
    assert store.load("c") == {"k0": 0}
    [kept] = corrupt_files(store)
    assert kept.read_bytes() == bytes(whole)


def test_a_record_that_does_not_unpickle_is_damage(store: PickleStore) -> None:
    store.append("c", [(SET, "a", 1)])
    store.append("c", [(SET, "b", 2)])
    # A well-framed record whose pickle is garbage.
    path = store.journal_path("c")
    payload = b"\x80\x05garbage."
    with open(path, "ab") as handle:
        handle.write(record_head(payload) + payload)
    store.append("c", [(SET, "d", 4)])
    assert store.load("c") == {"a": 1, "b": 2}
    assert len(corrupt_files(store)) == 1


def test_a_damaged_snapshot_takes_its_journal_aside_with_it(
    store: PickleStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save("c", {"a": 1})
    store.append("c", [(SET, "b", 2)])
    store.path_for("c").write_bytes(b"garbage")
    caplog.set_level(logging.WARNING, logger="cacheman")
    assert store.load("c") is None  # never the journal alone, as if it were the whole cache
    assert sorted(p.name.split(".corrupt-")[0] for p in corrupt_files(store)) == [
        "c.journal",
        "c.pkl",
    ]
    assert store.load("c") is None


def test_verify_reports_without_changing_and_fixes_when_asked(store: PickleStore) -> None:
    store.save("c", {"a": 1})
    store.append("c", [(SET, "b", 2)])
    store.append("c", [(SET, "c", 3)])
    whole = store.journal_path("c").read_bytes()
    assert store.verify("c").ok
    store.journal_path("c").write_bytes(whole[:-5])

    report = store.verify("c")
    assert not report.ok
    assert (report.journal_records, report.snapshot_ok, report.snapshot_format) == (1, True, 2)
    assert report.torn_tail_bytes == len(whole) - 5 - record_offsets(store, "c")[-2]
    assert store.journal_path("c").read_bytes() == whole[:-5]  # nothing changed

    fixed = store.verify("c", fix=True)
    assert fixed.fixed == ["cut off the torn tail"]
    assert store.verify("c").ok
    assert store.load("c") == {"a": 1, "b": 2}


# -- security -------------------------------------------------------------------------------


def test_an_insecure_journal_is_refused(store: PickleStore) -> None:
    store.append("c", [(SET, "a", 1)])
    store.journal_path("c").chmod(0o666)
    with pytest.raises(InsecureCacheError, match="journal file"):
        store.load("c")
    with pytest.raises(InsecureCacheError):
        store.append("c", [(SET, "b", 2)])


def test_a_signed_journal_round_trips_and_records_carry_a_signature(tmp_path: Path) -> None:
    signed = PickleStore(tmp_path / "m", signing_key=b"secret")
    signed.append("c", [(SET, "a", 1)])
    signed.append("c", [(SET, "b", 2)])
    assert signed.load("c") == {"a": 1, "b": 2}
    assert struct.unpack_from("<H", signed.journal_path("c").read_bytes(), 10)[0] == 1
    # Without the key the checksums still guard it.
    assert PickleStore(tmp_path / "m").load("c") == {"a": 1, "b": 2}
    assert signed.verify("c").signed


def test_a_tampered_record_is_refused_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    store = PickleStore(tmp_path / "m", signing_key=b"secret")
    store.append("c", [(SET, "a", 1)])
    store.append("c", [(SET, "b", 2)])
    start = record_offsets(store, "c")[1]
    data = store.journal_path("c").read_bytes()
    signature = data[start + RECORD_HEAD : start + RECORD_HEAD + MAC]
    # The attacker swaps the last payload, keeps the signature and fixes up the checksums.
    payload = planted_pickle(marker)
    forged = record_head(payload) + signature + payload
    store.journal_path("c").write_bytes(data[:start] + forged)

    with pytest.raises(SignatureMismatchError, match="does not match") as caught:
        store.load("c")
    assert "cache 'c'" in str(caught.value)
    assert not marker.exists()
    assert store.journal_path("c").read_bytes() == data[:start] + forged  # refused, not moved
    assert "does not match" in " ".join(store.verify("c").problems)
    assert store.verify("c").refused


def test_verify_refuses_what_a_load_refuses_and_only_that(tmp_path: Path) -> None:
    store = PickleStore(tmp_path / "m", signing_key=b"secret")
    store.save("c", {"a": 1})
    store.append("c", [(SET, "b", 2)])
    assert not PickleStore(tmp_path / "m", signing_key=b"other").verify("c").ok
    assert PickleStore(tmp_path / "m", signing_key=b"other").verify("c").refused
    unsigned = PickleStore(tmp_path / "u")
    unsigned.save("c", {"a": 1})
    assert PickleStore(tmp_path / "u", signing_key=b"secret").verify("c").refused
    store.directory.chmod(0o777)
    try:
        report = store.verify("c")
        with pytest.raises(InsecureCacheError):
            store.load("c")
    finally:
        store.directory.chmod(0o700)
    assert report.refused
    assert "lets other users write it" in report.problems[0]
    store.journal_path("c").write_bytes(store.journal_path("c").read_bytes()[:-3])
    torn = store.verify("c")
    assert (torn.ok, torn.refused) == (False, False), "damage is not a refusal"


def test_verify_finds_an_empty_snapshot_as_a_load_does(store: PickleStore) -> None:
    store.save("c", {"a": 1})
    store.path_for("c").write_bytes(b"")
    report = store.verify("c")
    assert report.problems == [f"the snapshot {store.path_for('c')} is damaged: it is empty"]
    assert store.verify("c", fix=True).fixed == ["kept the damaged snapshot aside"]
    assert [p.name.split(".corrupt-")[0] for p in corrupt_files(store)] == ["c.pkl"]
    assert store.verify("c").ok


def test_a_signed_record_cannot_be_moved_into_another_journal(tmp_path: Path) -> None:
    store = PickleStore(tmp_path / "m", signing_key=b"secret")
    store.append("one", [(SET, "from one", 1)])
    store.append("two", [(SET, "from two", 2)])
    one, two = store.journal_path("one").read_bytes(), store.journal_path("two").read_bytes()
    store.journal_path("two").write_bytes(two + one[HEADER_SIZE:])
    # Also replayed twice within its own journal: the offset is signed too.
    store.journal_path("one").write_bytes(one + one[HEADER_SIZE:])
    for name in ("one", "two"):
        with pytest.raises(SignatureMismatchError):
            store.load(name)


def test_an_unsigned_journal_is_refused_with_a_key(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    plain = PickleStore(tmp_path / "m")
    plain.append("c", [(SET, "a", 1)])
    with open(plain.journal_path("c"), "ab") as handle:
        payload = planted_pickle(marker)
        handle.write(record_head(payload) + payload)
    keyed = PickleStore(tmp_path / "m", signing_key=b"secret")
    with pytest.raises(SignatureMismatchError, match="not signed"):
        keyed.load("c")
    with pytest.raises(SignatureMismatchError):
        keyed.append("c", [(SET, "b", 2)])
    assert not marker.exists()


# -- real processes -------------------------------------------------------------------------

APPEND_FOREVER = """
import sys
from pathlib import Path
from cacheman._stores.pickle import PickleStore
from cacheman._stores.journal import SET
store = PickleStore(Path(sys.argv[1]))
i = int(sys.argv[2])
while True:
    store.append("c", [(SET, i, "x" * (i % 5000)), (SET, "last", i)])
    if i % 50 == 0:
        print(i, flush=True)
    i += 1
"""


def _assert_prefix(loaded: dict[Any, Any] | None) -> int:
    """``loaded`` holds keys 0..n-1 and last == n-1, every record whole; return n."""
    assert loaded is not None
    last = loaded.pop("last")
    assert sorted(loaded) == list(range(last + 1))
    for key, value in loaded.items():
        assert value == "x" * (key % 5000)
    return int(last) + 1


@pytest.mark.slow
def test_a_writer_killed_mid_append_leaves_a_prefix_of_complete_records(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "m"
    store = PickleStore(directory)
    count = 0
    for trial in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", APPEND_FOREVER, str(directory), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        child.stdout.readline()
        time.sleep((trial % 6) * 0.013)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        count = _assert_prefix(store.load("c"))
    assert corrupt_files(store) == []
    assert store.verify("c").ok


WRITER = """
import sys, time
from pathlib import Path
from cacheman._stores.pickle import PickleStore
from cacheman._stores.journal import SET
directory, writer, count, start_at = sys.argv[1:]
store = PickleStore(Path(directory))
while time.time() < float(start_at):
    time.sleep(0.001)
for i in range(int(count)):
    store.append("shared", [(SET, f"{writer}-{i}", i)])
"""


@pytest.mark.slow
def test_four_processes_appending_keep_every_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cacheman")
    directory, count = tmp_path / "m", 2_500
    start_at = time.time() + 1.0
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(w), str(count), str(start_at)]
        )
        for w in range(4)
    ]
    store = PickleStore(directory)
    seen = 0
    while any(w.poll() is None for w in writers):
        loaded = store.load("shared") or {}
        seen = max(seen, len(loaded))
        time.sleep(0.05)
    assert [w.wait() for w in writers] == [0, 0, 0, 0]
    loaded = store.load("shared")
    assert loaded == {f"{w}-{i}": i for w in range(4) for i in range(count)}
    assert caplog.records == []
    assert corrupt_files(store) == []
    assert seen > 0


def test_appends_from_a_fresh_interpreter_are_seen_through_changes_since(
    store: PickleStore,
) -> None:
    saved = store.save("c", {"a": 1})
    script = (
        "import sys; from pathlib import Path; from cacheman._stores.pickle import PickleStore; "
        "PickleStore(Path(sys.argv[1])).append('c', [('set', 'b', 2), ('del', 'a', None)])"
    )
    done = run_python("-c", script, str(store.directory))
    assert done.returncode == 0, done.stderr
    changes, position = store.changes_since("c", saved.position) or ([], None)
    assert changes == [(SET, "b", 2), (DEL, "a", None)]
    assert position == Position(saved.position.file_id, os.path.getsize(store.journal_path("c")))
