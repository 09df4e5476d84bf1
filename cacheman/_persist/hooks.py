"""The hooks' calling conventions, and the check that a hook fits its one.

A hook is checked when it is given (a constructor keyword, a ``register_<hook>``
call), so that a builder written without its ``name`` parameter is reported
then, naming the cache and the hook, rather than later, deep in a load, as
``<lambda>() takes 0 positional arguments but 1 was given``.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["HOOK_PARAMETERS", "check_hook"]

#: What each hook is called with (docs/hooks.rst).
HOOK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "loader": ("name",),
    "saver": ("name", "contents"),
    "builder": ("name",),
    "deleter": ("name",),
    "validator": ("contents",),
    "pre_processor": ("contents",),
    "post_processor": ("contents",),
}


def check_hook(cache_name: str, hook: str, function: Any) -> None:
    """Raise ``TypeError`` naming the cache and the hook unless ``function`` fits ``hook``.

    ``None`` (no hook) fits.  A callable whose signature cannot be read (some
    built-ins) is trusted.

    >>> check_hook("squares", "builder", lambda: {})
    Traceback (most recent call last):
    ...
    TypeError: cache 'squares': the builder <lambda> cannot be called as builder(name) \
(too many positional arguments); write it as def builder(name): ...
    """
    if function is None:
        return
    parameters = HOOK_PARAMETERS[hook]
    call = f"{hook}({', '.join(parameters)})"
    if not callable(function):
        shown = repr(function)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise TypeError(
            f"cache {cache_name!r}: the {hook} must be a function called as {call}, "
            f"not {type(function).__name__} {shown}"
        )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*parameters)
    except TypeError as error:
        what = getattr(function, "__name__", None) or type(function).__name__
        raise TypeError(
            f"cache {cache_name!r}: the {hook} {what} cannot be called as {call} "
            f"({error}); write it as def {call}: ..."
        ) from None
