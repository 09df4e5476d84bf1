"""What CacheMan tells the ``cacheman`` logger (docs/logging.rst lists every family)."""

from __future__ import annotations

import itertools
import logging
import textwrap
from pathlib import Path

import pytest
from helpers import run_python

from cacheman import CacheManager, PersistentCache, _log, _registry
from cacheman.autosync import AutoSyncCache, TimeCount


def records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == level and text in r.getMessage()]


def test_a_save_and_an_append_are_logged_at_debug_with_kind_entries_bytes_and_time(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    # Built with contents: they replace whatever is saved, so the first save is a snapshot.
    squares = {n: n * n for n in range(50)}
    cache = PersistentCache("squares", cache_manager=manager, contents=squares)
    with caplog.at_level(logging.DEBUG, logger="cacheman"):
        cache.save()
        cache[99] = 9801
        cache.save()
    saves = records(caplog, logging.DEBUG, "cache 'squares': saved")
    assert len(saves) == 2, caplog.text
    assert all(r.name == "cacheman.io" for r in saves)
    first, second = (r.getMessage() for r in saves)
    size = manager.store.usage("squares")[0]  # type: ignore[attr-defined]
    assert "(snapshot, in-process): 50 entries" in first
    assert "(append, in-process): 1 entries" in second
    assert f"{size} bytes on disk" in second
    assert " ms" in second


def test_a_load_is_logged_at_debug(manager: CacheManager, caplog: pytest.LogCaptureFixture) -> None:
    cache = PersistentCache("words", cache_manager=manager)
    cache.update(a=1, b=2, c=3)
    cache.save()
    with caplog.at_level(logging.DEBUG, logger="cacheman"):
        cache.load()
    (load,) = records(caplog, logging.DEBUG, "cache 'words': loaded")
    assert "(store): 3 entries" in load.getMessage()


def test_a_user_loader_is_logged_as_a_hook(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cacheman"):
        PersistentCache("hooked", cache_manager=manager, loader=lambda name: {"x": 1})
    (load,) = records(caplog, logging.DEBUG, "cache 'hooked': loaded")
    assert "(hook): 1 entries, ? bytes" in load.getMessage()


def test_nothing_is_logged_below_the_level_set(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    cache = PersistentCache("quiet", cache_manager=manager)
    cache["a"] = 1
    with caplog.at_level(logging.INFO, logger="cacheman"):
        cache.save()
        cache.load()
    assert not [r for r in caplog.records if r.name.startswith("cacheman")], caplog.text


def test_a_save_over_a_second_is_logged_at_info(
    manager: CacheManager, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that moves 2 s between two readings: every save "takes" 2 s.
    ticks = itertools.count(step=2.0)
    monkeypatch.setattr(_log, "clock", lambda: next(ticks))
    cache = PersistentCache("slow", cache_manager=manager)
    cache["a"] = 1
    with caplog.at_level(logging.INFO, logger="cacheman"):
        cache.save()
    (slow,) = records(caplog, logging.INFO, "cache 'slow': saved")
    assert "2000.0 ms" in slow.getMessage()


def test_a_failed_explicit_save_sets_last_save_error_and_a_good_one_clears_it(
    manager: CacheManager,
) -> None:
    fail = [True]

    def saver(name: str, contents: object) -> None:
        if fail[0]:
            raise OSError("disk full")

    cache = PersistentCache("flaky", cache_manager=manager, saver=saver)
    cache["a"] = 1
    assert cache.last_save_error is None
    with pytest.raises(OSError, match="disk full"):
        cache.save()
    assert cache.last_save_error == "OSError: disk full"
    fail[0] = False
    cache.save()
    assert cache.last_save_error is None


@pytest.mark.parametrize(
    ("cascade", "because"),
    [
        (False, "because its parent 'root' changed since it was built"),
        # The other program reset 'edge' itself: it marked it stale, and deleted its copy.
        (True, "because another process invalidated a cache it derives from"),
    ],
)
def test_a_reset_because_a_parent_changed_is_a_warning_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cascade: bool, because: str
) -> None:
    here = CacheManager("lineage", tmp_path)
    other = CacheManager("lineage", tmp_path)  # another program on the same directory
    try:
        root = PersistentCache("root", cache_manager=here, contents={"x": 1})
        root.save()
        edge = PersistentCache("edge", cache_manager=here, contents={"y": 2})
        here.register_dependent_cache("root", "edge")
        edge.save()
        PersistentCache("root", cache_manager=other).invalidate_and_rebuild(cascade)
        with caplog.at_level(logging.WARNING, logger="cacheman"):
            edge.load()
        (reset,) = records(caplog, logging.WARNING, "cache 'edge': reset")
        assert because in reset.getMessage()
        assert edge == {}
    finally:
        for each in (here, other):
            each.deregister_all_caches()
            _registry.discard(each)


def test_the_exit_flush_is_summarised_at_info(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(
            stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s"
        )
        from cacheman import CacheManager
        manager = CacheManager("exiting", sys.argv[1])
        for name in ("a", "b"):
            cache = manager.register_cache(name)
            cache.update({n: n for n in range(10)})
        """
    )
    result = run_python("-c", script, str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "exit flush" in line]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("INFO exit flush: saved 2 cache(s), 20 entries, in ")


def test_a_child_save_is_logged_in_the_parent_when_it_lands(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    cache = AutoSyncCache(
        "forked", cache_manager=manager, time_checks=[TimeCount(60, 10**9)], async_save=True
    )
    cache.update({n: n for n in range(5000)})  # more than a light append: a child writes it
    with caplog.at_level(logging.DEBUG, logger="cacheman"):
        cache.save()
        cache.load()  # waits for the child, and applies its outcome
    saves = records(caplog, logging.DEBUG, "cache 'forked': saved")
    assert len(saves) == 1, caplog.text
    assert ", child): 5000 entries" in saves[0].getMessage()
