"""Names and places: which cache names are refused, and which directories are trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cacheman import CacheManager, InsecureCacheError, InvalidCacheNameError, PersistentCache
from cacheman._paths import (
    MAX_NAME_BYTES,
    check_private,
    default_base_directory,
    manager_directory,
    validate_cache_name,
)

BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    "a/b",
    "/etc/passwd",
    "/tmp/absolute",
    "a\\b",
    "..\\x",
    "C:\\Windows\\x",
    "a\x00b",
    "line\nbreak",
    "tab\there",
    "bell\x07",
    "del\x7f",
    "x" * (MAX_NAME_BYTES + 1),
    "é" * (MAX_NAME_BYTES // 2 + 1),  # short in characters, too long in bytes
    "\ud800",  # a lone surrogate cannot become a file name
    ".hidden",  # saved, but invisible to every listing (they skip the store's dot-files)
    ".x.pkl",
]

GOOD_NAMES = ["squares", "with space", "dots.in.name", "trailing.", "ünïcode", "x" * MAX_NAME_BYTES]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_with_a_value_error(name: str) -> None:
    with pytest.raises(InvalidCacheNameError) as caught:
        validate_cache_name(name)
    assert isinstance(caught.value, ValueError)
    assert "invalid cache name" in str(caught.value)


@pytest.mark.parametrize("name", [None, 3, b"bytes", Path("a")])
def test_non_strings_are_refused(name: object) -> None:
    with pytest.raises(InvalidCacheNameError, match="must be a str"):
        validate_cache_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_round_trip_through_a_file_in_the_directory(
    manager: CacheManager, name: str
) -> None:
    cache = PersistentCache(name, cache_manager=manager, contents={"k": name})
    cache.save()
    path = manager.store.path_for(name)
    assert path.parent == manager.cache_directory
    assert path.name == name + ".pkl"
    assert path.is_file()
    assert manager.store.load(name) == {"k": name}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_never_touch_the_disk(tmp_path: Path, name: str) -> None:
    base = tmp_path / "base"
    manager = CacheManager("paths", base)
    try:
        with pytest.raises(ValueError, match="invalid cache name"):
            manager.register_cache(name)
        with pytest.raises(ValueError, match="invalid cache name"):
            manager.store.save(name, {"planted": True})
    finally:
        manager.deregister_all_caches()
    # Nothing was written anywhere: not in the manager's directory, not beside it.
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_a_leading_dot_is_refused_with_the_reason(manager: CacheManager) -> None:
    with pytest.raises(InvalidCacheNameError, match=r"'\.secret'.*may not start with '\.'"):
        manager.register_cache(".secret")
    assert manager.saved_cache_names() == []


@pytest.mark.parametrize("name", ["../up", "a/b", "/abs", "", ".hidden"])
def test_bad_manager_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidCacheNameError, match="invalid manager name"):
        CacheManager(name, tmp_path)


def test_manager_directory_is_base_plus_manager_name(tmp_path: Path) -> None:
    assert manager_directory("proj", tmp_path) == tmp_path / "proj"


def test_cacheman_dir_environment_variable_sets_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEMAN_DIR", str(tmp_path / "from-env"))
    assert default_base_directory() == tmp_path / "from-env"
    assert manager_directory("proj", None) == tmp_path / "from-env" / "proj"


def test_a_private_directory_passes_the_check(tmp_path: Path) -> None:
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    check_private(directory, os.stat(directory), "cache directory")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o702])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(InsecureCacheError, match="lets other users write it") as caught:
        check_private(directory, os.stat(directory), "cache directory")
    assert isinstance(caught.value, PermissionError)
    assert "chmod go-w" in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, 12345, 12345)
    with pytest.raises(InsecureCacheError, match="owned by uid 12345"):
        check_private(directory, os.stat(directory), "cache directory")
