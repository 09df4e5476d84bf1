"""Nothing lost, nothing stale: in-place edits, builds, many processes, generations.

Each scenario runs real processes (fresh interpreters or forked workers) against
one cache directory, and checks what the next run of a program would see.  Most
run on both stores: the fixture ``place`` is a directory (pickle store) or a
Redis database (``$CACHEMAN_REDIS_URL`` for the child processes).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import both_stores, run_python, wait_until

from cacheman import AutoSyncCache, CacheManager, CSVCache, RedisStore, TimeCount, _registry
from cacheman._stores.redis import REDIS_URL_ENV

PRELUDE = """
import sys, time
from pathlib import Path
from cacheman import CacheManager, TimeCount
manager = CacheManager("procs", sys.argv[1])
"""


@dataclass
class Place:
    """Where the programs of a test keep their caches: a directory, and maybe a Redis."""

    directory: Path
    redis_url: str | None = None
    managers: list[CacheManager] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment of the child programs (they pick Redis up from it)."""
        env = dict(os.environ)
        if self.redis_url is not None:
            env[REDIS_URL_ENV] = self.redis_url
        return env

    def manager(self) -> CacheManager:
        """A manager of this process, as the programs build theirs."""
        store = None if self.redis_url is None else RedisStore(self.redis_url)
        manager = CacheManager("procs", self.directory, store=store)
        self.managers.append(manager)
        return manager


