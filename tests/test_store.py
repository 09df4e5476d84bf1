"""The pickle store: file format, damage, security, signing, crashes and concurrent writers.

Processes here are real (``sys.executable`` children) and so are the signals;
files are damaged on disk exactly as a crash, a bad disk or an attacker would.
"""

from __future__ import annotations

import fcntl
import hmac
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python

from cacheman import (
    CacheManager,
    InsecureCacheError,
    PersistentCache,
    SignatureMismatchError,
    UnpicklableValueError,
    _registry,
    get_cache_manager,
)
from cacheman._stores.pickle import FORMAT_VERSION, HEADER_SIZE, MAGIC, PickleStore

FIXTURES = Path(__file__).parent / "fixtures"
#: What tests/fixtures/cacheman2_bare.pkl holds: a plain ``pickle.dump`` (protocol 2)
#: of this dict, as CacheMan 2.x's default saver wrote it.
CACHEMAN2_CONTENTS = {
    "alpha": 1,
    "beta": [1, 2, 3],
    "gamma": {"nested": True},
    7: "seven",
    (1, "tuple key"): 2.5,
}
CONTENTS = {f"key-{i}": (i, f"value {i}") for i in range(500)}


@pytest.fixture
def reopen(manager: CacheManager) -> Iterator[Callable[..., CacheManager]]:
    """Build a second manager on the same directory, as the next run of a program would."""
    opened: list[CacheManager] = []

    def make(**kwargs: Any) -> CacheManager:
        again = CacheManager(manager.name, manager.cache_directory.parent, **kwargs)
        opened.append(again)
        return again

    yield make
    for again in opened:
        again.deregister_all_caches()
        _registry.discard(again)


def saved_file(manager: CacheManager, name: str = "data", contents: Any = None) -> Path:
    cache = PersistentCache(name, cache_manager=manager, contents=contents or CONTENTS)
    cache.save()
    manager.deregister_cache(name)
    return manager.store.path_for(name)


def header_fields(data: bytes) -> tuple[bytes, int, int, int]:
    magic, version, flags, length = struct.unpack_from("<8sHHQ", data)
    return magic, version, flags, length


def forge(payload: bytes, *, flags: int = 0, signature: bytes = bytes(32)) -> bytes:
    """A file in CacheMan's format with a correct checksum, as an attacker could write one."""
    fields = struct.pack("<8sHHQ16s", MAGIC, FORMAT_VERSION, flags, len(payload), bytes(16))
    crc = zlib.crc32(fields, zlib.crc32(payload))
    return fields + struct.pack("<I32s", crc, signature) + payload


def leftovers(directory: Path) -> list[str]:
    """Temporary and quarantined files in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or "corrupt" in p.name)


def run_script(script: str, *args: object, timeout: float = 60) -> str:
    """Run ``script`` with ``args`` in a fresh interpreter; return what it printed."""
    done = run_python("-c", script, *map(str, args), timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


class _Planted:
    """Unpickling this creates ``marker``: proof that foreign code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def planted_pickle(marker: Path) -> bytes:
    return pickle.dumps({"innocent": _Planted(marker)}, protocol=2)


def test_a_planted_pickle_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    # The control for every "marker never appears" test below.
    marker = tmp_path / "marker"
    pickle.loads(planted_pickle(marker))
    assert marker.exists()


# -- the file format ------------------------------------------------------------------


def test_saved_file_has_the_header_then_a_protocol_5_pickle(manager: CacheManager) -> None:
    data = saved_file(manager).read_bytes()
    magic, version, flags, length = header_fields(data)
    assert (magic, version, flags) == (MAGIC, FORMAT_VERSION, 0)
    assert length == len(data) - HEADER_SIZE
    payload = data[HEADER_SIZE:]
    assert payload[:2] == b"\x80\x05"
    assert pickle.loads(payload) == CONTENTS
    assert type(pickle.loads(payload)) is dict


def test_save_and_load_round_trip_through_a_new_manager(
    manager: CacheManager, reopen: Callable[..., CacheManager]
) -> None:
    cache = manager.register_cache("data", CONTENTS)
    cache.save()
    assert reopen().register_cache("data") == CONTENTS


