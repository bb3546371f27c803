"""Run untrusted programs (model-generated code) contained, many in parallel.

    results = Sandbox(SandboxConfig(timeout_s=10)).run_many([Judged(solution, tests, entry_point), ...])

A `Judged` program (what scoring and the RL reward run) is judged across two processes: the
solution in a *candidate* process, the tests in a *judge* process, where calls of the entry point
go to the candidate over a pipe as plain data (`sandbox/calls.py`) and the verdict is the
judge's alone (`Sandbox.run_judged`): nothing of the candidate's interpreter is in the judge's.
A list of Python sources ("phases", e.g. a solution then its tests) runs in one process instead,
and passes if its last phase returns; that verdict shares the interpreter with the program.

Every process is forked by a warm fork server (`sandbox/runner.py`, a `python -I -S -B`
process per worker, started on first use; forking it costs ~1 ms where a fresh interpreter costs
~20 ms). The layers, outermost first; the kernel ones hold without the audit hook
(`tests/test_sandbox.py` checks them with the hook switched off):
- file tree: a mount namespace whose root is a read-only tmpfs holding read-only copies (bind
  mounts) of the interpreter's import path and shared-library directories, /dev/null and
  /dev/urandom, and the program's own directory at /work: a fresh tmpfs of `file_mb` MiB, the one
  writable place, which vanishes with the namespace. The host's root is detached, not hidden: no
  path leads back to /tmp, /dev/shm, the repository, a shell or /usr/bin. An IPC namespace of its own
  takes any SysV/POSIX IPC object with it;
- processes: a PID namespace whose PID 1 is the program: it sees and signals no process outside,
  and when it ends (or is killed at the timeout) the kernel kills every process it started before
  the result is returned. RLIMIT_NPROC binds its process count: as root, the program runs as a
  random throw-away uid (which owns no file on the machine); not as root, the namespaces live in a
  user namespace of the caller's, where the limit is counted apart from the user's other processes;
- network: a network namespace with no interface up (127.0.0.1 included);
- system calls: a seccomp filter makes execve/execveat (so any way of starting a binary:
  `subprocess`, `os.posix_spawn`, `_posixsubprocess.fork_exec`, ctypes, a memfd), namespace and
  mount calls, ptrace, bpf, io_uring and keyrings fail with EPERM; no capability is left. This is
  the wall against exec: the library directories in the view do hold the loader and a few
  executables (nosuid);
- resource limits: address space, CPU seconds, size of any file it writes, number of processes;
  a scrubbed environment (HOME = TMPDIR = /work), stdin closed, its own session;
- a Python audit hook (PEP 578), defence in depth (and the guard of a one-process verdict): it
  refuses opening files outside /work for writing (and outside the import path for reading),
  sockets, subprocess/fork/exec, importing ctypes or `_posixsubprocess`, signals, tracing, and other
  threads' frames or the GC's object lists (where the nonce could be found);
- a wall-clock timeout; stdout/stderr go to files capped by the file-size limit (last bytes kept),
  and writing past it ends the process (SIGXFSZ), so a flood cannot stall the failure path.
A program passes only if its tests returned and then the process that ran them wrote this run's
random nonce to a result file (a judged run: the judge, which alone holds it): an early
`sys.exit(0)` / `os._exit(0)` / `atexit` trick is a failure.

Where the kernel refuses a layer (no user namespaces for this user, a container without
CAP_SYS_ADMIN, not x86_64), the sandbox refuses to run code (`SandboxRefused`) unless the config
says `allow_weak: true`; then it logs a warning and runs with what it has. Every result records the
isolation in force (`SandboxResult.isolation`, `level` "strong" or "weak").

Not a VM: a kernel exploit is out of scope, and the program may read what the view exposes (the
standard library, the system's shared libraries) and use CPU, memory and its tmpfs up to the limits.
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
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.checks import at_least, positive, require

log = logging.getLogger(__name__)

# The fork server's program: the call codec (also imported by the tests) and the runner.
# The fork server's source: the call codec, then the runner that uses its names (one `-c` program).
RUNNER = "\n".join(Path(__file__).with_name(name).read_text() for name in ("calls.py", "runner.py"))
SERVER_GRACE_S = 30.0  # beyond the program's timeout, before a silent fork server counts as hung
UNJUDGEABLE = 4  # the judge's exit status when its tests cannot be run across two processes
Status = Literal["passed", "failed", "timeout", "error", "unjudgeable"]


@dataclass(frozen=True)
class Judged:
    """A program judged across two processes: `solution` (untrusted) runs in one, `context` then
    `tests` (trusted dataset code) in the other, where `entry_point` calls into the first."""

    solution: str
    """The candidate's code (for a completion: the prompt, then the completion)."""
    tests: str
    """The tests; they call `entry_point` (HumanEval: `check(<entry_point>)` at the end)."""
    entry_point: str
    context: str = ""
    """Trusted code the tests run after, in the judge: the prompt's imports and helpers (a helper
    the prompt defines is the prompt's own in the tests, whatever the solution redefines)."""


