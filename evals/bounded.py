"""Scoring bounded in wall time on any thread and in any process: a small pool of warm child
processes that score answers, each killed and replaced when one answer outlasts the limit.

Why processes: sympy on model output (a power tower, a 20,000-character `\\frac`) can run for hours
inside one C call that holds the GIL, and a SIGALRM limit exists only on a process's main thread
(TRL and Ray Train may call rewards elsewhere). Only killing the process that computes is a bound.

The workers are fresh interpreters (`python -m evals.score_worker`, not forks: the callers are
Ray workers and torch processes with threads, whose forks can deadlock), each importing sympy,
latex2sympy and math-verify once, then kept. A call sends each idle worker a chunk of jobs in one
message; the worker streams one result per job back. Each job has `limit_s` from the moment the
worker starts it (the previous result, or the send). Past it the worker is killed, that job's
result is TIMEOUT, the rest of its chunk goes back in the queue, and a replacement starts at once
in the background (the other workers go on meanwhile). A worker that dies mid-job (a segfault
in deep recursion) gives that job a "scorer error" and is replaced the same way.

So a call of n answers returns after at most (answers that time out) x limit_s plus the scoring
of the rest; a lone answer returns within limit_s plus a few milliseconds, unless every worker
was just killed and is still starting (about a second).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT = "timeout"
"""The reason recorded for an answer whose scoring outlasted the limit (scored 0)."""
DEFAULT_LIMIT_S = 10.0
"""Per answer: the harness's own symbolic limit is 3 s per comparison, and one answer may need a
few (tuples, equations); math-verify's parse and verify have 5 s each."""
STARTUP_S = 120.0
"""A worker that is not ready by then (imports sympy and math-verify) is a broken install."""
CHUNK = 64
"""Most jobs per message: large enough that an ordinary answer costs about a pipe write."""

_limit_s = DEFAULT_LIMIT_S


def set_limit(limit_s: float) -> None:
    """The per-answer limit of later calls that do not pass their own (the eval and RL stages set
    their config's `score_timeout_s`)."""
    global _limit_s
    if not limit_s > 0:
        raise ValueError(f"score limit must be > 0 s, got {limit_s}")
    _limit_s = float(limit_s)


def limit() -> float:
    return _limit_s


class WorkerError(RuntimeError):
    """A scoring worker could not start (its stderr, shown above, says why)."""


class _Worker:
    def __init__(self):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = str(Path(__file__).resolve().parent.parent)  # the child imports this same copy of evals
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        # a new session: Ctrl-C in the caller's terminal does not kill a worker mid-answer; an
        # orphaned worker still exits, at EOF on its pipe
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evals.score_worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        self.started = time.monotonic()
        self.ready = False
        self.jobs: deque[int] = deque()  # indices sent and not yet answered, in order
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.send_conn.close()
        self.recv_conn.close()


