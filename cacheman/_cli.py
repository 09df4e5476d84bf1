"""The commands of ``python -m cacheman`` that inspect and manage saved caches.

``list``, ``show``, ``verify``, ``delete``, ``invalidate``, ``graph`` and ``path``
(``demo`` lives in ``_demo``).  Each builds a :class:`~cacheman.cacher.CacheManager` for
``--manager``/``--dir`` (and ``$CACHEMAN_SIGNING_KEY``, as the library does) and
works only through its store: the :class:`~cacheman._stores.api.Store` methods,
plus two a store may offer (``verify``, ``usage``), so another store works as
well.  Nothing here parses a file format: checks run the store's own code.

Exit status, the same for every command:

====  =====================================================================
0     success
1     a problem: damage found (``verify``: damage it did not fix; ``list``,
      ``show``: a cache they cannot read); the manager, or a cache named on
      the command line, has nothing saved; a ``delete`` was not confirmed
2     usage error: an unknown command or option, an invalid name
3     refused: a directory or file another user could write, a signature
      that does not match the signing key, ``delete`` without ``--yes``
      when standard input is not a terminal
130   interrupted (Ctrl-C), as shells report it
====  =====================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import itertools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._graph import DependencyGraph
from ._paths import default_base_directory
from ._persist.lineage import Verdict, decide
from ._progress import Progress
from ._registry import DEFAULT_MANAGER_NAME
from ._stores.api import Edge, Store, supports_damage_switch, supports_usage, supports_verify
from ._stores.generations import generation_of, next_generation, parent_generations
from ._stores.pickle import PickleStore
from ._stores.redis import REDIS_URL_ENV, RedisStore
from .cacher import CacheManager
from .errors import (
    CacheManError,
    CorruptCacheError,
    InsecureCacheError,
    InvalidCacheNameError,
    SignatureMismatchError,
)

__all__ = [
    "COMMANDS",
    "INTERRUPTED",
    "OK",
    "PROBLEM",
    "REFUSED",
    "USAGE_ERROR",
    "ManagerRow",
    "add_commands",
    "add_common_options",
    "add_manager_source",
    "run",
]

OK = 0
PROBLEM = 1
USAGE_ERROR = 2
REFUSED = 3
# What a shell reports for a program ended by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130

COMMANDS = ("list", "show", "verify", "delete", "invalidate", "graph", "path")

GRAPH_FORMATS = ("dot", "mermaid", "json")

# ``show`` cuts each line to the terminal's width; this one when there is no terminal.
_DEFAULT_WIDTH = 100


class _Stop(Exception):
    """End the command with ``message`` on stderr and exit status ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- the parser ----------------------------------------------------------------------


