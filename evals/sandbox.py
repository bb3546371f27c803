"""Run untrusted programs (model-generated code) contained, many in parallel.

    results = Sandbox(SandboxConfig(timeout_s=10)).run_many([[solution, tests], ...])

Each program is a list of Python sources ("phases", e.g. the solution, then its tests), run in a
child forked by a warm fork server (`evals/sandbox_runner.py`, a `python -I -S -B` process per
worker, started on first use; forking it costs ~1 ms where a fresh interpreter costs ~20 ms):
- its own process group and session, its own empty temporary working directory, a scrubbed
  environment (PATH, LANG, HOME=the working directory), stdin closed;
- resource limits: address space, CPU seconds, size of any file it writes, number of processes;
- OS isolation, what the kernel allows: as root, a fresh network namespace (no interface is up, so
  no socket reaches anything, 127.0.0.1 included) and a random throw-away uid that owns no file, so
  files outside its directory are read-only to it and every process it starts can be killed by uid,
  wherever it moved (`setsid`, double fork); not as root, a user+network namespace when allowed;
- a Python audit hook (PEP 578) that refuses opening files outside its directory (reads of the
  standard library excepted), sockets, subprocesses, fork/exec, signals, ctypes, tracing, and
  other threads' frames or the GC's object lists (where the nonce could be found);
- a wall-clock timeout that kills the whole process group (and, as root, every process of its uid);
- stdout/stderr go to files capped by the file-size limit; the result keeps the last bytes only.
A program passes only if its last phase returned and the runner then wrote this run's random nonce
to a result file the program cannot open: an early `sys.exit(0)` / `os._exit(0)` / `atexit` trick is a failure. The result
records the isolation that was actually in force (`isolation`).

Not a VM: a kernel exploit or a bug in CPython's audit coverage is out of scope. The audit hook is
the only layer that keeps a non-root run from *reading* world-readable files outside its directory.
"""

from __future__ import annotations

import logging
import marshal
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.checks import at_least, positive, require

log = logging.getLogger(__name__)

RUNNER = (Path(__file__).with_name("sandbox_runner.py")).read_text()
# The standard library the program may import (read-only); the runner gets it from us rather than
# importing sysconfig itself (startup time).
STDLIB_DIRS = sorted({os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")})
Status = Literal["passed", "failed", "timeout", "error"]


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one program. Defaults suit unit-test style programs (HumanEval, MBPP)."""

    timeout_s: float = 10.0
    """Wall-clock limit; the whole process group is killed at this point."""
    cpu_s: int = 10
    """CPU-seconds limit (RLIMIT_CPU): a busy loop is stopped even when the machine is slow."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB: an allocation beyond it raises MemoryError."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE), its captured stdout/stderr included."""
    max_processes: int = 32
    """RLIMIT_NPROC for the throw-away uid (root only; elsewhere fork is refused by the audit hook)."""
    output_chars: int = 4000
    """How much of stdout / stderr (the end of each) the result keeps."""
    workers: int = 0
    """Programs run at once by `run_many`; 0 = the number of CPU cores."""

    def __post_init__(self):
        require(
            positive("timeout_s", self.timeout_s),
            at_least("cpu_s", self.cpu_s, 1),
            at_least("memory_mb", self.memory_mb, 1),
            at_least("file_mb", self.file_mb, 1),
            at_least("max_processes", self.max_processes, 1),
            at_least("output_chars", self.output_chars, 0),
            at_least("workers", self.workers, 0),
        )


@dataclass
class SandboxResult:
    status: Status
    """passed: every phase returned; failed: an exception or an early exit; timeout; error: killed
    by a resource limit (file size, CPU) or the sandbox itself could not run the program."""
    reason: str
    """Why it did not pass (the last line of stderr, the signal, ...); empty when passed."""
    exit_code: int | None
    """The process's exit status; negative = killed by that signal."""
    stdout: str
    stderr: str
    duration_s: float
    isolation: dict = field(default_factory=dict)
    """What the runner achieved: {"network_namespace": bool, "uid": int}."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class _Server:
    """One fork server (`sandbox_runner.serve`): a warm, trusted process that forks a child per program."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", RUNNER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/", bufsize=0,
        )
        self.to_server, self.from_server = self.proc.stdin.fileno(), self.proc.stdout.fileno()

    def start(self, request: dict) -> int:
        data = marshal.dumps(request)
        os.write(self.to_server, len(data).to_bytes(4, "little") + data)
        return int.from_bytes(self._read(4), "little")

    def wait(self, timeout: float | None) -> int | None:
        """The child's exit code (negative: killed by that signal), None if it is still running."""
        ready, _, _ = select.select([self.from_server], [], [], timeout)
        return int.from_bytes(self._read(4), "little", signed=True) if ready else None

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(self.from_server, n - len(data))
            if not chunk:
                raise RuntimeError(f"the sandbox fork server died (exit {self.proc.wait()})")
            data += chunk
        return data

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


