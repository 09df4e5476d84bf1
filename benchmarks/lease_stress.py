"""Many processes miss the same cold keys while lease holders are SIGKILLed: count computations.

``run(processes, keys, victims, directory)`` starts ``processes`` fresh
interpreters that each call a memoized ``square(k)`` (``lease=True``) for
every ``k`` in ``range(keys)``, each in its own random order.  The first
process to compute one of the ``victims`` keys blocks inside the function,
holding that key's lease, and is SIGKILLed by the runner as soon as it says
so; another process must take the lease over.  Every start and end of a
computation is appended to a shared log (``O_APPEND``: lines never mix).

The report: computations that ended, per key (each key must end exactly
once: more is a duplicate computation, none a lost key; a killed process
ended only computations it had published before it blocked), wrong results
read by survivors, and whether every survivor
finished before the deadline (no hang).  Used by ``tests/test_memoize.py``
(small in the default run, 16 x 1,000 in the slow lane) and
``bench_memoize.py`` (the exactly-once table).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

WORKER = r"""
import json, os, random, sys, threading
from cacheman import CacheManager, RedisStore

directory, log, keys, victims, seed, url = sys.argv[1:7]
victims = {int(v) for v in victims.split(",") if v}
store = RedisStore(url) if url else None
manager = CacheManager("stress", directory, store=store)
pid = os.getpid()
out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

@manager.memoize("square", lease=True, lease_timeout=120)
def square(k):
    os.write(out, f"start {pid} {k}\n".encode())
    if k in victims:
        try:  # the first process to get here is the one to be killed
            os.close(os.open(f"{log}.victim-{k}", os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        else:
            os.write(out, f"victim {pid} {k}\n".encode())
            threading.Event().wait()  # holding the lease until SIGKILL
    os.write(out, f"end {pid} {k}\n".encode())
    return k * k

order = list(range(int(keys)))
random.Random(int(seed)).shuffle(order)
bad = sum(square(k) != k * k for k in order)
print(json.dumps({"pid": pid, "bad": bad, "computed": square.stats.misses}))
"""


@dataclass
class Report:
    """What a run found; a clean run has no duplicates, no lost keys, no bad reads, no hang."""

    processes: int
    keys: int
    killed: int = 0
    duplicates: int = 0
    lost: int = 0
    bad_reads: int = 0
    hung: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    duplicate_keys: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.duplicates or self.lost or self.bad_reads or self.hung or self.errors)


def run(
    processes: int,
    keys: int,
    victims: int,
    directory: Path,
    *,
    redis_url: str = "",
    deadline: float = 600.0,
    seed: int = 0,
) -> Report:
    """Run the stress once (see the module docstring)."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(keys), victims))
    log = directory / "computations.log"
    log.touch()
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    started = time.monotonic()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory / "caches"), str(log), str(keys),
             ",".join(map(str, chosen)), str(seed * 1000 + number), redis_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for number in range(processes)
    ]  # fmt: skip
    killed: set[int] = set()
    report = Report(processes, keys)
    seen = 0
    # Every child polled each round (not any(), which stops at the first running one):
    # a killed child must be reaped, or it lingers as a zombie that looks alive.
    while [child.poll() for child in children].count(None):
        if time.monotonic() - started > deadline:
            report.hung = True
            for child in children:
                child.kill()
            break
        lines = log.read_text().splitlines()
        for line in lines[seen:]:
            what, pid, _key = line.split()
            if what == "victim":
                os.kill(int(pid), signal.SIGKILL)
                killed.add(int(pid))
        seen = len(lines)
        time.sleep(0.005)  # polling the log; the children do not wait on the runner
    report.seconds = time.monotonic() - started
    report.killed = len(killed)
    for child in children:
        out, err = child.communicate()
        if child.pid in killed:
            continue
        if child.returncode != 0:
            report.errors.append(err[-2000:])
            continue
        result = json.loads(out.splitlines()[-1])
        report.bad_reads += result["bad"]
    ends = Counter()
    for line in log.read_text().splitlines():
        what, pid, key = line.split()
        # Every end counts, the killed processes' too: they were killed only while
        # blocked in a victim key, after publishing everything they computed before.
        if what == "end":
            ends[int(key)] += 1
    report.duplicates = sum(count - 1 for count in ends.values() if count > 1)
    report.duplicate_keys = sorted(key for key, count in ends.items() if count > 1)
    for key in report.duplicate_keys[:3]:
        report.errors.append(
            "\n".join(line for line in log.read_text().splitlines() if line.endswith(f" {key}"))
        )
    report.lost = sum(1 for key in range(keys) if ends[key] == 0)
    return report


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print(run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(scratch)))