def add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Add ``--manager``, ``--dir`` and ``--json`` to ``parser``.

    They are accepted before the command and after it: the main parser holds
    the defaults (``defaults=True``), each command's parser leaves an option
    unset unless given (else its default would overwrite one given before).
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--manager",
        metavar="NAME",
        default=default(None),
        help=f"the manager whose caches to use (default: {DEFAULT_MANAGER_NAME}; "
        "list without it lists the managers)",
    )
    parser.add_argument(
        "--dir",
        metavar="BASE",
        dest="base",
        default=default(None),
        help="the base directory; the manager's caches are in BASE/NAME "
        "(default: $CACHEMAN_DIR, else the per-user cache directory)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print machine-readable JSON on standard output",
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the main parser's sub-commands."""

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=summary, description=summary)
        add_common_options(parser, defaults=False)
        return parser

    command(
        "list",
        "list the saved caches (entries, bytes, last save, generation, stale derived caches); "
        "without --manager, list the managers and how many caches each has",
    )
    show = command(
        "show",
        "show one saved cache: its metadata and its first entries, or the values of KEYs "
        "(each line cut to the terminal's width; --json prints them in full)",
    )
    show.add_argument("name", metavar="NAME", help="the cache")
    show.add_argument(
        "keys",
        metavar="KEY",
        nargs="*",
        help="show these keys' values (a KEY matches a key whose str() or repr() it is)",
    )
    show.add_argument(
        "--keys",
        dest="first",
        metavar="N",
        type=_count,
        default=10,
        help="show the first N entries (default 10)",
    )
    verify = command(
        "verify",
        "check saved caches with the store's own checks (header, checksum, signature, and "
        "the journal where the store keeps one); nothing is changed without --fix",
    )
    verify.add_argument("names", metavar="NAME", nargs="*", help="the caches (default: all)")
    verify.add_argument(
        "--fix",
        action="store_true",
        help="repair what can be: a damaged file is moved aside, so the cache is rebuilt",
    )
    delete = command("delete", "delete saved caches and their dependency edges")
    delete.add_argument("names", metavar="NAME", nargs="+", help="the caches")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    invalidate = command(
        "invalidate",
        "invalidate a saved cache: give it a new generation (running programs reload it) and "
        "reset every cache derived from it (their saved copies are deleted; they rebuild)",
    )
    invalidate.add_argument("name", metavar="NAME", help="the cache")
    invalidate.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would be reset, change nothing"
    )
    graph = command("graph", "print the persisted dependency graph")
    graph.add_argument(
        "--format",
        choices=GRAPH_FORMATS,
        help="dot (Graphviz, the default), mermaid, or json (as --json)",
    )
    command("path", "print where the manager's data lives (a directory, or a Redis and key prefix)")


# -- running a command -----------------------------------------------------------------


@dataclass
class _Session:
    """What every command gets: the manager, its store, the parsed options."""

    manager: CacheManager
    args: argparse.Namespace

    @property
    def store(self) -> Store:
        return self.manager.store

    def emit(self, text: str) -> None:
        print(text)

    def emit_json(self, data: object) -> None:
        print(json.dumps(data, indent=2, sort_keys=True))


# The exit status of each kind of error a command may end with, most specific first.
_STATUS_OF_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (KeyboardInterrupt, INTERRUPTED),
    (InvalidCacheNameError, USAGE_ERROR),
    (InsecureCacheError, REFUSED),
    (SignatureMismatchError, REFUSED),
    (CacheManError, PROBLEM),
    (OSError, PROBLEM),
)


def run(args: argparse.Namespace) -> int:
    """Run the command ``args.command`` (one of :data:`COMMANDS`); return the exit status."""
    with _library_warnings_on_stderr():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[_Session], int]] = {
        "list": _list,
        "show": _show,
        "verify": _verify,
        "delete": _delete,
        "invalidate": _invalidate,
        "graph": _graph,
        "path": _path,
    }
    try:
        if args.command == "list" and args.manager is None:
            return _list_managers(args)
        manager = CacheManager(args.manager or DEFAULT_MANAGER_NAME, args.base)
        return handlers[args.command](_Session(manager, args))
    except BrokenPipeError:
        # The reader went away (`cacheman list | head -1`): not worth a message.
        # Point stdout at /dev/null so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return PROBLEM
    except _Stop as stop:
        return _error(str(stop), stop.status)
    except (KeyboardInterrupt, CacheManError, OSError) as error:
        status = next(code for kind, code in _STATUS_OF_ERROR if isinstance(error, kind))
        return _error(str(error) or "interrupted", status)


def _error(message: str, status: int) -> int:
    print(f"cacheman: error: {message}", file=sys.stderr)
    return status


@contextlib.contextmanager
def _library_warnings_on_stderr() -> Iterator[None]:
    """Print the library's warnings (a file moved aside, damaged metadata) on stderr meanwhile.

    Undone afterwards, so that ``main()`` called in a program's own process
    leaves that program's logging as it was.
    """
    logger = logging.getLogger("cacheman")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cacheman: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    level = logger.level
    if level == logging.NOTSET or level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- what exists ---------------------------------------------------------------------


