"""The cache classes: one dict-behaviour suite for every kind, then each lifecycle rule."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from helpers import both_stores

from cacheman import (
    AutoSyncCache,
    AutoSyncCSVCache,
    CacheManager,
    CacheWrap,
    CSVCache,
    NonPersistentCache,
    PersistentCache,
)
from cacheman.cachewrap import HOOK_NAMES


class DictBehaviour:
    """Every cache kind must behave exactly like a dict for every dict operation.

    Each test runs the same operation on a plain dict and on a cache built from
    the same items, and compares results and resulting contents.
    """

    cache_class: ClassVar[type[CacheWrap]]

    @pytest.fixture
    def pair(self, manager: CacheManager) -> tuple[dict[Any, Any], CacheWrap]:
        items = {"a": 1, "b": 2, "c": 3}
        cache = self.cache_class("behaviour", cache_manager=manager, contents=items)
        return dict(items), cache

    def test_is_a_dict(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert isinstance(cache, dict)
        assert cache == plain
        assert repr(cache) == repr(plain)
        assert str(cache) == str(plain)

    def test_reads(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert cache["a"] == plain["a"]
        assert cache.get("b") == 2
        assert cache.get("zz") is None
        assert cache.get("zz", 5) == 5
        assert "c" in cache
        assert "zz" not in cache
        assert len(cache) == 3
        assert list(cache) == list(plain)
        assert list(cache.keys()) == list(plain.keys())
        assert list(cache.values()) == list(plain.values())
        assert list(cache.items()) == list(plain.items())
        assert list(reversed(cache)) == list(reversed(plain))
        with pytest.raises(KeyError):
            cache["zz"]

    def test_setitem_and_delitem(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        for target in (plain, cache):
            target["d"] = 4
            target["a"] = 10
            del target["b"]
        assert cache == plain
        with pytest.raises(KeyError):
            del cache["zz"]
        assert cache == plain

    def test_update_forms(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        for target in (plain, cache):
            target.update({"x": 1})
            target.update([("y", 2)])
            target.update(z=3)
            target.update({"x": 9}, w=0)
        assert cache == plain

    def test_inplace_or(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        before = cache
        cache |= {"q": 1, "a": 0}
        plain |= {"q": 1, "a": 0}
        assert cache is before  # the same object, still a cache
        assert isinstance(cache, self.cache_class)
        assert cache == plain

    def test_or_returns_plain_dict(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        merged = cache | {"q": 1}
        assert type(merged) is dict
        assert merged == plain | {"q": 1}
        assert {"q": 1} | cache == {"q": 1} | plain

    def test_pop(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert cache.pop("a") == plain.pop("a")
        assert cache.pop("zz", "default") == "default"
        with pytest.raises(KeyError):
            cache.pop("zz")
        assert cache == plain

    def test_popitem(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert cache.popitem() == plain.popitem()  # LIFO, like dict
        assert cache == plain
        cache.clear()
        with pytest.raises(KeyError):
            cache.popitem()

    def test_setdefault(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert cache.setdefault("a", 100) == plain.setdefault("a", 100)
        assert cache.setdefault("new", 7) == plain.setdefault("new", 7)
        assert cache.setdefault("none") is None
        plain.setdefault("none")
        assert cache == plain

    def test_clear(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        _, cache = pair
        cache.clear()
        assert cache == {}
        assert len(cache) == 0

    def test_copy_is_plain_dict(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        duplicate = cache.copy()
        assert type(duplicate) is dict
        assert duplicate == plain
        duplicate["new"] = 1
        assert "new" not in cache
        assert type(copy.copy(cache)) is dict
        assert type(copy.deepcopy(cache)) is dict

    def test_fromkeys_gives_plain_dict(self) -> None:
        made = self.cache_class.fromkeys(["a", "b"], 0)
        assert type(made) is dict
        assert made == {"a": 0, "b": 0}

    def test_iteration_without_mutation(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert [(k, cache[k]) for k in cache] == list(plain.items())
        assert sorted(cache) == sorted(plain)

    def test_mutation_during_iteration_raises_like_dict(
        self, pair: tuple[dict[Any, Any], CacheWrap]
    ) -> None:
        _, cache = pair

        def add_while_iterating() -> None:
            for key in cache:
                cache[key + "!"] = 0

        with pytest.raises(RuntimeError, match="changed size during iteration"):
            add_while_iterating()

    def test_pickle_gives_plain_data(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            data = pickle.dumps(cache, protocol)
            assert b"CacheManager" not in data
            restored = pickle.loads(data)
            assert type(restored) is dict
            assert restored == plain

    def test_equality_and_unhashable(self, pair: tuple[dict[Any, Any], CacheWrap]) -> None:
        plain, cache = pair
        assert cache == plain
        assert plain == cache
        assert cache != {}
        with pytest.raises(TypeError):
            hash(cache)

    def test_contents_reads_and_assigns_in_place(
        self, pair: tuple[dict[Any, Any], CacheWrap]
    ) -> None:
        _, cache = pair
        assert cache.contents is cache
        held = cache
        cache.contents = {"only": 1}
        assert held is cache
        assert held == {"only": 1}
        with pytest.raises(TypeError, match="behaviour"):
            cache.contents = [1, 2]  # type: ignore[assignment]
        assert held == {"only": 1}

    def test_name_and_manager(
        self, pair: tuple[dict[Any, Any], CacheWrap], manager: CacheManager
    ) -> None:
        _, cache = pair
        assert cache.name == "behaviour"
        assert cache.manager is manager
        assert manager.retrieve_raise("behaviour") is cache


class TestNonPersistentCache(DictBehaviour):
    cache_class = NonPersistentCache


class TestCacheWrap(DictBehaviour):
    cache_class = CacheWrap


class TestPersistentCache(DictBehaviour):
    cache_class = PersistentCache

    @pytest.fixture
    def manager(self, store_manager: CacheManager) -> CacheManager:
        return store_manager  # the same suite on the pickle store and on Redis


class TestAutoSyncCache(DictBehaviour):
    cache_class = AutoSyncCache

    @pytest.fixture
    def manager(self, store_manager: CacheManager) -> CacheManager:
        return store_manager  # the same suite on the pickle store and on Redis


class TestCSVCache(DictBehaviour):
    cache_class = CSVCache


class TestAutoSyncCSVCache(DictBehaviour):
    cache_class = AutoSyncCSVCache


# -- lifecycle ----------------------------------------------------------------------


def test_reads_are_not_overridden() -> None:
    """Reads are never overridden: every cache class runs the dict's own C code."""
    read_methods = ("__getitem__", "get", "__contains__", "__iter__", "__len__", "keys")
    for cls in (CacheWrap, NonPersistentCache, PersistentCache, AutoSyncCache, CSVCache):
        for method in read_methods:
            assert getattr(cls, method) is getattr(dict, method), (cls, method)