class ScoringPool:
    """`workers` warm scoring processes; `run` is thread-safe (calls take turns)."""

    def __init__(self, workers: int = 2):
        self.size = workers
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.timeouts = 0
        """Answers timed out since the pool started (the per-call counts are in the results)."""

    def _ensure(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(_Worker())

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker()

    def run(self, jobs: list[tuple], limit_s: float | None = None) -> list:
        """Each job `(name, *args)` (names: evals.score_worker.JOBS) -> the worker's result, or
        TIMEOUT, or "scorer error: ..." when the worker died on it."""
        limit_s = _limit_s if limit_s is None else limit_s
        results: list = [None] * len(jobs)
        todo = deque(range(len(jobs)))
        with self._lock:
            self._ensure()
            try:
                while todo or any(w.jobs for w in self._workers):
                    self._dispatch(jobs, todo, limit_s)
                    self._collect(results, todo, limit_s)
            except BaseException:  # Ctrl-C, a start-up failure: no later call may read this call's results
                for w in [w for w in self._workers if w.jobs]:
                    w.kill()
                    self._workers.remove(w)
                raise
        return results

    def _dispatch(self, jobs, todo: deque, limit_s: float) -> None:
        idle = [w for w in self._workers if w.ready and not w.jobs]
        for w in idle:
            if not todo:
                return
            n = min(CHUNK, -(-len(todo) // len(idle)))
            chunk = [todo.popleft() for _ in range(n)]
            w.send_conn.send([(i, *jobs[i]) for i in chunk])
            w.jobs.extend(chunk)
            w.deadline = time.monotonic() + limit_s

    def _collect(self, results: list, todo: deque, limit_s: float) -> None:
        now = time.monotonic()
        waiting = [w for w in self._workers if w.jobs or not w.ready]
        deadlines = [w.deadline for w in waiting if w.jobs] + [w.started + STARTUP_S for w in waiting if not w.ready]
        by_conn = {w.recv_conn: w for w in waiting}
        for conn in wait(list(by_conn), timeout=max(0.0, min(deadlines) - now)):
            w = by_conn[conn]
            try:
                while True:  # drain what has arrived: one wait per burst of cheap answers, not per answer
                    message = conn.recv()
                    if message == "ready":
                        w.ready = True
                    else:
                        index, result = message
                        results[index] = result
                        w.jobs.popleft()
                        w.deadline = time.monotonic() + limit_s
                    if not (w.jobs and conn.poll(0)):
                        break
            except (EOFError, OSError):
                self._died(w, results, todo)
        now = time.monotonic()
        for w in list(self._workers):
            if w.jobs and now >= w.deadline:
                index = w.jobs.popleft()
                results[index] = TIMEOUT
                self.timeouts += 1
                log.warning("scoring an answer took over %.1f s: killed, scored 0 (reason: timeout)", limit_s)
                todo.extendleft(reversed(w.jobs))
                self._replace(w)
            elif not w.ready and now - w.started > STARTUP_S:
                w.kill()
                self._workers.remove(w)
                raise WorkerError(f"a scoring worker was not ready after {STARTUP_S:.0f} s")

    def _died(self, w: _Worker, results: list, todo: deque) -> None:
        w.kill()  # reaps it: its pipe may close before the kernel reports its exit
        if not w.ready:
            self._workers.remove(w)
            raise WorkerError(f"a scoring worker exited at start-up (code {w.proc.returncode}); its stderr says why")
        index = w.jobs.popleft()
        results[index] = f"scorer error: the scoring process exited (code {w.proc.returncode})"
        log.warning("a scoring worker exited while scoring an answer (scored 0); replaced")
        todo.extendleft(reversed(w.jobs))
        self._replace(w)

    def warm(self) -> None:
        """Start the workers and wait until one is ready (the next call would otherwise wait)."""
        with self._lock:
            self._ensure()
            while not any(w.ready for w in self._workers):
                self._collect([], deque(), _limit_s)

    def forget(self) -> None:
        """In a forked child: the workers are the parent's; drop this copy of their pipes."""
        for w in self._workers:
            w.send_conn.close()
            w.recv_conn.close()
        self._workers, self._lock, self._pid = [], threading.Lock(), os.getpid()

    def close(self) -> None:
        with self._lock:
            for w in self._workers:
                if self._pid == os.getpid():
                    w.kill()
            self._workers = []


_POOL: ScoringPool | None = None
_POOL_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # a lock held by another thread at the fork stays held in the child forever: start afresh
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    if _POOL is not None:
        _POOL.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def pool() -> ScoringPool:
    """The process's pool, started on first use (two workers, or one on a one-core host)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ScoringPool(workers=min(2, os.cpu_count() or 1))
            atexit.register(_POOL.close)
        return _POOL


def run(jobs: list[tuple], limit_s: float | None = None) -> list:
    """`ScoringPool.run` on the process's pool."""
    return pool().run(jobs, limit_s) if jobs else []