@pytest.fixture(params=["pickle", "redis"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    where = Place(tmp_path, url)
    yield where
    for manager in where.managers:
        manager.deregister_all_caches()
        _registry.discard(manager)
        if isinstance(manager.store, RedisStore):
            manager.store.close()


def run(script: str, place: Place, *args: str) -> str:
    """Run ``script`` (after PRELUDE) in a fresh interpreter; return its stdout."""
    done = run_python(
        "-c", PRELUDE + textwrap.dedent(script), str(place.directory), *args, env=place.env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def saved(place: Place, name: str) -> dict[object, object] | None:
    """What the next run of a program would load for ``name``."""
    return place.manager().store.load(name)


# -- 1. in-place edits ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["autosync", "persistent"])
def test_in_place_edits_are_saved_at_exit(place: Place, kind: str) -> None:
    register = (
        "manager.register_cache('tags')"
        if kind == "autosync"
        else "manager.register_custom_cache('tags', autosync=False)"
    )
    run(f"cache = {register}\ncache['tags'] = ['a']\n", place)
    run(f"cache = {register}\ncache['tags'].append('b')\n", place)
    assert saved(place, "tags") == {"tags": ["a", "b"]}


@both_stores
def test_in_place_edits_are_saved_at_the_end_of_a_with_block(manager: CacheManager) -> None:
    cache = manager.register_cache("tags", {"tags": ["a"]})
    cache.save()
    with cache:
        cache["tags"].append("b")
    assert manager.store.load("tags") == {"tags": ["a", "b"]}
    with manager:
        cache["tags"].append("c")
    assert manager.store.load("tags") == {"tags": ["a", "b", "c"]}


@both_stores
def test_touch_makes_an_in_place_edit_a_pending_edit(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("tags", {"tags": []}, time_checks=[TimeCount(60, 3)])
    assert isinstance(cache, AutoSyncCache)
    cache.save()
    assert cache.pending_edits == 0
    cache["tags"].append("x")
    assert cache.pending_edits == 0  # invisible to CacheMan ...
    cache.touch("tags")
    assert cache.pending_edits == 1  # ... until touched
    with pytest.raises(KeyError):
        cache.touch("missing")
    cache.touch("tags")
    cache.touch("tags")  # the burst rule (3 edits) fires: a child saves it
    wait_until(lambda: cache.pending_edits == 0)
    assert manager.store.load("tags") == {"tags": ["x"]}


@both_stores
def test_mark_dirty_writes_the_whole_cache(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("many", {"a": [1], "b": [2]}, autosync=False)
    cache.save()
    cache["a"].append(10)
    cache["b"].append(20)
    cache.mark_dirty()
    cache.save()
    assert manager.store.load("many") == {"a": [1, 10], "b": [2, 20]}


# -- 2. builds are edits ---------------------------------------------------------------------

BUILDER = """
def build(name):
    runs = Path(sys.argv[2])
    runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
    return {"built": 42}
cache = manager.register_custom_cache("built", builder=build)
print(dict(cache), cache.pending_edits)
"""


def test_what_a_builder_built_is_saved_and_not_rebuilt_by_the_next_run(place: Place) -> None:
    runs = place.directory / "runs"
    # On Redis the build is saved at once (under the builder lock): nothing is pending.
    pending = "0" if place.redis_url else "1"
    assert run(BUILDER, place, str(runs)).split() == ["{'built':", "42}", pending]
    assert saved(place, "built") == {"built": 42}
    assert run(BUILDER, place, str(runs)).split() == ["{'built':", "42}", "0"]
    assert runs.read_text() == "x", "the builder ran once, in the first run only"


def test_a_rebuild_counts_as_edits(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("rebuilt", builder=lambda name: {"v": 1})
    assert isinstance(cache, AutoSyncCache)
    cache.save()
    cache.invalidate_and_rebuild()
    assert cache.pending_edits == 1


# -- 4. several processes, one cache ------------------------------------------------------------


def _write_keys(worker: int) -> None:
    cache = _pool_manager.retrieve_cache("shared")
    for i in range(10):
        cache[(worker, i)] = i


_pool_manager: CacheManager


@both_stores
def test_pool_workers_all_keep_their_edits(manager: CacheManager) -> None:
    global _pool_manager
    _pool_manager = manager
    manager.register_cache("shared")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_write_keys, range(4))
        pool.close()
        pool.join()
    loaded = manager.store.load("shared") or {}
    assert len(loaded) == 40
    assert loaded == {(w, i): i for w in range(4) for i in range(10)}


WRITER = """
cache = manager.register_cache("shared")
for i in range(50):
    cache[f"{sys.argv[2]}{i}"] = i
    if i % 10 == 0:
        cache.save()
    time.sleep(0.002)
"""


def test_two_programs_writing_one_cache_keep_the_union(place: Place) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(WRITER), str(place.directory), prefix],
            stderr=subprocess.PIPE,
            text=True,
            env=place.env,
        )
        for prefix in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    loaded = saved(place, "shared") or {}
    assert loaded == {f"{p}{i}": i for p in "ab" for i in range(50)}


def test_a_key_changed_by_two_processes_ends_with_the_later_write(place: Place) -> None:
    manager = place.manager()
    cache = manager.register_custom_cache("shared", autosync=False)
    cache["k"] = "mine, first"
    cache["other"] = 1
    cache.save()
    run("c = manager.register_cache('shared'); c['k'] = 'theirs, later'", place)
    assert (saved(place, "shared") or {})["k"] == "theirs, later"
    cache["k"] = "mine, latest"
    cache.save()
    assert saved(place, "shared") == {"k": "mine, latest", "other": 1}


def test_refresh_pulls_other_processes_edits_and_keeps_mine(place: Place) -> None:
    manager = place.manager()
    cache = manager.register_cache("shared", {"base": 0})
    cache.save()
    cache["mine"] = 1  # not saved yet
    run("c = manager.register_cache('shared'); c['theirs'] = 2; del c['base']", place)
    assert "theirs" not in cache
    cache.refresh()
    assert cache == {"mine": 1, "theirs": 2}
    assert saved(place, "shared") == {"mine": 1, "theirs": 2}


# -- 5. stale derived caches across processes --------------------------------------------------

GRAPH = """
def build_root(name):
    return {"version": Path(sys.argv[2]).read_text()}
def build_child(name):
    return {"from": manager.retrieve_cache("root")["version"]}
root = manager.register_custom_cache("root", builder=build_root)
child = manager.register_custom_cache("child", builder=build_child)
manager.register_dependent_cache("root", "child")
"""


def test_a_script_that_never_registered_the_child_still_resets_it(place: Place) -> None:
    source = place.directory / "source"
    source.write_text("v1")
    run(GRAPH + "print(child['from'])", place, str(source))
    source.write_text("v2")
    # Another program knows only the root; it rebuilds it from the new source.
    run(
        "root = manager.register_custom_cache('root', builder=lambda n: {'version': 'v2'})\n"
        "root.invalidate_and_rebuild()",
        place,
    )
    assert saved(place, "root") == {"version": "v2"}
    out = run(GRAPH + "print(child['from'])", place, str(source))
    assert out.strip() == "v2", "the child was rebuilt, not served stale"


def test_a_long_running_process_does_not_write_back_a_stale_derived_cache(
    place: Place,
) -> None:
    manager = place.manager()
    versions = iter(["v1", "v2", "v3"])
    root = manager.register_custom_cache("root", builder=lambda name: {"v": next(versions)})
    child = manager.register_custom_cache(
        "child", builder=lambda name: {"from": root["v"]}, autosync=False
    )
    manager.register_dependent_cache("root", "child")
    root.save()
    child.save()
    assert child == {"from": "v1"}
    # Another program rebuilds the parent while this one still holds the child.
    run(
        "root = manager.register_custom_cache('root', builder=lambda n: {'v': 'v2'})\n"
        "root.invalidate_and_rebuild()",
        place,
    )
    # On either store the rebuild's event resets the child here, with no call at all
    # (the explicit calls, with the events lost, are test_lineage.py's).
    wait_until(lambda: child == {"from": "v2"} and root == {"v": "v2"})
    wait_until(lambda: saved(place, "child") == {"from": "v2"})


@both_stores
def test_generations_change_on_invalidate_and_reset_only(manager: CacheManager) -> None:
    root = manager.register_cache("root", {"a": 1})
    root.save()
    first = root.generation
    assert first is not None
    root["b"] = 2
    root.save()
    assert root.generation == first
    root.invalidate()
    second = root.generation
    assert second not in (None, first)
    root.invalidate_and_rebuild()
    assert root.generation not in (None, first, second)


def test_a_derived_cache_of_another_store_is_reset_by_generation(place: Place) -> None:
    manager = place.manager()
    calls = []
    root = manager.register_cache("root", {"v": 1})
    child = CSVCache(
        "child", cache_manager=manager, builder=lambda name: calls.append(1) or {"k": "v1"}
    )
    manager.register_dependent_cache("root", "child")
    root.save()
    child.save()
    assert calls == [1]
    run("manager.register_cache('root').invalidate()", place)
    child.load()  # the parent moved on in another process: rebuild, do not serve
    assert calls == [1, 1]


# -- 6. a loader that raises ------------------------------------------------------------------


def test_a_loader_that_raises_is_treated_like_a_damaged_file(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str) -> dict[str, int]:
        raise ValueError("line 3: not a number")

    with caplog.at_level(logging.WARNING, logger="cacheman"):
        cache = manager.register_custom_cache(
            "custom", loader=broken, builder=lambda name: {"rebuilt": 1}
        )
    assert cache == {"rebuilt": 1}
    assert "'custom'" in caplog.text
    assert "line 3: not a number" in caplog.text


def test_a_damaged_csv_file_is_kept_aside_and_the_cache_rebuilt(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.cache_directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    path = manager.cache_directory / "table.csv"
    path.write_text("a,1\nb,2,extra\n")
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        cache = CSVCache("table", cache_manager=manager, builder=lambda name: {"fresh": "1"})
    assert cache == {"fresh": "1"}
    kept = [p for p in manager.cache_directory.iterdir() if p.name.startswith("table.csv.corrupt")]
    assert len(kept) == 1
    assert kept[0].read_text() == "a,1\nb,2,extra\n"
    assert "'table'" in caplog.text
    assert kept[0].name in caplog.text


def test_the_in_place_rule_follows_values_assigned_after_the_first_scan(
    manager: CacheManager,
) -> None:
    cache = manager.register_custom_cache("mixed", {"n": 1, "t": (1, 2)}, autosync=False)
    cache.save()  # the first explicit save scans every value: nothing changeable
    cache["later"] = ["a"]  # assigned since: a list, so watched from now on
    cache.save()
    cache["later"].append("b")
    cache["t"] = [3]  # a tuple replaced by a list
    cache.save()
    cache["t"].append(4)
    cache.save()
    assert manager.store.load("mixed") == {"n": 1, "t": [3, 4], "later": ["a", "b"]}


def test_a_parent_declared_after_the_build_is_recorded_as_it_was_then(place: Place) -> None:
    manager = place.manager()
    root = manager.register_custom_cache("root", {"v": 1}, autosync=False)
    root.save()
    child = manager.register_custom_cache(
        "child", builder=lambda name: {"from": root["v"]}, autosync=False
    )
    manager.register_dependent_cache("root", "child")  # after the build, as 2.x code does
    child["extra"] = "computed from 1"  # not saved before the parent moves on
    run("manager.register_cache('root').invalidate()", place)
    child.save()  # built from the old parent: reset, not written back
    assert "extra" not in child
    assert "extra" not in (saved(place, "child") or {})
