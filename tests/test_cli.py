"""``python -m cacheman list/show/verify/delete/graph/path``, run as a user runs them.

Every test writes caches with the library in ``tmp_path``, then runs the real
command in a fresh interpreter and checks what it printed and its exit status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python, wait_until_reading_stdin

from cacheman import CacheManager, RedisStore, _registry
from cacheman.__main__ import main
from cacheman._cli import INTERRUPTED, OK, PROBLEM, REFUSED, USAGE_ERROR
from cacheman._stores.journal import SET

ROOT = Path(__file__).resolve().parent.parent


def cacheman(
    manager: CacheManager, *args: str, stdin: int | None = subprocess.DEVNULL, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cacheman --manager NAME --dir BASE ARGS`` for ``manager``."""
    where = ["--manager", manager.name, "--dir", str(manager.cache_directory.parent)]
    return run_python("-m", "cacheman", *where, *args, env={**os.environ, **env}, stdin=stdin)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def saved(manager: CacheManager) -> CacheManager:
    """A manager with three saved caches, metadata on one, and two persisted edges."""
    squares = manager.register_cache("squares")
    squares.update({n: n * n for n in range(20)})
    squares.save()
    roots = manager.register_cache("roots")
    roots.update({4: 2.0, 9: 3.0})
    roots.save()
    words = manager.register_cache("words")
    words["a"] = "apple"
    words.save()
    manager.store.update_meta("squares", generation="0123456789abcdef:3", saved_at=1.7e9)
    manager.store.update_meta("roots", generation=None)  # as a cache saved by 2.x has none
    manager.store.add_edges([("squares", "roots"), ("roots", "words")])
    manager.deregister_all_caches()
    return manager


def pickle_file(manager: CacheManager, name: str) -> Path:
    return manager.cache_directory / f"{name}.pkl"


def files_of(manager: CacheManager, name: str) -> list[Path]:
    """The files the store keeps for ``name``: ``<name>.pkl``, ``<name>.meta.json``..."""
    files = [
        path
        for path in manager.cache_directory.iterdir()
        if path.name.split(".")[0] == name and ".corrupt-" not in path.name
    ]
    assert pickle_file(manager, name) in files
    return files


