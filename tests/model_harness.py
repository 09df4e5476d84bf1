"""The judge of CacheMan's consistency model: real processes, random operations, a checker.

``tests/test_model.py`` runs it; ``python tests/model_harness.py worker CONFIG`` is
one worker process (the coordinator starts those).

How a run goes
--------------
A *coordinator* (the test process) keeps a few *worker* processes alive (fresh
interpreters, ``subprocess``), all using one manager over one store: a directory
of pickle files, or a database of a real ``redis-server``.  Each worker holds
four caches:

- ``data``: a :class:`~cacheman.cachewrap.PersistentCache` (``autosync=False``)
  over a small universe of keys, so that processes collide on keys all the time;
- ``auto``: the same, as an :class:`~cacheman.autosync.AutoSyncCache` whose rules
  save it in the background (a forked child) within a second of an edit;
- ``raw``: a persistent cache with one key, ``version``; invalidating it is
  ``raw["version"] = token; raw.save(); raw.invalidate()``;
- ``features`` (once a worker registered it): an autosync cache derived from
  ``raw`` whose builder records what it read: ``{"built_from": raw["version"]}``.
  Derived values are self-describing, so the checker can tell staleness.

In rounds, the coordinator picks some workers, sends each one operation drawn
from a weighted registry (:data:`OPERATIONS`) with a ``random.Random(seed)``, and
waits for their replies, so operations of different processes overlap.  The
operations: assign (a list or a tuple value), delete, change a list in place
with and without ``touch``, ``save()``, ``mark_dirty(); save()``, ``refresh()``,
``clear()``, read, invalidate ``raw``, register ``features``, refresh it, save
it, a burst of writer threads editing ``data`` while the main thread saves or
refreshes, and the ends of a process: a normal exit, SIGTERM, SIGKILL (sent in
the middle of an operation).  After each round, while no operation runs, the
coordinator reads the store directly (a *snapshot*); at the end it stops every
worker normally, reads the store, and starts one more worker, as the next run of
a program would, which registers ``features`` (what it holds is checked too).

Every value written is unique (``[token]`` or ``(token,)``, and a change in place
appends a fresh token), so a value found in the store names the write it came
from.  Workers log each step to a file of their own, *before* the step (what it
will produce) and after it, with ``time.monotonic_ns()`` (one clock for every
process on Linux); the coordinator logs kills, exits and snapshots the same way.

What is acknowledged
--------------------
A change (assignment, deletion, change in place, ``clear()``, or every key held
at a ``mark_dirty()``) made by process P is *acknowledged* by the first of
these that *starts after* the change returned, while the change is still P's
latest for that key, and that *completes*:

- ``save()`` of that cache returned (``mark_dirty(); save()`` included), or
  ``refresh()`` returned (it saves this process's changes first);
- P's normal exit: the worker returned from its main function and the process
  ended with status 0, no error logged;
- SIGTERM, sent while P was idle, and the process ended *of* SIGTERM (the
  flush ran and the signal was re-raised), no error logged.

A change in place without ``touch`` is a change like the others (the model
detects it), so every one of these acknowledges it, ``refresh()`` included.
A change in place made through a reference that a ``refresh()`` on another
thread replaced meanwhile (it took in another process's value of the key) is
not a change of the cache, as with any ``dict``: it may land, but is not
acknowledged; nor is a delete that found the key already gone (another writer
thread, or a refresh, removed it between the test and the ``pop``).
``mark_dirty()`` re-asserts every value the process holds: those may land, but
are not acknowledged (a process that was behind need not win over changes it
never saw); keys it does not hold must survive it.  A ``save()`` running while
other threads edit may or may not hold their edits (either is right); the next
acknowledgement does.  Nothing else acknowledges: SIGKILL, an exit or SIGTERM
that failed, an operation cut short by a kill.

A change can *land* in the store from the moment it is made (``auto`` saves in
the background; ``data`` and ``raw`` do not autosync, but an invalidation event
from another process makes a process save what it has pending before it
reloads) until it is written by
an acknowledged save or replaced by a later change of its process, or during a
save that overlapped that time (one cut short by SIGKILL included).  Once
written, it is clean: its process must not write it again.

What the checker fails on
-------------------------
For each snapshot (time T) and each key of ``data``, ``auto`` and ``raw``:

1. *Lost acknowledged write.*  Let W be the acknowledged change whose earliest
   possible landing is the latest among those acknowledged before T.  What the
   store holds must be a change that could have landed after that moment (W
   itself, or a later or concurrent change or deletion, ``clear()`` included).
2. *Written back unchanged.*  A value that no process had made by then.  A
   value written back by a process that only held it (read it, loaded it, or
   saved it already) shows up under rule 1: it can have landed only before the
   newer write that was acknowledged.

For ``features`` (each snapshot, and the in-memory contents right after a
worker registered it or called ``features.refresh()``):

3. *Stale derived cache.*  Built from ``raw`` version v while an invalidation
   that *started after* the one that wrote v had *completed* before T (or
   before the refresh started).  For a snapshot, only a saved copy whose
   metadata claims it current counts (recorded as built from ``raw``'s
   generation in the store, not marked stale): a background save that began
   before the invalidation may land after it, recorded as built from the older
   generation, and every process that loads that copy rebuilds it.

And for every operation:

4. *Undocumented exception.*  An operation that raised, an exception in any
   thread, an ERROR logged by ``cacheman`` (background saves, event threads),
   a worker that hung (no reply in 60 s), or a process that ended otherwise than
   asked (status 0 after ``exit``, death by SIGTERM after SIGTERM).

The report counts the operations (commands and signals sent, edits made by
writer threads), the processes, the checks (a key or a derived cache compared
with what the history allows) and the violations (each reported once, with the
history that led to the first of each kind).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import logging
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: What ``pop`` returns for a key that was not there.
_NOTHING = object()
#: The keys of ``data``: few, so that processes collide on them.
KEYS = tuple(f"k{i:02d}" for i in range(16))
#: The caches whose keys the checker follows (``features`` is checked for staleness).
CHECKED = ("data", "auto", "raw")
#: The content of a key that is not there.
ABSENT = "-"
#: Seconds a worker may take to answer an operation (or to end) before it is called hung.
REPLY_TIMEOUT = 60.0
NEVER = -(2**62)
FOREVER = 2**62


def canon(value: Any) -> str:
    """The content of a value as the checker compares it: kind and tokens."""
    if isinstance(value, list):
        return "L:" + "|".join(map(str, value))
    if isinstance(value, tuple):
        return "T:" + "|".join(map(str, value))
    return "?:" + repr(value)


def now() -> int:
    return time.monotonic_ns()


# =====================================================================================
# The worker: one process, driven by commands on its stdin
# =====================================================================================


class _Log:
    """One JSON line per event, appended with one ``write`` (threads share it)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lock = threading.Lock()

    def emit(self, **record: Any) -> None:
        record.setdefault("t", now())
        line = (json.dumps(record, default=repr) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)