class Sandbox:
    def __init__(self, config: SandboxConfig = SandboxConfig()):
        self.config = config
        self.as_root = hasattr(os, "getuid") and os.getuid() == 0
        self._idle: queue.SimpleQueue[_Server] = queue.SimpleQueue()

    def run(self, phases: list[str]) -> SandboxResult:
        cfg = self.config
        scratch = Path(tempfile.mkdtemp(prefix="prift-sandbox-"))
        workdir = scratch / "work"
        workdir.mkdir()
        # A uid no file on the machine belongs to; 2^20.. keeps clear of real users and of nobody.
        uid = secrets.randbelow(1 << 29) + (1 << 20) if self.as_root else None
        if uid is not None:
            os.chown(workdir, uid, uid)
        for name in ("stdout", "stderr", "result"):
            (scratch / name).touch()
        nonce = secrets.token_hex(16)
        rlimits = {
            "RLIMIT_AS": cfg.memory_mb << 20,
            "RLIMIT_CPU": cfg.cpu_s,
            "RLIMIT_FSIZE": cfg.file_mb << 20,
            "RLIMIT_CORE": 0,
        }
        if uid is not None:
            rlimits["RLIMIT_NPROC"] = cfg.max_processes
        request = {
            "workdir": str(workdir), "stdout": str(scratch / "stdout"), "stderr": str(scratch / "stderr"),
            "result": str(scratch / "result"), "rlimits": rlimits, "uid": uid, "nonce": nonce,
            "stdlib_dirs": STDLIB_DIRS, "phases": list(phases),
        }
        server = self._server()
        start = time.perf_counter()
        try:
            pid = server.start(request)
            code = server.wait(cfg.timeout_s)
            timed_out = code is None
            _kill_group(pid)
            if uid is not None:
                _kill_uid(uid)
            if timed_out:
                code = server.wait(None)
        except BaseException:
            server.close()  # a server in an unknown state is not reused
            raise
        self._idle.put(server)
        duration = time.perf_counter() - start
        with open(scratch / "stdout", "rb") as out, open(scratch / "stderr", "rb") as err:
            stdout, stderr = _tail(out, cfg.output_chars), _tail(err, cfg.output_chars)
        report = (scratch / "result").read_bytes()
        shutil.rmtree(scratch, ignore_errors=True)

        head, _, tail = report.partition(b"\n")
        isolation = {k: int(v) for k, v in (item.split("=") for item in head.decode().split())}
        if isolation:
            isolation["network_namespace"] = bool(isolation["network_namespace"])
        status, reason = _classify(code, timed_out, tail == nonce.encode(), stderr, isolation)
        return SandboxResult(status, reason, code, stdout, stderr, duration, isolation)

    def _server(self) -> _Server:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return _Server()

    def close(self) -> None:
        """Stop the fork servers (they also stop by themselves when this process exits)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def run_many(self, programs: list[list[str]], progress: bool = False) -> list[SandboxResult]:
        """Run programs in parallel (threads waiting on processes); results in input order."""
        workers = self.config.workers or os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(self.run, programs)
            if progress:
                from tqdm.auto import tqdm

                results = tqdm(results, total=len(programs), desc="sandbox", unit="program")
            return list(results)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Kill every live process of the program's throw-away uid, wherever it moved (setsid...)."""
    for _ in range(100):  # a forking program can create processes while we kill: repeat
        left = _pids_of_uid(uid)
        if not left:
            return
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log.warning("sandbox: processes of uid %d survived 100 kill rounds", uid)


def _pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes owned by uid."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid and _state(entry.path) != "Z":
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return pids


def _state(proc_dir: str) -> str:
    with open(f"{proc_dir}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _tail(f, chars: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4 * chars))
    text = f.read().decode("utf-8", "replace")
    return text[-chars:]


def _classify(code, timed_out, finished, stderr, isolation) -> tuple[Status, str]:
    if timed_out:
        return "timeout", "wall-clock timeout"
    if code == -signal.SIGXCPU:
        return "timeout", "CPU time limit"
    if code == -signal.SIGXFSZ:
        return "error", "output or file size limit exceeded"
    if not isolation:
        return "error", f"the sandbox runner failed before the program started: {_last_line(stderr)}"
    if code == 0 and finished:
        return "passed", ""
    if code == 0:
        return "failed", "exited before the tests finished"
    if code is not None and code < 0:
        return "failed", f"killed by {signal.Signals(-code).name}"
    return "failed", _last_line(stderr) or f"exit status {code}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