def _saved_names(session: _Session) -> list[str]:
    """The manager's saved caches; stop with status 1 if the manager has nothing at all."""
    names = session.store.names()
    store = session.store
    if isinstance(store, RedisStore):
        if names or store.read_edges():
            return names
        others = store.managers()
        message = (
            f"unknown manager {session.manager.name!r}: nothing is saved in Redis at "
            f"{store.display_url} under {store.prefix}:"
        )
        if others:
            message += f"; managers in that Redis: {', '.join(others)}"
        raise _Stop(message + _did_you_mean(session.manager.name, others), PROBLEM)
    if names or session.store.read_edges() or session.manager.cache_directory.is_dir():
        return names
    manager = session.manager
    message = f"unknown manager {manager.name!r}: nothing is saved in {manager.cache_directory}"
    base = manager.cache_directory.parent
    try:
        others = sorted(
            entry.name
            for entry in os.scandir(base)
            if entry.is_dir() and not entry.name.startswith(".")
        )
    except OSError:
        others = []
    if others:
        message += f"; managers in {base}: {', '.join(others)}"
    raise _Stop(message + _did_you_mean(manager.name, others), PROBLEM)


def _require_saved(session: _Session, names: Iterable[str], *, also: Iterable[str] = ()) -> None:
    """Stop with status 1 naming every one of ``names`` that has nothing saved."""
    known = set(_saved_names(session)) | set(also)
    missing = [name for name in names if name not in known and not session.store.exists(name)]
    if not missing:
        return
    listed = ", ".join(map(repr, missing))
    message = f"manager {session.manager.name!r} has no saved cache named {listed}"
    raise _Stop(message + _did_you_mean(missing[0], known), PROBLEM)


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


# -- checking a cache with the store's own code ---------------------------------------


@dataclass
class _Verdict:
    """The outcome of checking one cache."""

    name: str
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    refused: bool = False
    checked: bool = True

    @property
    def status(self) -> str:
        if self.refused:
            return "refused"
        if self.problems:
            return "damaged"
        if self.fixed:
            return "fixed"
        return "ok" if self.checked else "unchecked"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "problems": self.problems,
            "fixed": self.fixed,
        }


def _check(store: Store, name: str, *, fix: bool = False) -> _Verdict:
    """Check one cache's saved data with the store's own ``verify``; with ``fix``, repair it.

    A store without a ``verify`` gives an ``unchecked`` verdict.
    """
    if not supports_verify(store):
        return _Verdict(name, checked=False)
    return _verify_with(store.verify, name, fix=fix)


def _verify_with(verify: Callable[..., Any], name: str, *, fix: bool) -> _Verdict:
    """Run a store's ``verify``; after a fix, verify again: what it still finds remains.

    The report gives ``problems`` and ``fixed`` (lists of sentences) and may say
    ``refused`` (tampering or an insecure file, which no fix touches).
    """
    report = verify(name, fix=fix)
    found = [str(each) for each in report.problems]
    done = [str(each) for each in report.fixed]
    if done:
        report = verify(name, fix=False)
    remaining = [str(each) for each in report.problems]
    solved = [problem for problem in found if problem not in remaining] if done else []
    refused = bool(getattr(report, "refused", False))
    return _Verdict(name, problems=remaining, fixed=solved + done, refused=refused)


# -- describing a cache ----------------------------------------------------------------


@dataclass
class _Summary:
    """One line of ``list``: what is saved for a cache."""

    name: str
    entries: int | None
    size: int | None
    last_save: float | None
    generation: str | None
    meta: dict[str, Any]
    problem: str | None = None
    refused: bool = False
    unreadable: bool = False  # intact, but it does not load here
    #: None for a cache derived from nothing; else whether a parent moved on since its build.
    stale: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entries": self.entries,
            "bytes": self.size,
            "last_save": self.last_save,
            "generation": self.generation,
            "problem": self.problem,
            "stale": self.stale,
        }