def damage(path: Path) -> None:
    """Flip one byte of the pickle inside a saved file: its checksum no longer matches."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


# -- list / show / path ------------------------------------------------------------------


def test_list_prints_every_cache_with_its_entries_bytes_save_time_and_generation(
    saved: CacheManager,
) -> None:
    result = cacheman(saved, "list")
    assert result.returncode == OK, result.stderr
    lines = result.stdout.splitlines()
    header = ["NAME", "ENTRIES", "BYTES", "LAST", "SAVE", "GENERATION", "STATE"]
    assert lines[0].split() == header
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["roots", "squares", "words"]
    assert rows["squares"][1] == "20"
    assert rows["squares"][-2] == "0123456789abcdef:3"
    assert rows["roots"][1] == "2"
    assert rows["roots"][-2] == "-", "no generation saved: shown as -"
    assert rows["squares"][-1] == "-", "derived from nothing"
    assert rows["roots"][-1] == "fresh", "derived, and nothing says it is stale"


def test_list_json(saved: CacheManager) -> None:
    data = as_json(cacheman(saved, "list", "--json"))
    assert data["manager"] == saved.name
    assert data["path"] == str(saved.cache_directory)
    caches = {each["name"]: each for each in data["caches"]}
    assert sorted(caches) == ["roots", "squares", "words"]
    squares = caches["squares"]
    assert squares["entries"] == 20
    assert squares["bytes"] == sum(path.stat().st_size for path in files_of(saved, "squares"))
    assert squares["last_save"] == 1.7e9, "the saved_at of the metadata"
    assert squares["generation"] == "0123456789abcdef:3"
    roots = caches["roots"]
    assert roots["generation"] is None
    roots_files = files_of(saved, "roots")
    assert roots["bytes"] == sum(path.stat().st_size for path in roots_files)
    newest = max(path.stat().st_mtime for path in roots_files)
    assert roots["last_save"] == newest, "else the time its files were last written"


def test_global_options_also_go_after_the_command(saved: CacheManager) -> None:
    base = str(saved.cache_directory.parent)
    result = run_python("-m", "cacheman", "list", "--json", "--manager", saved.name, "--dir", base)
    assert [each["name"] for each in as_json(result)["caches"]] == ["roots", "squares", "words"]
    overridden = cacheman(saved, "list", "--manager", "nonesuch")  # given before and after
    assert "unknown manager 'nonesuch'" in overridden.stderr, "the one after the command wins"


def test_the_defaults_are_the_librarys_manager_and_directory(tmp_path: Path) -> None:
    result = run_python("-m", "cacheman", "path", cache_dir=tmp_path)
    assert result.returncode == OK, result.stderr
    assert result.stdout == f"{tmp_path / 'general_cacher'}\n"


def test_path_json_says_whether_the_directory_exists(saved: CacheManager) -> None:
    assert as_json(cacheman(saved, "path", "--json")) == {
        "manager": saved.name,
        "path": str(saved.cache_directory),
        "exists": True,
    }


def test_list_of_a_manager_whose_caches_were_all_deleted(saved: CacheManager) -> None:
    for name in ("roots", "squares", "words"):
        saved.store.delete(name)
        saved.store.remove_edges(name)
    result = cacheman(saved, "list")
    assert result.returncode == OK
    assert f"manager {saved.name!r} has no saved caches" in result.stdout
    assert as_json(cacheman(saved, "list", "--json"))["caches"] == []


def test_show_prints_the_metadata_and_the_first_entries(saved: CacheManager) -> None:
    result = cacheman(saved, "show", "squares", "--keys", "3")
    assert result.returncode == OK, result.stderr
    assert "entries     20" in result.stdout
    assert "generation  0123456789abcdef:3" in result.stdout
    assert result.stdout.endswith("first 3 of 20 entries:\n  0: 0\n  1: 1\n  2: 4\n")


def test_show_json(saved: CacheManager) -> None:
    data = as_json(cacheman(saved, "show", "roots", "--json"))
    assert data["name"] == "roots"
    assert data["entries"] == 2
    assert data["keys"] == ["4", "9"], "keys as their repr"
    assert data["items"] == [{"key": "4", "value": 2.0}, {"key": "9", "value": 3.0}]
    assert data["meta"] == {}
    assert as_json(cacheman(saved, "show", "squares", "--json", "--keys", "0"))["keys"] == []


def test_show_keys_prints_their_values_cut_to_the_terminal_width(manager: CacheManager) -> None:
    cache = manager.register_cache("long")
    cache.update({1: "x" * 500, "one": [1, 2], (2, 3): {"nested": True}})
    cache.save()
    manager.deregister_all_caches()
    result = cacheman(manager, "show", "long", "1", "'one'", "(2, 3)", COLUMNS="40")
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines() == [
        "1: '" + "x" * 33 + "...",  # 40 characters
        "'one': [1, 2]",
        "(2, 3): {'nested': True}",
    ]
    data = as_json(cacheman(manager, "show", "long", "one", "1", "--json", COLUMNS="40"))
    assert data["items"] == [
        {"key": "'one'", "value": [1, 2]},
        {"key": "1", "value": "x" * 500},
    ], "--json prints values in full; a key matches its str() too"


def test_show_names_a_missing_key_with_a_suggestion(saved: CacheManager) -> None:
    result = cacheman(saved, "show", "squares", "100", "3")
    assert result.returncode == PROBLEM
    assert "cache 'squares' has no key '100' (did you mean '10'" in result.stderr
    assert result.stdout == "", "nothing printed when a key is missing"


def test_a_value_json_cannot_hold_is_shown_as_its_repr(manager: CacheManager) -> None:
    cache = manager.register_cache("odd")
    cache["when"] = {1, 2}
    cache.save()
    manager.deregister_all_caches()
    data = as_json(cacheman(manager, "show", "odd", "when", "--json"))
    assert data["items"] == [{"key": "'when'", "value": "{1, 2}"}]


def test_a_missing_cache_is_named_with_a_suggestion(saved: CacheManager) -> None:
    result = cacheman(saved, "show", "sqaures")
    assert result.returncode == PROBLEM
    assert "no saved cache named 'sqaures' (did you mean 'squares'?)" in result.stderr
    assert result.stdout == ""


def test_an_unknown_manager_is_named_with_the_managers_there(saved: CacheManager) -> None:
    base = saved.cache_directory.parent
    for command in (["list"], ["verify"], ["graph"], ["show", "squares"]):
        result = run_python("-m", "cacheman", *command, "--manager", "nonesuch", "--dir", str(base))
        assert result.returncode == PROBLEM, command
        assert "unknown manager 'nonesuch': nothing is saved in" in result.stderr
        assert f"managers in {base}: {saved.name}" in result.stderr


# -- verify --------------------------------------------------------------------------------


def test_verify_passes_intact_caches(saved: CacheManager) -> None:
    result = cacheman(saved, "verify")
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines() == [
        "ok        roots",
        "ok        squares",
        "ok        words",
        "3 cache(s) checked: 3 ok",
    ]


@pytest.mark.parametrize(
    ("how", "said"),
    [
        (damage, "its checksum does not match its contents"),
        (lambda path: path.write_bytes(path.read_bytes()[:40]), "it is truncated inside its"),
        (lambda path: path.write_bytes(path.read_bytes()[:-5]), "it is truncated or padded"),
        (lambda path: path.write_bytes(b""), "it is empty"),
    ],
)
def test_verify_names_a_damaged_file_and_leaves_it_in_place(
    saved: CacheManager, how: Any, said: str
) -> None:
    path = pickle_file(saved, "squares")
    how(path)
    before = path.read_bytes()
    result = cacheman(saved, "verify")
    assert result.returncode == PROBLEM
    (line,) = [line for line in result.stdout.splitlines() if "squares" in line]
    assert line.startswith("damaged   squares: ")
    assert f"{path} is damaged: {said}" in line, "names the file and what is wrong with it"
    assert "ok        roots" in result.stdout
    assert path.read_bytes() == before, "verify without --fix changes nothing"
    # list and show report it too, and leave it alone as well
    listed = cacheman(saved, "list", "--json")
    assert listed.returncode == PROBLEM
    assert as_json(listed)["caches"][1]["entries"] is None
    shown = cacheman(saved, "show", "squares")
    assert shown.returncode == PROBLEM
    assert "verify --fix squares" in shown.stderr
    assert path.read_bytes() == before


def test_verify_checks_the_journal_tail_and_fix_cuts_it_off(saved: CacheManager) -> None:
    saved.store.append("roots", [(SET, 16, 4.0)])
    saved.store.append("roots", [(SET, 25, 5.0)])
    journal = saved.cache_directory / "roots.journal"
    journal.write_bytes(journal.read_bytes()[:-3])  # a writer killed mid-append
    result = cacheman(saved, "verify", "roots")
    assert result.returncode == PROBLEM
    assert result.stdout.startswith(f"damaged   roots: the journal {journal} ends in ")
    assert as_json(cacheman(saved, "list", "--json"))["caches"][0]["entries"] is None
    fixed = cacheman(saved, "verify", "--fix", "roots")
    assert fixed.returncode == OK, fixed.stdout
    assert "cut off the torn tail" in fixed.stdout
    assert cacheman(saved, "verify").returncode == OK
    listed = as_json(cacheman(saved, "list", "--json"))["caches"][0]
    assert (listed["name"], listed["entries"]) == ("roots", 3), "the complete record is kept"


def test_verify_json(saved: CacheManager) -> None:
    damage(pickle_file(saved, "words"))
    result = cacheman(saved, "verify", "words", "roots", "--json")
    assert result.returncode == PROBLEM
    data = as_json(result)
    assert data["exit_status"] == PROBLEM
    words, roots = data["caches"]
    assert (words["name"], words["status"]) == ("words", "damaged")
    assert str(pickle_file(saved, "words")) in words["problems"][0]
    assert roots == {"name": "roots", "status": "ok", "problems": [], "fixed": []}


def test_verify_fix_moves_the_damaged_file_aside(saved: CacheManager) -> None:
    path = pickle_file(saved, "squares")
    damage(path)
    result = cacheman(saved, "verify", "--fix")
    assert result.returncode == OK, result.stdout
    assert "fixed     squares" in result.stdout
    kept = list(saved.cache_directory.glob("squares.pkl.corrupt-*"))
    assert len(kept) == 1
    assert str(kept[0]) in result.stderr, "the warning names the copy kept aside"
    assert not path.exists()
    assert cacheman(saved, "verify").returncode == OK
    assert saved.register_cache("squares") == {}, "the library rebuilds it"
    assert saved.register_cache("roots") == {4: 2.0, 9: 3.0}


def test_verify_of_a_name_with_nothing_saved(saved: CacheManager) -> None:
    result = cacheman(saved, "verify", "roots", "nonesuch")
    assert result.returncode == PROBLEM
    assert "no saved cache named 'nonesuch'" in result.stderr


def test_verify_refuses_a_signature_that_does_not_match(manager: CacheManager) -> None:
    signed = CacheManager(manager.name, manager.cache_directory.parent, signing_key=b"right")
    cache = signed.register_cache("secrets")
    cache["k"] = "v"
    cache.save()
    signed.deregister_all_caches()
    assert cacheman(manager, "verify", CACHEMAN_SIGNING_KEY="right").returncode == OK
    result = cacheman(manager, "verify", CACHEMAN_SIGNING_KEY="wrong")
    assert result.returncode == REFUSED
    assert "refused   secrets: cache 'secrets': the signature of" in result.stdout
    shown = cacheman(manager, "show", "secrets", CACHEMAN_SIGNING_KEY="wrong")
    assert shown.returncode == REFUSED
    assert "does not match its contents" in shown.stderr


def test_a_directory_others_can_write_is_refused(saved: CacheManager) -> None:
    saved.cache_directory.chmod(0o777)
    try:
        result = cacheman(saved, "list")
    finally:
        saved.cache_directory.chmod(0o700)
    assert result.returncode == REFUSED
    assert "lets other users write it" in result.stderr


# -- delete -----------------------------------------------------------------------------------


def test_delete_dry_run_deletes_nothing(saved: CacheManager) -> None:
    files = sorted(saved.cache_directory.iterdir())
    result = cacheman(saved, "delete", "roots", "--dry-run")
    assert result.returncode == OK, result.stderr
    assert result.stdout.startswith("would delete roots (")
    assert "2 dependency edge(s)" in result.stdout
    assert sorted(saved.cache_directory.iterdir()) == files


def test_delete_without_yes_is_refused_when_nobody_can_confirm(saved: CacheManager) -> None:
    result = cacheman(saved, "delete", "roots")
    assert result.returncode == REFUSED
    assert "without --yes: standard input is not a terminal" in result.stderr
    assert pickle_file(saved, "roots").exists()


def test_delete_yes_removes_the_files_and_the_edges(saved: CacheManager) -> None:
    result = cacheman(saved, "delete", "squares", "words", "--yes", "--json")
    assert result.returncode == OK, result.stderr
    data = as_json(result)
    assert data["dry_run"] is False
    assert [each["name"] for each in data["caches"]] == ["squares", "words"]
    assert data["caches"][0]["edges"] == [["squares", "roots"]]
    assert saved.store.names() == ["roots"]
    assert not (saved.cache_directory / "squares.meta.json").exists()
    assert saved.store.read_edges() == []
    assert saved.register_cache("roots") == {4: 2.0, 9: 3.0}


def test_delete_of_a_missing_name_deletes_nothing(saved: CacheManager) -> None:
    result = cacheman(saved, "delete", "roots", "nonesuch", "--yes")
    assert result.returncode == PROBLEM
    assert "no saved cache named 'nonesuch'" in result.stderr
    assert pickle_file(saved, "roots").exists()


@pytest.mark.parametrize(("answer", "status"), [(b"y\n", OK), (b"n\n", PROBLEM), (b"\n", PROBLEM)])
def test_delete_asks_on_a_terminal(saved: CacheManager, answer: bytes, status: int) -> None:
    terminal, child_side = os.openpty()
    try:
        os.write(terminal, answer)  # typed ahead: the child reads it from the terminal
        result = cacheman(saved, "delete", "roots", stdin=child_side)
    finally:
        os.close(child_side)
        os.close(terminal)
    assert result.returncode == status, result.stderr
    assert f"Delete 1 saved cache(s) of manager {saved.name!r} (roots)? [y/N]" in result.stderr
    assert pickle_file(saved, "roots").exists() is (status != OK)


def test_ctrl_c_at_the_question_deletes_nothing(saved: CacheManager) -> None:
    terminal, child_side = os.openpty()
    base = str(saved.cache_directory.parent)
    command = ["-m", "cacheman", "delete", "roots", "--manager", saved.name, "--dir", base]
    child = subprocess.Popen(
        [sys.executable, *command], stdin=child_side, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stderr is not None
    try:
        asked = b""
        while b"[y/N]" not in asked:  # the question is on screen: the child waits for input
            chunk = os.read(child.stderr.fileno(), 1024)
            assert chunk, asked
            asked += chunk
        wait_until_reading_stdin(child.pid)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        os.close(child_side)
        os.close(terminal)
    assert child.returncode == INTERRUPTED
    assert "cacheman: error: interrupted" in err.decode()
    assert "Traceback" not in err.decode()
    assert pickle_file(saved, "roots").exists()


# -- graph ----------------------------------------------------------------------------------


def test_graph_in_three_formats(saved: CacheManager) -> None:
    dot = cacheman(saved, "graph")
    assert dot.returncode == OK, dot.stderr
    assert dot.stdout.startswith(f'digraph "{saved.name}" {{')
    assert '"squares" -> "roots";' in dot.stdout
    assert '"roots" -> "words";' in dot.stdout
    assert cacheman(saved, "graph", "--format", "dot").stdout == dot.stdout
    mermaid = cacheman(saved, "graph", "--format", "mermaid").stdout
    assert mermaid.splitlines() == [
        "flowchart LR",
        '    n0["squares"]',
        '    n1["roots"]',
        '    n2["words"]',
        "    n0 --> n1",
        "    n1 --> n2",
    ]
    expected = {
        "manager": saved.name,
        "nodes": ["squares", "roots", "words"],
        "edges": [["squares", "roots"], ["roots", "words"]],
    }
    assert as_json(cacheman(saved, "graph", "--format", "json")) == expected
    assert as_json(cacheman(saved, "graph", "--json")) == expected
    conflict = cacheman(saved, "graph", "--json", "--format", "dot")
    assert conflict.returncode == USAGE_ERROR


# -- another store ----------------------------------------------------------------------------


def test_the_commands_work_on_the_redis_store(manager: CacheManager, redis_url: str) -> None:
    written = CacheManager(
        manager.name, manager.cache_directory.parent, store=RedisStore(redis_url)
    )
    try:
        squares = written.register_cache("squares")
        squares.update({n: n * n for n in range(5)})
        squares.save()
        written.register_cache("roots").update({4: 2.0})
        written.save_all_cache_contents()
        written.store.add_edges([("squares", "roots")])
        written.deregister_all_caches()
        on_redis = {"CACHEMAN_REDIS_URL": redis_url}
        listed = as_json(cacheman(manager, "list", "--json", **on_redis))["caches"]
        assert [(each["name"], each["entries"]) for each in listed] == [
            ("roots", 1),
            ("squares", 5),
        ]
        assert as_json(cacheman(manager, "show", "squares", "--json", **on_redis))["keys"] == [
            "0",
            "1",
            "2",
            "3",
            "4",
        ]
        verified = cacheman(manager, "verify", **on_redis)
        assert verified.returncode == OK
        assert verified.stdout.splitlines()[:2] == ["ok        roots", "ok        squares"]
        graph = as_json(cacheman(manager, "graph", "--json", **on_redis))
        assert graph["edges"] == [["squares", "roots"]]
        assert cacheman(manager, "delete", "squares", "--yes", **on_redis).returncode == OK
        assert written.store.names() == ["roots"]
        assert written.store.read_edges() == []
        assert not manager.cache_directory.exists(), "nothing was written to the directory"
    finally:
        _registry.discard(written)
        assert isinstance(written.store, RedisStore)
        written.store.close()


# -- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["show"],
        ["show", "squares", "--keys", "-1"],
        ["delete"],
        ["graph", "--format", "png"],
        ["show", "../etc/passwd"],
        ["list", "--manager", "a/b"],
    ],
)
def test_usage_errors_exit_2(saved: CacheManager, argv: list[str]) -> None:
    result = cacheman(saved, *argv)
    assert result.returncode == USAGE_ERROR
    assert "error" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_console_script_runs_main(saved: CacheManager) -> None:
    # What the generated `cacheman` script does: import the entry point, exit with its result.
    declared = re.search(r"^\s+cacheman = (.+):(.+)$", (ROOT / "setup.cfg").read_text(), re.M)
    assert declared is not None, "setup.cfg declares the cacheman script"
    module, function = declared.groups()
    script = f"import sys; sys.argv[0] = 'cacheman'; from {module} import {function}; "
    script += f"sys.exit({function}())"
    base = str(saved.cache_directory.parent)
    result = run_python("-c", script, "show", "nonesuch", "--manager", saved.name, "--dir", base)
    assert result.returncode == PROBLEM
    assert "no saved cache named 'nonesuch'" in result.stderr
    help_text = run_python("-c", script, "--help").stdout
    assert help_text.startswith("usage: cacheman [-h]")


def test_main_returns_the_status_as_a_console_script_needs(
    saved: CacheManager, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/bin/cacheman", "--help"])
    assert main() == OK
    assert capsys.readouterr().out.startswith("usage: cacheman")
    base = str(saved.cache_directory.parent)
    assert main(["path", "--manager", saved.name, "--dir", base]) == OK
    assert capsys.readouterr().out == f"{saved.cache_directory}\n"
    assert main(["show", "nonesuch", "--manager", saved.name, "--dir", base]) == PROBLEM


# -- --version, managers, invalidate, stale marks, progress -------------------------------


def test_version_prints_the_package_version() -> None:
    import cacheman as package

    result = run_python("-m", "cacheman", "--version")
    assert result.returncode == OK
    assert result.stdout == f"python -m cacheman {package.__version__}\n"


def test_list_without_a_manager_lists_the_managers_and_their_cache_counts(
    saved: CacheManager, tmp_path: Path
) -> None:
    base = saved.cache_directory.parent
    other = CacheManager("other", base)
    try:
        other.register_cache("only").update(a=1)
        other.save()
        result = run_python("-m", "cacheman", "list", "--dir", str(base))
        assert result.returncode == OK, result.stderr
        lines = [line.split() for line in result.stdout.splitlines()]
        assert lines[0] == ["MANAGER", "STORE", "CACHES", "WHERE"]
        assert sorted(lines[1:]) == sorted(
            [
                ["other", "files", "1", str(base / "other")],
                [saved.name, "files", "3", str(saved.cache_directory)],
            ]
        )
        data = as_json(run_python("-m", "cacheman", "list", "--json", "--dir", str(base)))
        counts = {each["name"]: (each["store"], each["caches"]) for each in data["managers"]}
        assert counts == {"other": ("files", 1), saved.name: ("files", 3)}
        empty = run_python("-m", "cacheman", "list", "--dir", str(tmp_path / "nothing"))
        assert empty.returncode == OK
        assert "no managers in" in empty.stdout
    finally:
        other.deregister_all_caches()
        _registry.discard(other)


def _derived(manager: CacheManager) -> None:
    """root -> mid -> leaf, the derived ones built and saved (their parents' generations kept)."""
    manager.register_cache("root").update(r=1)
    manager.save("root")
    for parent, name in (("root", "mid"), ("mid", "leaf")):
        manager.register_dependent_cache(parent, name)
        manager.register_custom_cache(name, builder=lambda name: {name: 1})
        manager.save(name)
    manager.deregister_all_caches()


def test_list_marks_a_derived_cache_whose_parent_moved_on_as_stale(manager: CacheManager) -> None:
    _derived(manager)
    caches = {each["name"]: each for each in as_json(cacheman(manager, "list", "--json"))["caches"]}
    assert {name: each["stale"] for name, each in caches.items()} == {
        "leaf": False,
        "mid": False,
        "root": None,
    }
    # Another program invalidated root without resetting what derives from it here.
    manager.register_cache("root").invalidate(apply_to_dependents=False)
    manager.deregister_all_caches()
    rows = {line.split()[0]: line.split() for line in cacheman(manager, "list").stdout.splitlines()}
    assert rows["mid"][-1] == "stale"
    assert rows["leaf"][-1] == "fresh", "its own parent, mid, has not moved on"
    assert rows["root"][-1] == "-"


def test_invalidate_dry_run_says_what_would_be_reset_and_changes_nothing(
    manager: CacheManager,
) -> None:
    _derived(manager)
    before = {name: manager.store.read_meta(name) for name in ("root", "mid", "leaf")}
    result = cacheman(manager, "invalidate", "root", "--dry-run")
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines() == [
        "would invalidate root",
        "would reset mid",
        "would reset leaf",
    ]
    assert {name: manager.store.read_meta(name) for name in before} == before
    assert manager.saved_cache_names() == ["leaf", "mid", "root"]


def test_invalidate_resets_every_derived_cache_and_running_programs_rebuild_them(
    manager: CacheManager,
) -> None:
    _derived(manager)
    old = manager.store.read_meta("root")
    data = as_json(cacheman(manager, "invalidate", "root", "--json"))
    assert data["reset"] == ["mid", "leaf"]
    assert data["generation"] != old["generation"]  # type: ignore[index]
    assert manager.saved_cache_names() == ["root"], "derived copies deleted, root kept"
    mid = manager.register_custom_cache("mid", builder=lambda name: {"rebuilt": True})
    assert mid == {"rebuilt": True}
    assert manager.register_cache("root") == {"r": 1}


def test_invalidate_of_an_unknown_cache_is_named(saved: CacheManager) -> None:
    result = cacheman(saved, "invalidate", "sqaures")
    assert result.returncode == PROBLEM
    assert "(did you mean 'squares'?)" in result.stderr


def test_a_progress_line_is_drawn_on_a_terminal_and_erased(saved: CacheManager) -> None:
    import pty

    main_fd, child_fd = pty.openpty()
    try:
        where = ["--manager", saved.name, "--dir", str(saved.cache_directory.parent)]
        result = subprocess.run(
            [sys.executable, "-m", "cacheman", *where, "verify"],
            stdout=subprocess.PIPE,
            stderr=child_fd,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "CACHEMAN_PROGRESS_AFTER": "0"},
            text=True,
            timeout=60,
            check=False,
        )
        os.close(child_fd)
        child_fd = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the other end is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if child_fd >= 0:
            os.close(child_fd)
        os.close(main_fd)
    assert result.returncode == OK
    assert "3 cache(s) checked" in result.stdout, "the report itself is on stdout"
    text = drawn.decode()
    assert "\rverify: 3/3 words (" in text, "the final count is drawn"
    assert text.endswith("\r"), "and erased"
    piped = cacheman(saved, "verify", CACHEMAN_PROGRESS_AFTER="0")
    assert "\r" not in piped.stderr, "never drawn when stderr is not a terminal"


