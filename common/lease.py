"""One driver per sweep, and stage workers that stop when their driver is gone.

The driver of `prift run` holds the sweep for as long as it runs (`DriverLease`):
    <sweep>/driver.lock        an exclusive flock, held for the whole run: a second driver on the
                               same sweep waits LOCK_WAIT_S, then refuses naming the holder. The
                               kernel releases it the moment its owner dies, even by kill -9, so a
                               crashed driver never leaves a stale lock.
    <sweep>/driver.heartbeat   a token and a counter, rewritten every BEAT_S by a thread.
The token and both paths reach the stage workers as the env var PRIFT_DRIVER_LEASE (Ray's
runtime_env). A worker's `check_driver()` says the driver is lost when
  - on the driver's host: the lock can be taken (its owner is dead): known at once;
  - the heartbeat names another token (a newer driver owns the sweep);
  - on another host: the heartbeat has not changed for HEARTBEAT_TIMEOUT_S (its driver died, or the
    shared filesystem lost it). On the driver's host the lock decides and the heartbeat's pace does
    not: a driver starved of CPU (both cores busy loading vLLM) can miss beats for seconds while
    alive, and a worker that took that for a death killed a healthy demo run.
Trainer callbacks and the eval loop call `check_driver()` at each step and before each write, so an
orphan stops before its next checkpoint; `watch_driver()` also starts a thread that ends the process
within WATCH_S of a loss, for a worker stuck in one long call. Without PRIFT_DRIVER_LEASE (a stage
run on its own) both do nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from common import atomic
from common.errors import InputError, RunsFailed

log = logging.getLogger(__name__)

ENV = "PRIFT_DRIVER_LEASE"
BEAT_S = 0.25
HEARTBEAT_TIMEOUT_S = 30.0  # a loaded host's driver thread can stall for seconds; an orphan elsewhere stops within this
LOCK_WAIT_S = 5.0
WATCH_S = 0.1
LOST_EXIT_CODE = 75
"""A worker that ends itself because its driver is gone (EX_TEMPFAIL: run the command again)."""


class SweepLocked(InputError):
    """Another driver runs this sweep."""


class DriverLost(RuntimeError):
    """The driver that started this stage is gone: nothing may be written on its behalf."""


class DriverLease:
    """The driver side: `with DriverLease(sweep):` holds the lock and beats until the block ends."""

    def __init__(self, sweep: Path):
        self.lock_path = Path(sweep) / "driver.lock"
        self.beat_path = Path(sweep) / "driver.heartbeat"
        self.token = uuid.uuid4().hex
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ticket(self) -> dict[str, str]:
        """Env vars that tell a worker which lease to watch."""
        value = {"lock": str(self.lock_path.resolve()), "heartbeat": str(self.beat_path.resolve()),
                 "token": self.token, "host": socket.gethostname(), "pid": os.getpid()}
        return {ENV: json.dumps(value)}

    def __enter__(self) -> DriverLease:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = _lock(self.lock_path, LOCK_WAIT_S)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                        "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._beat(0)
        self._thread = threading.Thread(target=self._beating, name="driver-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        # every task has ended (a sweep with failed runs too): idle workers may exit quietly; an
        # interrupted driver leaves no such mark, so its workers stop as for a lost driver
        if exc_type is None or issubclass(exc_type, RunsFailed):
            self._beat(-1, finished=True)
        os.close(self._fd)  # releases the lock

    def _beating(self) -> None:
        n = 0
        while not self._stop.wait(BEAT_S):
            n += 1
            self._beat(n)

    def _beat(self, n: int, finished: bool = False) -> None:
        atomic.write_text(self.beat_path, json.dumps({"token": self.token, "beat": n, "finished": finished}))


def _lock(path: Path, wait_s: float) -> int:
    """An fd holding an exclusive flock on `path`; SweepLocked naming the holder after `wait_s`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise SweepLocked(
                    f"{path.parent}: another driver is running this sweep ({_holder(path)}); wait for it to "
                    "end, or stop it (its lock is released the moment it exits, however it exits)"
                ) from None
            time.sleep(0.1)


