"""The exception hierarchy: one base, and the built-in each error stands for."""

from __future__ import annotations

import pytest

from cacheman import errors


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.CacheNotRegisteredError, KeyError),
        (errors.InvalidCacheNameError, ValueError),
        (errors.DependencyCycleError, ValueError),
        (errors.CorruptCacheError, ValueError),
        (errors.InsecureCacheError, PermissionError),
        (errors.SignatureMismatchError, ValueError),
        (errors.ManagerClosedError, ValueError),
        (errors.UnpicklableValueError, TypeError),
    ],
)
def test_each_error_is_a_cacheman_error_and_its_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, errors.CacheManError)
    assert issubclass(error, builtin)
    assert error.__doc__, "each exception documents itself in one line"
    with pytest.raises(builtin):
        raise error("cache 'x': what went wrong")


def test_every_public_error_is_exported() -> None:
    import cacheman

    for name in errors.__all__:
        assert getattr(cacheman, name) is getattr(errors, name)


def test_key_error_message_reads_as_a_sentence() -> None:
    # KeyError's str() quotes its argument; ours reads as the sentence it is.
    assert str(errors.CacheNotRegisteredError("no cache named 'x'")) == "no cache named 'x'"