def _staleness(store: Store, graph: DependencyGraph, name: str) -> bool | None:
    """Whether derived cache ``name`` is stale (the library's own decision); None if not derived."""
    parents = graph.parents(name)
    if not parents:
        return None
    current = parent_generations(store, parents)
    return decide(current, store.read_meta(name)) is Verdict.STALE


def _persisted_graph(store: Store) -> DependencyGraph:
    graph = DependencyGraph()
    for parent, child in store.read_edges():
        graph.add_edge(parent, child)
    return graph


def _summarise(store: Store, name: str) -> tuple[_Summary, dict[Any, Any] | None]:
    """The summary of ``name`` and its contents (None if damaged or refused).

    The data is checked before it is loaded, so that a damaged file is reported
    here and left in place (a load would move it aside): ``verify --fix`` does that.
    """
    meta = store.read_meta(name) or {}
    size: int | None = None
    modified: float | None = None
    if supports_usage(store):
        size, modified = store.usage(name)
    saved_at = meta.get("saved_at")
    last_save = float(saved_at) if isinstance(saved_at, (int, float)) else modified
    generation = meta.get("generation")
    summary = _Summary(
        name, None, size, last_save, None if generation is None else str(generation), meta
    )
    verdict = _check(store, name)
    if verdict.problems:
        summary.problem = "; ".join(verdict.problems)
        summary.refused = verdict.refused
        return summary, None
    try:
        contents = store.load(name) or {}
    except CorruptCacheError as error:
        # Intact bytes that do not unpickle in this interpreter (a class of the program
        # that saved them cannot be imported here): reported, left in place.
        summary.problem, summary.unreadable = str(error), True
        return summary, None
    summary.entries = len(contents)
    return summary, contents


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    amount = size / 1024
    for unit in ("KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def _width() -> int:
    return shutil.get_terminal_size((_DEFAULT_WIDTH, 24)).columns


def _cut(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (``...`` marks a cut)."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def _short(value: object) -> str:
    return _cut(repr(value), _DEFAULT_WIDTH)


def _as_json_value(value: object) -> object:
    """``value`` as JSON can hold it: itself when it round-trips, else its repr (in full)."""
    try:
        if json.loads(json.dumps(value)) == value:
            return value
    except (TypeError, ValueError, RecursionError):
        pass
    return repr(value)


def _table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- the commands ------------------------------------------------------------------------


def _status(*, refused: bool, damaged: bool) -> int:
    """The exit status of a command that found what it found: refusal wins over damage."""
    if refused:
        return REFUSED
    return PROBLEM if damaged else OK


def _read_only(store: Store) -> None:
    """Make ``store`` change nothing while it loads (a store without the switch never does)."""
    if supports_damage_switch(store):
        store.keep_aside_damaged = False


def _list(session: _Session) -> int:
    _read_only(session.store)
    names = _saved_names(session)
    summaries = []
    graph = _persisted_graph(session.store)
    with Progress("list", total=len(names)) as progress:
        for name in names:
            progress.step(name)
            summary = _summarise(session.store, name)[0]
            summary.stale = _staleness(session.store, graph, name)
            summaries.append(summary)
    manager = session.manager
    status = _status(
        refused=any(summary.refused for summary in summaries),
        damaged=any(summary.problem for summary in summaries),
    )
    if session.args.json:
        session.emit_json(
            {
                "manager": manager.name,
                "path": _location(session),
                "caches": [summary.as_json() for summary in summaries],
            }
        )
        return status
    if not summaries:
        session.emit(f"manager {manager.name!r} has no saved caches ({_location(session)})")
        return OK
    rows = [("NAME", "ENTRIES", "BYTES", "LAST SAVE", "GENERATION", "STATE")]
    for summary in summaries:
        entries = str(summary.entries)
        if summary.entries is None:
            entries = "refused" if summary.refused else "damaged"
            entries = "unreadable" if summary.unreadable else entries
        rows.append(
            (
                summary.name,
                entries,
                _size(summary.size),
                _when(summary.last_save),
                summary.generation or "-",
                {None: "-", True: "stale", False: "fresh"}[summary.stale],
            )
        )
    session.emit(_table(rows, right=(False, True, True, False, False, False)))
    for summary in summaries:
        if summary.problem:
            advice = "" if summary.refused or summary.unreadable else " (run: verify --fix)"
            print(f"cacheman: {summary.problem}{advice}", file=sys.stderr)
    return status


def _show(session: _Session) -> int:
    _read_only(session.store)
    name = session.args.name
    _require_saved(session, [name])
    with Progress(f"show {name}"):
        summary, contents = _summarise(session.store, name)
    if summary.refused:
        raise _Stop(str(summary.problem), REFUSED)
    if contents is None and summary.unreadable:
        raise _Stop(f"{summary.problem}; it was left in place", PROBLEM)
    if contents is None:
        raise _Stop(f"{summary.problem}; run 'verify --fix {name}' to move it aside", PROBLEM)
    if session.args.keys:
        return _show_values(session, contents)
    first = list(itertools.islice(contents.items(), session.args.first))
    if session.args.json:
        session.emit_json(
            {
                **summary.as_json(),
                "manager": session.manager.name,
                "meta": summary.meta,
                "keys": [_short(key) for key, _ in first],
                "items": [{"key": repr(k), "value": _as_json_value(v)} for k, v in first],
            }
        )
        return OK
    rows = [
        ("cache", name),
        ("manager", f"{session.manager.name} ({_location(session)})"),
        ("entries", str(summary.entries)),
        ("bytes", _size(summary.size)),
        ("last save", _when(summary.last_save)),
        ("generation", summary.generation or "-"),
    ]
    rows += [
        (field_name, json.dumps(value, sort_keys=True))
        for field_name, value in sorted(summary.meta.items())
        if field_name not in ("generation", "saved_at")
    ]
    session.emit(_table(rows, right=(False, False)))
    if first:
        width = _width()
        session.emit(f"first {len(first)} of {summary.entries} entries:")
        session.emit("\n".join(_cut(f"  {key!r}: {value!r}", width) for key, value in first))
    return OK


def _show_values(session: _Session, contents: dict[Any, Any]) -> int:
    """``show NAME KEY...``: each KEY's value; a KEY matches a key whose str() or repr() it is."""
    wanted: list[str] = session.args.keys
    found: dict[str, Any] = {}
    for key in contents:
        for form in (str(key), repr(key)):
            if form in wanted and form not in found:
                found[form] = key
    missing = [text for text in wanted if text not in found]
    if missing:
        sample = [str(key) for key in itertools.islice(contents, 10_000)]
        listed = ", ".join(map(repr, missing))
        message = f"cache {session.args.name!r} has no key {listed}"
        raise _Stop(message + _did_you_mean(missing[0], sample), PROBLEM)
    keys = [found[text] for text in wanted]
    if session.args.json:
        items = [{"key": repr(key), "value": _as_json_value(contents[key])} for key in keys]
        session.emit_json({"name": session.args.name, "items": items})
        return OK
    width = _width()
    session.emit("\n".join(_cut(f"{key!r}: {contents[key]!r}", width) for key in keys))
    return OK


def _verify(session: _Session) -> int:
    saved = _saved_names(session)
    names = session.args.names or saved
    _require_saved(session, names)
    verdicts = []
    with Progress("verify", total=len(names)) as progress:
        for name in names:
            progress.step(name)
            verdicts.append(_check(session.store, name, fix=session.args.fix))
    status = _status(
        refused=any(verdict.refused for verdict in verdicts),
        damaged=any(verdict.problems for verdict in verdicts),
    )
    if session.args.json:
        session.emit_json(
            {
                "manager": session.manager.name,
                "caches": [verdict.as_json() for verdict in verdicts],
                "exit_status": status,
            }
        )
        return status
    for verdict in verdicts:
        messages = verdict.problems + verdict.fixed
        detail = f": {'; '.join(messages)}" if messages else ""
        session.emit(f"{verdict.status:<9} {verdict.name}{detail}")
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
    tally = ", ".join(f"{number} {status_name}" for status_name, number in sorted(counts.items()))
    session.emit(f"{len(verdicts)} cache(s) checked" + (f": {tally}" if tally else ""))
    return status


def _edges_of(edges: Iterable[Edge], name: str) -> list[Edge]:
    return [edge for edge in edges if name in edge]


def _delete(session: _Session) -> int:
    names: list[str] = list(dict.fromkeys(session.args.names))
    store = session.store
    edges = store.read_edges()
    _require_saved(session, names, also=[node for edge in edges for node in edge])
    manager = session.manager
    sizes: dict[str, int | None] = {
        name: store.usage(name)[0] if supports_usage(store) else None for name in names
    }
    dry_run = session.args.dry_run
    if not dry_run and not session.args.yes:
        listed = ", ".join(names)
        _confirm(f"delete {len(names)} saved cache(s) of manager {manager.name!r} ({listed})")
    if not dry_run:
        with Progress("delete", total=len(names)) as progress:
            for name in names:
                progress.step(name)
                store.delete(name)
                store.remove_edges(name)
    if session.args.json:
        caches = [
            {"name": name, "bytes": sizes[name], "edges": [list(e) for e in _edges_of(edges, name)]}
            for name in names
        ]
        session.emit_json({"manager": manager.name, "dry_run": dry_run, "caches": caches})
        return OK
    verb = "would delete" if dry_run else "deleted"
    for name in names:
        edge_count = len(_edges_of(edges, name))
        session.emit(f"{verb} {name} ({_size(sizes[name])}, {edge_count} dependency edge(s))")
    return OK


def _confirm(question: str) -> None:
    """Ask on the terminal; stop with status 3 if nobody can answer, 1 if the answer is no."""
    if not sys.stdin.isatty():
        raise _Stop(
            f"refusing to {question} without --yes: standard input is not a terminal, "
            "so nobody can confirm (add --yes, or --dry-run to see what would go)",
            REFUSED,
        )
    sys.stderr.write(f"{question[0].upper()}{question[1:]}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise _Stop("nothing deleted", PROBLEM)


def _invalidate(session: _Session) -> int:
    """Give NAME a new generation and reset what derives from it, as ``manager.invalidate`` does.

    The saved copy of NAME stays (running programs that hold it reload it); each
    derived cache loses its saved copy and is marked stale, so whichever program
    registers it next rebuilds it with its own builder.
    """
    name = session.args.name
    store = session.store
    graph = _persisted_graph(store)
    _require_saved(session, [name], also=graph.nodes())
    derived = graph.downstream(name)
    dry_run = session.args.dry_run
    generation = None
    if not dry_run:
        generation = next_generation(generation_of(store.read_meta(name)))
        store.update_meta(name, generation=generation)
        with Progress("invalidate", total=len(derived)) as progress:
            for each in derived:
                progress.step(each)
                session.manager.delete_saved_cache_content(each, apply_to_dependents=False)
    if session.args.json:
        session.emit_json(
            {
                "manager": session.manager.name,
                "cache": name,
                "dry_run": dry_run,
                "generation": generation,
                "reset": derived,
            }
        )
        return OK
    if dry_run:
        session.emit(f"would invalidate {name}")
    else:
        session.emit(f"invalidated {name} (generation {generation})")
    verb = "would reset" if dry_run else "reset"
    for each in derived:
        session.emit(f"{verb} {each}")
    if not derived:
        session.emit(f"no cache derives from {name}")
    return OK


def _graph(session: _Session) -> int:
    requested = session.args.format
    if session.args.json and requested not in (None, "json"):
        raise _Stop(f"--json and --format {requested} ask for two formats; give one", USAGE_ERROR)
    output = "json" if session.args.json else requested or "dot"
    _saved_names(session)
    graph = _persisted_graph(session.store)
    if output == "json":
        session.emit_json(
            {
                "manager": session.manager.name,
                "nodes": graph.nodes(),
                "edges": [list(edge) for edge in graph.edges()],
            }
        )
    elif output == "mermaid":
        session.emit(graph.to_mermaid().rstrip("\n"))
    else:
        session.emit(graph.to_dot(session.manager.name).rstrip("\n"))
    return OK


def _location(session: _Session) -> str:
    """Where the manager's data lives: its directory, or its Redis (no password) and key prefix."""
    store = session.store
    if isinstance(store, RedisStore):
        return f"{store.display_url}, keys {store.prefix}:*"
    return str(session.manager.cache_directory)


def _path(session: _Session) -> int:
    store = session.store
    if isinstance(store, RedisStore):  # no directory: the data lives in Redis
        if session.args.json:
            session.emit_json(
                {
                    "manager": session.manager.name,
                    "redis": store.display_url,
                    "prefix": f"{store.prefix}:",
                    "exists": bool(store.names() or store.read_edges()),
                }
            )
        else:
            session.emit(f"{store.display_url} {store.prefix}:")
        return OK
    directory = session.manager.cache_directory
    if session.args.json:
        session.emit_json(
            {"manager": session.manager.name, "path": str(directory), "exists": directory.is_dir()}
        )
    else:
        session.emit(str(directory))
    return OK


# -- the managers --------------------------------------------------------------------------


@dataclass
class ManagerRow:
    """One line of ``list`` without ``--manager``: a manager some store holds."""

    name: str
    store: str  # "files", "redis"...
    where: str
    caches: int

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "store": self.store, "path": self.where, "caches": self.caches}


#: Where ``list`` without ``--manager`` looks for managers: each source is called with the
#: parsed options and returns the managers it holds.  The file store's is built in; another
#: store adds its own with :func:`add_manager_source`.
ManagerSource = Callable[[argparse.Namespace], list[ManagerRow]]


def _file_managers(args: argparse.Namespace) -> list[ManagerRow]:
    """The managers with a directory under the base (``--dir``, else the default)."""
    base = default_base_directory() if args.base is None else Path(args.base).expanduser()
    try:
        entries = sorted(
            (
                entry
                for entry in os.scandir(base)
                if entry.is_dir() and not entry.name.startswith(".")
            ),
            key=lambda entry: entry.name,
        )
    except FileNotFoundError:
        return []
    rows = []
    for entry in entries:
        store = PickleStore(Path(entry.path))
        count = sum(1 for name in store.names() if store.exists(name))
        rows.append(ManagerRow(entry.name, "files", entry.path, count))
    return rows


def _redis_managers(args: argparse.Namespace) -> list[ManagerRow]:
    """The managers in the Redis of ``$CACHEMAN_REDIS_URL`` (none when it is not set)."""
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        return []
    store = RedisStore(url)
    try:
        rows = []
        for name in store.managers():
            bound = store.bind(name, None)
            where = f"{store.display_url} {bound.prefix}:"
            rows.append(ManagerRow(name, "redis", where, len(bound.names())))
            bound.close()
        return rows
    finally:
        store.close()


MANAGER_SOURCES: list[ManagerSource] = [_file_managers, _redis_managers]


def add_manager_source(source: ManagerSource) -> None:
    """Make ``list`` without ``--manager`` also list the managers ``source`` finds."""
    if source not in MANAGER_SOURCES:
        MANAGER_SOURCES.append(source)


def _list_managers(args: argparse.Namespace) -> int:
    rows = [row for source in MANAGER_SOURCES for row in source(args)]
    if args.json:
        print(json.dumps({"managers": [row.as_json() for row in rows]}, indent=2, sort_keys=True))
        return OK
    if not rows:
        base = default_base_directory() if args.base is None else args.base
        print(f"no managers in {base}")
        return OK
    table = [("MANAGER", "STORE", "CACHES", "WHERE")]
    table += [(row.name, row.store, str(row.caches), row.where) for row in rows]
    print(_table(table, right=(False, False, True, False)))
    return OK
