"""Ends a local Ray's processes as soon as the driver that started them is gone, however it ended.

    python workflows/reaper.py        (started by workflows/ray_session.py; stdin is a pipe)

`ray.shutdown()` runs only when the driver exits normally. After a kill -9 the raylet and GCS die
with the driver, but their workers keep running for about a second, and Ray's dashboard and
runtime-env agents for about a minute. This process, in a session of its own, reads from a pipe
whose only writer is the driver: each line is a JSON list of the pids `ray.init` started; the end
of the pipe (the driver closed it, or died) means the run is over. It follows those processes and
their descendants (snapshot every POLL_S, and once more at the end, while the parents still exist)
and then SIGKILLs every one still alive, recognised by pid and start time so a reused pid is spared.
It runs as a plain script so that it starts in a fraction of a second and imports nothing of ours.
"""

from __future__ import annotations

import json
import os
import select
import signal

import psutil

POLL_S = 0.5


def descendants(roots: dict[int, float]) -> dict[int, float]:
    """{pid: create_time} of the live `roots` (still the same processes) and all their descendants."""
    found = {}
    for pid, started in roots.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != started:
                continue
            found[pid] = started
            for child in proc.children(recursive=True):
                found[child.pid] = child.create_time()
        except psutil.Error:  # gone meanwhile
            continue
    return found


def kill(processes: dict[int, float]) -> None:
    for pid, started in processes.items():
        try:
            if psutil.Process(pid).create_time() == started:
                os.kill(pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            continue


def main() -> None:
    roots: dict[int, float] = {}
    seen: dict[int, float] = {}
    pipe = open(0, "rb", buffering=0, closefd=False)  # unbuffered: select sees every line
    while True:
        ready, _, _ = select.select([pipe], [], [], POLL_S)
        if ready:
            line = pipe.readline()
            if not line:
                break
            for pid in json.loads(line):
                try:
                    roots[pid] = psutil.Process(pid).create_time()
                except psutil.Error:
                    continue
        seen |= descendants(roots)
    seen |= descendants(seen)
    kill({pid: t for pid, t in seen.items() if pid != os.getpid()})


if __name__ == "__main__":
    main()