def test_persistent_cache_round_trip(manager: CacheManager) -> None:
    cache = PersistentCache("numbers", cache_manager=manager)
    assert cache == {}
    cache.update({1: "one", (2, 3): [4, 5]})
    cache.save()
    assert (manager.cache_directory / "numbers.pkl").exists()
    cache[9] = "unsaved"
    cache.load()
    assert cache == {1: "one", (2, 3): [4, 5]}


@both_stores
def test_load_keeps_the_same_object(manager: CacheManager) -> None:
    cache = manager.register_cache("same")
    cache["k"] = 1
    cache.save()
    held = cache
    manager.reload_cache("same")
    assert held is manager.retrieve_raise("same")
    assert held == {"k": 1}


@both_stores
def test_initial_contents_are_used_without_loading(manager: CacheManager) -> None:
    first = PersistentCache("seeded", cache_manager=manager)
    first["old"] = 1
    first.save()
    seeded = PersistentCache("seeded", cache_manager=manager, contents={"new": 2})
    assert seeded == {"new": 2}
    seeded.save()
    seeded.load()
    assert seeded == {"new": 2}


def test_contents_must_be_a_mapping(manager: CacheManager) -> None:
    with pytest.raises(TypeError, match=r"'bad'.*list"):
        PersistentCache("bad", cache_manager=manager, contents=[1, 2])  # type: ignore[arg-type]
    assert not manager.cache_registered("bad")