def _holder(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (OSError, ValueError, KeyError):  # written just after the lock is taken: may be empty
        return "its owner is starting"


class LeaseWatch:
    """The worker side: `lost()` is why the driver of `ticket` is gone, or None while it lives."""

    def __init__(self, ticket: dict):
        self.ticket = ticket
        self.same_host = ticket["host"] == socket.gethostname()
        self._seen: str | None = None
        self._seen_at = time.monotonic()

    def finished(self) -> bool:
        """Whether this ticket's driver ended its sweep (not interrupted, not lost)."""
        try:
            beat = json.loads(Path(self.ticket["heartbeat"]).read_text())
        except (OSError, ValueError):
            return False
        return beat.get("token") == self.ticket["token"] and beat.get("finished") is True

    def lost(self) -> str | None:
        if self.same_host and _exiting(self.ticket.get("pid")):
            return f"the driver (pid {self.ticket['pid']}) is exiting"
        if self.same_host and _unlocked(self.ticket["lock"]):
            return f"the driver's lock {self.ticket['lock']} is free: the driver has exited"
        try:
            beat = Path(self.ticket["heartbeat"]).read_text()
        except OSError:
            beat = self._seen or ""
        if beat and json.loads(beat)["token"] != self.ticket["token"]:
            return "another driver has taken over the sweep"
        if beat != self._seen:
            self._seen, self._seen_at = beat, time.monotonic()
        elif not self.same_host and time.monotonic() - self._seen_at > HEARTBEAT_TIMEOUT_S:
            return f"no heartbeat from the driver for {HEARTBEAT_TIMEOUT_S:g} s"
        return None


def _exiting(pid: int | None) -> bool:
    """Whether process `pid` is dying or dead. A process killed with SIGKILL keeps its flock until the
    kernel has torn it down (about 0.1 s for one holding torch), long enough for a worker to start a
    checkpoint; the kernel flags it PF_EXITING (0x4 in /proc/PID/stat's flags) as soon as the signal
    is acted on. Without /proc (not Linux) this says False and the lock and heartbeat decide."""
    if pid is None or not Path("/proc/self/stat").exists():
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no such process any more
    state, flags = fields[0], int(fields[6])
    return state in ("Z", "X") or bool(flags & 0x4)


def _unlocked(path: str) -> bool:
    """Whether nobody holds the lock: a shared lock taken and released at once, else the holder lives."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases the probe's lock
    return True


_watch: LeaseWatch | None = None
_watch_lock = threading.Lock()


def _current() -> LeaseWatch | None:
    """This process's watch of the lease in PRIFT_DRIVER_LEASE, or None when there is none."""
    global _watch
    raw = os.environ.get(ENV)
    if not raw:
        return None
    with _watch_lock:
        if _watch is None or _watch.ticket != json.loads(raw):
            _watch = LeaseWatch(json.loads(raw))
        return _watch


def check_driver() -> None:
    """Raise DriverLost if this process works for a driver that is gone (no-op outside a pipeline)."""
    watch = _current()
    reason = watch.lost() if watch else None
    if reason:
        raise DriverLost(reason)


def watch_driver() -> None:
    """Start (once per process) a thread that ends the process within WATCH_S of losing its driver,
    whatever it is doing; a pipeline's stage workers call this first."""
    if _current() is None or any(t.name == "driver-watch" for t in threading.enumerate()):
        return
    threading.Thread(target=_watching, name="driver-watch", daemon=True).start()


def _watching() -> None:
    while True:
        time.sleep(WATCH_S)
        try:
            check_driver()
        except DriverLost as e:
            if _current().finished():  # a worker Ray kept for reuse, idle since the sweep ended
                log.info("the driver finished its sweep: this idle worker exits")
                logging.shutdown()
                os._exit(0)
            log.error("stopping this worker now: %s", e)
            logging.shutdown()
            os._exit(LOST_EXIT_CODE)
