"""Hooks and constructor keywords are checked when given, with messages naming cache and hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cacheman import AutoSyncCache, CacheManager, NonPersistentCache, PersistentCache, _registry
from cacheman._persist.hooks import HOOK_PARAMETERS
from cacheman.cachewrap import HOOK_NAMES


def test_every_hook_has_a_calling_convention() -> None:
    assert tuple(HOOK_PARAMETERS) == HOOK_NAMES


def test_a_builder_that_is_not_callable_is_refused_at_registration(manager: CacheManager) -> None:
    with pytest.raises(TypeError, match=r"cache 'd': the builder must be a function .* not dict"):
        manager.register_builder("d", {"a": 1})  # type: ignore[arg-type]
    assert not manager.cache_registered("d"), "nothing half-registered"


def test_a_builder_without_its_name_parameter_names_the_cache_and_the_hook(
    manager: CacheManager,
) -> None:
    with pytest.raises(TypeError) as caught:
        manager.register_builder("squares", lambda: {2: 4})  # type: ignore[arg-type,misc]
    message = str(caught.value)
    assert message.startswith("cache 'squares': the builder <lambda> cannot be called as")
    assert "builder(name)" in message


@pytest.mark.parametrize(
    ("hook", "function"),
    [
        ("loader", lambda: None),
        ("saver", lambda name: None),
        ("builder", lambda name, extra: {}),
        ("deleter", lambda: None),
        ("validator", lambda: True),
        ("pre_processor", lambda contents, extra: contents),
        ("post_processor", 42),
    ],
)
def test_each_hook_keyword_is_checked_by_the_constructor(
    manager: CacheManager, hook: str, function: Any
) -> None:
    with pytest.raises(TypeError, match=rf"^cache 'kw': the {hook} "):
        PersistentCache("kw", cache_manager=manager, **{hook: function})
    assert not manager.cache_registered("kw")


def test_hooks_that_fit_are_accepted(manager: CacheManager) -> None:
    def builder(name: str, *, scale: int = 2) -> dict[int, int]:
        return {1: scale}

    cache = PersistentCache(
        "fits",
        cache_manager=manager,
        builder=builder,
        saver=lambda *args: None,  # *args fits any call
        validator=len,  # a built-in whose signature is known
        post_processor=dict,  # a class
    )
    assert cache == {1: 2}
    manager.register_loader("fits", lambda name, default=None: default)


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (
            lambda m: m.register_custom_cache("a", autosnyc=False),
            "register_custom_cache('a') got an unexpected keyword argument 'autosnyc' "
            "(did you mean 'autosync'?)",
        ),
        (
            lambda m: PersistentCache("a", cache_manger=m),
            "PersistentCache('a') got an unexpected keyword argument 'cache_manger' "
            "(did you mean 'cache_manager'?)",
        ),
        (
            lambda m: AutoSyncCache("a", cache_manager=m, time_check=[]),
            "(did you mean 'time_checks'?)",
        ),
        (
            lambda m: NonPersistentCache("a", cache_manager=m, lodaer=dict),
            "(did you mean 'loader'?)",
        ),
    ],
)
def test_a_misspelt_cache_keyword_gets_a_did_you_mean(
    manager: CacheManager, make: Any, said: str
) -> None:
    with pytest.raises(TypeError) as caught:
        make(manager)
    assert said in str(caught.value)
    assert not manager.cache_registered("a")


def test_a_misspelt_manager_keyword_gets_a_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(TypeError) as caught:
        CacheManager("typo", base_cache_directry=tmp_path)  # type: ignore[call-arg]
    assert str(caught.value) == (
        "CacheManager('typo') got an unexpected keyword argument 'base_cache_directry' "
        "(did you mean 'base_cache_directory'?)"
    )
    manager = CacheManager("typo", base_cache_directory=tmp_path, signing_key=None)
    assert manager.cache_directory == tmp_path / "typo"
    _registry.discard(manager)