class _ErrorsToLog(logging.Handler):
    """Library log records of WARNING and above go to the worker's log (ERROR is a violation)."""

    def __init__(self, log: _Log) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.log.emit(ev="log", level=record.levelname, msg=text[:4000])


class Worker:
    """The state and the operations of one worker process."""

    def __init__(self, config: dict[str, Any]) -> None:
        from cacheman import CacheManager, RedisStore

        self.proc = config["proc"]
        self.log = _Log(config["log"])
        handler = _ErrorsToLog(self.log)
        logging.getLogger("cacheman").addHandler(handler)
        logging.getLogger("cacheman").setLevel(logging.WARNING)
        threading.excepthook = self._thread_error
        store = RedisStore(config["url"]) if config["kind"] == "redis" else None
        self.manager = CacheManager(config["manager"], config["base"], store=store)
        self.builds = itertools.count()
        self.data = self.manager.register_custom_cache("data", autosync=False)
        self.auto = self.manager.register_custom_cache("auto", time_checks=_AUTO_RULES)
        self.raw = self.manager.register_custom_cache("raw", autosync=False)
        self.features: Any = None

    def _thread_error(self, args: threading.ExceptHookArgs) -> None:
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        self.log.emit(ev="error", where=f"thread {args.thread}", tb=text[:4000])

    # -- steps: a "pre" record says what the step will do, a "post" that it returned ------

    @contextlib.contextmanager
    def step(self, op: int, kind: str, **what: Any) -> Iterator[dict[str, Any]]:
        sid = f"{self.proc}.{op}.{kind}.{threading.get_ident()}.{now()}"
        self.log.emit(ev="pre", sid=sid, op=op, kind=kind, **what)
        after: dict[str, Any] = {}
        yield after
        self.log.emit(ev="post", sid=sid, **after)

    def cache(self, name: str) -> Any:
        return {"data": self.data, "auto": self.auto, "raw": self.raw}[name]

    def edit(self, op: int, edit: list[Any], name: str = "data") -> None:
        """One edit of ``data`` (or ``auto``).

        ``["set", key, "L" or "T", token]``, ``["del", key]`` or
        ``["inplace", key, token, touch]``.
        """
        what, key = edit[0], edit[1]
        cache = self.cache(name)
        if what == "set":
            value: Any = [edit[3]] if edit[2] == "L" else (edit[3],)
            with self.step(op, "prod", cache=name, prods=[[key, canon(value)]]):
                cache[key] = value
        elif what == "del":
            if key in cache:
                with self.step(op, "prod", cache=name, prods=[[key, ABSENT]]) as after:
                    # One atomic pop: another writer thread (or a refresh taking in another
                    # process's delete) may remove the key between the test and the delete.
                    if cache.pop(key, _NOTHING) is _NOTHING:
                        after["orphaned"] = True  # it deleted nothing: not a change
        elif what == "inplace":
            value = dict.get(cache, key)
            if isinstance(value, list):
                content = canon([*value, edit[2]])
                with self.step(
                    op, "prod", cache=name, prods=[[key, content]], touch=edit[3]
                ) as after:
                    value.append(edit[2])
                    if edit[3]:
                        # touch() raises KeyError for a key the cache no longer holds:
                        # another writer thread, or a refresh, removed it meanwhile.
                        with contextlib.suppress(KeyError):
                            cache.touch(key)
                    if dict.get(cache, key) is not value:
                        # A refresh on another thread took in another process's value
                        # meanwhile (or the key went): the list changed is not the cache's.
                        after["orphaned"] = True
        else:
            raise ValueError(edit)

    def run(self, op: int, command: dict[str, Any]) -> None:
        name = command["name"]
        if name == "edit":
            self.edit(op, command["edit"], command.get("cache", "data"))
        elif name == "read":
            for key in command["keys"]:
                canon(self.data.get(key))  # a read: nothing may be written because of it
        elif name == "save":
            with self.step(op, "ack", cache=command["cache"]):
                self.cache(command["cache"]).save()
        elif name == "dirty_save":
            held = [[k, canon(v)] for k, v in dict.copy(self.data).items()]  # (see threaded())
            with self.step(op, "prod", cache="data", prods=held, dirty=True):
                self.data.mark_dirty()
            with self.step(op, "ack", cache="data"):
                self.data.save()
        elif name == "refresh":
            with self.step(op, "ack", cache=command["cache"], refresh=True):
                self.cache(command["cache"]).refresh()
        elif name == "clear":
            with self.step(op, "prod", cache="data", prods=[[k, ABSENT] for k in KEYS]):
                self.data.clear()
        elif name == "invalidate":
            token = command["token"]
            with self.step(op, "inv", token=token):
                with self.step(op, "prod", cache="raw", prods=[["version", canon([token])]]):
                    self.raw["version"] = [token]
                with self.step(op, "ack", cache="raw"):
                    self.raw.save()
                self.raw.invalidate()
        elif name == "register_derived":
            if self.features is None:
                with self.step(op, "view") as after:
                    self.manager.register_dependent_cache("raw", "features")
                    self.features = self.manager.register_custom_cache(
                        "features", builder=self.build, time_checks=_FEATURE_RULES
                    )
                    after["built_from"] = self.features.get("built_from")
        elif name == "refresh_derived":
            if self.features is not None:
                with self.step(op, "view") as after:
                    self.features.refresh()
                    after["built_from"] = self.features.get("built_from")
        elif name == "save_derived":
            if self.features is not None:
                self.features.save()
        elif name == "threaded":
            self.threaded(op, command)
        else:
            raise ValueError(f"unknown command {name!r}")

    def build(self, name: str) -> dict[str, Any]:
        """The builder of ``features``: it says which version of ``raw`` it read."""
        version = dict.get(self.raw, "version")
        built_from = ABSENT if version is None else version[0]
        self.log.emit(ev="build", built_from=built_from)
        return {"built_from": built_from, "by": self.proc, "n": next(self.builds)}

    def threaded(self, op: int, command: dict[str, Any]) -> None:
        """Writer threads edit ``data`` while this thread saves, refreshes or marks it dirty."""
        plans: list[list[list[Any]]] = command["threads"]
        barrier = threading.Barrier(len(plans) + 1)

        def writer(plan: list[list[Any]]) -> None:
            barrier.wait()
            for edit in plan:
                self.edit(op, edit)

        threads = [threading.Thread(target=writer, args=(plan,)) for plan in plans]
        for thread in threads:
            thread.start()
        main = command["main"]
        # What is held is read before the writers start: mark_dirty() re-asserts it (or,
        # for a key a writer changed first, that writer's value, a change of its own).
        # (From a copy made in C: the store's event thread may refresh the cache meanwhile.)
        held = [[k, canon(v)] for k, v in dict.copy(self.data).items()]
        barrier.wait()
        try:
            if main == "dirty_save":
                with self.step(op, "prod", cache="data", prods=held, dirty=True):
                    self.data.mark_dirty()
                with self.step(op, "ack", cache="data"):
                    self.data.save()
            else:
                with self.step(op, "ack", cache="data", refresh=main == "refresh"):
                    getattr(self.data, main)()
        finally:
            for thread in threads:
                thread.join()


