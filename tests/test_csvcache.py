"""CSV caches: one key,value row per item, readable by people and other tools."""

from __future__ import annotations

import csv
import re
from typing import Any

import pytest

from cacheman import AutoSyncCSVCache, CacheManager, CSVCache


def test_round_trip_as_strings(manager: CacheManager) -> None:
    cache = CSVCache("cities", cache_manager=manager)
    cache.update({"Paris": "France", "Lima": "Peru, the capital"})
    cache.save()
    with open(cache.csv_path, newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [["Paris", "France"], ["Lima", "Peru, the capital"]]
    again = CSVCache("cities", cache_manager=manager)
    assert again == {"Paris": "France", "Lima": "Peru, the capital"}
    assert cache.csv_path == manager.cache_directory / "cities.csv"


def test_row_hooks_convert_types(manager: CacheManager) -> None:
    def row_reader(row: list[str]) -> tuple[int, float]:
        return int(row[0]), float(row[1])

    def row_builder(key: int, value: float) -> list[Any]:
        return [key, repr(value)]

    cache = CSVCache("typed", cache_manager=manager, row_reader=row_reader, row_builder=row_builder)
    cache.update({1: 0.5, 2: 1.25})
    cache.save()
    cache.clear()
    cache.load()
    assert cache == {1: 0.5, 2: 1.25}


def test_bad_row_names_cache_and_file_and_keeps_it_aside(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.cache_directory.mkdir(parents=True)
    (manager.cache_directory / "broken.csv").write_text("a,b,c\n", encoding="utf-8")
    cache = CSVCache("broken", cache_manager=manager)
    assert cache == {}
    assert re.search(
        r"cache 'broken'.*broken\.csv.*2 fields.*kept as .*broken\.csv\.corrupt-", caplog.text
    )
    (kept,) = manager.cache_directory.glob("broken.csv.corrupt-*")
    assert kept.read_text(encoding="utf-8") == "a,b,c\n"


def test_delete_saved_content_removes_csv(manager: CacheManager) -> None:
    cache = CSVCache("gone", cache_manager=manager, contents={"a": "1"})
    cache.save()
    assert cache.csv_path.exists()
    cache.delete_saved_content()
    assert not cache.csv_path.exists()


def test_explicit_hooks_win_over_csv(manager: CacheManager) -> None:
    saved: list[dict[Any, Any]] = []
    cache = CSVCache(
        "hooked", cache_manager=manager, saver=lambda name, contents: saved.append(dict(contents))
    )
    cache["a"] = "1"
    cache.save()
    assert saved == [{"a": "1"}]
    assert not cache.csv_path.exists()


def test_autosync_csv_cache_is_both(manager: CacheManager) -> None:
    cache = AutoSyncCSVCache("both", cache_manager=manager)
    cache["k"] = "v"
    cache.save()
    assert CSVCache("both_reader", cache_manager=manager, loader=cache._resolved("loader")) == {
        "k": "v"
    }


@pytest.mark.timeout(60)  # it hung for ever
def test_a_fifo_in_place_of_the_csv_file_is_refused_not_waited_on(manager: CacheManager) -> None:
    import os

    from cacheman import InsecureCacheError

    manager.cache_directory.mkdir(mode=0o700, parents=True)
    os.mkfifo(manager.cache_directory / "rows.csv", 0o600)
    with pytest.raises(InsecureCacheError, match=r"rows\.csv.*FIFO"):
        CSVCache("rows", cache_manager=manager)