@both_stores
def test_with_block_saves_on_exit(manager: CacheManager) -> None:
    with PersistentCache("ctx", cache_manager=manager) as cache:
        cache["x"] = 1
    fresh = PersistentCache("ctx2", cache_manager=manager, loader=manager.store.load)
    assert manager.store.load("ctx") == {"x": 1}
    assert fresh == {}


@both_stores
def test_save_on_blank_cache_false_keeps_old_copy(manager: CacheManager) -> None:
    cache = PersistentCache("blank", cache_manager=manager, save_on_blank_cache=False)
    cache["a"] = 1
    cache.save()
    cache.clear()
    cache.save()
    assert manager.store.load("blank") == {"a": 1}


def test_non_persistent_cache_never_touches_disk(manager: CacheManager) -> None:
    cache = NonPersistentCache("mem", cache_manager=manager, contents={"a": 1})
    cache.save()
    cache.load()
    assert cache == {"a": 1}  # nothing to load from: contents kept
    cache.delete_saved_content()
    assert not manager.cache_directory.exists()


def test_non_persistent_builder_runs_on_load(manager: CacheManager) -> None:
    calls: list[str] = []

    def builder(name: str) -> dict[str, int]:
        calls.append(name)
        return {"built": len(calls)}

    cache = NonPersistentCache("built", cache_manager=manager, builder=builder)
    assert cache == {"built": 1}
    cache.load()
    assert cache == {"built": 2}
    assert calls == ["built", "built"]


# -- hooks ----------------------------------------------------------------------------


def test_custom_loader_and_saver(manager: CacheManager) -> None:
    storage: dict[str, dict[Any, Any]] = {"hooked": {"from": "loader"}}

    def loader(name: str) -> Mapping[Any, Any] | None:
        return storage.get(name)

    def saver(name: str, contents: Mapping[Any, Any]) -> None:
        storage[name] = dict(contents)

    cache = PersistentCache("hooked", cache_manager=manager, loader=loader, saver=saver)
    assert cache == {"from": "loader"}
    cache["more"] = 1
    cache.save()
    assert storage["hooked"] == {"from": "loader", "more": 1}
    assert not manager.cache_directory.exists()  # the store was never used


def test_loader_returning_none_means_nothing_saved(manager: CacheManager) -> None:
    cache = PersistentCache(
        "empty", cache_manager=manager, loader=lambda name: None, builder=lambda name: {"b": 1}
    )
    assert cache == {"b": 1}


@pytest.mark.parametrize("hook", ["loader", "builder"])
def test_non_mapping_from_loader_or_builder_is_type_error(manager: CacheManager, hook: str) -> None:
    kwargs: dict[str, Any] = {hook: lambda name: [("a", 1)]}
    if hook == "builder":
        kwargs["loader"] = lambda name: None
    with pytest.raises(TypeError, match=rf"cache 'typed'.*{hook}.*list"):
        PersistentCache("typed", cache_manager=manager, **kwargs)


@both_stores
def test_deleter_and_default_deleter(manager: CacheManager) -> None:
    deleted: list[str] = []
    custom = PersistentCache("custom_del", cache_manager=manager, deleter=deleted.append)
    custom.delete_saved_content()
    assert deleted == ["custom_del"]

    default = PersistentCache("default_del", cache_manager=manager, contents={"a": 1})
    default.save()
    default.delete_saved_content()
    assert not manager.store.exists("default_del")
    assert default == {"a": 1}  # contents in memory stay


@both_stores
def test_validator_rejects_and_logs(manager: CacheManager, caplog: Any) -> None:
    PersistentCache("checked", cache_manager=manager, contents={"version": 1}).save()
    caplog.set_level(logging.WARNING, logger="cacheman")
    cache = PersistentCache(
        "checked",
        cache_manager=manager,
        validator=lambda contents: contents.get("version") == 2,
        builder=lambda name: {"version": 2},
    )
    assert cache == {"version": 2}
    assert "'checked'" in caplog.text
    assert "validator rejected" in caplog.text


def test_validator_exception_means_invalid_with_reason(manager: CacheManager, caplog: Any) -> None:
    PersistentCache("raising_validator", cache_manager=manager, contents={"a": 1}).save()

    def validator(contents: Mapping[Any, Any]) -> bool:
        raise LookupError("schema field missing")

    caplog.set_level(logging.WARNING, logger="cacheman")
    cache = PersistentCache("raising_validator", cache_manager=manager, validator=validator)
    assert cache == {}
    assert "LookupError: schema field missing" in caplog.text


