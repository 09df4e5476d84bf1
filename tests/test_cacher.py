"""The manager: registry, hooks by name, the dependency cascade, restarts and exit saves."""

from __future__ import annotations

import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import both_stores, run_python

import cacheman
from cacheman import (
    AutoSyncCache,
    CacheManager,
    CacheManError,
    CacheNotRegisteredError,
    DependencyCycleError,
    InvalidCacheNameError,
    NonPersistentCache,
    PersistentCache,
    cacher,
    get_cache_manager,
)

DIAMOND = [("top", "left"), ("top", "right"), ("left", "bottom"), ("right", "bottom")]


def run_code(code: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with CACHEMAN_DIR pointing at ``env_dir``."""
    result = run_python("-c", textwrap.dedent(code), cache_dir=env_dir)
    assert result.returncode == 0, result.stderr
    return result


# -- the registry of managers ----------------------------------------------------------


def test_get_cache_manager_is_one_per_name(tmp_path: Path) -> None:
    first = get_cache_manager("one_per_name", base_cache_directory=tmp_path)
    assert get_cache_manager("one_per_name") is first
    assert get_cache_manager("one_per_name", base_cache_directory="/elsewhere") is first
    assert get_cache_manager("another_name", tmp_path) is not first
    assert first.cache_directory == tmp_path / "one_per_name"


def test_default_manager_and_directory(tmp_path: Path) -> None:
    result = run_code(
        """
        from cacheman import cacher, CacheWrap, NonPersistentCache
        manager = cacher.get_cache_manager()
        print(manager.name)
        print(manager.cache_directory)
        orphan = NonPersistentCache("orphan")
        print(orphan.manager is manager)
        """,
        tmp_path,
    )
    name, directory, same = result.stdout.split()
    assert name == "general_cacher"
    assert directory == str(tmp_path / "general_cacher")
    assert same == "True"


def test_direct_construction_with_positional_directory(tmp_path: Path) -> None:
    manager = cacher.CacheManager("direct", str(tmp_path))
    assert manager.cache_directory == tmp_path / "direct"
    assert isinstance(manager.register_cache("x"), dict)
    manager.deregister_all_caches()


def test_building_a_manager_does_no_io(tmp_path: Path) -> None:
    manager = CacheManager("lazy", tmp_path)
    assert not manager.cache_directory.exists()


def test_package_reexports() -> None:
    assert cacheman.__all__ == sorted(cacheman.__all__)
    for name in cacheman.__all__:
        assert hasattr(cacheman, name), name
    from cacheman import autosync, cachewrap, csvcache

    assert cachewrap.PersistentCache is PersistentCache
    assert autosync.TimeCount(60, 10) == cacheman.TimeCount(60, 10)
    assert csvcache.CSVCache is cacheman.CSVCache


# -- registering caches ------------------------------------------------------------------


def test_register_kinds(manager: CacheManager) -> None:
    assert type(manager.register_cache("auto")) is AutoSyncCache
    assert type(manager.register_custom_cache("plain", autosync=False)) is PersistentCache
    assert type(manager.register_custom_cache("mem", persistent=False)) is NonPersistentCache
    assert manager.cache_names() == ["auto", "plain", "mem"]


def test_register_with_contents(manager: CacheManager) -> None:
    cache = manager.register_cache("seeded", {"a": 1})
    assert cache == {"a": 1}


def test_retrieve_cache_registers_once(manager: CacheManager) -> None:
    assert not manager.cache_registered("r")
    cache = manager.retrieve_cache("r")
    assert manager.cache_registered("r")
    assert manager.retrieve_cache("r") is cache
    assert manager.retrieve_raise("r") is cache


def test_retrieve_raise_is_a_key_error_naming_cache(manager: CacheManager) -> None:
    with pytest.raises(KeyError, match="'missing'") as raised:
        manager.retrieve_raise("missing")
    assert isinstance(raised.value, CacheNotRegisteredError)
    assert isinstance(raised.value, CacheManError)
    for method in ("save_cache_contents", "reload_cache", "invalidate_cache"):
        with pytest.raises(KeyError):
            getattr(manager, method)("missing")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../up", "/abs", "back\\slash", "nul\x00"])
def test_invalid_names_are_refused(manager: CacheManager, bad: str) -> None:
    with pytest.raises(InvalidCacheNameError, match="invalid cache name") as raised:
        manager.register_cache(bad)
    assert isinstance(raised.value, ValueError)
    assert not manager.cache_registered(bad)
    assert not any(manager.cache_directory.parent.rglob("*.pkl"))


def test_non_string_name_is_refused(manager: CacheManager) -> None:
    with pytest.raises(InvalidCacheNameError, match="must be a str"):
        manager.register_cache(42)  # type: ignore[arg-type]


@both_stores
def test_reregistering_a_name_keeps_old_edits(manager: CacheManager) -> None:
    old = manager.register_custom_cache("again", autosync=False)
    old["edit"] = 1
    new = manager.register_custom_cache("again", autosync=False)
    assert new is not old
    assert new == {"edit": 1}
    assert manager.retrieve_raise("again") is new


def test_deregister(manager: CacheManager) -> None:
    manager.register_cache("parent")
    manager.register_cache("child")
    manager.register_cache("other")
    manager.register_dependent_cache("parent", "child")
    manager.deregister_cache("parent", apply_to_dependents=True)
    assert manager.cache_names() == ["other"]
    assert list(manager.dependency_graph().edges()) == []
    manager.deregister_all_caches()
    assert manager.cache_names() == []


@both_stores
def test_deregistered_cache_is_not_saved_by_save_all(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("gone", autosync=False)
    cache["a"] = 1
    manager.deregister_cache("gone")
    manager.save_all_cache_contents()
    assert not manager.store.exists("gone")


# -- dependencies ------------------------------------------------------------------------


def counting_builder(log: list[str], value: Any = None) -> Any:
    def builder(name: str) -> dict[str, Any]:
        log.append(name)
        return {} if value is None else {"built": value}

    return builder


def test_cycle_refused_through_manager(manager: CacheManager) -> None:
    manager.register_dependent_cache("a", "b")
    manager.register_dependent_cache("b", "c")
    with pytest.raises(DependencyCycleError, match="c -> a -> b -> c"):
        manager.register_dependent_cache("c", "a")


def test_dependents_property_and_constructor_argument(manager: CacheManager) -> None:
    root = PersistentCache("root", cache_manager=manager, dependents=["mid"])
    mid = manager.register_cache("mid")
    root.add_dependent(manager.register_cache("other"))
    assert root.dependents == ["mid", "other"]
    assert mid.dependents == []


@both_stores
def test_invalidate_chain_of_three(manager: CacheManager) -> None:
    built: list[str] = []
    root = manager.register_custom_cache("root", autosync=False)
    mid = manager.register_custom_cache("mid", autosync=False, builder=counting_builder(built, 1))
    leaf = manager.register_custom_cache("leaf", autosync=False)
    manager.register_dependent_cache("root", "mid")
    manager.register_dependent_cache("mid", "leaf")
    built.clear()
    root["saved"] = 1
    root.save()
    root["unsaved"] = 2
    mid["x"] = 1
    leaf["y"] = 1
    manager.save_all_cache_contents()  # saves root too: its "unsaved" edit is now saved
    root["really_unsaved"] = 3
    root.invalidate()
    assert root == {"saved": 1, "unsaved": 2}
    assert mid == {"built": 1}
    assert leaf == {}
    assert built == ["mid"]
    if hasattr(manager.store, "builder_lock"):
        # One builder at a time (Redis): a build is saved before its lock is let go.
        assert manager.store.load("mid") == {"built": 1}
    else:
        assert not manager.store.exists("mid")
    assert not manager.store.exists("leaf")
    assert manager.store.exists("root")


def test_invalidate_diamond_resets_bottom_once_after_its_parents(manager: CacheManager) -> None:
    order: list[str] = []
    for name in ("top", "left", "right", "bottom"):
        manager.register_custom_cache(name, autosync=False, builder=counting_builder(order))
    for parent, child in DIAMOND:
        manager.register_dependent_cache(parent, child)
    order.clear()
    manager.invalidate_cache("top")
    # top reloads (nothing saved, so it builds), then each dependent is reset once.
    assert order[0] == "top"
    assert sorted(order[1:]) == ["bottom", "left", "right"]
    assert order[-1] == "bottom"


@both_stores
def test_invalidate_without_dependents(manager: CacheManager) -> None:
    root = manager.register_cache("root")
    edge = manager.register_cache("edge")
    manager.register_dependent_cache("root", "edge")
    edge["kept"] = 1
    root.invalidate(apply_to_dependents=False)
    assert edge == {"kept": 1}


@both_stores
def test_unloaded_and_unregistered_dependents_lose_saved_copies(manager: CacheManager) -> None:
    manager.store.save("not_loaded", {"stale": 1})
    manager.store.save("unregistered", {"stale": 2})
    root = manager.register_cache("root")
    # Registered with contents: it never loaded its saved copy.
    not_loaded = manager.register_custom_cache("not_loaded", {"fresh": 1}, autosync=False)
    manager.register_dependent_cache("root", "not_loaded")
    manager.register_dependent_cache("not_loaded", "unregistered")
    root.invalidate()
    assert not manager.store.exists("not_loaded")
    assert not manager.store.exists("unregistered")
    assert not_loaded == {}


def test_apply_to_dependents_visits_each_cache_once(manager: CacheManager) -> None:
    visits: dict[str, list[str]] = {"load": [], "save": [], "delete": []}

    def register(name: str) -> None:
        manager.register_custom_cache(
            name,
            autosync=False,
            loader=visits["load"].append,
            saver=lambda n, contents: visits["save"].append(n),
            deleter=visits["delete"].append,
        )

    for name in ("top", "left", "right", "bottom", "outside"):
        register(name)
    for parent, child in DIAMOND:
        manager.register_dependent_cache(parent, child)
    visits["load"].clear()

    manager.save_cache_contents("top", apply_to_dependents=True)
    manager.reload_cache("top", apply_to_dependents=True)
    manager.delete_saved_cache_content("top", apply_to_dependents=True)
    for operation, names in visits.items():
        assert sorted(names) == ["bottom", "left", "right", "top"], operation
        assert names[0] == "top"
        assert names[-1] == "bottom"

    for names in visits.values():
        names.clear()
    manager.save_cache_contents("top")
    manager.reload_cache("top")
    manager.delete_saved_cache_content("top", apply_to_dependents=False)
    assert visits == {"load": ["top"], "save": ["top"], "delete": ["top"]}


@both_stores
def test_invalidate_and_rebuild(manager: CacheManager) -> None:
    built: list[str] = []
    root = manager.register_custom_cache(
        "root", autosync=False, builder=counting_builder(built, "r")
    )
    edge = manager.register_custom_cache(
        "edge", autosync=False, builder=counting_builder(built, "e")
    )
    manager.register_dependent_cache("root", "edge")
    root["x"] = 1
    edge["y"] = 1
    manager.save_all_cache_contents()
    built.clear()
    manager.invalidate_and_rebuild_cache("root")
    assert root == {"built": "r"}
    assert edge == {"built": "e"}
    assert built == ["root", "edge"]
    if hasattr(manager.store, "builder_lock"):
        # One builder at a time (Redis): a build is saved before its lock is let go.
        assert manager.store.load("root") == {"built": "r"}
    else:
        assert not manager.store.exists("root")


@both_stores
def test_every_cache_operations(manager: CacheManager) -> None:
    first = manager.register_custom_cache("first", autosync=False, builder=lambda n: {"b": 1})
    second = manager.register_custom_cache("second", autosync=False)
    first["x"] = 1
    second["y"] = 2
    manager.save_all_cache_contents()
    first["unsaved"] = 1
    manager.reload_all_caches()
    assert first == {"b": 1, "x": 1}
    manager.reload_or_rebuild_all_caches()
    assert second == {"y": 2}
    manager.delete_all_saved_cache_contents()
    assert not manager.store.exists("first")
    assert second == {"y": 2}
    manager.invalidate_and_rebuild_all_caches()
    assert first == {"b": 1}
    assert second == {}


@both_stores
def test_manager_with_block_saves_all(manager: CacheManager) -> None:
    with manager:
        manager.register_custom_cache("a", autosync=False)["k"] = 1
        manager.register_custom_cache("b", autosync=False)["k"] = 2
    assert manager.store.load("a") == {"k": 1}
    assert manager.store.load("b") == {"k": 2}


def test_dependency_graph_export(manager: CacheManager) -> None:
    manager.register_dependent_cache("prices", "features")
    manager.register_dependent_cache("features", "model")
    graph = manager.dependency_graph()
    assert '"prices" -> "features";' in graph.to_dot()
    assert "n1 --> n2" in graph.to_mermaid()


# -- threads -----------------------------------------------------------------------------


@both_stores
def test_registry_and_lifecycle_from_many_threads(manager: CacheManager) -> None:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for round_ in range(20):
                cache = manager.retrieve_cache(f"shared{round_ % 3}")
                cache[f"{index}-{round_}"] = round_
                cache.save()
                cache.load()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(manager.cache_names()) == ["shared0", "shared1", "shared2"]
    for name in manager.cache_names():
        assert manager.store.load(name) == dict(manager.retrieve_raise(name))


# -- real restarts ---------------------------------------------------------------------------


def test_contents_survive_a_restart(tmp_path: Path) -> None:
    write = """
        from cacheman import cacher
        manager = cacher.get_cache_manager("restart")
        cache = manager.register_cache("squares")
        cache.update({n: n * n for n in range(5)})
        cache.save()
    """
    read = """
        from cacheman import cacher
        print(sorted(cacher.get_cache_manager("restart").register_cache("squares").items()))
    """
    run_code(write, tmp_path)
    assert run_code(read, tmp_path).stdout.strip() == str([(n, n * n) for n in range(5)])


@pytest.mark.parametrize("kind", ["register_cache", "register_custom_cache"])
def test_exit_saves_without_explicit_save(tmp_path: Path, kind: str) -> None:
    extra = "" if kind == "register_cache" else ", autosync=False"
    run_code(
        f"""
        from cacheman import cacher
        cache = cacher.get_cache_manager().{kind}("at_exit"{extra})
        cache["written"] = "before exit"
        """,
        tmp_path,
    )
    result = run_code(
        """
        from cacheman import cacher
        print(cacher.get_cache_manager().register_cache("at_exit"))
        """,
        tmp_path,
    )
    assert result.stdout.strip() == "{'written': 'before exit'}"


def test_dependent_example_prints_empty_on_every_run(tmp_path: Path) -> None:
    code = """
        from cacheman import cacher
        manager = cacher.get_cache_manager()
        root_cache = manager.register_cache("root")
        edge_cache = manager.register_cache("edge")
        manager.register_dependent_cache("root", "edge")
        edge_cache["derived"] = len(edge_cache)
        root_cache.invalidate()
        print(edge_cache)
    """
    for _ in range(3):
        assert run_code(code, tmp_path).stdout.strip() == "{}"


def test_library_never_prints(manager: CacheManager, capsys: Any) -> None:
    cache = manager.register_cache("quiet", {"a": 1})
    cache.save()
    manager.register_dependent_cache("quiet", "child")
    cache.invalidate()
    manager.store.path_for("quiet").write_bytes(b"")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


@pytest.mark.parametrize("autosync", [True, False])
def test_initial_contents_replace_saved_copy_at_exit(tmp_path: Path, autosync: bool) -> None:
    register = "cacher.get_cache_manager().register_custom_cache"
    run_code(
        f"""
        from cacheman import cacher
        {register}("seeded", autosync={autosync})["old"] = 1
        """,
        tmp_path,
    )
    run_code(
        f"""
        from cacheman import cacher
        {register}("seeded", {{"new": 2}}, autosync={autosync})
        """,
        tmp_path,
    )
    result = run_code(
        """
        from cacheman import cacher
        print(cacher.get_cache_manager().register_cache("seeded"))
        """,
        tmp_path,
    )
    assert result.stdout.strip() == "{'new': 2}"


# -- 2.x return values and the upgrade helpers ----------------------------------------

HOOK_REGISTRATIONS = [
    ("register_loader", lambda name: {"loaded": True}),
    ("register_saver", lambda name, contents: None),
    ("register_builder", lambda name: {"built": True}),
    ("register_deleter", lambda name: None),
    ("register_validator", lambda contents: True),
    ("register_pre_processor", lambda contents: None),
    ("register_post_processor", lambda contents: None),
]


@pytest.mark.parametrize(
    ("method", "hook"), HOOK_REGISTRATIONS, ids=[name for name, _ in HOOK_REGISTRATIONS]
)
def test_hook_registration_returns_the_cache(manager: CacheManager, method: str, hook: Any) -> None:
    # 2.x code chains on it: cache = manager.register_loader(name, f); cache.load()
    cache = manager.register_cache("hooked")
    assert getattr(manager, method)("hooked", hook) is cache
    # An unknown name is registered first, as retrieve_cache does, and returned.
    fresh = getattr(manager, method)("fresh", hook)
    assert fresh is manager.retrieve_raise("fresh")


@pytest.mark.parametrize(
    "method",
    [
        "save_cache_contents",
        "reload_cache",
        "reload_or_rebuild_cache",
        "invalidate_cache",
        "invalidate_and_rebuild_cache",
        "delete_saved_cache_content",
    ],
)
def test_operations_by_name_return_the_cache(manager: CacheManager, method: str) -> None:
    cache = manager.register_cache("target", {"a": 1})
    assert getattr(manager, method)("target") is cache
    assert getattr(manager, method)("target", True) is cache


def test_reload_cache_result_is_the_reloaded_cache(manager: CacheManager) -> None:
    cache = manager.register_cache("reloaded")
    cache["saved"] = 1
    manager.save_cache_contents("reloaded")
    cache["unsaved"] = 2
    assert manager.reload_cache("reloaded") == {"saved": 1}


def test_register_dependent_cache_returns_the_parent_if_registered(manager: CacheManager) -> None:
    parent = manager.register_cache("parent")
    assert manager.register_dependent_cache("parent", "child") is parent
    # Edges are by name: a parent not registered yet stays unregistered.
    assert manager.register_dependent_cache("later", "parent") is None
    assert not manager.cache_registered("later")
    assert manager.dependency_graph().children("later") == ["parent"]


def test_saved_cache_names_asks_the_store(manager: CacheManager) -> None:
    assert manager.saved_cache_names() == []
    manager.register_custom_cache("b", {"x": 1}, autosync=False).save()
    manager.register_custom_cache("memory_only", {"x": 1}, persistent=False).save()
    manager.register_custom_cache("unsaved", {"x": 1}, autosync=False)
    manager.store.save("a", {"from": "an earlier run"})  # not registered in this run
    assert manager.saved_cache_names() == ["a", "b"]
    manager.delete_saved_cache_content("b")
    assert manager.saved_cache_names() == ["a"]


def test_delete_saved_content_of_an_unregistered_name(manager: CacheManager) -> None:
    manager.store.save("old", {"stale": True})
    manager.store.save("derived", {"stale": True})
    manager.store.save("unrelated", {"kept": True})
    manager.register_dependent_cache("old", "derived")
    assert manager.delete_saved_cache_content("old", apply_to_dependents=False) is None
    assert not manager.store.exists("old")
    assert manager.store.exists("derived")
    manager.store.save("old", {"stale": True})
    assert manager.delete_saved_cache_content("old") is None
    assert manager.saved_cache_names() == ["unrelated"]
    assert not manager.cache_registered("old")  # deleting does not register
    assert manager.delete_saved_cache_content("never_saved") is None
    with pytest.raises(InvalidCacheNameError):
        manager.delete_saved_cache_content("../escape")


def test_misspelt_hook_keyword_names_the_hooks(manager: CacheManager) -> None:
    def loader(name: str) -> dict[str, int]:
        return {}

    with pytest.raises(TypeError) as raised:
        manager.register_custom_cache("typo", lodaer=loader)
    message = str(raised.value)
    assert "'lodaer'" in message
    assert "did you mean 'loader'?" in message
    assert "loader, saver, builder, deleter, validator, pre_processor, post_processor" in message
    assert not manager.cache_registered("typo")  # nothing half-registered


# -- lifetimes: close(), and managers the program drops -----------------------------------


def test_close_saves_each_caches_changes_then_lets_go_of_them(tmp_path: Path) -> None:
    manager = CacheManager("closing", tmp_path)
    auto = manager.register_cache("auto")
    auto["a"] = 1
    plain = manager.register_custom_cache("plain", autosync=False)
    plain["p"] = 2
    manager.register_dependent_cache("auto", "plain")
    manager.close()
    assert manager.closed
    assert manager.cache_names() == []
    assert not manager.holds(auto)
    assert not manager.holds(plain)
    assert auto == {"a": 1}  # the objects stay plain dicts
    again = CacheManager("closing", tmp_path)
    try:
        assert again.retrieve_cache("auto") == {"a": 1}
        assert again.retrieve_cache("plain") == {"p": 2}
    finally:
        again.close()


def test_close_twice_does_nothing_more(tmp_path: Path) -> None:
    manager = CacheManager("twice", tmp_path)
    manager.register_cache("c")["k"] = 1
    manager.close()
    manager.close()
    assert "closed" in repr(manager)


@pytest.mark.parametrize(
    "use",
    [
        lambda m, c: m.register_cache("new"),
        lambda m, c: m.retrieve_cache("c"),
        lambda m, c: m.retrieve_raise("c"),
        lambda m, c: m.register_loader("c", lambda name: {}),
        lambda m, c: m.register_dependent_cache("c", "d"),
        lambda m, c: m.save_all_cache_contents(),
        lambda m, c: m.reload_all_caches(),
        lambda m, c: m.saved_cache_names(),
        lambda m, c: m.delete_saved_cache_content("c"),
        lambda m, c: c.save(),
        lambda m, c: c.load(),
        lambda m, c: c.invalidate(),
        lambda m, c: PersistentCache("other", cache_manager=m),
        lambda m, c: m.__enter__(),
    ],
)
def test_a_closed_manager_refuses_to_be_used_with_a_clear_error(tmp_path: Path, use: Any) -> None:
    manager = CacheManager("used_after_close", tmp_path)
    cache = manager.register_cache("c")
    manager.close()
    with pytest.raises(cacheman.ManagerClosedError, match="'used_after_close' is closed") as error:
        use(manager, cache)
    assert isinstance(error.value, ValueError)
    manager.deregister_all_caches()  # forgetting nothing is still fine


def test_a_save_that_fails_at_close_leaves_the_manager_open_and_the_edits_pending(
    tmp_path: Path,
) -> None:
    saved: list[dict[str, Any]] = []
    failures = [OSError("disk full")]

    def saver(name: str, contents: dict[str, Any]) -> None:
        if failures:
            raise failures.pop()
        saved.append(dict(contents))

    manager = CacheManager("failing_close", tmp_path)
    cache = manager.register_custom_cache("c", autosync=False, saver=saver, loader=lambda n: None)
    cache["k"] = 1
    with pytest.raises(OSError, match="disk full"):
        manager.close()
    assert not manager.closed
    assert manager.holds(cache)
    manager.close()  # the cause is gone: the edit is saved now
    assert saved == [{"k": 1}]
    assert manager.closed


def test_get_cache_manager_builds_a_new_manager_after_close(tmp_path: Path) -> None:
    first = get_cache_manager("named_then_closed", tmp_path)
    first.register_cache("c")["k"] = 1
    first.close()
    second = get_cache_manager("named_then_closed", tmp_path)
    try:
        assert second is not first
        assert not second.closed
        assert second.retrieve_cache("c") == {"k": 1}
    finally:
        second.close()


def test_leaving_a_with_block_saves_and_keeps_the_manager_open(tmp_path: Path) -> None:
    # As in 2.x: `with manager:` saves; the (usually process-wide) manager goes on.
    with CacheManager("with_block", tmp_path) as manager:
        cache = manager.register_custom_cache("c", autosync=False)
        cache["k"] = 1
    assert not manager.closed
    assert manager.retrieve_cache("c") is cache
    assert manager.store.load("c") == {"k": 1}
    manager.close()


def test_a_dropped_manager_with_nothing_unsaved_is_freed(tmp_path: Path) -> None:
    import gc
    import weakref

    from test_autosync import VirtualClock  # no scheduler thread: no deadline races

    manager = CacheManager("dropped_clean", tmp_path)
    auto = manager.register_custom_cache("auto", clock=VirtualClock())
    auto["k"] = (1, "immutable")
    auto.save()
    plain = manager.register_custom_cache("plain", autosync=False, contents={"n": 1})
    plain.save()
    manager.register_custom_cache("memory", persistent=False)["k"] = [1]
    reference = weakref.ref(manager)
    del manager, auto, plain
    gc.collect()
    assert reference() is None
    assert not any(each.name == "dropped_clean" for each in cacher._kept_for_exit)


def test_a_named_manager_is_kept_with_its_hooks_while_nothing_holds_it(tmp_path: Path) -> None:
    import gc

    def builder(name: str) -> dict[str, int]:
        return {"built": 1}

    get_cache_manager("kept_by_name", tmp_path).register_builder("c", builder)
    gc.collect()
    manager = get_cache_manager("kept_by_name")
    try:
        assert manager.retrieve_raise("c").builder is builder
    finally:
        manager.close()


def test_a_dropped_manager_with_unsaved_edits_is_still_saved_at_exit(tmp_path: Path) -> None:
    result = run_code(
        """
        import gc, weakref
        from cacheman import CacheManager, cacher

        def work():
            manager = CacheManager("dropped_dirty")
            manager.register_custom_cache("plain", autosync=False)["k"] = "edited"
            manager.register_cache("auto")["k"] = "edited too"
            clean = CacheManager("dropped_clean")
            clean.register_custom_cache("c", autosync=False, contents={"n": 1}).save()
            return weakref.ref(clean)

        clean = work()
        gc.collect()  # the managers are unreachable now
        print(clean() is None)
        """,
        tmp_path,
    )
    assert result.stdout.split() == ["True"]
    check = run_code(
        """
        from cacheman import CacheManager
        manager = CacheManager("dropped_dirty")
        print(manager.retrieve_cache("plain")["k"], "/", manager.retrieve_cache("auto")["k"])
        """,
        tmp_path,
    )
    assert check.stdout.strip() == "edited / edited too"


def test_a_deregistered_autosync_cache_no_longer_saves_by_its_rules(
    manager: CacheManager,
) -> None:
    from test_autosync import VirtualClock, settle

    from cacheman import TimeCount
    from cacheman._process import scheduler as _scheduler

    clock = VirtualClock()
    rules = [TimeCount(10, 100), TimeCount(20, 1)]
    cache = manager.register_custom_cache("rules", time_checks=rules, clock=clock)
    cache["k"] = 1
    scheduler = _scheduler.for_clock(clock)
    assert scheduler.next_deadline() is not None
    manager.deregister_cache("rules")
    assert scheduler.next_deadline() is None  # the scheduler let go of it
    clock.now += 30
    settle(cache)
    assert not manager.store.exists("rules")


def test_an_autosync_cache_with_every_edit_saved_holds_no_deadline(
    manager: CacheManager,
) -> None:
    from test_autosync import VirtualClock

    from cacheman import TimeCount
    from cacheman._process import scheduler as _scheduler

    clock = VirtualClock()
    cache = manager.register_custom_cache("idle", time_checks=[TimeCount(10, 100)], clock=clock)
    cache["k"] = 1
    scheduler = _scheduler.for_clock(clock)
    assert scheduler.next_deadline() is not None
    cache.save()
    assert scheduler.next_deadline() is None
    cache["k"] = 2  # the next edit is timed again
    assert scheduler.next_deadline() is not None
    assert cache.pending_edits == 1


# -- the short names beside the 2.x ones -------------------------------------------------


def test_the_short_names_do_what_their_2x_names_do(manager: CacheManager) -> None:
    root = manager.register_cache("root")
    edge = manager.register_cache("edge")
    manager.register_dependent_cache("root", "edge")
    root["a"] = 1
    edge["b"] = 2
    assert manager.save("root") is root
    assert manager.store.load("root") == {"a": 1}
    assert manager.save() is None  # no name: every cache
    assert manager.store.load("edge") == {"b": 2}
    root["unsaved"] = True
    assert manager.reload("root") is root
    assert root == {"a": 1}
    assert manager.invalidate("root") is root
    assert edge == {}, "downstream reset"
    assert not manager.store.exists("edge")
    assert manager.delete("root") is root
    assert not manager.store.exists("root")
    assert root == {"a": 1}, "the contents in memory stay"