class SandboxRefused(RuntimeError):
    """The kernel refused an isolation layer and the config does not allow running without it."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one program. Defaults suit unit-test style programs (HumanEval, MBPP)."""

    timeout_s: float = 10.0
    """Wall-clock limit; the program and every process it started are killed at this point."""
    cpu_s: int = 10
    """CPU-seconds limit (RLIMIT_CPU): a busy loop is stopped even when the machine is slow."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB: an allocation beyond it raises MemoryError."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE), its captured stdout/stderr included; also
    the size of its directory (a tmpfs), all files together."""
    max_processes: int = 32
    """Processes and threads of the program, its first one included (RLIMIT_NPROC, counted for its
    throw-away uid as root, or in its user namespace otherwise)."""
    output_chars: int = 4000
    """How much of stdout / stderr (the end of each) the result keeps."""
    workers: int = 0
    """Programs run at once by `run_many`; 0 = the number of CPU cores."""
    allow_weak: bool = False
    """Run programs even where the kernel refuses a layer (mount view, PID/network namespace,
    seccomp, binding process limit), with a warning and `isolation.level: weak` in every result.
    Off: such a machine raises SandboxRefused instead of running untrusted code."""

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
    """passed: every phase (judged: the tests) returned; failed: an exception or an early exit;
    timeout; error: killed by a resource limit (file size) or the sandbox itself could not run the
    program; unjudgeable (judged runs): the tests need more than plain data to cross to the
    candidate (they pass it a function, or use a name only the solution defines), see `reason`."""
    reason: str
    """Why it did not pass (the last line of stderr, the signal, ...); empty when passed."""
    exit_code: int | None
    """The process's exit status; negative = killed by that signal."""
    stdout: str
    stderr: str
    duration_s: float
    isolation: dict = field(default_factory=dict)
    """What the runner achieved: level ("strong" / "weak"), uid, mount_view, pid_namespace,
    network_namespace, user_namespace, seccomp, unprivileged, process_limit, missing (why not)."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class _Server:
    """One fork server (`sandbox.runner.serve`): a warm, trusted process that forks a program per
    request, inside the namespaces and view it made at start-up, and reaps it."""

    def __init__(self, view: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", RUNNER, str(view)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                 "HOME": "/work", "TMPDIR": "/work"},  # the program's directory
            cwd="/", bufsize=0,
        )
        self.to_server, self.from_server = self.proc.stdin.fileno(), self.proc.stdout.fileno()

    def run(self, request: dict, wait_s: float, judge: dict | None = None) -> dict | None:
        """Send a request (and a judged run's judge part, which the judge process reads itself);
        returns once the program and every process it started are gone: {"program": pid,
        "status": exit code (negative: killed by that signal), "timed_out": bool, "isolation":
        {...}} ("isolation" absent if the runner failed before it could report; a judged run's
        candidate's own under "candidate"). None if the server did not answer within wait_s."""
        frames = b"".join(len(d).to_bytes(4, "little") + d
                          for d in map(marshal.dumps, [request] + ([judge] if judge else [])))
        view = memoryview(frames)
        while view:
            view = view[os.write(self.to_server, view):]
        ready, _, _ = select.select([self.from_server], [], [], wait_s)
        if not ready:
            return None
        size = int.from_bytes(self._read(4), "little")
        return marshal.loads(self._read(size))

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

    def kill(self) -> None:
        """A server that stopped answering: its program dies with it (PID namespace, death signal)."""
        self.proc.kill()
        self.proc.wait()


class Sandbox:
    def __init__(self, config: SandboxConfig = SandboxConfig(), *, audit_hook: bool = True):
        """`audit_hook=False` is for tests only: it checks that the kernel layers hold on their own."""
        self.config = config
        self.audit_hook = audit_hook
        self.as_root = hasattr(os, "getuid") and os.getuid() == 0
        self._idle: queue.SimpleQueue[_Server] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._root: Path | None = None
        self._warned = False

    @property
    def scratch_root(self) -> Path:
        """This sandbox's directory: `view/` (the servers' mount point, empty on the host) and one
        directory per running program, deleted when it ends."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="prift-sandbox-"))
                (self._root / "view").mkdir()
                weakref.finalize(self, shutil.rmtree, self._root, True)
            return self._root

    def run(self, program: list[str] | Judged) -> SandboxResult:
        """A list of phases runs in one process and passes if its last phase returns: the program
        and its tests share an interpreter, so that verdict is only as strong as the interpreter's
        guard. A `Judged` program is judged across two processes (`run_judged`)."""
        if isinstance(program, Judged):
            return self.run_judged(program)
        cfg = self.config
        scratch = Path(tempfile.mkdtemp(dir=self.scratch_root))
        try:
            request, uids = self._request(scratch, program)
            code, timed_out, report, duration = self._execute(request, uids)
            stdout = _read_tail(scratch / "stdout", cfg.output_chars)
            stderr = _read_tail(scratch / "stderr", cfg.output_chars)
            finished = (scratch / "result").read_bytes() == request["nonce"].encode()
        finally:
            _remove_files(scratch)
        isolation = self._isolation([report.get("isolation", {})], False, stderr)
        status, reason = _classify(code, timed_out, finished, stderr, isolation)
        return SandboxResult(status, reason, code, stdout, stderr, duration, isolation)

    def run_judged(self, program: Judged) -> SandboxResult:
        """The solution runs in a *candidate* process, the tests in a *judge* process; each is a
        program process of its own (own PID namespace, uid, mount and IPC namespaces, view, limits,
        seccomp, audit hook), and the two share two pipes: the tests' calls of the entry point go
        to the candidate as plain data, its results come back as plain data built by the judge
        (`sandbox.calls`). The verdict is the judge's: its exit status and the nonce it
        writes to a result file only it holds. Nothing in the candidate's interpreter (frames,
        modules, builtins, `__eq__`) is in the judge's."""
        cfg = self.config
        scratch = Path(tempfile.mkdtemp(dir=self.scratch_root))
        try:
            request, uids = self._request(scratch, [program.solution], program)
            code, timed_out, report, duration = self._execute(request, uids)
            stdout = _read_tail(scratch / "stdout", cfg.output_chars)
            stderr = _read_tail(scratch / "stderr", cfg.output_chars)
            tests_stderr = _read_tail(scratch / "judge_stderr", cfg.output_chars)
            finished = (scratch / "result").read_bytes() == request["judge"]["nonce"].encode()
        finally:
            _remove_files(scratch)
        candidate = report.get("candidate", {})
        isolation = self._isolation([report.get("isolation", {}), candidate.get("isolation", {})], True,
                                    tests_stderr + stderr)
        status, reason = _classify(code, timed_out, finished, tests_stderr, isolation)
        if code == UNJUDGEABLE and isolation:
            status, reason = "unjudgeable", _last_line(tests_stderr).removeprefix("sandbox-unjudgeable: ")
        elif status == "failed" and "sandbox-candidate-gone:" in reason:
            reason = (reason.removeprefix("sandbox-candidate-gone: ")
                      + f" ({_candidate_end(candidate.get('status'), stderr)})")
        combined = stderr + ("\n--- tests ---\n" + tests_stderr if tests_stderr.strip() else "")
        return SandboxResult(status, reason, code, stdout, combined, duration, isolation)

    def _isolation(self, parts: list[dict], judged: bool, stderr: str) -> dict:
        """The isolation in force, from each process's report (a judged run's: the judge's, with
        the candidate's under `candidate`; `level` is the weaker); refusal becomes SandboxRefused."""
        isolation = dict(parts[0])
        if judged and parts[1]:
            isolation["candidate"] = parts[1]
        for part in parts:
            self._check_isolation(part, stderr)
        if not all(parts):  # a process's runner failed before it reported: the run is an error
            return {}
        if any(p.get("level") != "strong" for p in parts):
            isolation["level"] = "weak"
        cfg = self.config
        if all(p.get("process_limit") for p in parts):
            # Without a cgroup, memory is bounded per process (RLIMIT_AS) times the processes the
            # program may have (RLIMIT_NPROC), plus the judge's one process.
            isolation["memory_bound_mb"] = cfg.memory_mb * (cfg.max_processes + judged)
            isolation["memory_bound"] = "RLIMIT_AS x RLIMIT_NPROC"
        else:
            isolation["memory_bound_mb"] = None
            isolation["memory_bound"] = "none: no binding process limit"
        return isolation

    def _request(self, scratch: Path, phases: list[str], judged: Judged | None = None) -> tuple[dict, list[int | None]]:
        """The program's files (capture files; a working directory, used only where the kernel
        refuses the view) and the request the server gets; with the uid of each of its processes."""
        cfg = self.config
        workdir = scratch / "work"
        workdir.mkdir()
        # A uid no file on the machine belongs to; 2^20.. keeps clear of real users and of nobody.
        # A judged run's two processes get two, so neither may signal or trace the other.
        uids = [secrets.randbelow(1 << 29) + (1 << 20) if self.as_root else None for _ in range(2 if judged else 1)]
        while judged and self.as_root and uids[0] == uids[1]:
            uids[1] = secrets.randbelow(1 << 29) + (1 << 20)
        for name in ("stdout", "stderr", "result") + (("judge_stderr",) if judged else ()):
            os.close(os.open(scratch / name, os.O_CREAT | os.O_WRONLY, 0o644))
        rlimits = {"RLIMIT_AS": cfg.memory_mb << 20, "RLIMIT_CPU": cfg.cpu_s,
                   "RLIMIT_FSIZE": cfg.file_mb << 20, "RLIMIT_CORE": 0}
        request = {
            "workdir": str(workdir), "rlimits": rlimits, "max_processes": cfg.max_processes,
            "work_mb": cfg.file_mb, "timeout_s": cfg.timeout_s, "allow_weak": cfg.allow_weak,
            "audit_hook": self.audit_hook,
        }
        own = {"stdout": str(scratch / "stdout"), "stderr": str(scratch / "stderr"),
               "uid": uids[0], "phases": list(phases)}
        if judged is None:
            request.update(own, result=str(scratch / "result"), nonce=secrets.token_hex(16))
            return request, uids
        request["candidate"] = {**own, "role": "candidate", "judged": {"entry_point": judged.entry_point}}
        request["judge"] = {
            "stdout": os.devnull, "stderr": str(scratch / "judge_stderr"), "uid": uids[1],
            "phases": [], "role": "judge", "result": str(scratch / "result"), "nonce": secrets.token_hex(16),
            "judged": {"entry_point": judged.entry_point, "tests": judged.tests, "context": judged.context},
        }
        return request, uids

    def _execute(self, request: dict, uids: list[int | None]) -> tuple[int | None, bool, dict, float]:
        """Run one request on an idle server: (exit code, timed out, report, seconds)."""
        server = self._server()
        start = time.perf_counter()
        try:
            request = dict(request)
            report = server.run(request, self.config.timeout_s + SERVER_GRACE_S, request.pop("judge", None))
        except BaseException:
            server.close()  # a server in an unknown state is not reused
            raise
        if report is None:
            log.error("sandbox: a fork server did not answer within the timeout; killed")
            server.kill()
            return None, True, {}, time.perf_counter() - start
        self._idle.put(server)
        _stop(report, uids[0] if len(uids) == 1 else uids[1])
        if "candidate" in report:
            _stop(report["candidate"], uids[0])
        return report["status"], report.get("timed_out", False), report, time.perf_counter() - start

    def _check_isolation(self, isolation: dict, stderr: str) -> None:
        """Refusal (the runner stopped before the program ran) becomes an exception; a weak run
        that the config allows is logged once."""
        if isolation.get("refused"):
            missing = "; ".join(f"{k}: {v}" for k, v in isolation.get("missing", {}).items())
            raise SandboxRefused(
                f"the kernel refused sandbox layers ({missing or _last_line(stderr)}); refusing to run "
                "untrusted code. Set `sandbox.allow_weak: true` to run it with the remaining layers."
            )
        if isolation.get("level") == "weak" and not self._warned:
            self._warned = True
            log.warning("sandbox: running untrusted code with WEAK isolation (allow_weak), missing: %s",
                        isolation.get("missing"))

    def _server(self) -> _Server:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return _Server(self.scratch_root / "view")

    def close(self) -> None:
        """Stop the fork servers (they also stop by themselves when this process exits)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def run_many(self, programs: list[list[str] | Judged], progress: bool = False) -> list[SandboxResult]:
        """Run programs in parallel (threads waiting on processes); results in input order."""
        workers = self.config.workers or os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(self.run, programs)
            if progress:
                from tqdm.auto import tqdm

                results = tqdm(results, total=len(programs), desc="sandbox", unit="program")
            return list(results)


def _stop(report: dict, uid: int | None) -> None:
    """Make sure nothing of the program runs on. With a PID namespace there is nothing to do: the
    program was its PID 1, and the kernel killed the rest before the report was sent. Without,
    kill its process group and, as root, every process of its uid, wherever it moved."""
    if report.get("isolation", {}).get("pid_namespace"):
        return
    _kill(os.killpg, report["program"])  # its own session and group, unless its children left it
    if uid is not None and report.get("isolation", {}).get("uid") == uid:
        _kill_uid(uid)


def _kill(kill, pid: int) -> None:
    try:
        kill(pid, signal.SIGKILL)
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


def _remove_files(scratch: Path) -> None:
    """Delete a program's directory: its capture files and the empty working directory (the
    program writes only inside its view), else whatever it left (`_remove`)."""
    try:
        for name in os.listdir(scratch):
            if name != "work":
                os.unlink(scratch / name)
        os.rmdir(scratch / "work")
        os.rmdir(scratch)
    except OSError:
        _remove(scratch)


def _remove(scratch: Path) -> None:
    """Delete a program's directory whatever it did to it: a directory it made unreadable or
    unwritable (chmod 0, which binds a non-root owner too) is opened up and the removal retried."""

    def open_up(func, path, _exc):
        for p in (os.path.dirname(path), path):
            try:
                os.chmod(p, 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=open_up)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass

    try:
        shutil.rmtree(scratch, onerror=open_up)
    except OSError as e:
        log.warning("sandbox: could not remove %s: %s", scratch, e)


def _candidate_end(code: int | None, stderr: str) -> str:
    """How a judged run's candidate process ended, for the reason of a failed call."""
    if code is not None and code < 0:
        how = f"candidate killed by {signal.Signals(-code).name}"
    else:
        how = f"candidate exit status {code}"
    last = _last_line(stderr)
    return f"{how}: {last}" if last else how


def _read_tail(path: Path, chars: int) -> str:
    with open(path, "rb") as f:
        return _tail(f, chars)


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