def test_validator_not_run_on_built_contents(manager: CacheManager) -> None:
    seen: list[Any] = []
    cache = PersistentCache(
        "validate_loaded_only",
        cache_manager=manager,
        validator=lambda contents: seen.append(dict(contents)) or True,
        builder=lambda name: {"b": 1},
    )
    assert cache == {"b": 1}
    assert seen == []  # nothing was saved yet, so nothing was loaded to validate
    cache.save()
    cache.load()
    assert seen == [{"b": 1}]


@both_stores
def test_pre_processor_gets_a_copy_never_the_live_cache(manager: CacheManager) -> None:
    seen: list[Any] = []

    def pre(contents: dict[Any, Any]) -> None:
        seen.append(contents)
        contents.pop("secret", None)  # in place: returning None keeps the edited copy

    cache = PersistentCache("pre", cache_manager=manager, pre_processor=pre)
    cache.update({"secret": "x", "public": 1})
    cache.save()
    assert seen[0] is not cache
    assert cache == {"secret": "x", "public": 1}
    assert manager.store.load("pre") == {"public": 1}


@both_stores
def test_pre_processor_return_value_is_saved(manager: CacheManager) -> None:
    cache = PersistentCache(
        "pre_ret", cache_manager=manager, pre_processor=lambda c: {k: v * 2 for k, v in c.items()}
    )
    cache["a"] = 2
    cache.save()
    assert manager.store.load("pre_ret") == {"a": 4}
    assert cache == {"a": 2}


@both_stores
def test_post_processor_after_load_and_build(manager: CacheManager) -> None:
    def post(contents: dict[str, int]) -> dict[str, int]:
        return {key: value + 100 for key, value in contents.items()}

    built = PersistentCache(
        "post", cache_manager=manager, builder=lambda n: {"a": 1}, post_processor=post
    )
    assert built == {"a": 101}
    manager.store.save("post", {"a": 5})
    built.load()
    assert built == {"a": 105}


class HookFailure(Exception):
    pass


def _raise(*args: Any) -> Any:
    raise HookFailure("boom")


@both_stores
@pytest.mark.parametrize(
    ("hook", "operation"),
    [
        ("saver", "save"),
        ("deleter", "delete_saved_content"),
        ("pre_processor", "save"),
        ("post_processor", "load"),
        ("builder", "invalidate_and_rebuild"),
    ],
)
def test_raising_hook_propagates_and_leaves_cache_unchanged(
    manager: CacheManager, hook: str, operation: str
) -> None:
    cache = PersistentCache("fragile", cache_manager=manager, contents={"keep": 1})
    cache.save()
    setattr(cache, hook, _raise)
    with pytest.raises(HookFailure, match="boom"):
        getattr(cache, operation)()
    assert cache == {"keep": 1}
    if hook != "deleter":
        assert manager.store.load("fragile") == {"keep": 1}