def test_a_mapping_that_is_not_a_dict_is_saved_as_a_plain_dict(manager: CacheManager) -> None:
    from types import MappingProxyType

    manager.store.save("proxy", MappingProxyType({"a": 1}))
    loaded = manager.store.load("proxy")
    assert loaded == {"a": 1}
    assert type(loaded) is dict


def test_a_cacheman2_bare_pickle_still_loads(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cacheman")
    path = manager.store.path_for("legacy")
    manager.cache_directory.mkdir(mode=0o700, parents=True)
    shutil.copyfile(FIXTURES / "cacheman2_bare.pkl", path)
    path.chmod(0o644)  # what 2.x left under a usual umask: readable, not writable, by others
    original = path.read_bytes()

    cache = manager.register_cache("legacy")

    assert cache == CACHEMAN2_CONTENTS
    assert caplog.records == []
    assert path.read_bytes() == original  # loading never rewrites the user's file
    assert leftovers(manager.cache_directory) == []
    cache.save()  # nothing changed: nothing is written
    assert path.read_bytes() == original
    cache["beta"].append(4)  # an in-place change: detected, so written
    cache.save()  # the first write rewrites the file in this version's format
    assert path.read_bytes().startswith(MAGIC)
    assert manager.store.load("legacy") == {**CACHEMAN2_CONTENTS, "beta": [1, 2, 3, 4]}


# -- damage ---------------------------------------------------------------------------


def _flip_one_byte(good: bytes) -> bytes:
    middle = HEADER_SIZE + (len(good) - HEADER_SIZE) // 2
    return good[:middle] + bytes([good[middle] ^ 0x01]) + good[middle + 1 :]


def _newer_version(good: bytes) -> bytes:
    return good[:8] + struct.pack("<H", FORMAT_VERSION + 1) + good[10:]


DAMAGES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "garbage bytes": (lambda good: b"\xde\xad\xbe\xef not a pickle at all " * 20, "unpickle"),
    "truncated": (lambda good: good[: len(good) // 2], "truncated"),
    "truncated in the header": (lambda good: good[:30], "truncated inside its header"),
    "one flipped byte": (_flip_one_byte, "checksum does not match"),
    "empty file": (lambda good: b"", "empty"),
    "newer format version": (_newer_version, f"format version {FORMAT_VERSION + 1}"),
    "a pickle of a list": (lambda good: pickle.dumps([1, 2]), "holds a list, not a mapping"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_file_is_kept_aside_and_the_cache_rebuilt(
    manager: CacheManager,
    reopen: Callable[..., CacheManager],
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    damaged_bytes = DAMAGES[damage][0](saved_file(manager).read_bytes())
    reason = DAMAGES[damage][1]
    path = manager.store.path_for("data")
    path.write_bytes(damaged_bytes)
    caplog.set_level(logging.WARNING, logger="cacheman")

    # The user only registers the cache: no exception, the builder's contents.
    cache = reopen().register_custom_cache("data", builder=lambda name: {"rebuilt": name})

    assert cache == {"rebuilt": "data"}
    [kept] = [p for p in manager.cache_directory.iterdir() if ".corrupt-" in p.name]
    assert kept.name.startswith("data.pkl.corrupt-")
    assert kept.read_bytes() == damaged_bytes  # nothing deleted: every byte kept
    assert not path.exists()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.name == "cacheman"
    message = record.getMessage()
    assert "cache 'data'" in message
    assert str(kept) in message
    assert reason in message
    assert "rebuilt" in message


def test_a_damaged_file_without_a_builder_gives_an_empty_cache(
    manager: CacheManager, reopen: Callable[..., CacheManager], caplog: pytest.LogCaptureFixture
) -> None:
    saved_file(manager).write_bytes(b"")
    caplog.set_level(logging.WARNING, logger="cacheman")
    assert reopen().register_cache("data") == {}
    assert len(caplog.records) == 1


def test_two_damaged_files_in_a_row_are_both_kept(manager: CacheManager) -> None:
    path = manager.store.path_for("data")
    for garbage in (b"first", b"second"):
        saved_file(manager)
        path.write_bytes(garbage)
        assert manager.store.load("data") is None
    kept = sorted(p.read_bytes() for p in manager.cache_directory.glob("data.pkl.corrupt-*"))
    assert kept == [b"first", b"second"]


def test_usage_counts_the_bytes_of_every_file_of_a_cache(manager: CacheManager) -> None:
    assert manager.store.usage("data") == (0, None)
    saved_file(manager)
    saved_file(manager, "data.v2")  # a name that extends this one's: not counted
    manager.store.update_meta("data", generation="x:1")
    stats = [
        path.stat()
        for path in manager.cache_directory.iterdir()
        if path.name.startswith("data.") and not path.name.startswith("data.v2")
    ]
    assert len(stats) >= 2, "the snapshot and the metadata at least"
    usage = manager.store.usage("data")
    assert usage.size == sum(info.st_size for info in stats)
    assert usage.modified == max(info.st_mtime for info in stats)


# -- what cannot be pickled, and what only cloudpickle can ---------------------------------


def test_an_unpicklable_value_raises_and_leaves_the_saved_copy_alone(
    manager: CacheManager,
) -> None:
    cache = PersistentCache("data", cache_manager=manager, contents={"fine": 1})
    cache.save()
    path = manager.store.path_for("data")
    before = path.read_bytes()
    cache[("a", "tuple", "key")] = threading.Lock()

    with pytest.raises(UnpicklableValueError) as caught:
        cache.save()

    assert isinstance(caught.value, TypeError)
    message = str(caught.value)
    assert "cache 'data'" in message
    assert "key is a tuple" in message
    assert "lock" in message
    assert path.read_bytes() == before
    assert leftovers(manager.cache_directory) == []


SAVE_FUNCTIONS = """
import sys
from cacheman import CacheManager

def make_adder(n):
    return lambda x: x + n

def make_local_object():
    class Local:
        def __init__(self):
            self.value = 42
        def describe(self):
            return f"local {self.value}"
    return Local()

manager = CacheManager("functions", sys.argv[1])
cache = manager.register_custom_cache("functions", autosync=False)
cache["double"] = lambda x: 2 * x
cache["adder"] = make_adder(10)
cache["local"] = make_local_object()
cache.save()
"""

LOAD_FUNCTIONS = """
import json, sys
from cacheman import CacheManager

cache = CacheManager("functions", sys.argv[1]).register_custom_cache("functions", autosync=False)
print(json.dumps([cache["double"](21), cache["adder"](5), cache["local"].describe()]))
"""


def test_lambdas_closures_and_local_classes_survive_a_fresh_interpreter(tmp_path: Path) -> None:
    run_script(SAVE_FUNCTIONS, tmp_path)
    data = (tmp_path / "functions" / "functions.pkl").read_bytes()
    assert header_fields(data)[2] == 2  # the cloudpickle flag: the fallback was needed
    assert run_script(LOAD_FUNCTIONS, tmp_path).strip() == '[42, 15, "local 42"]'


def test_the_cloudpickle_fallback_is_for_that_save_only(manager: CacheManager) -> None:
    cache = PersistentCache("data", cache_manager=manager, contents={"f": lambda: 1})
    cache.save()
    path = manager.store.path_for("data")
    assert header_fields(path.read_bytes())[2] == 2
    del cache["f"]
    cache.mark_dirty()  # a whole rewrite of the snapshot, not a journal append
    cache.save()
    assert header_fields(path.read_bytes())[2] == 0


# -- permissions and refusals ------------------------------------------------------------


def test_directories_are_created_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        manager = CacheManager("perms", tmp_path / "deep" / "base")
        try:
            PersistentCache("data", cache_manager=manager, contents={"a": 1}).save()
        finally:
            manager.deregister_all_caches()
            _registry.discard(manager)
    finally:
        os.umask(previous)
    assert manager.cache_directory.stat().st_mode & 0o777 == 0o700
    for path in manager.cache_directory.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_loading_from_a_directory_others_can_write_is_refused(
    manager: CacheManager, reopen: Callable[..., CacheManager], mode: int
) -> None:
    saved_file(manager)
    manager.cache_directory.chmod(mode)
    with pytest.raises(InsecureCacheError, match="lets other users write it"):
        reopen().register_cache("data")


def test_saving_into_a_directory_others_can_write_is_refused(manager: CacheManager) -> None:
    manager.cache_directory.mkdir(parents=True)
    manager.cache_directory.chmod(0o777)
    cache = PersistentCache("data", cache_manager=manager, contents={"a": 1})
    with pytest.raises(InsecureCacheError):
        cache.save()
    assert list(manager.cache_directory.iterdir()) == []


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_loading_a_file_others_can_write_is_refused(
    manager: CacheManager, reopen: Callable[..., CacheManager], mode: int
) -> None:
    saved_file(manager).chmod(mode)
    with pytest.raises(InsecureCacheError, match="cache file"):
        reopen().register_cache("data")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_owned_by_another_user_is_refused_and_never_unpickled(
    manager: CacheManager, reopen: Callable[..., CacheManager], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    path = saved_file(manager)
    path.write_bytes(forge(planted_pickle(marker)))
    os.chown(path, 12345, 12345)
    with pytest.raises(InsecureCacheError, match="owned by uid 12345"):
        reopen().register_cache("data")
    assert not marker.exists()
    assert path.exists()  # refused, not quarantined: the user must look at it


@pytest.mark.parametrize("with_header", [False, True], ids=["bare pickle", "with header"])
def test_a_pickle_planted_in_a_world_writable_directory_never_runs(
    tmp_path: Path, with_header: bool
) -> None:
    marker = tmp_path / "marker"
    directory = tmp_path / "base" / "victim"
    directory.mkdir(parents=True)
    directory.chmod(0o777)  # anyone could have put a file here ...
    payload = planted_pickle(marker)
    (directory / "data.pkl").write_bytes(forge(payload) if with_header else payload)
    (directory / "data.pkl").chmod(0o600)  # ... even one that looks private

    manager = CacheManager("victim", tmp_path / "base")
    try:
        with pytest.raises(InsecureCacheError, match="chmod go-w"):
            manager.register_cache("data")
        with pytest.raises(InsecureCacheError):
            manager.store.load("data")
    finally:
        manager.deregister_all_caches()
        _registry.discard(manager)
    assert not marker.exists()


# -- signing ----------------------------------------------------------------------------------


def test_a_signed_file_loads_with_the_same_key(
    manager: CacheManager, reopen: Callable[..., CacheManager]
) -> None:
    signed = reopen(signing_key=b"secret")
    path = saved_file(signed)
    assert header_fields(path.read_bytes())[2] == 1  # the signed flag
    assert reopen(signing_key="secret").register_cache("data") == CONTENTS
    # Without a key the checksum still guards it; the signature is simply not checked.
    assert reopen().register_cache("data") == CONTENTS


def test_a_tampered_signed_file_is_refused_before_unpickling(
    manager: CacheManager, reopen: Callable[..., CacheManager], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    path = saved_file(reopen(signing_key=b"secret"))
    signature = path.read_bytes()[HEADER_SIZE - 32 : HEADER_SIZE]
    # The attacker swaps the payload, keeps the signature and fixes up the checksum.
    path.write_bytes(forge(planted_pickle(marker), flags=1, signature=signature))
    with pytest.raises(SignatureMismatchError, match="does not match") as caught:
        reopen(signing_key=b"secret").register_cache("data")
    assert isinstance(caught.value, ValueError)
    assert "cache 'data'" in str(caught.value)
    assert not marker.exists()
    assert path.exists()


@pytest.mark.parametrize("how", ["unsigned file", "bare pickle", "wrong key"])
def test_a_file_not_signed_with_our_key_is_refused(
    manager: CacheManager, reopen: Callable[..., CacheManager], tmp_path: Path, how: str
) -> None:
    marker = tmp_path / "marker"
    path = manager.store.path_for("data")
    if how == "wrong key":
        saved_file(reopen(signing_key=b"another key"))
    else:
        saved_file(manager)
        planted = planted_pickle(marker)
        path.write_bytes(forge(planted) if how == "unsigned file" else planted)
    with pytest.raises(SignatureMismatchError):
        reopen(signing_key=b"secret").register_cache("data")
    assert not marker.exists()


def test_damage_to_a_signed_file_is_quarantined_not_refused(
    manager: CacheManager, reopen: Callable[..., CacheManager]
) -> None:
    path = saved_file(reopen(signing_key=b"secret"))
    path.write_bytes(_flip_one_byte(path.read_bytes()))
    assert reopen(signing_key=b"secret").register_cache("data") == {}
    assert len(list(manager.cache_directory.glob("data.pkl.corrupt-*"))) == 1


def test_the_signing_key_can_come_from_the_environment(
    manager: CacheManager, reopen: Callable[..., CacheManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEMAN_SIGNING_KEY", "from the environment")
    path = saved_file(reopen())
    assert header_fields(path.read_bytes())[2] == 1
    monkeypatch.delenv("CACHEMAN_SIGNING_KEY")
    with pytest.raises(SignatureMismatchError):
        reopen(signing_key="another key").register_cache("data")
    assert reopen(signing_key="from the environment").register_cache("data") == CONTENTS


def test_get_cache_manager_takes_a_signing_key(tmp_path: Path) -> None:
    manager = get_cache_manager("signed_by_get", tmp_path, signing_key="secret")
    try:
        path = saved_file(manager)
        assert header_fields(path.read_bytes())[2] == 1
    finally:
        manager.deregister_all_caches()
        _registry.discard(manager)


def test_an_empty_signing_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        CacheManager("empty_key", tmp_path, signing_key=b"")


# -- writes: temporary files, the lock --------------------------------------------------------


def test_temporary_files_of_killed_writers_are_swept_by_the_next_save(
    manager: CacheManager,
) -> None:
    path = saved_file(manager)
    stale = path.with_name(".data.pkl.tmp-abcd1234")
    stale.write_bytes(b"half a pickle")
    # Another cache whose name extends this one keeps its own temporary file.
    other = path.with_name(".data.pkl.tmp-x.pkl.tmp-abcd1234")
    other.write_bytes(b"not ours")
    saved_file(manager)
    assert not stale.exists()
    assert other.exists()


HOLD_AND_SAVE = """
import sys
from cacheman import CacheManager
manager = CacheManager("locked", sys.argv[1])
manager.register_custom_cache("data", {"from": "child"}, autosync=False).save()
"""


def test_a_writer_waits_for_the_lock_held_by_another_process(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir(mode=0o700)
    lock_path = directory / ".data.pkl.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", HOLD_AND_SAVE, str(tmp_path)])
        try:
            time.sleep(1.0)
            assert child.poll() is None, "the child saved while another process held the lock"
            assert not (directory / "data.pkl").exists()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        assert child.wait(timeout=30) == 0
    store = CacheManager("locked", tmp_path).store
    assert store.load("data") == {"from": "child"}
    assert lock_path.stat().st_size == 0  # a lock, not a PID file


def test_delete_removes_the_saved_copy(manager: CacheManager) -> None:
    path = saved_file(manager)
    manager.store.delete("data")
    assert not path.exists()
    manager.store.delete("data")  # deleting nothing is fine
    manager.store.delete("never-saved-in-a-missing-directory")


# -- crashes and concurrent writers --------------------------------------------------------------

SAVE_GENERATIONS = """
import sys
from cacheman import CacheManager
base, count = sys.argv[1], int(sys.argv[2])
cache = CacheManager("kill", base).register_custom_cache("big", autosync=False)
generation = 0
while True:
    cache.contents = {i: (generation, i) for i in range(count)}
    cache.save()
    print(generation, flush=True)
    generation += 1
"""

KILL_TRIALS = 24
KILL_ENTRIES = 100_000


def _one_generation(loaded: dict[Any, Any] | None, count: int) -> int:
    """The generation ``loaded`` holds, asserting it holds all of it and nothing else."""
    assert loaded is not None
    generations = {generation for generation, _ in loaded.values()}
    assert len(generations) == 1, f"a mix of generations: {sorted(generations)[:5]}"
    [generation] = generations
    assert loaded == {i: (generation, i) for i in range(count)}
    return generation


@pytest.mark.slow
def test_a_writer_killed_at_any_moment_leaves_one_complete_generation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cacheman")
    directory = tmp_path / "kill"
    store = CacheManager("kill", tmp_path).store
    killed_mid_write = 0
    # At least KILL_TRIALS kills; on a busy machine the timing may miss every write,
    # so go on (up to three times as many) until one lands inside a write.
    for trial in range(3 * KILL_TRIALS):
        if trial >= KILL_TRIALS and killed_mid_write:
            break
        child = subprocess.Popen(
            [sys.executable, "-c", SAVE_GENERATIONS, str(tmp_path), str(KILL_ENTRIES)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "0"  # one generation is on disk
        # Spread the kills over a whole save cycle (a few tens of milliseconds).
        time.sleep((trial * 7 % KILL_TRIALS) * 0.004)
        child.send_signal(signal.SIGKILL)
        printed = [int(line) for line in [0, *child.stdout.read().split()]]
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
        killed_mid_write += any(".tmp-" in p.name for p in directory.iterdir())

        generation = _one_generation(store.load("big"), KILL_ENTRIES)
        # The saved generation is the last one reported, or the one whose report was cut off.
        assert generation in (max(printed), max(printed) + 1)
    assert caplog.records == []  # nothing was ever found damaged
    assert not list(directory.glob("*.corrupt-*"))
    # Some kills landed inside a write (they left a temporary file for the next save to sweep).
    assert killed_mid_write >= 1
    store.save("big", store.load("big") or {})
    assert leftovers(directory) == []


RACE_WRITER = """
import sys, time
from cacheman import CacheManager
base, writer, count, rounds, start_at = sys.argv[1:]
writer, count, rounds = int(writer), int(count), int(rounds)
cache = CacheManager("race", base).register_custom_cache(
    "shared", {f"key-{i}": (writer, i) for i in range(count)}, autosync=False
)
while time.time() < float(start_at):
    time.sleep(0.001)
for _ in range(rounds):
    cache.save()
"""


@pytest.mark.slow
def test_four_concurrent_writers_leave_one_complete_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cacheman")
    count, rounds = 50_000, 8
    start_at = time.time() + 1.0
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACE_WRITER,
                str(tmp_path),
                str(w),
                str(count),
                str(rounds),
                str(start_at),
            ]
        )
        for w in range(4)
    ]
    store = CacheManager("race", tmp_path).store
    seen_writers = set()
    # Read while they write: a reader never sees a partial file.
    while any(w.poll() is None for w in writers):
        loaded = store.load("shared")
        if loaded is not None:
            assert len(loaded) == count
            owners = {owner for owner, _ in loaded.values()}
            assert len(owners) == 1
            seen_writers |= owners
    assert [w.wait() for w in writers] == [0, 0, 0, 0]
    loaded = store.load("shared")
    assert loaded is not None
    [owner] = {owner for owner, _ in loaded.values()}
    assert loaded == {f"key-{i}": (owner, i) for i in range(count)}
    assert caplog.records == []
    assert leftovers(tmp_path / "race") == []
    assert seen_writers  # the reader did see files while the writers ran


# -- metadata, names and persisted edges -------------------------------------------------


def test_metadata_is_json_updated_field_by_field_and_deleted_with_the_cache(
    manager: CacheManager,
) -> None:
    store = manager.store
    assert store.read_meta("data") is None
    store.update_meta("data", generation="ab:1", saved_at=1.5)
    assert store.update_meta("data", parents={"root": "cd:2"}) == {
        "generation": "ab:1",
        "parents": {"root": "cd:2"},
        "saved_at": 1.5,
    }
    assert store.update_meta("data", saved_at=None) == {
        "generation": "ab:1",
        "parents": {"root": "cd:2"},
    }
    meta_file = manager.cache_directory / "data.meta.json"
    assert oct(meta_file.stat().st_mode & 0o777) == "0o600"
    store.delete("data")
    assert store.read_meta("data") is None
    assert not meta_file.exists()


def test_damaged_metadata_reads_as_none_with_a_warning(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.store.update_meta("data", generation="ab:1")
    (manager.cache_directory / "data.meta.json").write_text("{not json")
    assert manager.store.read_meta("data") is None
    assert "'data': metadata" in caplog.text
    assert "damaged" in caplog.text


def test_names_lists_caches_with_a_saved_copy_or_metadata(manager: CacheManager) -> None:
    assert manager.store.names() == []
    saved_file(manager, "b")
    manager.store.update_meta("a", generation="x:1")
    manager.store.update_meta("b", generation="y:1")
    manager.store.add_edges([("a", "b")])
    assert manager.store.names() == ["a", "b"]


def test_persisted_edges_are_a_union_kept_in_order_and_forgotten_by_name(
    manager: CacheManager,
) -> None:
    store = manager.store
    assert store.read_edges() == []
    store.add_edges([("root", "mid"), ("mid", "leaf")])
    store.add_edges([("root", "mid"), ("root", "other")])
    assert store.read_edges() == [("root", "mid"), ("mid", "leaf"), ("root", "other")]
    store.remove_edges("mid")
    assert store.read_edges() == [("root", "other")]


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '{"edges": 1}',
        '{"edges": [1, 2]}',
        '{"edges": [["a"]]}',
        '{"edges": [["a", "b", "c"]]}',
        '{"edges": [["../up", "b"]]}',
        '{"edges": [[1, 2]]}',
    ],
)
def test_an_edges_file_of_the_wrong_shape_is_ignored_with_a_warning(
    manager: CacheManager, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    edges = manager.cache_directory / "_dependencies.json"
    manager.cache_directory.mkdir(mode=0o700, parents=True)
    edges.write_text(text)
    edges.chmod(0o600)
    root = manager.register_cache("root", {"r": 1})
    manager.register_dependent_cache("root", "leaf")  # rewrites the file, keeping nothing of it
    assert manager.parents_of("leaf") == ["root"]
    assert "ignoring" in caplog.text
    assert str(edges) in caplog.text
    assert manager.store.read_edges() == [("root", "leaf")]
    root.save()


def _plant_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def _plant_socket(path: Path) -> None:
    import socket

    # Bound by a path relative to its directory: a socket's path is limited to about
    # 100 bytes, which a test's temporary directory can pass (under pytest-xdist, say).
    listener = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        listener.bind(path.name)
    finally:
        os.chdir(here)
        listener.close()  # the socket file stays


def _plant_device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # endless bytes: a read would never end


ODD_FILES = {"FIFO (named pipe)": _plant_fifo, "socket": _plant_socket, "device": _plant_device}


@pytest.mark.timeout(60)  # the bug was a hang: fail instead of waiting for ever
@pytest.mark.parametrize("kind", sorted(ODD_FILES))
@pytest.mark.parametrize(
    "file_name", ["odd.pkl", "odd.journal", "odd.meta.json", "_dependencies.json", ".odd.pkl.lock"]
)
def test_a_fifo_socket_or_device_in_place_of_a_file_is_refused_never_waited_on(
    manager: CacheManager, kind: str, file_name: str
) -> None:
    manager.cache_directory.mkdir(mode=0o700, parents=True)
    ODD_FILES[kind](manager.cache_directory / file_name)

    def register_edit_and_save() -> None:
        cache = PersistentCache("odd", cache_manager=manager)
        manager.register_dependent_cache("odd", "derived")
        cache["k"] = 1
        cache.save()

    started = time.monotonic()
    with pytest.raises(InsecureCacheError, match="not a regular file") as refused:
        register_edit_and_save()
    assert time.monotonic() - started < 10
    assert file_name in str(refused.value)
    assert "remove it" in str(refused.value)
    manager.deregister_all_caches()


@pytest.mark.timeout(60)
def test_appending_to_a_journal_that_became_a_fifo_is_a_clear_error(
    manager: CacheManager,
) -> None:
    cache = PersistentCache("odd", cache_manager=manager, contents={"a": 1})
    cache.save()
    cache["b"] = 2
    cache.save()  # an append: the journal exists
    journal = manager.store.journal_path("odd")
    journal.unlink()
    os.mkfifo(journal, 0o600)
    cache["c"] = 3
    with pytest.raises(InsecureCacheError, match=r"journal file .*odd\.journal.* FIFO"):
        cache.save()
    report = manager.store.verify("odd")
    assert report.refused
    assert "FIFO" in " ".join(report.problems)
    journal.unlink()  # so that the fixture's teardown finds a normal cache
    manager.deregister_all_caches()


# -- signatures name the manager and the cache ---------------------------------------------


def _signed_cache(manager: CacheManager, name: str, contents: dict[str, Any]) -> None:
    """Save ``contents`` as a snapshot, then change one key through the journal."""
    cache = PersistentCache(name, cache_manager=manager, contents=contents)
    cache.save()
    cache["journalled"] = True
    cache.save()
    assert manager.store.journal_path(name).stat().st_size > 40  # a record was appended
    manager.deregister_cache(name)


def _copy_files(source: PickleStore, source_name: str, target: PickleStore, name: str) -> None:
    target.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for copy_from, copy_to in (
        (source.path_for(source_name), target.path_for(name)),
        (source.journal_path(source_name), target.journal_path(name)),
    ):
        shutil.copyfile(copy_from, copy_to)
        copy_to.chmod(0o600)


def test_a_signed_cache_copied_over_another_cache_is_refused(tmp_path: Path) -> None:
    manager = CacheManager("signer", tmp_path, signing_key=b"secret")
    try:
        _signed_cache(manager, "prices", {"apple": 1})
        _signed_cache(manager, "grants", {"alice": "read"})
        _copy_files(manager.store, "prices", manager.store, "grants")  # type: ignore[arg-type]
        with pytest.raises(SignatureMismatchError, match="copied from another cache") as refused:
            manager.register_cache("grants")
        assert "cache 'grants'" in str(refused.value)
        report = manager.store.verify("grants")  # type: ignore[attr-defined]
        assert report.refused
        assert manager.register_cache("prices") == {"apple": 1, "journalled": True}
    finally:
        manager.close()


def test_a_signed_cache_copied_from_another_manager_is_refused(tmp_path: Path) -> None:
    mine = CacheManager("mine", tmp_path, signing_key=b"secret")
    theirs = CacheManager("theirs", tmp_path, signing_key=b"secret")
    try:
        _signed_cache(theirs, "grants", {"mallory": "admin"})
        _signed_cache(mine, "grants", {"alice": "read"})
        _copy_files(theirs.store, "grants", mine.store, "grants")  # type: ignore[arg-type]
        with pytest.raises(SignatureMismatchError, match="manager 'mine'"):
            mine.register_cache("grants")
    finally:
        mine.close()
        theirs.close()


def test_a_signed_journal_copied_alone_is_refused(tmp_path: Path) -> None:
    from cacheman._stores.journal import SET

    manager = CacheManager("journals", tmp_path, signing_key=b"secret")
    store: PickleStore = manager.store  # type: ignore[assignment]
    try:
        store.append("source", [(SET, "role", "admin")])  # a journal, no snapshot
        target = store.journal_path("target")
        shutil.copyfile(store.journal_path("source"), target)
        target.chmod(0o600)
        with pytest.raises(SignatureMismatchError, match="another cache"):
            manager.register_cache("target")
    finally:
        manager.close()


def test_a_file_signed_by_a_pre_release_is_refused_with_the_way_to_adopt_it(
    tmp_path: Path,
) -> None:
    manager = CacheManager("legacy", tmp_path)
    store: PickleStore = manager.store  # type: ignore[assignment]
    PersistentCache("old", cache_manager=manager, contents={"k": 1}).save()
    manager.close()
    # What a pre-release wrote: the HMAC under the bare key, no names.
    path = store.path_for("old")
    data = bytearray(path.read_bytes())
    fields, payload = bytes(data[:36]), bytes(data[HEADER_SIZE:])
    fields = fields[:10] + struct.pack("<H", 1) + fields[12:]  # the signed flag
    crc = zlib.crc32(fields, zlib.crc32(payload))
    mac = hmac.new(b"secret", payload, "sha256")
    mac.update(fields)
    path.write_bytes(fields + struct.pack("<I32s", crc, mac.digest()) + payload)
    keyed = CacheManager("legacy", tmp_path, signing_key=b"secret")
    with pytest.raises(SignatureMismatchError, match="pre-release") as refused:
        keyed.register_cache("old")
    assert "load it once without the signing key and save it with the key" in str(refused.value)
    keyed.close()
    # The documented way: load without the key, save with it.
    unkeyed = CacheManager("legacy", tmp_path)
    contents = dict(unkeyed.register_cache("old"))
    unkeyed.close()
    keyed = CacheManager("legacy", tmp_path, signing_key=b"secret")
    keyed.register_cache("old", contents).save()
    keyed.close()
    again = CacheManager("legacy", tmp_path, signing_key=b"secret")
    assert again.register_cache("old") == {"k": 1}
    again.close()