#: The autosync rules of ``features``: a change older than 0.2 s is saved in the background.
_FEATURE_RULES: list[Any] = []
#: The autosync rules of ``auto``: a burst of 5 changes, or one older than 0.3 s.
_AUTO_RULES: list[Any] = []


def worker_main(config_text: str) -> None:
    from cacheman import TimeCount, cachewrap

    # A worker killed while it builds holds the builder lock (Redis) until the lock
    # expires, 300 s by default: the others would wait that long to register the
    # derived cache.  Builds here take milliseconds.
    if hasattr(cachewrap, "BUILDER_LOCK_SECONDS"):
        cachewrap.BUILDER_LOCK_SECONDS = 10.0

    _FEATURE_RULES[:] = [TimeCount(0.2, 1000), TimeCount(0.5, 1)]
    _AUTO_RULES[:] = [TimeCount(0.3, 5), TimeCount(1.0, 1)]
    config = json.loads(config_text)
    worker = Worker(config)
    worker.log.emit(ev="ready")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if command["name"] == "exit":
            worker.log.emit(ev="exit", op=op)
            out.write(json.dumps({"op": op}) + "\n")
            out.flush()
            return  # the interpreter's exit saves what is pending
        try:
            worker.run(op, command)
        except BaseException as error:
            worker.log.emit(
                ev="error", where=f"op {op} {command['name']}", tb=traceback.format_exc()
            )
            if not isinstance(error, Exception):
                raise
        out.write(json.dumps({"op": op}) + "\n")
        out.flush()


# =====================================================================================
# The coordinator
# =====================================================================================


@dataclass
class Place:
    """Where the workers keep their caches."""

    kind: str  # "pickle" or "redis"
    base: Path
    url: str | None = None
    manager: str = field(default_factory=lambda: f"model-{uuid.uuid4().hex[:8]}")

    def read(self, name: str) -> dict[Any, Any] | None:
        """What the store holds for ``name`` now, read as another process would."""
        return self._with_store(lambda store: store.load(name))

    def read_meta(self, name: str) -> dict[str, Any] | None:
        """The metadata the store holds for ``name`` (generation, parents), or None."""
        return self._with_store(lambda store: store.read_meta(name))

    def _with_store(self, read: Callable[[Any], Any]) -> Any:
        if self.kind == "redis":
            from cacheman import RedisStore

            store = RedisStore(self.url or "").bind(self.manager, None)
            try:
                return read(store)
            finally:
                store.close()
        from cacheman._stores.pickle import PickleStore

        return read(PickleStore(self.base / self.manager))


@dataclass
class Proc:
    proc: int
    popen: subprocess.Popen[str]
    log: Path
    stderr: Path
    busy: int | None = None  # the op sent and not answered
    started: float = 0.0