def test_a_raising_loader_is_damage_not_a_crash(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    # Unlike the other hooks: a loader that cannot read its data is treated like a
    # damaged file (warned about, rebuilt), so registering the cache still works.
    cache = PersistentCache("never", cache_manager=manager, loader=_raise, builder=lambda n: {1: 1})
    assert cache == {1: 1}
    assert manager.cache_registered("never")
    assert "cache 'never': the loader raised HookFailure: boom" in caplog.text


def test_registered_hooks_replace_defaults(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("late", autosync=False)
    saved: dict[str, Any] = {}
    manager.register_saver("late", lambda name, contents: saved.update({name: dict(contents)}))
    manager.register_loader("late", lambda name: {"from": "hook"})
    manager.register_builder("late", lambda name: {"built": True})
    manager.register_validator("late", lambda contents: "from" in contents)
    manager.register_post_processor("late", lambda contents: {**contents, "post": 1})
    manager.register_pre_processor("late", lambda contents: {**contents, "pre": 1})
    deleted: list[str] = []
    manager.register_deleter("late", deleted.append)
    manager.reload_cache("late")
    assert cache == {"from": "hook", "post": 1}
    manager.save_cache_contents("late")
    assert saved == {"late": {"from": "hook", "post": 1, "pre": 1}}
    manager.delete_saved_cache_content("late")
    assert deleted == ["late"]
    assert not manager.store.exists("late")


# -- 2.x names and misspelt keywords ---------------------------------------------------


@pytest.mark.parametrize(
    ("cache_class", "keyword", "suggestion"),
    [
        (PersistentCache, "bulder", "builder"),
        (NonPersistentCache, "post_procesor", "post_processor"),
        (AutoSyncCache, "time_check", "time_checks"),
        (CSVCache, "row_reeder", "row_reader"),
        (PersistentCache, "asyncsave", "async_save"),
    ],
)
def test_misspelt_keyword_raises_type_error_with_suggestion(
    manager: CacheManager, cache_class: type[CacheWrap], keyword: str, suggestion: str
) -> None:
    with pytest.raises(TypeError, match=rf"did you mean '{suggestion}'\?") as raised:
        cache_class("typo", cache_manager=manager, **{keyword: None})
    message = str(raised.value)
    assert f"{cache_class.__name__}('typo')" in message
    assert f"unexpected keyword argument '{keyword}'" in message
    assert "the hooks are loader, saver, builder" in message
    assert not manager.cache_registered("typo")


def test_keyword_far_from_any_name_lists_the_hooks(manager: CacheManager) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'zzz'") as raised:
        PersistentCache("typo", cache_manager=manager, zzz=1)
    assert "did you mean" not in str(raised.value)
    assert "post_processor" in str(raised.value)


def test_subclass_keywords_are_known(manager: CacheManager) -> None:
    class Tagged(PersistentCache):
        def __init__(self, cache_name: str, cache_manager: CacheManager, *, tag: str = "") -> None:
            self.tag = tag
            super().__init__(cache_name, cache_manager=cache_manager, builder=lambda n: {"a": 1})

    cache = Tagged("tagged", manager, tag="t")
    assert (cache.tag, cache) == ("t", {"a": 1})
    with pytest.raises(TypeError, match="did you mean 'tag'"):
        Tagged("tagged2", manager, tga="t")


def test_subclass_taking_any_keyword_is_not_second_guessed(manager: CacheManager) -> None:
    # A subclass with **kwargs may use a keyword itself: only Python's own check applies.
    class Options(PersistentCache):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.colour = kwargs.pop("colour", None)
            super().__init__(*args, **kwargs)

    assert Options("options", cache_manager=manager, colour="red").colour == "red"
    with pytest.raises(TypeError, match="unexpected keyword argument 'shape'"):
        Options("options2", cache_manager=manager, shape="round")
    assert not manager.cache_registered("options2")


def test_2x_names_callback_names_and_async_saver(manager: CacheManager) -> None:
    assert CacheWrap.CALLBACK_NAMES == HOOK_NAMES
    cache = PersistentCache("flags", cache_manager=manager, async_save=True)
    assert cache.async_saver is True
    cache.async_saver = False
    assert cache.async_save is False


def test_post_processor_needs_something_loaded_or_built(manager: CacheManager) -> None:
    # Unlike 2.x, nothing saved and no builder is no build: the post-processor
    # does not run.  A builder returning {} brings the 2.x behaviour back.
    def defaults(contents: dict[str, int]) -> dict[str, int]:
        return {"default": 0, **contents}

    plain = PersistentCache("plain", cache_manager=manager, post_processor=defaults)
    assert plain == {}
    built = PersistentCache(
        "built", cache_manager=manager, post_processor=defaults, builder=lambda name: {}
    )
    assert built == {"default": 0}
    built["mine"] = 1
    built.save()
    built.load()
    assert built == {"default": 0, "mine": 1}
    built.invalidate_and_rebuild()
    assert built == {"default": 0}


def test_a_rejected_copy_is_replaced_by_the_next_save(manager: CacheManager) -> None:
    # The validator rejects the saved copy and nothing is built: the next save must
    # write the cache as it is, not add its edits to the rejected copy.
    cache = manager.register_custom_cache("checked", autosync=False)
    cache["bad"] = 1
    cache.save()
    cache.validator = lambda contents: "good" in contents
    cache.load()
    assert cache == {}
    cache["good"] = 1
    cache.save()
    cache.load()
    assert cache == {"good": 1}