def test_list_and_show_leave_in_place_a_cache_whose_classes_cannot_be_imported_here(
    tmp_path: Path,
) -> None:
    # The program that saved it could import its module; the command, run elsewhere, cannot.
    program = tmp_path / "program"
    program.mkdir()
    (program / "shapes.py").write_text(
        "class Point:\n    def __init__(self, x):\n        self.x = x\n"
    )
    base = tmp_path / "base"
    script = (
        "import sys; from shapes import Point; from cacheman import CacheManager; "
        f"m = CacheManager('drawing', {str(base)!r}); "
        "c = m.register_custom_cache('points', autosync=False); c['a'] = Point(1); c.save()"
    )
    saved = run_python("-c", script, cwd=program)
    assert saved.returncode == 0, saved.stderr
    files = sorted(path.name for path in (base / "drawing").iterdir())
    where = ["--manager", "drawing", "--dir", str(base)]
    listed = run_python("-m", "cacheman", *where, "list", cwd=tmp_path)
    assert listed.returncode == PROBLEM
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("points")]
    assert row.split()[1] == "unreadable"
    assert "No module named 'shapes'" in listed.stderr
    assert "verify --fix" not in listed.stderr, "nothing to fix: the file is intact"
    shown = run_python("-m", "cacheman", *where, "show", "points", cwd=tmp_path)
    assert shown.returncode == PROBLEM
    assert "it was left in place" in shown.stderr
    assert sorted(path.name for path in (base / "drawing").iterdir()) == files, "nothing moved"
    assert run_python("-m", "cacheman", *where, "show", "points", cwd=program).returncode == OK