class Coordinator:
    """Keeps the workers alive, sends them operations, and records the coordinator's events."""

    def __init__(self, place: Place, seed: int, workdir: Path, workers: int = 3) -> None:
        self.place = place
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.workers = workers
        self.procs: dict[int, Proc] = {}  # ready
        self.starting: dict[int, Proc] = {}  # started, not ready yet
        self.ending: dict[int, tuple[Proc, str, int, float]] = {}  # asked to end, not reaped
        self.next_proc = itertools.count()
        self.next_op = itertools.count()
        self.tokens = itertools.count()
        self.events: list[dict[str, Any]] = []  # the coordinator's own
        self.snapshots: list[dict[str, Any]] = []
        self.selector = selectors.DefaultSelector()
        self.derived_registered: set[int] = set()
        self.ops_sent = 0
        self.broken = False

    # -- processes ----------------------------------------------------------------------

    def token(self, proc: int) -> str:
        return f"p{proc}n{next(self.tokens)}"

    def spawn(self) -> Proc:
        proc = next(self.next_proc)
        log = self.workdir / f"worker-{proc}.log"
        stderr = self.workdir / f"worker-{proc}.stderr"
        config = {
            "proc": proc,
            "log": str(log),
            "kind": self.place.kind,
            "url": self.place.url,
            "base": str(self.place.base),
            "manager": self.place.manager,
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env.pop("CACHEMAN_NO_SIGNAL_HANDLERS", None)
        with open(stderr, "w") as err:
            popen = subprocess.Popen(
                [sys.executable, __file__, "worker", json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                env=env,
            )
        worker = Proc(proc, popen, log, stderr, started=time.monotonic())
        self.events.append({"ev": "spawn", "proc": proc, "t": now()})
        self.starting[proc] = worker
        return worker

    def admit(self, *, wait: bool) -> None:
        """Take in the workers that said they are ready (``wait``: wait for each to be)."""
        for worker in list(self.starting.values()):
            timeout = 0.0
            if wait:
                timeout = max(0.0, worker.started + REPLY_TIMEOUT - time.monotonic())
            ready = self._readline(worker.popen, timeout)
            if ready == "ready":
                del self.starting[worker.proc]
                self.procs[worker.proc] = worker
            elif ready is not None or time.monotonic() > worker.started + REPLY_TIMEOUT:
                del self.starting[worker.proc]
                self._reap(worker, "start", None)
                self.events.append(
                    {"ev": "violation", "proc": worker.proc, "what": "did not start"}
                )

    def _readline(self, popen: subprocess.Popen[str], timeout: float) -> str | None:
        assert popen.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(popen.stdout, selectors.EVENT_READ)
        try:
            if not selector.select(timeout):
                return None
            line = popen.stdout.readline()
            if not line:
                return ""  # ended
        finally:
            selector.close()
        return line.strip()

    def send(self, worker: Proc, command: dict[str, Any]) -> int:
        op = next(self.next_op)
        command = {"op": op, **command}
        assert worker.popen.stdin is not None
        worker.popen.stdin.write(json.dumps(command) + "\n")
        worker.popen.stdin.flush()
        worker.busy = op
        self.ops_sent += 1
        self.events.append(
            {"ev": "sent", "proc": worker.proc, "op": op, "cmd": command, "t": now()}
        )
        return op

    def collect(self, workers: list[Proc]) -> None:
        """Wait for the reply of each busy worker in ``workers``."""
        waiting = {w.popen.stdout: w for w in workers if w.busy is not None}
        selector = selectors.DefaultSelector()
        for stream in waiting:
            selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + REPLY_TIMEOUT
        try:
            while waiting:
                ready = selector.select(max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
                for key, _ in ready:
                    worker = waiting.pop(key.fileobj)
                    selector.unregister(key.fileobj)
                    line = worker.popen.stdout.readline()  # type: ignore[union-attr]
                    if not line:
                        self._died(worker, "its pipe closed in the middle of an operation")
                    else:
                        worker.busy = None
        finally:
            selector.close()
        for worker in waiting.values():
            self.events.append(
                {
                    "ev": "violation",
                    "proc": worker.proc,
                    "what": f"hung: no reply to op {worker.busy}",
                }
            )
            self.kill(worker, signal.SIGKILL, why="hung")
            self.broken = True  # one hang is reported; the run stops rather than pile up more

    def _died(self, worker: Proc, why: str) -> None:
        self._reap(worker, "died", None)
        self.events.append({"ev": "violation", "proc": worker.proc, "what": f"died: {why}"})

    def _reap(self, worker: Proc, how: str, sent_at: int | None) -> int | None:
        try:
            rc = worker.popen.wait(REPLY_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(worker.popen.pid, signal.SIGKILL)
            rc = worker.popen.wait()
            self.events.append(
                {"ev": "violation", "proc": worker.proc, "what": f"did not end after {how}"}
            )
        for stream in (worker.popen.stdin, worker.popen.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        self.procs.pop(worker.proc, None)
        self.events.append(
            {"ev": "end", "proc": worker.proc, "how": how, "rc": rc, "sent": sent_at, "t": now(),
             "in_flight": worker.busy}
        )  # fmt: skip
        return rc

    def kill(self, worker: Proc, signum: int, *, why: str) -> None:
        """Send ``signum`` and wait for the end (SIGKILL: at once; the clean-up)."""
        sent = now()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.popen.pid, signum)
        self._reap(worker, why, sent)

    def end(self, worker: Proc, how: str) -> None:
        """Ask a worker to end (``"exit"`` or ``"sigterm"``); it is reaped later.

        The others go on meanwhile; the acknowledgement counts from the moment the
        end is seen (later than it happened: that only widens what is allowed).
        """
        if how == "exit":
            sent = now()
            self.send(worker, {"name": "exit"})
        else:
            # Idle means blocked reading its next command: a SIGTERM that came just
            # before that read began would wait for the read (CPython's limit, see
            # wait_until_reading_stdin), and the worker would seem to ignore it.
            from helpers import wait_until_reading_stdin  # not in the worker processes

            wait_until_reading_stdin(worker.popen.pid)
            sent = now()
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.popen.pid, signal.SIGTERM)
        self.procs.pop(worker.proc, None)
        self.ending[worker.proc] = (worker, how, sent, time.monotonic())

    def reap_ended(self, *, wait: bool) -> None:
        """Record the workers that ended as asked (``wait``: wait for every one)."""
        for proc, (worker, how, sent, asked) in list(self.ending.items()):
            if not wait and worker.popen.poll() is None and time.monotonic() < asked + 60:
                continue
            del self.ending[proc]
            rc = self._reap(worker, how, sent)
            if rc != (0 if how == "exit" else -signal.SIGTERM):
                self.events.append(
                    {"ev": "violation", "proc": proc, "what": f"{how} ended it with status {rc}"}
                )

    # -- the random operations -------------------------------------------------------------

    def command(self, worker: Proc) -> dict[str, Any]:
        rng = self.rng
        name = rng.choices(OPERATION_NAMES, OPERATION_WEIGHTS)[0]
        return OPERATIONS[name][1](self, worker, rng)

    def random_edit(self, proc: int, rng: random.Random, keys: tuple[str, ...] = KEYS) -> list[Any]:
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.5:
            return ["set", key, rng.choice("LLT"), self.token(proc)]
        if roll < 0.65:
            return ["del", key]
        return ["inplace", key, self.token(proc), rng.random() < 0.5]

    def snapshot(self) -> None:
        taken = now()
        record: dict[str, Any] = {"t": taken}
        for name in ("data", "auto", "raw", "features"):
            try:
                contents = self.place.read(name)
            except Exception as error:  # a store the next process could not read either
                self.events.append(
                    {"ev": "violation", "proc": None, "what": f"reading {name}: {error!r}"}
                )
                contents = None
            if name == "features":
                record[name] = None if not contents else contents.get("built_from")
                record["features_current"] = self.claims_current()
            else:
                record[name] = {str(k): canon(v) for k, v in (contents or {}).items()}
        self.snapshots.append(record)

    def claims_current(self) -> bool:
        """Whether the saved ``features`` says it was built from ``raw`` as saved now.

        A saved copy recorded as built from an older generation of ``raw`` (or
        marked stale) is rebuilt by every process that loads it, never served.
        """
        try:
            meta = self.place.read_meta("features") or {}
            raw = self.place.read_meta("raw") or {}
        except Exception:  # unreadable metadata: judged as if it claimed to be current
            return True
        parents = meta.get("parents") or {}
        return not meta.get("stale") and parents.get("raw") == raw.get("generation")

    def run(self, *, rounds: int | None = None, seconds: float | None = None) -> None:
        """Run rounds until ``rounds`` are done or ``seconds`` have passed; end every worker."""
        end = None if seconds is None else time.monotonic() + seconds
        try:
            done = 0
            while True:
                if rounds is not None and done >= rounds:
                    break
                if (end is not None and time.monotonic() >= end) or self.broken:
                    break
                self.round()
                done += 1
        finally:
            self.admit(wait=True)  # every worker ends normally, for the last read of the store
            for worker in list(self.procs.values()):
                if worker.busy is None:
                    self.end(worker, "exit")
                else:
                    self.kill(worker, signal.SIGKILL, why="sigkill")
            self.reap_ended(wait=True)
            self.snapshot()
        self.next_run()

    def next_run(self) -> None:
        """What the next program sees: a new process registers the derived cache, then ends."""
        worker = self.spawn()
        self.admit(wait=True)
        if worker.proc not in self.procs:
            return  # it did not start: already a violation
        self.send(worker, {"name": "register_derived"})
        self.collect([worker])
        if worker.proc in self.procs:
            self.end(worker, "exit")
        self.reap_ended(wait=True)
        self.snapshot()

    def round(self) -> None:
        rng = self.rng
        # A worker that ended is replaced at once; the new one joins when it is ready
        # (starting an interpreter takes a while), and the others go on meanwhile.
        self.reap_ended(wait=False)
        while len(self.procs) + len(self.starting) < self.workers:
            self.spawn()
        self.admit(wait=not self.procs)
        workers = list(self.procs.values())
        # The ends of a process happen while it is idle (exit, SIGTERM) or busy (SIGKILL).
        roll = rng.random()
        if roll < 0.07:
            self.end(rng.choice(workers), "exit" if roll < 0.04 else "sigterm")
            self.snapshot()
            return
        chosen = [w for w in workers if rng.random() < 0.75] or [rng.choice(workers)]
        for worker in chosen:
            self.send(worker, self.command(worker))
        if rng.random() < 0.04:
            victim = rng.choice(chosen)
            # A random moment inside the operation (or just after it): the kill lands
            # where it lands, and the checker treats whatever was in flight as maybe done.
            time.sleep(rng.random() * 0.01)
            self.kill(victim, signal.SIGKILL, why="sigkill")
            chosen.remove(victim)
        self.collect(chosen)
        self.snapshot()


def _cache(rng: random.Random) -> str:
    return rng.choice(("data", "data", "auto"))


def _op_edit(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "edit", "edit": c.random_edit(w.proc, rng), "cache": _cache(rng)}


def _op_read(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "read", "keys": rng.sample(KEYS, 4)}


def _op_save(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "save", "cache": _cache(rng)}


def _op_dirty_save(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "dirty_save"}


def _op_refresh(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "refresh", "cache": _cache(rng)}


def _op_clear(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "clear"}


def _op_invalidate(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "invalidate", "token": c.token(w.proc)}


def _op_register_derived(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "register_derived"}


def _op_refresh_derived(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "refresh_derived"}


def _op_save_derived(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    return {"name": "save_derived"}


def _op_threaded(c: Coordinator, w: Proc, rng: random.Random) -> dict[str, Any]:
    keys = list(KEYS)
    rng.shuffle(keys)
    count = rng.randint(2, 3)
    plans = []
    for i in range(count):
        own = tuple(keys[i * 3 : i * 3 + 3])  # each thread edits keys of its own
        plans.append([c.random_edit(w.proc, rng, own) for _ in range(rng.randint(3, 8))])
    return {
        "name": "threaded",
        "threads": plans,
        "main": rng.choice(["save", "save", "dirty_save", "refresh"]),
    }


#: The operations a worker is sent: name -> (weight, make the command).
OPERATIONS: dict[
    str, tuple[float, Callable[[Coordinator, Proc, random.Random], dict[str, Any]]]
] = {
    "edit": (40, _op_edit),
    "read": (6, _op_read),
    "save": (14, _op_save),
    "dirty_save": (4, _op_dirty_save),
    "refresh": (8, _op_refresh),
    "clear": (1.5, _op_clear),
    "invalidate": (4, _op_invalidate),
    "register_derived": (4, _op_register_derived),
    "refresh_derived": (4, _op_refresh_derived),
    "save_derived": (3, _op_save_derived),
    "threaded": (5, _op_threaded),
}
OPERATION_NAMES = list(OPERATIONS)
OPERATION_WEIGHTS = [weight for weight, _ in OPERATIONS.values()]


# =====================================================================================
# The checker: a pure function of the logs, the coordinator's events and the snapshots
# =====================================================================================


@dataclass
class Step:
    """One step of one process: a change (``prod``), an acknowledging save (``ack``), ..."""

    proc: int
    kind: str
    start: int
    end: int | None  # None: cut short (the process was killed, or the step raised)
    cache: str | None = None
    prods: list[tuple[str, str]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)


@dataclass
class Version:
    """One change of one key by one process, and when it could land and was acknowledged."""

    proc: int
    cache: str
    key: str
    content: str
    start: int
    end: int | None
    land_from: int | None = None  # None: it can never land
    land_until: int | None = None
    acked_at: int | None = None  # the end of the acknowledgement
    step: Step | None = None


@dataclass
class Violation:
    what: str
    detail: str
    keys: tuple[str, ...] = ()
    procs: tuple[int, ...] = ()
    when: int | None = None
    cache: str | None = None  # the cache of ``keys``, for a key's violation

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


@dataclass
class Report:
    seed: int
    kind: str
    operations: int  # commands and signals sent to workers, and edits by their threads
    processes: int
    checks: int  # keys and derived caches compared with what the history allows
    violations: list[Violation]
    history: str

    def summary(self) -> str:
        return (
            f"model check on the {self.kind} store, seed {self.seed}: {self.operations} "
            f"operations by {self.processes} processes, {self.checks} checks, "
            f"{len(self.violations)} violations"
        )


def _short(text: str, lines: int = 8) -> str:
    """A traceback's first line and last ``lines`` lines (a recursion repeats the middle)."""
    parts = text.rstrip().splitlines()
    if len(parts) <= lines + 1:
        return text.rstrip()
    return "\n".join([parts[0], "  ...", *parts[-lines:]])


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    with contextlib.suppress(FileNotFoundError), open(path) as lines:
        for line in lines:
            with contextlib.suppress(ValueError):  # a line torn by SIGKILL
                records.append(json.loads(line))
    return records


class _KeyIndex:
    """The versions of one key, indexed for the questions a store read asks (O(log n) each)."""

    def __init__(self, versions: list[Version]) -> None:
        acked = sorted(
            (v for v in versions if v.acked_at is not None and v.land_from is not None),
            key=lambda v: v.acked_at or 0,
        )
        self.acked_times = [v.acked_at or 0 for v in acked]
        # For each prefix of the acknowledged versions: the one that landed last at the earliest.
        self.newest: list[Version] = []
        for version in acked:
            best = self.newest[-1] if self.newest else version
            if (version.land_from or NEVER) >= (best.land_from or NEVER):
                best = version
            self.newest.append(best)
        groups: dict[str, list[Version]] = defaultdict(list)
        for version in versions:
            if version.land_from is not None:
                groups[version.content].append(version)
        # content -> (the times its versions could first land, sorted; the latest they could
        # last land, for each prefix)
        self.by_content: dict[str, tuple[list[int], list[int]]] = {}
        for content, group in groups.items():
            group.sort(key=lambda v: v.land_from or 0)
            latest, maxima = NEVER, []
            for version in group:
                latest = max(latest, version.land_until or NEVER)
                maxima.append(latest)
            self.by_content[content] = ([v.land_from or 0 for v in group], maxima)

    def newest_acked(self, when: int) -> Version | None:
        """Of the versions acknowledged before ``when``, the one whose landing began last."""
        count = bisect.bisect_left(self.acked_times, when)
        return self.newest[count - 1] if count else None

    def latest(self, content: str, when: int) -> int | None:
        """The latest a version with ``content`` that could land before ``when`` could land."""
        starts, maxima = self.by_content.get(content, ([], []))
        count = bisect.bisect_left(starts, when)
        return maxima[count - 1] if count else None


class Checker:
    def __init__(
        self,
        events: list[dict[str, Any]],
        snapshots: list[dict[str, Any]],
        records: dict[int, list[dict[str, Any]]],
        stderr: dict[int, str] | None = None,
    ) -> None:
        self.events = events
        self.snapshots = snapshots
        self.records = records
        self.stderr = stderr or {}
        self.violations: list[Violation] = []
        self.steps: list[Step] = []
        self.life_end: dict[int, int] = {}  # proc -> when it was reaped
        self.exit_ack: dict[int, tuple[int, int]] = {}  # proc -> acknowledged (start, end)
        self.exit_maybe: dict[int, tuple[int, int]] = {}  # proc -> an end that may have saved
        self.checked = 0

    @classmethod
    def of(cls, coordinator: Coordinator) -> Checker:
        """The checker of a run: the coordinator's events and snapshots, the workers' logs."""
        procs = sorted({e["proc"] for e in coordinator.events if e["ev"] == "spawn"})
        records = {p: read_log(coordinator.workdir / f"worker-{p}.log") for p in procs}
        stderr = {}
        for proc in procs:
            with contextlib.suppress(FileNotFoundError):
                stderr[proc] = (coordinator.workdir / f"worker-{proc}.stderr").read_text()
        return cls(coordinator.events, coordinator.snapshots, records, stderr)

    def operations(self) -> int:
        """Commands and signals sent, and edits made by writer threads."""
        commands = {e["op"]: e["cmd"]["name"] for e in self.events if e["ev"] == "sent"}
        signals = sum(
            1 for e in self.events if e["ev"] == "end" and e["how"] in ("sigterm", "sigkill")
        )
        thread_edits = sum(
            1
            for step in self.steps
            if step.kind == "prod"
            and not step.record.get("dirty")
            and commands.get(step.record["op"]) == "threaded"
        )
        return len(commands) + signals + thread_edits

    def violation(
        self,
        what: str,
        detail: str,
        keys: tuple[str, ...] = (),
        procs: tuple[int, ...] = (),
        when: int | None = None,
        cache: str | None = None,
    ) -> None:
        self.violations.append(Violation(what, detail, keys, procs, when, cache))

    # -- reading the history ---------------------------------------------------------------

    def load(self) -> None:
        errors_by_proc: dict[int, bool] = defaultdict(bool)
        for event in self.events:
            if event["ev"] == "violation":
                procs = () if event["proc"] is None else (event["proc"],)
                self.violation("process", f"worker {event['proc']}: {event['what']}", procs=procs)
        for proc, text in sorted(self.stderr.items()):
            if "Traceback" in text:  # "Exception ignored in ...", a crash at exit
                errors_by_proc[proc] = True
                where = text[text.index("Traceback") :]
                self.violation("exception", f"worker {proc}, on stderr:\n{_short(where)}")
        for proc, records in sorted(self.records.items()):
            open_steps: dict[str, Step] = {}
            for record in records:
                ev = record["ev"]
                if ev == "pre":
                    step = Step(
                        proc,
                        record["kind"],
                        record["t"],
                        None,
                        record.get("cache"),
                        [tuple(p) for p in record.get("prods", [])],
                        record,
                    )
                    open_steps[record["sid"]] = step
                    self.steps.append(step)
                elif ev == "post":
                    step = open_steps.pop(record["sid"])
                    step.end = record["t"]
                    step.after = record
                elif ev == "error":
                    errors_by_proc[proc] = True
                    self.violation(
                        "exception",
                        f"worker {proc}, {record['where']}:\n{_short(record['tb'])}",
                        procs=(proc,),
                    )
                elif ev == "log" and record["level"] in ("ERROR", "CRITICAL"):
                    errors_by_proc[proc] = True
                    self.violation(
                        "logged error", f"worker {proc}: {_short(record['msg'])}", procs=(proc,)
                    )
        for event in self.events:
            if event["ev"] != "end":
                continue
            proc, t = event["proc"], event["t"]
            self.life_end[proc] = t
            sent = event["sent"] if event["sent"] is not None else t
            clean = not errors_by_proc[proc]
            ended_as_asked = (event["how"], event["rc"]) in (("exit", 0), ("sigterm", -15))
            if ended_as_asked and clean:
                self.exit_ack[proc] = (sent, t)
            else:
                # Killed, or an end that went wrong: whatever it was doing may have landed.
                self.exit_maybe[proc] = (sent, t)

    # -- the versions of each key, and when each could land -------------------------------

    def versions(self) -> dict[tuple[str, str], list[Version]]:
        by_key: dict[tuple[str, str], list[Version]] = defaultdict(list)
        acks: dict[tuple[int, str], list[tuple[int, int | None, bool]]] = defaultdict(list)
        for step in self.steps:
            if step.kind == "prod":
                for key, content in step.prods:
                    by_key[(step.cache or "", key)].append(
                        Version(
                            step.proc,
                            step.cache or "",
                            key,
                            content,
                            step.start,
                            step.end,
                            step=step,
                        )
                    )
            elif step.kind == "ack":
                end = step.end
                if end is None:
                    end = self.life_end.get(step.proc)  # cut short: it may have landed until then
                acks[(step.proc, step.cache or "")].append((step.start, end, step.end is not None))
        for proc, (start, end) in self.exit_ack.items():
            for cache in CHECKED:
                acks[(proc, cache)].append((start, end, True))
        for proc, (start, end) in self.exit_maybe.items():
            for cache in CHECKED:
                acks[(proc, cache)].append((start, end, False))
        for each in acks.values():
            each.sort(key=lambda a: a[0])
        for (cache, _key), versions in by_key.items():
            versions.sort(key=lambda v: v.start)
            mine: dict[int, list[Version]] = defaultdict(list)
            for version in versions:
                mine[version.proc].append(version)
            for proc, own in mine.items():
                proc_acks = acks[(proc, cache)]
                death = self.life_end.get(proc, FOREVER)
                for index, version in enumerate(own):
                    successor = own[index + 1] if index + 1 < len(own) else None
                    if successor is None:
                        gone = death
                    else:
                        gone = successor.end if successor.end is not None else death
                    if version.end is None:
                        gone = min(gone, death)
                    # The first acknowledgement that starts after the change returned,
                    # before any later change of the key by this process started.
                    acked = None
                    # mark_dirty() re-asserts what is held: that may land, but need not
                    # win over what others changed since (see the module docstring).
                    # Nor is a change in place made to a list that a refresh replaced meanwhile,
                    # nor a delete that found the key gone (both are marked "orphaned").
                    dirty = version.step is not None and (
                        version.step.record.get("dirty") or version.step.after.get("orphaned")
                    )
                    if version.end is not None and not dirty:
                        for start, end, complete in proc_acks:
                            if start > version.end:
                                if complete and (successor is None or successor.start > (end or 0)):
                                    acked = (start, end)
                                break
                    # It can land from the moment it is made (a background save: an
                    # invalidation event from another process makes this one save what it
                    # has pending before it reloads) until it is written by an acknowledged
                    # save or replaced; a save that overlapped that time may end later.
                    land_until = acked[1] if acked is not None else gone
                    for start, end, _complete in proc_acks:
                        if start >= gone or (end is not None and end < version.start):
                            continue
                        if acked is not None and start > acked[0]:
                            break  # written by then: later saves do not write it again
                        land_until = max(land_until, end if end is not None else death)
                    version.land_from = version.start
                    version.land_until = land_until
                    if acked is not None:
                        version.acked_at = acked[1]
        return by_key

    # -- the rules ---------------------------------------------------------------------------

    def check_keys(self) -> None:
        indexes = {key: _KeyIndex(versions) for key, versions in self.versions().items()}
        empty = _KeyIndex([])
        reported: set[tuple[Any, ...]] = set()
        for snapshot in self.snapshots:
            when = snapshot["t"]
            for cache in CHECKED:
                held = snapshot.get(cache, {})
                keys = {"version"} if cache == "raw" else set(KEYS)
                keys |= set(held) | {key for (c, key) in indexes if c == cache}
                for key in sorted(keys):
                    self.checked += 1
                    found = held.get(key, ABSENT)
                    index = indexes.get((cache, key), empty)
                    self.check_key(cache, key, found, when, index, reported)

    def check_key(
        self,
        cache: str,
        key: str,
        found: str,
        when: int,
        index: _KeyIndex,
        reported: set[tuple[Any, ...]],
    ) -> None:
        """Rules 1 and 2 for one key in one store read (each violation reported once)."""
        newest = index.newest_acked(when)
        latest = index.latest(found, when)
        shown = "missing" if found == ABSENT else f"= {found!r}"
        bound = None if newest is None else newest.land_from
        if newest is not None and bound is not None and (latest is None or latest <= bound):
            if ("lost", cache, key, found, id(newest)) in reported:
                return
            reported.add(("lost", cache, key, found, id(newest)))
            could = (
                "never could have" if latest is None else f"could last have ({self.rel(latest)})"
            )
            self.violation(
                "lost acknowledged write",
                f"{cache}[{key!r}] {shown} at {self.rel(when)}, but {newest.content!r} (worker "
                f"{newest.proc}, acknowledged at {self.rel(newest.acked_at)}) was written after "
                f"what is there {could} landed",
                keys=(key,),
                cache=cache,
                procs=(newest.proc,),
                when=when,
            )
        elif latest is None and found != ABSENT:
            if ("unchanged", cache, key, found) in reported:
                return
            reported.add(("unchanged", cache, key, found))
            self.violation(
                "value written that its process never changed",
                f"{cache}[{key!r}] {shown} at {self.rel(when)}: no process had changed it to that "
                "at a time it could have landed",
                keys=(key,),
                cache=cache,
                when=when,
            )

    def check_derived(self) -> None:
        # Invalidations: the token each one wrote, when it started and when it returned.
        inv_start: dict[str, int] = {}
        inv_end: dict[str, int] = {ABSENT: NEVER}
        completed: list[tuple[int, int, str]] = []  # (start, end, token)
        for step in self.steps:
            if step.kind != "inv":
                continue
            token = step.record["token"]
            inv_start[token] = step.start
            end = step.end if step.end is not None else self.life_end.get(step.proc, FOREVER)
            inv_end[token] = end
            if step.end is not None:
                completed.append((step.start, step.end, token))

        def stale(built_from: str, when: int) -> str | None:
            if built_from not in inv_end:
                return f"built from {built_from!r}, a version of raw nobody wrote"
            for start, end, token in completed:
                if end < when and start > inv_end[built_from]:
                    return (
                        f"built from raw version {built_from!r} although the invalidation that "
                        f"wrote {token!r} (started {self.rel(start)}, after the one that wrote "
                        f"{built_from!r} ended at {self.rel(inv_end[built_from])}) had completed "
                        f"at {self.rel(end)}"
                    )
            return None

        reported: set[str] = set()
        for snapshot in self.snapshots:
            built_from = snapshot["features"]
            if built_from is None or not snapshot.get("features_current", True):
                continue  # nothing saved, or a copy the store itself records as stale
            self.checked += 1
            why = stale(built_from, snapshot["t"])
            if why and built_from not in reported:  # once per stale copy, not per read of it
                reported.add(built_from)
                self.violation(
                    "stale derived cache (saved)",
                    f"at {self.rel(snapshot['t'])}: {why}",
                    keys=("features",),
                    when=snapshot["t"],
                )
        for step in self.steps:
            if step.kind != "view" or step.end is None:
                continue
            built_from = step.after.get("built_from")
            if built_from is None:
                continue  # empty: nothing built, nothing stale
            self.checked += 1
            why = stale(built_from, step.start)
            if why:
                self.violation(
                    "stale derived cache (in memory)",
                    f"worker {step.proc}, {step.record['op']} at {self.rel(step.start)}: {why}",
                    keys=("features",),
                    procs=(step.proc,),
                    when=step.end,
                )

    def rel(self, t: int | None) -> str:
        if t is None:
            return "never"
        if t <= NEVER or t >= FOREVER:
            return "-" if t <= NEVER else "+inf"
        origin = self.events[0]["t"] if self.events else 0
        return f"{(t - origin) / 1e6:.1f}ms"

    def run(self) -> list[Violation]:
        self.load()
        self.check_keys()
        self.check_derived()
        return self.violations

    # -- a short history for a failure ---------------------------------------------------------

    def history(self, limit: int = 4, span: int = 3_000_000_000) -> str:
        """For the first violation of each kind: what led to it, in time order.

        The steps on its keys (changes, saves of the processes that changed them,
        invalidations and builds for ``features``), the ends of processes, and
        the store reads where what they show changed, over the ``span``
        nanoseconds before it.
        """
        lines: list[str] = []
        firsts: dict[str, Violation] = {}
        for each in self.violations:
            firsts.setdefault(each.what, each)
        for violation in list(firsts.values())[:limit]:
            lines.append(f"--- {violation.what}: {violation.detail}")
            if violation.when is not None:
                lines += self._lead_up(violation, span)
        shown = min(limit, len(firsts))
        if len(self.violations) > shown:
            lines.append(f"... and {len(self.violations) - shown} more violations")
        return "\n".join(lines)

    def _lead_up(self, violation: Violation, span: int) -> list[str]:
        assert violation.when is not None
        keys = set(violation.keys)
        cache = violation.cache

        def on_keys(step: Step) -> list[str]:
            if cache is not None and step.cache != cache:
                return []
            return [f"{k}={c}" for k, c in step.prods if k in keys]

        writers = {s.proc for s in self.steps if on_keys(s)}
        derived = "features" in keys
        when = violation.when
        # Every process's saves and ends since the store read before: one of them wrote it.
        before = max((s["t"] for s in self.snapshots if s["t"] < when), default=NEVER)
        events: list[tuple[int, str]] = []
        for step in self.steps:
            mine = on_keys(step)
            if derived:
                wanted = step.kind in ("inv", "view")
            else:
                recent = step.kind == "ack" and (step.end or when) >= before
                wanted = bool(mine) or (step.kind == "ack" and step.proc in writers) or recent
            if not wanted:
                continue
            extra = step.after.get("built_from") or step.record.get("token") or ""
            words = [f"worker {step.proc}", step.kind, step.cache or "", *mine, str(extra)]
            text = " ".join(word for word in words if word)
            events.append((step.start, f"{self.rel(step.start)}..{self.rel(step.end)} {text}"))
        if derived:
            for proc, records in self.records.items():
                for record in records:
                    if record["ev"] == "build":
                        built = record["t"]
                        text = f"worker {proc} built features from {record['built_from']}"
                        events.append((built, f"{self.rel(built)} {text}"))
        for event in self.events:
            if event["ev"] == "end" and (
                derived or event["proc"] in writers or event["t"] >= before
            ):
                text = f"worker {event['proc']} ended ({event['how']}, status {event['rc']})"
                events.append((event["t"], f"{self.rel(event['t'])} {text}"))
        last: dict[str, Any] = {}
        for snapshot in self.snapshots:
            for key in sorted(keys):
                if key == "features":
                    seen = snapshot["features"]
                else:
                    seen = snapshot.get(cache or "data", {}).get(key, ABSENT)
                if key not in last or last[key] != seen:
                    last[key] = seen
                    events.append((snapshot["t"], f"{self.rel(snapshot['t'])} store: {key}={seen}"))
        events.sort(key=lambda e: e[0])
        return ["    " + text for t, text in events if when - span <= t <= when]


def run_model(
    place: Place,
    seed: int,
    workdir: Path,
    *,
    rounds: int | None = None,
    seconds: float | None = None,
    workers: int = 3,
) -> Report:
    """One randomized run against ``place``; the report of its check."""
    coordinator = Coordinator(place, seed, workdir, workers=workers)
    try:
        coordinator.run(rounds=rounds, seconds=seconds)
    finally:  # a run that broke off leaves no process behind
        ending = [each[0] for each in coordinator.ending.values()]
        for worker in [*coordinator.procs.values(), *coordinator.starting.values(), *ending]:
            with contextlib.suppress(Exception):
                coordinator.kill(worker, signal.SIGKILL, why="cleanup")
    checker = Checker.of(coordinator)
    violations = checker.run()
    return Report(
        seed,
        place.kind,
        checker.operations(),
        len(checker.records),
        checker.checked,
        violations,
        checker.history(),
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker_main(sys.argv[2])
    else:
        sys.exit("usage: model_harness.py worker CONFIG_JSON")
